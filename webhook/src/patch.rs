//! JSON patches that set or remove our label and annotation on a pod
//! template, whether or not its `metadata`, `labels` or `annotations` exist.
//!
//! Keys such as `climatik.io/policy` contain `/`, which a JSON pointer
//! escapes as `~1`; [`PointerBuf::from_tokens`] does that escaping.

use climatik_api::workload::WorkloadKind;
use json_patch::{AddOperation, PatchOperation, RemoveOperation, jsonptr::PointerBuf};
use kube::core::admission::Operation;
use serde_json::{Map, Value};

/// The pod template pointer of a workload kind, e.g. `/spec/template`.
pub fn template_pointer(kind: WorkloadKind) -> PointerBuf {
    PointerBuf::from_tokens(kind.template_path().iter().copied())
}

/// Whether the API server accepts pod template changes for this
/// operation: a Job's template is immutable once created.
pub fn template_mutable(kind: WorkloadKind, operation: &Operation) -> bool {
    !(kind == WorkloadKind::Job && matches!(operation, Operation::Update))
}

/// The pod template's metadata is not shaped like object metadata.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path} is not an object")]
pub struct ShapeError {
    pub path: String,
}

/// The two string maps of object metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaMap {
    Labels,
    Annotations,
}

impl MetaMap {
    fn key(self) -> &'static str {
        match self {
            MetaMap::Labels => "labels",
            MetaMap::Annotations => "annotations",
        }
    }
}

/// Operations that make `template.metadata.<map>` contain every entry of
/// `set` and none of the keys in `unset`; empty when it already does.
/// `template` is the pod template found at `template_ptr`.
pub fn template_metadata_ops(
    template_ptr: &PointerBuf,
    template: &Value,
    set: &[(MetaMap, &str, &str)],
    unset: &[(MetaMap, &str)],
) -> Result<Vec<PatchOperation>, ShapeError> {
    let shape_error = |suffix: &str| ShapeError {
        path: format!("{template_ptr}{suffix}"),
    };
    let template = template.as_object().ok_or_else(|| shape_error(""))?;
    let mut meta_ptr = template_ptr.clone();
    meta_ptr.push_back("metadata");
    let metadata = match template.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(_) => return Err(shape_error("/metadata")),
    };

    let mut ops = Vec::new();
    let Some(metadata) = metadata else {
        // No metadata at all: add it whole, with just what is to be set.
        if set.is_empty() {
            return Ok(ops);
        }
        let mut new_meta = Map::new();
        for (map, key, value) in set {
            let entry = new_meta
                .entry(map.key())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(entries) = entry {
                entries.insert((*key).to_string(), Value::String((*value).to_string()));
            }
        }
        ops.push(PatchOperation::Add(AddOperation {
            path: meta_ptr,
            value: Value::Object(new_meta),
        }));
        return Ok(ops);
    };

    for map in [MetaMap::Labels, MetaMap::Annotations] {
        let mut map_ptr = meta_ptr.clone();
        map_ptr.push_back(map.key());
        let existing = match metadata.get(map.key()) {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(_) => return Err(shape_error(&format!("/metadata/{}", map.key()))),
        };
        let wanted: Vec<(&str, &str)> = set
            .iter()
            .filter(|(m, _, _)| *m == map)
            .map(|(_, k, v)| (*k, *v))
            .collect();
        match existing {
            None => {
                if !wanted.is_empty() {
                    let entries = wanted
                        .iter()
                        .map(|(k, v)| ((*k).to_string(), Value::String((*v).to_string())))
                        .collect();
                    ops.push(PatchOperation::Add(AddOperation {
                        path: map_ptr,
                        value: Value::Object(entries),
                    }));
                }
            }
            Some(entries) => {
                for (key, value) in wanted {
                    if entries.get(key).and_then(Value::as_str) != Some(value) {
                        let mut path = map_ptr.clone();
                        path.push_back(key);
                        // `add` on an existing member replaces it (RFC 6902).
                        ops.push(PatchOperation::Add(AddOperation {
                            path,
                            value: Value::String(value.to_string()),
                        }));
                    }
                }
                for (_, key) in unset.iter().filter(|(m, _)| *m == map) {
                    if entries.contains_key(*key) {
                        let mut path = map_ptr.clone();
                        path.push_back(*key);
                        ops.push(PatchOperation::Remove(RemoveOperation { path }));
                    }
                }
            }
        }
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const LABEL: &str = "climatik.io/policy";
    const WATTS: &str = "climatik.io/power-cap-watts";

    fn ptr() -> PointerBuf {
        PointerBuf::from_tokens(["spec", "template"])
    }

    fn apply(doc: &Value, ops: &[PatchOperation]) -> Value {
        let mut doc = json!({ "spec": { "template": doc.clone() } });
        assert!(json_patch::patch(&mut doc, ops).is_ok(), "{ops:?}");
        doc["spec"]["template"].clone()
    }

    fn set() -> Vec<(MetaMap, &'static str, &'static str)> {
        vec![
            (MetaMap::Labels, LABEL, "deployment-vllm"),
            (MetaMap::Annotations, WATTS, "300"),
        ]
    }

    #[test]
    fn adds_whole_metadata_when_missing() {
        let template = json!({ "spec": {} });
        let ops = template_metadata_ops(&ptr(), &template, &set(), &[]).unwrap_or_default();
        assert_eq!(ops.len(), 1);
        let patched = apply(&template, &ops);
        assert_eq!(patched["metadata"]["labels"][LABEL], "deployment-vllm");
        assert_eq!(patched["metadata"]["annotations"][WATTS], "300");
    }

    #[test]
    fn adds_maps_when_missing_and_escapes_slashes() {
        let template = json!({ "metadata": { "name": "x" } });
        let ops = template_metadata_ops(&ptr(), &template, &set(), &[]).unwrap_or_default();
        let text = serde_json::to_string(&ops).unwrap_or_default();
        assert!(text.contains("/spec/template/metadata/labels"), "{text}");
        let template = json!({ "metadata": { "labels": { "app": "a" }, "annotations": {} } });
        let ops = template_metadata_ops(&ptr(), &template, &set(), &[]).unwrap_or_default();
        let text = serde_json::to_string(&ops).unwrap_or_default();
        assert!(
            text.contains("/spec/template/metadata/labels/climatik.io~1policy"),
            "{text}"
        );
        let patched = apply(&template, &ops);
        assert_eq!(patched["metadata"]["labels"]["app"], "a");
        assert_eq!(patched["metadata"]["labels"][LABEL], "deployment-vllm");
    }

    #[test]
    fn nothing_to_do_when_already_set() {
        let template = json!({ "metadata": {
            "labels": { LABEL: "deployment-vllm" },
            "annotations": { WATTS: "300" } } });
        assert_eq!(
            template_metadata_ops(&ptr(), &template, &set(), &[]),
            Ok(vec![])
        );
    }

    #[test]
    fn removes_only_present_keys() {
        let template = json!({ "metadata": { "labels": { LABEL: "x", "app": "a" } } });
        let unset = [(MetaMap::Labels, LABEL), (MetaMap::Annotations, WATTS)];
        let ops = template_metadata_ops(&ptr(), &template, &[], &unset).unwrap_or_default();
        assert_eq!(ops.len(), 1);
        let patched = apply(&template, &ops);
        assert_eq!(patched["metadata"]["labels"], json!({ "app": "a" }));
    }

    #[test]
    fn misshapen_metadata_is_an_error() {
        let template = json!({ "metadata": { "labels": "oops" } });
        assert_eq!(
            template_metadata_ops(&ptr(), &template, &set(), &[]),
            Err(ShapeError {
                path: "/spec/template/metadata/labels".to_string()
            })
        );
    }
}
