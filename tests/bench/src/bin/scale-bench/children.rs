//! The controllers as child processes.

use super::*;

pub struct Controller {
    pub name: &'static str,
    pub child: Child,
    pub metrics_addr: String,
}

/// A free loopback port (bound, then released for the child to take).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

pub async fn start(
    bin_dir: &Path,
    env: &EnvArgs,
    run: &RunArgs,
) -> anyhow::Result<Vec<Controller>> {
    let interval = format!("{}ms", run.interval.as_millis());
    let ttl = format!("{}ms", run.entry_ttl.as_millis());
    let monitor_args = vec![
        "--prometheus-url".to_string(),
        env.prometheus_url.clone(),
        "--interval".to_string(),
        interval.clone(),
    ];
    let recommender_args = vec![
        "--interval".to_string(),
        interval,
        "--entry-ttl".to_string(),
        ttl,
    ];
    let mut started = Vec::new();
    for (name, extra) in [
        ("powercapping-controller", monitor_args),
        ("freqtuning-recommender", recommender_args),
    ] {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let log = std::fs::File::create(env.log_dir.join(format!("{name}.log")))?;
        let child = Command::new(bin_dir.join(name))
            .args(&extra)
            .args([
                "--metrics-listen",
                &addr,
                "--lease-namespace",
                "climatik-system",
                "--log-format",
                "json",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin_dir.join(name).display()))?;
        started.push(Controller {
            name,
            child,
            metrics_addr: addr,
        });
    }
    for c in &started {
        wait_healthy(&c.metrics_addr, c.name).await?;
    }
    Ok(started)
}

async fn wait_healthy(addr: &str, name: &str) -> anyhow::Result<()> {
    let url = format!("http://{addr}/healthz");
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(&url).await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{name} did not serve /healthz on {addr} within 10 s")
}

/// SIGTERM, then how long each took to exit and whether it exited cleanly.
pub async fn stop(controllers: &mut [Controller]) -> Value {
    let mut out = serde_json::Map::new();
    for c in controllers.iter() {
        if let Some(pid) = c.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    let started = Instant::now();
    for c in controllers.iter_mut() {
        let status = tokio::time::timeout(Duration::from_secs(20), c.child.wait()).await;
        let entry = match status {
            Ok(Ok(s)) => {
                json!({ "seconds": round3(started.elapsed().as_secs_f64()), "exit_code": s.code() })
            }
            Ok(Err(e)) => json!({ "error": e.to_string() }),
            Err(_) => {
                let _ = c.child.start_kill();
                json!({ "error": "did not exit within 20 s of SIGTERM; killed" })
            }
        };
        out.insert(c.name.to_string(), entry);
    }
    Value::Object(out)
}
