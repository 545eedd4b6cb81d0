//! Least privilege, measured: what RBAC manifests grant each ServiceAccount
//! and what each ServiceAccount asked of the API server (read from the
//! local cluster's audit log, which `tests/cluster/up.sh` writes for the
//! accounts in `climatik-project`), as sets of comparable permissions.
//!
//! A permission is a verb on a resource of an API group, subresources
//! spelled `resource/subresource` as RBAC spells them. Namespaces and
//! resource names are left out: the chart grants neither narrower than
//! cluster-wide or namespace-wide, and node identity is the admission
//! policy's job, not RBAC's.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use anyhow::Context;
use serde::Deserialize;

use crate::cluster::TestCluster;

/// One verb on one resource of one API group (`""` is the core group).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Permission {
    pub group: String,
    pub resource: String,
    pub verb: String,
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {}/{}", self.verb, group, self.resource)
    }
}

/// What one account asked for, split by the authoriser's decision.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Requested {
    pub allowed: BTreeSet<Permission>,
    pub denied: BTreeSet<Permission>,
}

impl Requested {
    /// Everything asked for, allowed or not: what the account needs.
    pub fn needed(&self) -> BTreeSet<Permission> {
        self.allowed.union(&self.denied).cloned().collect()
    }
}

/// The user name the API server gives ServiceAccount `namespace/name`.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

#[derive(Deserialize)]
struct Object {
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(rename = "roleRef")]
    role_ref: Option<RoleRef>,
    #[serde(default)]
    subjects: Vec<Subject>,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
    namespace: Option<String>,
}

#[derive(Deserialize)]
struct Rule {
    #[serde(rename = "apiGroups", default)]
    api_groups: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
}

#[derive(Deserialize)]
struct RoleRef {
    kind: String,
    name: String,
}

#[derive(Deserialize)]
struct Subject {
    kind: String,
    name: String,
    namespace: Option<String>,
}

/// What the Roles and ClusterRoles of a multi-document YAML manifest grant,
/// through its bindings, to each ServiceAccount (keyed by user name, see
/// [`service_account_user`]). Documents of other kinds are skipped.
pub fn granted(manifest: &str) -> anyhow::Result<BTreeMap<String, BTreeSet<Permission>>> {
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(manifest) {
        let value = serde_yaml::Value::deserialize(document)?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_string();
        if matches!(
            kind.as_str(),
            "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding"
        ) {
            objects.push(
                serde_yaml::from_value::<Object>(value)
                    .with_context(|| format!("reading a {kind}"))?,
            );
        }
    }
    // (kind, namespace of a Role, name) -> its rules
    let roles: BTreeMap<(String, Option<String>, String), &[Rule]> = objects
        .iter()
        .filter(|o| o.kind.ends_with("Role"))
        .map(|o| {
            let namespace = (o.kind == "Role").then(|| o.metadata.namespace.clone());
            (
                (o.kind.clone(), namespace.flatten(), o.metadata.name.clone()),
                o.rules.as_slice(),
            )
        })
        .collect();
    let mut grants: BTreeMap<String, BTreeSet<Permission>> = BTreeMap::new();
    for binding in objects.iter().filter(|o| o.kind.ends_with("Binding")) {
        let role_ref = binding.role_ref.as_ref().with_context(|| {
            format!("{} {} has no roleRef", binding.kind, binding.metadata.name)
        })?;
        let namespace = (role_ref.kind == "Role")
            .then(|| binding.metadata.namespace.clone())
            .flatten();
        let rules = roles
            .get(&(role_ref.kind.clone(), namespace, role_ref.name.clone()))
            .with_context(|| {
                format!(
                    "{} {} refers to {} {}, which the manifest does not hold",
                    binding.kind, binding.metadata.name, role_ref.kind, role_ref.name
                )
            })?;
        for subject in binding
            .subjects
            .iter()
            .filter(|s| s.kind == "ServiceAccount")
        {
            let namespace = subject
                .namespace
                .clone()
                .or_else(|| binding.metadata.namespace.clone())
                .unwrap_or_default();
            let permissions = grants
                .entry(service_account_user(&namespace, &subject.name))
                .or_default();
            for rule in rules.iter() {
                for group in &rule.api_groups {
                    for resource in &rule.resources {
                        for verb in &rule.verbs {
                            permissions.insert(Permission {
                                group: group.clone(),
                                resource: resource.clone(),
                                verb: verb.clone(),
                            });
                        }
                    }
                }
            }
        }
    }
    Ok(grants)
}

#[derive(Deserialize)]
struct AuditEvent {
    stage: String,
    verb: String,
    user: AuditUser,
    #[serde(rename = "objectRef")]
    object_ref: Option<ObjectRef>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(rename = "responseStatus")]
    response_status: Option<ResponseStatus>,
}

#[derive(Deserialize)]
struct ResponseStatus {
    code: Option<u16>,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct AuditUser {
    username: String,
}

#[derive(Deserialize)]
struct ObjectRef {
    resource: Option<String>,
    subresource: Option<String>,
    #[serde(rename = "apiGroup", default)]
    api_group: String,
}

/// What each of `users` asked of the API server, from audit log lines
/// (JSON, one event per line). Requests without a resource (discovery,
/// `/version`) are not governed by the chart and are left out; so is any
/// line that is not a complete event of one of `users`.
pub fn requested(
    audit_log: &str,
    users: &BTreeSet<String>,
) -> anyhow::Result<BTreeMap<String, Requested>> {
    let mut requests: BTreeMap<String, Requested> = BTreeMap::new();
    for (number, line) in audit_log.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let event: AuditEvent =
            serde_json::from_str(line).with_context(|| format!("audit log line {}", number + 1))?;
        // A watch has a ResponseStarted event too; count each request once.
        if event.stage != "ResponseComplete" && event.stage != "Panic" {
            continue;
        }
        if !users.contains(&event.user.username) {
            continue;
        }
        let Some(object) = event.object_ref else {
            continue;
        };
        let Some(resource) = object.resource else {
            continue;
        };
        let resource = match object.subresource {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource,
        };
        let (code, message) = event
            .response_status
            .map(|s| (s.code, s.message))
            .unwrap_or_default();
        let permission = Permission {
            group: object.api_group,
            resource,
            verb: event.verb,
        };
        // A patch that created its object (server-side apply answers 201)
        // was authorised for create as well.
        let created = (permission.verb == "patch" && code == Some(201)).then(|| Permission {
            verb: "create".into(),
            ..permission.clone()
        });
        let entry = requests.entry(event.user.username).or_default();
        // Refused by the authoriser, or by the create check of a patch
        // that would have created its object ("User ... cannot create
        // resource"). Other 403s are not about rights: content refused in
        // a namespace being deleted, say.
        let refused = event
            .annotations
            .get("authorization.k8s.io/decision")
            .is_some_and(|d| d == "forbid")
            || (code == Some(403) && message.contains(" cannot "));
        let into = if refused {
            &mut entry.denied
        } else {
            &mut entry.allowed
        };
        into.insert(permission);
        into.extend(created);
    }
    Ok(requests)
}

impl TestCluster {
    /// The API server's audit log (requests of the ServiceAccounts in
    /// `climatik-project`), as far as it is written now.
    pub fn audit_log(&self) -> anyhow::Result<String> {
        let path = self.state_dir().join("audit.log");
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading the API server's audit log {} (a cluster started before auditing was \
                 added has none: restart it with make cluster-down && make cluster-up)",
                path.display()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: agent, namespace: sys}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: agent}
rules:
  - apiGroups: ["climatik.io"]
    resources: ["nodefrequencies", "nodefrequencies/status"]
    verbs: ["get", "patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: agent}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: agent}
subjects: [{kind: ServiceAccount, name: agent, namespace: sys}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: lease, namespace: sys}
rules:
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["update"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: lease, namespace: sys}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: lease}
subjects: [{kind: ServiceAccount, name: agent}]
"#;

    fn permission(verb: &str, group: &str, resource: &str) -> Permission {
        Permission {
            group: group.into(),
            resource: resource.into(),
            verb: verb.into(),
        }
    }

    #[test]
    fn bindings_grant_every_combination_of_their_roles_rules() {
        let grants = granted(MANIFEST).expect("valid manifest");
        let agent = &grants[&service_account_user("sys", "agent")];
        let expected: BTreeSet<Permission> = [
            permission("get", "climatik.io", "nodefrequencies"),
            permission("patch", "climatik.io", "nodefrequencies"),
            permission("get", "climatik.io", "nodefrequencies/status"),
            permission("patch", "climatik.io", "nodefrequencies/status"),
            permission("update", "coordination.k8s.io", "leases"),
        ]
        .into();
        assert_eq!(agent, &expected);
        assert_eq!(grants.len(), 1);
    }

    #[test]
    fn a_binding_to_a_missing_role_is_an_error() {
        let manifest = MANIFEST.replace(
            "kind: Role\nmetadata: {name: lease",
            "kind: Role\nmetadata: {name: other",
        );
        let err = granted(&manifest).expect_err("dangling roleRef");
        assert!(format!("{err:#}").contains("Role lease"), "{err:#}");
    }

    #[test]
    fn audit_events_count_once_per_request_split_by_decision_and_creating_patches_need_create() {
        let user = service_account_user("sys", "agent");
        let line = |stage: &str, verb: &str, resource: &str, sub: Option<&str>, decision: &str| {
            serde_json::json!({
                "kind": "Event", "stage": stage, "verb": verb,
                "user": {"username": user},
                "objectRef": {"resource": resource, "subresource": sub, "apiGroup": "climatik.io"},
                "annotations": {"authorization.k8s.io/decision": decision}
            })
            .to_string()
        };
        let log = [
            serde_json::json!({"kind": "Event", "stage": "ResponseComplete", "verb": "create",
                "user": {"username": user},
                "responseStatus": {"code": 403, "message": "events.events.k8s.io \"e\" is forbidden: unable to create new content in namespace n because it is being terminated"},
                "objectRef": {"resource": "events", "apiGroup": "events.k8s.io"},
                "annotations": {"authorization.k8s.io/decision": "allow"}})
            .to_string(),
            serde_json::json!({"kind": "Event", "stage": "ResponseComplete", "verb": "patch",
                "user": {"username": user},
                "responseStatus": {"code": 403, "message": "powercappingpolicies.climatik.io \"p\" is forbidden: User \"u\" cannot create resource \"powercappingpolicies\""},
                "objectRef": {"resource": "powercappingpolicies", "apiGroup": "climatik.io"},
                "annotations": {"authorization.k8s.io/decision": "allow"}})
            .to_string(),
            line("ResponseStarted", "watch", "nodefrequencies", None, "allow"),
            line(
                "ResponseComplete",
                "watch",
                "nodefrequencies",
                None,
                "allow",
            ),
            line(
                "ResponseComplete",
                "patch",
                "nodefrequencies",
                Some("status"),
                "allow",
            ),
            line(
                "ResponseComplete",
                "delete",
                "nodefrequencies",
                None,
                "forbid",
            ),
            serde_json::json!({"kind": "Event", "stage": "ResponseComplete", "verb": "patch",
                "user": {"username": user}, "responseStatus": {"code": 201},
                "objectRef": {"resource": "powercappingpolicies", "apiGroup": "climatik.io"},
                "annotations": {"authorization.k8s.io/decision": "allow"}})
            .to_string(),
            serde_json::json!({"kind": "Event", "stage": "ResponseComplete", "verb": "get",
                "user": {"username": user}, "requestURI": "/version"})
            .to_string(),
            serde_json::json!({"kind": "Event", "stage": "ResponseComplete", "verb": "list",
                "user": {"username": "someone-else"},
                "objectRef": {"resource": "pods", "apiVersion": "v1"}})
            .to_string(),
        ]
        .join("\n");
        let requests = requested(&log, &[user.clone()].into()).expect("valid log");
        let agent = &requests[&user];
        assert_eq!(
            agent.allowed,
            [
                permission("watch", "climatik.io", "nodefrequencies"),
                permission("patch", "climatik.io", "nodefrequencies/status"),
                permission("patch", "climatik.io", "powercappingpolicies"),
                permission("create", "climatik.io", "powercappingpolicies"),
                permission("create", "events.k8s.io", "events"),
            ]
            .into()
        );
        assert_eq!(
            agent.denied,
            [
                permission("delete", "climatik.io", "nodefrequencies"),
                permission("patch", "climatik.io", "powercappingpolicies"),
            ]
            .into()
        );
        assert_eq!(requests.len(), 1);
    }
}
