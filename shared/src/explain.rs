//! `relay explain`: an operator's "did my push arrive?" in one command.
//! The artifact as the source holds it (its digest, and its labels and
//! type through Harbor's API when the relay reads it), every rule's
//! verdict on a push of it with the setting that decided, and, for each
//! place the rules replicate it to, whether the destination holds it with
//! the same digest, holds another, or lacks it.

use serde::Serialize;

use crate::config::Config;
use crate::digest::Digest;
use crate::event::{Artifact, EventKind, Format, HarborEvent};
use crate::plan::{plan, RuleVerdict};
use crate::registry::retry::RetryPolicy;
use crate::registry::RegistryError;
use crate::repository::{RepositoryPath, Tag};
use crate::secrets::SecretSource;

/// `<repository>:<tag>` or `<repository>@<digest>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRef {
    pub repository: RepositoryPath,
    pub reference: Reference,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl std::fmt::Display for ArtifactRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reference {
            Reference::Tag(t) => write!(f, "{}:{t}", self.repository),
            Reference::Digest(d) => write!(f, "{}@{d}", self.repository),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("{0:?} is not <repository>:<tag> or <repository>@<digest>: {1}")]
    Reference(String, String),
    #[error(transparent)]
    Startup(#[from] crate::bootstrap::StartupError),
    #[error("the source: {0}")]
    Source(#[from] RegistryError),
}

impl std::str::FromStr for ArtifactRef {
    type Err = ExplainError;

    fn from_str(s: &str) -> Result<ArtifactRef, ExplainError> {
        let bad = |why: &dyn std::fmt::Display| ExplainError::Reference(s.to_owned(), why.to_string());
        let (repository, reference) = if let Some((repo, digest)) = s.split_once('@') {
            (repo, Reference::Digest(digest.parse().map_err(|e| bad(&e))?))
        } else if let Some((repo, tag)) = s.rsplit_once(':') {
            (repo, Reference::Tag(tag.parse().map_err(|e| bad(&e))?))
        } else {
            return Err(bad(&"name a tag or a digest"));
        };
        Ok(ArtifactRef { repository: repository.parse().map_err(|e| bad(&e))?, reference })
    }
}

/// What `relay explain` found.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub artifact: String,
    /// The digest the source holds; `None`: it holds no such artifact.
    pub digest: Option<String>,
    /// Labels and type from Harbor's API, when the relay reads it.
    pub labels: Option<Vec<String>>,
    pub artifact_type: Option<String>,
    pub rules: Vec<RuleVerdict>,
    pub destinations: Vec<DestinationState>,
}

/// One place the rules replicate the artifact to.
#[derive(Debug, Clone, Serialize)]
pub struct DestinationState {
    pub registry: String,
    pub repository: String,
    pub rules: Vec<String>,
    /// `same` (the source's digest), `different`, `missing`, or
    /// `unreachable` (with `error`).
    pub state: &'static str,
    pub digest: Option<String>,
    pub error: Option<String>,
}

/// Explains `target` under `config`, asking the source, Harbor's API and
/// the destinations with the configured credentials.
pub async fn explain(
    config: &Config,
    secrets: &SecretSource,
    target: &ArtifactRef,
) -> Result<Explanation, ExplainError> {
    let retry = RetryPolicy { attempts: 2, ..RetryPolicy::default() };
    let source = crate::bootstrap::source_client(config, secrets, retry).await?;
    let reference = match &target.reference {
        Reference::Tag(t) => t.to_string(),
        Reference::Digest(d) => d.to_string(),
    };
    let digest = source.head_manifest(&target.repository, &reference).await?;
    let facts = match (&digest, crate::bootstrap::harbor_api(config, secrets).await) {
        (Some(d), Ok(Some(api))) => match api.artifact(&target.repository, d).await {
            Ok(info) => Some(info.facts),
            Err(e) => {
                tracing::warn!(error = %e, "Harbor's API did not say the artifact's labels and type");
                None
            }
        },
        _ => None,
    };
    let mut explanation = Explanation {
        artifact: target.to_string(),
        digest: digest.as_ref().map(Digest::to_string),
        labels: facts.as_ref().map(|f| f.labels.clone()),
        artifact_type: facts.as_ref().and_then(|f| f.artifact_type.as_ref()).map(|t| t.as_str().to_owned()),
        rules: Vec::new(),
        destinations: Vec::new(),
    };
    let Some(digest) = digest else {
        return Ok(explanation);
    };
    let planned = plan(config, &push_of(target, &digest), facts.as_ref(), &mut String::new);
    explanation.rules = planned.verdicts;
    for task in planned.tasks {
        let Some(registry) = config.registry(&task.destination.registry) else { continue };
        let state =
            destination_state(config, secrets, registry, &task.destination.repository, &reference, &digest, retry)
                .await;
        explanation.destinations.push(DestinationState {
            registry: registry.name.clone(),
            repository: task.destination.repository.to_string(),
            rules: task.rules,
            ..state
        });
    }
    Ok(explanation)
}

/// The push event Harbor would send for `target` (a by-digest push has no tag).
fn push_of(target: &ArtifactRef, digest: &Digest) -> HarborEvent {
    let tag = match &target.reference {
        Reference::Tag(t) => Some(t.clone()),
        Reference::Digest(_) => None,
    };
    HarborEvent {
        kind: EventKind::Push,
        format: Format::Default,
        occurred_at: 0,
        operator: String::new(),
        dedup_key: String::new(),
        artifact: Some(Artifact { repository: target.repository.clone(), digest: digest.clone(), tag }),
    }
}

async fn destination_state(
    config: &Config,
    secrets: &SecretSource,
    registry: &crate::config::Registry,
    repository: &RepositoryPath,
    reference: &str,
    digest: &Digest,
    retry: RetryPolicy,
) -> DestinationState {
    let unreachable = |error: String| DestinationState {
        registry: String::new(),
        repository: String::new(),
        rules: Vec::new(),
        state: "unreachable",
        digest: None,
        error: Some(error),
    };
    let client = match crate::bootstrap::destination_client(
        registry,
        secrets,
        retry,
        config.worker.min_throughput(),
        None,
    )
    .await
    {
        Ok((c, _, _)) => c,
        Err(e) => return unreachable(e.to_string()),
    };
    match client.head_manifest(repository, reference).await {
        Ok(found) => DestinationState {
            state: match &found {
                None => "missing",
                Some(d) if d == digest => "same",
                Some(_) => "different",
            },
            digest: found.as_ref().map(Digest::to_string),
            error: None,
            ..unreachable(String::new())
        },
        Err(e) => unreachable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_artifact_is_named_by_tag_or_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let by_tag: ArtifactRef = "lib/app:1.2".parse().unwrap();
        assert_eq!(by_tag.reference, Reference::Tag("1.2".parse().unwrap()));
        let by_digest: ArtifactRef = format!("lib/app@{d}").parse().unwrap();
        assert_eq!(by_digest.to_string(), format!("lib/app@{d}"));
        for bad in ["lib/app", "lib/app@sha256:short", "Lib/App:1", "lib/app:"] {
            assert!(bad.parse::<ArtifactRef>().is_err(), "{bad}");
        }
    }
}
