//! A scrape target serving one exposition the test sets, as an exporter
//! would: any GET gets the current page (one request per connection). The
//! tests that feed the local Prometheus hand-made series (DCGM, Kepler)
//! register it with [`crate::TestCluster::register_prometheus_target`].

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running target; dropping it stops serving.
pub struct ScrapeTarget {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    page: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl ScrapeTarget {
    /// Serves `page` on an ephemeral port of 127.0.0.1.
    pub async fn start(page: String) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let page = Arc::new(Mutex::new(page));
        let serving = page.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let body = serving.lock().map(|p| p.clone()).unwrap_or_default();
                tokio::spawn(async move {
                    // Read the request head, answer, close.
                    let mut head = [0u8; 4096];
                    let _ = stream.read(&mut head).await;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        Ok(Self { addr, page, task })
    }

    /// What the next scrape gets.
    pub fn set(&self, page: String) {
        if let Ok(mut current) = self.page.lock() {
            *current = page;
        }
    }
}

impl Drop for ScrapeTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        answer
    }

    #[tokio::test]
    async fn serves_the_page_last_set() {
        let target = ScrapeTarget::start("a 1\n".into()).await.expect("start");
        assert!(get(&target.addr).await.ends_with("\r\n\r\na 1\n"));
        target.set("b 2\n".into());
        let answer = get(&target.addr).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("content-length: 4\r\nconnection: close\r\n\r\nb 2\n"));
    }
}
