//! Climatik's mutating admission webhook.
//!
//! Users opt a Deployment, StatefulSet, Job or CronJob into power capping
//! with `climatik.io/power-cap: "300W"`. The webhook validates the
//! annotations and labels the pod template `climatik.io/policy=<policy>`;
//! when the annotation goes, so does the label. It writes nothing and
//! needs no Kubernetes client: the controller's policy generator creates,
//! updates and deletes the generated PowerCappingPolicy from the stored
//! workload, so a request forged straight to `/mutate` changes no object.
//!
//! - [`review`]: the request body read as a typed AdmissionReview;
//! - [`mutate`]: the decision, a pure function of the AdmissionRequest;
//! - [`floor`]: the warning for a cap the workload's GPUs cannot reach;
//! - [`server`]: the axum router and the TLS server around it.

pub mod app;
pub mod error;
pub mod floor;
pub mod metrics;
pub mod mutate;
pub mod patch;
pub mod registration;
pub mod review;
pub mod server;
