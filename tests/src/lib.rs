//! Test support for integration tests against the local control plane.
//!
//! The control plane is real (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler built from source by `tests/cluster/build.sh`), with fake
//! GPU nodes kept Ready by the `nodekeeper`, and a real Prometheus. Tests
//! share one cluster and isolate themselves with throwaway namespaces:
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let cluster = climatik_test_support::cluster().await?;
//! let ns = cluster.namespace("my-test").await?;
//! cluster.kubectl(["-n", ns.name(), "get", "pods"]).await?;
//! ns.cleanup().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Components under test run as local processes with kubeconfigs minted for
//! their ServiceAccounts ([`TestCluster::service_account_kubeconfig`], or
//! bound to a Pod on a node: [`TestCluster::pod_bound_service_account_kubeconfig`]),
//! so the chart's RBAC and admission policies ([`TestCluster::render_chart`])
//! are exercised rather than bypassed with admin rights.
//!
//! A component can be cut off from the API server mid-test: it connects
//! through a [`Forwarder`] ([`TestCluster::kubeconfig_via`]) the test cuts
//! and restores.
//!
//! What the chart's RBAC grants and what components asked of the API server
//! (its audit log) compare as sets of permissions ([`rbac`]).
//!
//! Also the pieces tests without a cluster share: a strict reader of the
//! Prometheus text format ([`exposition`]), a scrape target serving
//! hand-made series ([`ScrapeTarget`]), a fake cpufreq sysfs tree
//! ([`fake_sysfs`]), and the workloads admission tests send ([`fixtures`]).

mod binaries;
mod chart;
mod cluster;
mod crds;
mod env;
pub mod exposition;
pub mod fake_sysfs;
pub mod fixtures;
mod namespace;
mod partition;
mod prometheus;
pub mod rbac;
mod scrape_target;
mod service_account;
mod wait;

pub use binaries::workspace_binaries;
pub use cluster::{TestCluster, cluster, repo_root};
pub use namespace::TestNamespace;
pub use partition::Forwarder;
pub use prometheus::Sample;
pub use scrape_target::ScrapeTarget;
pub use wait::eventually;
