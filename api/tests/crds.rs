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

/// Walks a schema and collects every list, map, string and number without
/// an upper bound. Exempt: enums, timestamps (`date-time`) and 64-bit
/// integers (Kubernetes' own counters such as `observedGeneration`).
fn unbounded(schema: &Value, at: &str, out: &mut Vec<String>) {
    let Some(node) = schema.as_object() else {
        return;
    };
    let has = |key: &str| node.contains_key(key);
    let format = node.get("format").and_then(Value::as_str);
    match node.get("type").and_then(Value::as_str) {
        Some("array") if !has("maxItems") => out.push(format!("{at}: no maxItems")),
        Some("string") if !has("maxLength") && !has("enum") && format != Some("date-time") => {
            out.push(format!("{at}: no maxLength"))
        }
        Some("integer") if !has("maximum") && format != Some("int64") => {
            out.push(format!("{at}: no maximum"))
        }
        Some("number") if !has("maximum") => out.push(format!("{at}: no maximum")),
        Some("object")
            if node
                .get("additionalProperties")
                .is_some_and(Value::is_object)
                && !has("maxProperties") =>
        {
            out.push(format!("{at}: no maxProperties"))
        }
        _ => {}
    }
    if let Some(properties) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            unbounded(child, &format!("{at}.{name}"), out);
        }
    }
    if let Some(items) = node.get("items") {
        unbounded(items, &format!("{at}[]"), out);
    }
    if let Some(additional) = node.get("additionalProperties") {
        unbounded(additional, &format!("{at}{{}}"), out);
    }
}

/// A CRD version's OpenAPI schema as JSON.
fn schema_json(
    version: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionVersion,
) -> Value {
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema present");
    serde_json::to_value(schema).expect("schema serializes")
}

/// Every list, map, string and number of spec and status is bounded, so no
/// write can make a consumer allocate without limit and the API server can
/// bound the cost of the CEL rules.
#[test]
fn every_list_string_and_number_is_bounded() {
    for (file, crd) in climatik_api::crd::all() {
        let json = schema_json(&crd.spec.versions[0]);
        let mut violations = Vec::new();
        for part in ["spec", "status"] {
            let node = json
                .pointer(&format!("/properties/{part}"))
                .expect("spec and status");
            unbounded(node, &format!("{file}:{part}"), &mut violations);
        }
        assert!(violations.is_empty(), "{violations:#?}");
    }
}

#[test]
fn entries_must_say_when_they_expire() {
    let nf = &climatik_api::crd::all()[1].1;
    let schema = serde_json::to_value(&nf.spec.versions[0].schema).expect("serializes");
    for list in ["gpuFrequencies", "cpuFrequencies"] {
        let required = schema
            .pointer(&format!(
                "/openAPIV3Schema/properties/spec/properties/{list}/items/required"
            ))
            .and_then(Value::as_array)
            .expect("required fields");
        assert!(
            required.contains(&Value::from("expiresAt")),
            "{list}: {required:?}"
        );
    }
}

#[test]
fn schemas_are_structural() {
    for (file, crd) in climatik_api::crd::all() {
        for version in &crd.spec.versions {
            let json = schema_json(version);
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
fn printer_columns_show_readiness_algorithm_caps_power_capping_age() {
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
    assert_eq!(
        columns,
        [
            "Ready",
            "Algorithm",
            "Cap",
            "Effective",
            "Power",
            "Capping",
            "Age"
        ]
    );
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

#[test]
fn power_budgets_are_cluster_scoped_with_budget_columns() {
    let crd = climatik_api::crd::all()
        .into_iter()
        .find(|(file, _)| *file == "powerbudgets.yaml")
        .expect("budget CRD")
        .1;
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.short_names, Some(vec!["pb".to_string()]));
    assert_eq!(
        crd.spec.names.categories,
        Some(vec!["climatik".to_string()])
    );
    let columns: Vec<String> = crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .filter(|c| c.priority.unwrap_or(0) == 0)
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(
        columns,
        ["Watts", "Measured", "Headroom", "WithinBudget", "Age"]
    );
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("serializes");
    let spec = schema
        .pointer("/openAPIV3Schema/properties/spec/properties")
        .expect("spec properties");
    for (pointer, value) in [
        ("/watts/minimum", serde_json::json!(1.0)),
        ("/watts/maximum", serde_json::json!(10_000_000.0)),
        ("/reservedWatts/minimum", serde_json::json!(0.0)),
        ("/reservedWatts/default", serde_json::json!(0)),
        ("/capUnmanaged/default", serde_json::json!(false)),
    ] {
        assert_eq!(spec.pointer(pointer), Some(&value), "{pointer}");
    }
}

#[test]
fn policy_priority_and_guarantee_are_bounded_and_optional() {
    let crd = &climatik_api::crd::all()[0].1;
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("serializes");
    let spec = schema
        .pointer("/openAPIV3Schema/properties/spec")
        .expect("spec");
    let required: Vec<&str> = spec
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(!required.contains(&"priority") && !required.contains(&"minWatts"));
    assert_eq!(
        spec.pointer("/properties/priority/maximum"),
        Some(&serde_json::json!(f64::from(
            climatik_api::bounds::MAX_PRIORITY
        )))
    );
    assert_eq!(
        spec.pointer("/properties/minWatts/minimum"),
        Some(&serde_json::json!(0.0))
    );
    let rules = spec
        .pointer("/x-kubernetes-validations")
        .and_then(Value::as_array)
        .expect("spec rules");
    assert!(
        rules
            .iter()
            .any(|r| r["message"] == "minWatts must not exceed powerCapLimit"),
        "{rules:?}"
    );
}
