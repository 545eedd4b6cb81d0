//! Opening the device backends at start-up. A backend that cannot be
//! opened (NVML not loadable yet, sysfs not mounted, a state file that
//! cannot be read) is tried again with backoff; when it still fails, the
//! agent exits non-zero, so the DaemonSet restarts it, rather than running
//! without restoring what a killed predecessor left changed.

use std::time::Duration;

use crate::error::Result;

/// The longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How often and how patiently a backend is tried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Tries in all, at least one.
    pub attempts: u32,
    /// Wait after the first failure, doubled after each (at most 30 s).
    pub first_backoff: Duration,
}

impl Retry {
    /// Calls `open` until it succeeds or `attempts` tries have failed; the
    /// error then says what `what` is and how often it was tried.
    pub async fn open<T>(
        &self,
        what: &str,
        mut open: impl FnMut() -> Result<T>,
    ) -> anyhow::Result<T> {
        let attempts = self.attempts.max(1);
        let mut backoff = self.first_backoff;
        let mut attempt = 1;
        loop {
            match open() {
                Ok(backend) => return Ok(backend),
                Err(e) if attempt >= attempts => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "could not open the {what} backend in {attempts} attempt(s); \
                         not running without restoring what a previous agent left"
                    )));
                }
                Err(e) => {
                    tracing::warn!(
                        backend = what,
                        attempt,
                        attempts,
                        retry_in = ?backoff,
                        error = %e,
                        "could not open the backend: retrying"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    attempt += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn retry(attempts: u32) -> Retry {
        Retry {
            attempts,
            first_backoff: Duration::from_millis(1),
        }
    }

    fn failing(tries: &mut u32, failures: u32) -> Result<&'static str> {
        *tries += 1;
        if *tries <= failures {
            Err(Error::Unsupported("not yet".into()))
        } else {
            Ok("open")
        }
    }

    #[tokio::test]
    async fn a_backend_that_comes_late_is_opened() {
        let mut tries = 0;
        let opened = retry(3)
            .open("test", || failing(&mut tries, 2))
            .await
            .expect("third try");
        assert_eq!((opened, tries), ("open", 3));
    }

    #[tokio::test]
    async fn gives_up_after_the_attempts_with_what_failed() {
        let mut tries = 0;
        let err = retry(3)
            .open("NVML", || failing(&mut tries, 5))
            .await
            .expect_err("never opens");
        assert_eq!(tries, 3);
        let text = format!("{err:#}");
        assert!(
            text.contains("could not open the NVML backend in 3 attempt(s)")
                && text.contains("not yet"),
            "{text}"
        );
    }
}
