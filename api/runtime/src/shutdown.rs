//! Graceful shutdown: one signal future (SIGTERM or Ctrl-C) and one cloneable
//! token that every task of a binary (servers, controllers, the leader
//! election) waits on.

use std::future::Future;

use tokio::sync::watch;

/// Fires once, when its trigger resolves; cheap to clone and to wait on from
/// any number of tasks.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Fires when `trigger` resolves. Needs a Tokio runtime.
    pub fn new(trigger: impl Future<Output = ()> + Send + 'static) -> Self {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            trigger.await;
            tx.send_replace(true);
        });
        Self(rx)
    }

    /// Fires on SIGTERM or Ctrl-C.
    pub fn on_signal() -> Self {
        Self::new(signal())
    }

    /// Whether shutdown was requested already.
    pub fn requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown was requested.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + Sync + use<> {
        let mut rx = self.0.clone();
        async move {
            // An error means the trigger task is gone (the runtime is
            // stopping): shut down as well.
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// Resolves on SIGTERM (what the kubelet sends) or SIGINT (Ctrl-C).
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // Without a handler this branch must never win.
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    () = ctrl_c => tracing::info!("SIGINT received"),
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                }
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C stops this process");
                ctrl_c.await;
                tracing::info!("SIGINT received");
            }
        }
    }
    #[cfg(not(unix))]
    {
        ctrl_c.await;
        tracing::info!("interrupt received");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_trigger() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stop = Shutdown::new(async move {
            let _ = rx.await;
        });
        let other = stop.clone();
        assert!(!stop.requested());
        let waiting = tokio::spawn(other.wait());
        let _ = tx.send(());
        tokio::time::timeout(Duration::from_secs(5), stop.wait())
            .await
            .expect("fires");
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("fires")
            .expect("joins");
        assert!(stop.requested());
    }
}
