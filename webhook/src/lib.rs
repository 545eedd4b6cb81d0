//! Climatik's mutating admission webhook.
//!
//! Users opt a Deployment, StatefulSet, Job or CronJob into power capping
//! with `climatik.io/power-cap: "300W"`. The webhook validates the
//! annotation, labels the pod template `climatik.io/policy=<policy>`, and
//! server-side applies the generated PowerCappingPolicy selecting that
//! label; when the annotation goes, so do the label and the policy.
//!
//! - [`review`]: the request body read as a typed AdmissionReview;
//! - [`mutate`]: the decision, a pure function of the AdmissionRequest;
//! - [`effects`]: the Kubernetes writes that decision asks for;
//! - [`server`]: the axum router and the TLS server around them.

pub mod app;
pub mod effects;
pub mod error;
pub mod metrics;
pub mod mutate;
pub mod patch;
pub mod policy;
pub mod registration;
pub mod review;
pub mod server;
pub mod settings;
pub mod workload;
