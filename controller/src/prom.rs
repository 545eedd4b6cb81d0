//! Instant queries against Prometheus, with an HTTP timeout so a hung
//! Prometheus cannot stall a reconciliation.

use climatik_runtime::error_chain;
use std::{collections::HashMap, time::Duration};

use prometheus_http_query::response::Data;

use crate::Error;

/// One series of an instant query.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: HashMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// The first of `names` that the series carries.
    pub fn label(&self, names: &[&str]) -> Option<&str> {
        names
            .iter()
            .find_map(|n| self.labels.get(*n))
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

#[derive(Clone)]
pub struct Prometheus {
    client: prometheus_http_query::Client,
}

impl Prometheus {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| Error::Prometheus(format!("building the HTTP client: {e}")))?;
        let client = prometheus_http_query::Client::from(http, url)
            .map_err(|e| Error::Prometheus(format!("Prometheus URL {url:?}: {e}")))?;
        Ok(Self { client })
    }

    /// Runs an instant query that must return a vector.
    pub async fn instant(&self, query: &str) -> Result<Vec<Sample>, Error> {
        let result = self
            .client
            .query(query)
            .get()
            .await
            .map_err(|e| Error::Prometheus(error_chain::describe(&e)))?;
        // Taken apart rather than copied: one answer holds every GPU's
        // series, thousands at scale.
        match result.into_inner().0 {
            Data::Vector(series) => Ok(series
                .into_iter()
                .map(|s| s.into_inner())
                .filter(|(_, sample)| sample.value().is_finite())
                .map(|(labels, sample)| Sample {
                    labels,
                    value: sample.value(),
                })
                .collect()),
            _ => Err(Error::Prometheus(format!(
                "query {query:?} did not return an instant vector"
            ))),
        }
    }
}
