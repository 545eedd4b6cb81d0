//! The custom resources are served: a list of each (one item at most)
//! succeeds. A missing CRD, one not yet Established, or a conversion
//! problem all fail the list with the API server's own message.

use climatik_api::{NodeFrequencies, PowerBudget, PowerCappingPolicy};
use kube::{Api, Resource, api::ListParams};

/// Lists every Climatik resource once.
pub async fn check(client: &kube::Client) -> Result<String, String> {
    let one = ListParams::default().limit(1);
    let policies = Api::<PowerCappingPolicy>::all(client.clone())
        .list(&one)
        .await
        .map(drop);
    let frequencies = Api::<NodeFrequencies>::all(client.clone())
        .list(&one)
        .await
        .map(drop);
    let budgets = Api::<PowerBudget>::all(client.clone())
        .list(&one)
        .await
        .map(drop);
    summarise(&[
        (name::<PowerCappingPolicy>(), policies),
        (name::<NodeFrequencies>(), frequencies),
        (name::<PowerBudget>(), budgets),
    ])
}

fn name<K: Resource<DynamicType = ()>>() -> String {
    format!("{}.{}", K::plural(&()), K::group(&()))
}

/// Ok with the served resources when every list succeeded, else every
/// failure with what to do about it.
fn summarise(listed: &[(String, Result<(), kube::Error>)]) -> Result<String, String> {
    let problems: Vec<String> = listed
        .iter()
        .filter_map(|(name, result)| {
            result.as_ref().err().map(|e| {
                format!(
                    "{name} is not served ({e}); install the chart's CRDs (its crds/ directory)"
                )
            })
        })
        .collect();
    if problems.is_empty() {
        let names: Vec<&str> = listed.iter().map(|(name, _)| name.as_str()).collect();
        Ok(names.join(", "))
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_resource_must_be_served() {
        let served = summarise(&[("a.x".into(), Ok(())), ("b.x".into(), Ok(()))]);
        assert_eq!(served, Ok("a.x, b.x".to_string()));
        let missing = kube::Error::Api(
            kube::core::Status::failure(
                "the server could not find the requested resource",
                "NotFound",
            )
            .with_code(404)
            .boxed(),
        );
        let one_missing = summarise(&[("a.x".into(), Ok(())), ("b.x".into(), Err(missing))]);
        let problem = one_missing.expect_err("b.x is missing");
        assert!(problem.starts_with("b.x is not served"), "{problem}");
        assert!(problem.contains("could not find"), "{problem}");
    }
}
