//! The CRDs checked into the chart must be what the types generate, and
//! their schemas must be structural so the API server accepts them and
//! prunes unknown fields.

use std::path::Path;

use serde_json::Value;

fn chart_crd_dir() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/climatik/crds"
    ))
}

#[test]
fn chart_crds_match_the_generator() {
    for (file, crd) in climatik_api::crd::all() {
        let expected = climatik_api::crd::to_yaml(&crd).expect("CRD renders");
        let path = chart_crd_dir().join(file);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
        assert!(
            committed == expected,
            "{} is stale; regenerate it with `make crds`",
            path.display()
        );
    }
}

/// Walks a schema and collects every place that breaks the structural rules
/// we rely on: each node typed, no free-form objects.
fn structural_violations(schema: &Value, at: &str, out: &mut Vec<String>) {
    let Some(node) = schema.as_object() else {
        out.push(format!("{at}: not an object"));
        return;
    };
    if node.contains_key("x-kubernetes-preserve-unknown-fields") {
        out.push(format!("{at}: preserves unknown fields"));
    }
    let int_or_string = node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if !int_or_string && !node.contains_key("type") {
        out.push(format!("{at}: has no type"));
    }
    for keyword in ["anyOf", "oneOf", "allOf", "not", "$ref"] {
        if node.contains_key(keyword) && !int_or_string {
            out.push(format!("{at}: uses {keyword}"));
        }
    }
    if let Some(properties) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            structural_violations(child, &format!("{at}.{name}"), out);
        }
    }
    if let Some(items) = node.get("items") {
        structural_violations(items, &format!("{at}[]"), out);
        check_list_map_keys(node, items, at, out);
    }
    if let Some(additional) = node.get("additionalProperties")
        && additional.is_object()
    {
        structural_violations(additional, &format!("{at}{{}}"), out);
    }
}

/// Keys of a `map` list must be required or defaulted, or the API server
/// refuses the CRD.
fn check_list_map_keys(
    list: &serde_json::Map<String, Value>,
    items: &Value,
    at: &str,
    out: &mut Vec<String>,
) {
    let Some(keys) = list
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
    else {
        return;
    };
    let required: Vec<&str> = items
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for key in keys.iter().filter_map(Value::as_str) {
        let defaulted = items
            .pointer(&format!("/properties/{key}/default"))
            .is_some();
        if !required.contains(&key) && !defaulted {
            out.push(format!(
                "{at}: list-map key {key} is neither required nor defaulted"
            ));
        }
    }
}

#[test]
fn schemas_are_structural() {
    for (file, crd) in climatik_api::crd::all() {
        for version in &crd.spec.versions {
            let schema = version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("schema present");
            let json = serde_json::to_value(schema).expect("schema serializes");
            let mut violations = Vec::new();
            structural_violations(&json, file, &mut violations);
            assert!(violations.is_empty(), "{violations:#?}");
            assert!(
                version
                    .subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some(),
                "{file}: status subresource missing"
            );
        }
    }
}

#[test]
fn printer_columns_show_cap_power_capping_age() {
    let crd = climatik_api::crd::all()
        .into_iter()
        .find(|(file, _)| *file == "powercappingpolicies.yaml")
        .expect("policy CRD")
        .1;
    let columns: Vec<String> = crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .filter(|c| c.priority.unwrap_or(0) == 0)
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(columns, ["Cap", "Power", "Capping", "Age"]);
    assert_eq!(crd.spec.names.short_names, Some(vec!["pcp".to_string()]));
}

#[test]
fn schema_carries_the_validation_bounds() {
    let crd = &climatik_api::crd::all()[0].1;
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("serializes");
    let spec = schema
        .pointer("/openAPIV3Schema/properties/spec/properties")
        .expect("spec properties");
    assert_eq!(
        spec.pointer("/powerCapLimit/minimum"),
        Some(&serde_json::json!(1.0))
    );
    assert_eq!(
        spec.pointer("/cappingThreshold/minimum"),
        Some(&serde_json::json!(1.0))
    );
    assert_eq!(
        spec.pointer("/cappingThreshold/maximum"),
        Some(&serde_json::json!(100.0))
    );
    assert_eq!(
        spec.pointer("/cappingThreshold/default"),
        Some(&serde_json::json!(90))
    );

    let nf = &climatik_api::crd::all()[1].1;
    let schema = serde_json::to_value(&nf.spec.versions[0].schema).expect("serializes");
    let gpu = schema
        .pointer("/openAPIV3Schema/properties/spec/properties/gpuFrequencies/items/properties")
        .expect("gpu entry properties");
    assert_eq!(
        gpu.pointer("/targetFrequency/minimum"),
        Some(&serde_json::json!(1.0))
    );
    assert_eq!(nf.spec.scope, "Cluster");
}
