//! The demo's shared-budget scene, end to end on one simulated node: every
//! component as a local process with its chart ServiceAccount, the agents
//! holding per-GPU power limits. Serving's burst must take watts from
//! training (serving's allocation up, training's allocation and effective
//! cap down, within the budget), and the end of the burst must give them
//! back.

use std::time::Duration;

use anyhow::Context;

use climatik_demo::{
    budget::BudgetScene,
    stack::{self, Stack, StackConfig},
};

const NODE: &str = "gpu-node-0";

#[tokio::test]
async fn a_serving_burst_takes_watts_from_training_and_gives_them_back() -> anyhow::Result<()> {
    let cluster = climatik_test_support::cluster().await?;
    let work_dir = climatik_test_support::repo_root().join("target/e2e-budget");
    let _ = std::fs::remove_dir_all(&work_dir);
    let interval = Duration::from_secs(3);
    let config = StackConfig {
        nodes: vec![NODE.to_string()],
        bin_dir: climatik_test_support::workspace_binaries(&stack::BINARIES)?,
        work_dir: work_dir.clone(),
        interval,
        entry_ttl: Duration::from_secs(30),
        scope: "e2e-budget".into(),
        gpu_power_limit: true,
    };
    let mut stack = Stack::start(&cluster, config).await?;
    let namespace = format!("e2e-budget-{}", std::process::id());
    let scene = BudgetScene {
        namespace: namespace.clone(),
        node: NODE.to_string(),
        budget: namespace.clone(),
        interval,
    };
    let result = async {
        stack.namespace(&namespace).await?;
        scene.run(&cluster, &mut |line| eprintln!("{line}")).await
    }
    .await;
    stack.stop().await;
    let record = result?;
    record.write(&work_dir)?;

    let before = (record.before.as_ref())
        .context("both workloads were never allocated while serving was quiet")?;
    let burst =
        (record.burst.as_ref()).context("serving's burst never cut training's allocation")?;
    let after = (record.after.as_ref()).context("training's watts were never given back")?;
    let allocated = |w: Option<i64>| w.unwrap_or(0);
    // The burst moves watts from training to serving...
    assert!(
        allocated(burst.serving.allocated_watts) > allocated(before.serving.allocated_watts),
        "serving gained nothing: {before:?} -> {burst:?}"
    );
    assert!(
        allocated(burst.training.allocated_watts) < allocated(before.training.allocated_watts),
        "training lost nothing: {before:?} -> {burst:?}"
    );
    // ...training acts on the lower allocation...
    assert!(
        burst.training.effective_cap_watts < before.training.effective_cap_watts,
        "training's effective cap did not fall: {before:?} -> {burst:?}"
    );
    // ...never more than the budget between them, in any look...
    for look in &record.looks {
        let sum =
            allocated(look.serving.allocated_watts) + allocated(look.training.allocated_watts);
        assert!(
            sum <= record.budget_watts,
            "allocations add up to {sum} W: {look:?}"
        );
    }
    // ...and the end of the burst gives training its watts back.
    assert!(
        allocated(after.training.allocated_watts) >= allocated(before.training.allocated_watts),
        "training's watts not given back: {before:?} -> {after:?}"
    );
    assert!(
        allocated(after.serving.allocated_watts) < allocated(burst.serving.allocated_watts),
        "serving kept its burst's watts: {burst:?} -> {after:?}"
    );
    Ok(())
}
