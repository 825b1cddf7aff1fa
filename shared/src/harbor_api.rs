//! The few calls to Harbor's REST API (v2.0) that replication needs when
//! `source.harbor_api` is true: an artifact's labels (label filters) and its
//! tags (Harbor's webhook carries only the first tag).

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::digest::Digest;
use crate::registry::Credentials;
use crate::repository::{RepositoryPath, Tag};

pub struct HarborApi {
    base: Url,
    http: reqwest::Client,
    credentials: Option<Credentials>,
}

/// What Harbor knows about one artifact.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArtifactInfo {
    pub labels: Vec<String>,
    pub tags: Vec<Tag>,
}

#[derive(Debug, thiserror::Error)]
pub enum HarborApiError {
    #[error("Harbor API: {0}")]
    Request(String),
    #[error("Harbor API: artifact {0} not found")]
    NotFound(String),
    #[error("Harbor API: HTTP {0}")]
    Status(u16),
}

#[derive(Deserialize)]
struct Artifact {
    #[serde(default)]
    tags: Option<Vec<Named>>,
    #[serde(default)]
    labels: Option<Vec<Named>>,
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

impl HarborApi {
    /// `timeout` bounds each call: the webhook must answer Harbor in 3 s.
    pub fn new(
        base: Url,
        credentials: Option<Credentials>,
        insecure: bool,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .tls_danger_accept_invalid_certs(insecure)
            .user_agent(concat!("harbor-relay/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HarborApi { base, http, credentials })
    }

    /// Labels and tags of `repository@digest`.
    pub async fn artifact(&self, repository: &RepositoryPath, digest: &Digest) -> Result<ArtifactInfo, HarborApiError> {
        let project = repository.project();
        let rest = repository.as_str().strip_prefix(project).unwrap_or_default().trim_start_matches('/');
        // Harbor wants the repository name inside the project URL-encoded
        // twice (`a/b` → `a%252Fb`).
        let name = rest.replace('/', "%252F");
        let mut url = self.base.clone();
        url.set_path(&format!("/api/v2.0/projects/{project}/repositories/{name}/artifacts/{digest}"));
        url.set_query(Some("with_tag=true&with_label=true"));
        let mut req = self.http.get(url).header("accept", "application/json");
        if let Some(c) = &self.credentials {
            req = req.header("authorization", c.basic_header());
        }
        let resp = req.send().await.map_err(|e| HarborApiError::Request(kind_of(&e)))?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Err(HarborApiError::NotFound(format!("{repository}@{digest}"))),
            s => return Err(HarborApiError::Status(s)),
        }
        let a: Artifact = resp.json().await.map_err(|e| HarborApiError::Request(kind_of(&e)))?;
        Ok(ArtifactInfo {
            labels: a.labels.unwrap_or_default().into_iter().map(|l| l.name).collect(),
            tags: a.tags.unwrap_or_default().into_iter().filter_map(|t| t.name.parse().ok()).collect(),
        })
    }
}

fn kind_of(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else if e.is_decode() {
        "unexpected response body".into()
    } else {
        "request failed".into()
    }
}
