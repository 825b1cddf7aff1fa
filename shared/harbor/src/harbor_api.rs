//! The few calls to Harbor's REST API (v2.0) that replication needs when
//! `source.harbor_api` is true: an artifact's labels and type (label and
//! resource filters) and its
//! tags (Harbor's webhook carries only the first tag), and the listing a
//! reconcile pass walks (projects → repositories → artifacts with their tags
//! and labels), which gives every digest without a HEAD per tag.

use std::time::Duration;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use url::Url;

use crate::digest::Digest;
use crate::registry::auth::unpoisoned;
use crate::registry::retry::RetryPolicy;
use crate::registry::{Credentials, RegistryError};
use crate::repository::{RepositoryPath, Tag};
use crate::rules::{ArtifactFacts, ArtifactType};

mod reread;
mod send;

pub struct HarborApi {
    base: Url,
    http: reqwest::Client,
    /// Replaced when a rotated secret is read again (shared with the
    /// background read, [`reread`]).
    credentials: std::sync::Arc<std::sync::RwLock<Option<Credentials>>>,
    /// Where to read them again, when they come from a reference.
    reread: Option<std::sync::Arc<reread::Reread>>,
    /// How each call is sent. Boxed: a `HarborApi` sits inline in the
    /// destination kinds' enum, beside variants of one pointer.
    calls: Box<Calls>,
}

/// How each call to Harbor's API is sent.
struct Calls {
    /// Bounds each call, its retries included.
    timeout: Duration,
    /// When a call is tried again: the registry clients' policy.
    retry: RetryPolicy,
}

/// What Harbor knows about one artifact.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArtifactInfo {
    pub facts: ArtifactFacts,
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
    /// An answer past its size bound, or cut while it was read.
    #[error(transparent)]
    Body(Box<RegistryError>),
    /// The account lacks a right no retry will give it.
    #[error("Harbor API: {0}")]
    Forbidden(String),
    /// Asked for, but the relay does not read Harbor's API
    /// (`source.harbor_api` is off or the source is no Harbor).
    #[error("Harbor API: not in use (source.harbor_api is off)")]
    Off,
}

/// One artifact of a repository listing: top-level artifacts only (Harbor
/// hides the children of an index, which travel with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedArtifact {
    pub digest: Digest,
    pub tags: Vec<Tag>,
    /// Its labels and type.
    pub facts: ArtifactFacts,
    /// Digests of its accessories (cosign/notation signatures, SBOMs…),
    /// which the worker copies along as referrers.
    pub accessories: Vec<Digest>,
}

/// Harbor answers at most this many entries per page.
const MAX_PAGE_SIZE: usize = 100;
/// Harbor may cut the tags embedded in an artifact listing short; with this
/// many or more, ask the artifact's own (paginated) tags endpoint.
const EMBEDDED_TAGS_TRUSTED_BELOW: usize = 10;
/// Stops a listing that never ends (a broken or hostile server).
const MAX_PAGES: usize = 100_000;

#[derive(Deserialize)]
struct Artifact {
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    tags: Option<Vec<Named>>,
    #[serde(default)]
    labels: Option<Vec<Named>>,
    /// Harbor's artifact type (`IMAGE`, `CHART`…).
    #[serde(default, rename = "type")]
    artifact_type: Option<String>,
    #[serde(default)]
    accessories: Option<Vec<Accessory>>,
}

#[derive(Deserialize)]
struct Accessory {
    digest: String,
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

/// A Harbor project as its listing gives it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Project {
    pub project_id: i64,
    pub name: String,
}

impl HarborApi {
    /// `timeout` bounds each call, its retries included: the webhook must
    /// answer Harbor in 3 s. Transient failures are retried with the
    /// registry clients' default policy ([`HarborApi::with_retry`]).
    pub fn new(
        base: Url,
        credentials: Option<Credentials>,
        insecure: bool,
        ca_pem: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let builder = reqwest::Client::builder().user_agent(concat!("harbor-relay/", env!("CARGO_PKG_VERSION")));
        let http = crate::tls::configure(builder, insecure, ca_pem)?.build()?;
        let credentials = std::sync::Arc::new(std::sync::RwLock::new(credentials));
        let calls = Box::new(Calls { timeout, retry: RetryPolicy::default() });
        Ok(HarborApi { base, http, credentials, reread: None, calls })
    }

    /// Retries transient failures with `retry` (the registry clients' own,
    /// when the caller has another than the default).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.calls.retry = retry;
        self
    }

    /// Is this a Harbor? `GET /api/v2.0/ping` answers `Pong` without an
    /// account; a plain registry answers 404. Unreachable is an error: the
    /// answer decides how the source is listed and filtered.
    pub async fn is_harbor(&self) -> Result<bool, HarborApiError> {
        let path = "/api/v2.0/ping";
        let url = self.base.join(path).map_err(|e| HarborApiError::Request(e.to_string()))?;
        let resp = self.send(Method::GET, path, || self.http.get(url.clone())).await?;
        if !resp.status().is_success() {
            return Ok(false);
        }
        let body = send::read_body(resp, send::MAX_PING_BYTES, path).await?;
        Ok(String::from_utf8_lossy(&body).trim().trim_matches('"') == "Pong")
    }

    /// Labels and tags of `repository@digest`.
    pub async fn artifact(&self, repository: &RepositoryPath, digest: &Digest) -> Result<ArtifactInfo, HarborApiError> {
        let path = format!("{}/artifacts/{digest}", repository_path(repository));
        let a: Artifact = self
            .get(&path, &[("with_tag", "true"), ("with_label", "true")])
            .await?
            .ok_or_else(|| HarborApiError::NotFound(format!("{repository}@{digest}")))?;
        let mut info = ArtifactInfo { facts: facts(a.labels, a.artifact_type), tags: tags(a.tags) };
        if info.tags.len() >= EMBEDDED_TAGS_TRUSTED_BELOW {
            info.tags = self.artifact_tags(repository, digest).await?;
        }
        Ok(info)
    }

    /// Every project's name (`GET /projects`, paginated).
    pub async fn projects(&self) -> Result<Vec<String>, HarborApiError> {
        Ok(self.project_list().await?.into_iter().map(|p| p.name).collect())
    }

    /// Every project, with its id (`GET /projects`, paginated).
    pub async fn project_list(&self) -> Result<Vec<Project>, HarborApiError> {
        self.paged("/api/v2.0/projects", &[]).await
    }

    /// The webhook policies of `project` (paginated), as the caller reads
    /// them ([`crate::harbor_webhooks::WebhookPolicy`]).
    pub async fn webhook_policies<P: DeserializeOwned>(&self, project: &Project) -> Result<Vec<P>, HarborApiError> {
        self.paged(&format!("/api/v2.0/projects/{}/webhook/policies", project.project_id), &[]).await
    }

    /// Harbor's registry endpoints (`GET /registries`, paginated): a system
    /// administrator's, or a robot's with the system right to list
    /// registries. Harbor answers without the stored secrets.
    pub async fn registries(&self) -> Result<Vec<crate::replication::HarborRegistry>, HarborApiError> {
        self.paged("/api/v2.0/registries", &[]).await
    }

    /// Harbor's replication policies (`GET /replication/policies`,
    /// paginated): the same account as [`HarborApi::registries`], with the
    /// right to list replication policies.
    pub async fn replication_policies(&self) -> Result<Vec<crate::replication::ReplicationPolicy>, HarborApiError> {
        self.paged("/api/v2.0/replication/policies", &[]).await
    }

    /// Creates `policy` in `project` (no `id`) or replaces the one with
    /// that `id`.
    pub async fn save_webhook_policy<P: serde::Serialize>(
        &self,
        project: &Project,
        id: Option<i64>,
        policy: &P,
    ) -> Result<(), HarborApiError> {
        let mut url = self.base.clone();
        let base = format!("/api/v2.0/projects/{}/webhook/policies", project.project_id);
        let (method, ok) = match id {
            None => {
                url.set_path(&base);
                (Method::POST, 201)
            }
            Some(id) => {
                url.set_path(&format!("{base}/{id}"));
                (Method::PUT, 200)
            }
        };
        let body = serde_json::to_vec(policy).map_err(|e| HarborApiError::Request(e.to_string()))?;
        let resp = self
            .send(method.clone(), url.path(), || {
                self.authorized(self.http.request(method.clone(), url.clone()))
                    .header("content-type", "application/json")
                    .body(body.clone())
            })
            .await?;
        match resp.status().as_u16() {
            s if s == ok => Ok(()),
            401 | 403 => Err(HarborApiError::Forbidden(format!(
                "may not manage the webhook policies of project {:?}: the account needs the project's webhook rights (a project admin, or a robot with \"Webhook\" create, update and list)",
                project.name
            ))),
            s => Err(HarborApiError::Status(s)),
        }
    }

    /// The immutable tag rules of `project` (paginated; by name).
    pub async fn immutable_tag_rules<T: DeserializeOwned>(&self, project: &str) -> Result<Vec<T>, HarborApiError> {
        self.paged(&format!("/api/v2.0/projects/{}/immutabletagrules", segment(project)), &[]).await
    }

    /// `project` as `GET /projects/{name}` gives it; `None` when it does not exist.
    pub async fn project_metadata<T: DeserializeOwned>(&self, project: &str) -> Result<Option<T>, HarborApiError> {
        self.get(&format!("/api/v2.0/projects/{}", segment(project)), &[]).await
    }

    /// The tag retention policy `id`; `None` when Harbor has no such policy.
    pub async fn retention_policy<T: DeserializeOwned>(&self, id: i64) -> Result<Option<T>, HarborApiError> {
        self.get(&format!("/api/v2.0/retentions/{id}"), &[]).await
    }

    /// Deletes the webhook policy `id` of `project`.
    pub async fn delete_webhook_policy(&self, project: &Project, id: i64) -> Result<(), HarborApiError> {
        let mut url = self.base.clone();
        url.set_path(&format!("/api/v2.0/projects/{}/webhook/policies/{id}", project.project_id));
        let resp = self.send(Method::DELETE, url.path(), || self.authorized(self.http.delete(url.clone()))).await?;
        match resp.status().as_u16() {
            200 | 404 => Ok(()),
            401 | 403 => Err(HarborApiError::Forbidden(format!(
                "may not delete the webhook policies of project {:?}: the account needs the project's webhook rights (a project admin, or a robot with \"Webhook\" delete)",
                project.name
            ))),
            s => Err(HarborApiError::Status(s)),
        }
    }

    /// The repositories of `project` (names include the project).
    pub async fn repositories(&self, project: &str) -> Result<Vec<RepositoryPath>, HarborApiError> {
        let path = format!("/api/v2.0/projects/{}/repositories", segment(project));
        let listed: Vec<Named> = self.paged(&path, &[]).await?;
        Ok(listed.into_iter().filter_map(|r| r.name.parse().ok()).collect())
    }

    /// The artifacts of `repository` with their tags and labels.
    pub async fn artifacts(&self, repository: &RepositoryPath) -> Result<Vec<ListedArtifact>, HarborApiError> {
        let path = format!("{}/artifacts", repository_path(repository));
        let query = [("with_tag", "true"), ("with_label", "true"), ("with_accessory", "true")];
        let listed: Vec<Artifact> = self.paged(&path, &query).await?;
        let mut out = Vec::with_capacity(listed.len());
        for a in listed {
            let Some(digest) = a.digest.as_deref().and_then(|d| d.parse::<Digest>().ok()) else {
                tracing::warn!(repository = %repository, "Harbor listed an artifact without a valid digest; skipped");
                continue;
            };
            let mut tags = tags(a.tags);
            if tags.len() >= EMBEDDED_TAGS_TRUSTED_BELOW {
                tags = self.artifact_tags(repository, &digest).await?;
            }
            let accessories =
                a.accessories.unwrap_or_default().into_iter().filter_map(|x| x.digest.parse().ok()).collect();
            out.push(ListedArtifact { digest, tags, facts: facts(a.labels, a.artifact_type), accessories });
        }
        Ok(out)
    }

    /// All tags of one artifact, from its paginated tags endpoint.
    async fn artifact_tags(&self, repository: &RepositoryPath, digest: &Digest) -> Result<Vec<Tag>, HarborApiError> {
        let path = format!("{}/artifacts/{digest}/tags", repository_path(repository));
        Ok(tags(Some(self.paged(&path, &[]).await?)))
    }

    /// Every page of a Harbor list endpoint (`page`, `page_size`): Harbor
    /// ends a listing with a short page.
    async fn paged<T: DeserializeOwned>(&self, path: &str, query: &[(&str, &str)]) -> Result<Vec<T>, HarborApiError> {
        let size = MAX_PAGE_SIZE.to_string();
        let mut all = Vec::new();
        for page in 1..=MAX_PAGES {
            let page = page.to_string();
            let mut q = query.to_vec();
            q.extend([("page", page.as_str()), ("page_size", size.as_str())]);
            let Some(items) = self.get::<Vec<T>>(path, &q).await? else {
                return Err(HarborApiError::NotFound(path.to_owned()));
            };
            let short = items.len() < MAX_PAGE_SIZE;
            all.extend(items);
            if short {
                return Ok(all);
            }
        }
        Err(HarborApiError::Request(format!("{path}: more than {MAX_PAGES} pages")))
    }

    /// Creates `project` unless it exists: private, with `storage_limit`
    /// bytes of quota when given. `Ok(true)` when it was created here.
    pub async fn ensure_project(&self, project: &str, storage_limit: Option<i64>) -> Result<bool, HarborApiError> {
        let mut url = self.base.clone();
        url.set_path("/api/v2.0/projects");
        let mut head = url.clone();
        head.query_pairs_mut().append_pair("project_name", project);
        let resp = self.send(Method::HEAD, head.path(), || self.authorized(self.http.head(head.clone()))).await?;
        match resp.status().as_u16() {
            200 => return Ok(false),
            404 => {}
            401 => return Err(HarborApiError::Forbidden("the credentials were refused (401)".into())),
            s => return Err(HarborApiError::Status(s)),
        }
        let mut body = serde_json::json!({ "project_name": project, "metadata": { "public": "false" } });
        if let Some(limit) = storage_limit {
            body["storage_limit"] = limit.into();
        }
        let resp =
            self.send(Method::POST, url.path(), || self.authorized(self.http.post(url.clone())).json(&body)).await?;
        match resp.status().as_u16() {
            201 => {
                tracing::info!(project, "Harbor project created");
                Ok(true)
            }
            // Created meanwhile by a concurrent task.
            409 => Ok(false),
            403 => Err(HarborApiError::Forbidden(format!(
                "may not create project {project:?}: the account needs the system permission \"Project: Create\" (a system robot account), or create the project first"
            ))),
            401 => Err(HarborApiError::Forbidden("the credentials were refused (401)".into())),
            s => Err(HarborApiError::Status(s)),
        }
    }

    /// Uses `credentials` from now on (a rotated secret, read again).
    pub fn set_credentials(&self, credentials: Option<Credentials>) {
        *unpoisoned(self.credentials.write()) = credentials;
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let header = unpoisoned(self.credentials.read()).as_ref().map(Credentials::basic_header);
        match header {
            Some(h) => req.header("authorization", h),
            None => req,
        }
    }

    /// One GET (retried, its answer capped); `None` on 404.
    async fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, &str)]) -> Result<Option<T>, HarborApiError> {
        let mut url = self.base.clone();
        url.set_path(path);
        url.query_pairs_mut().extend_pairs(query);
        let get = || self.authorized(self.http.get(url.clone()).header("accept", "application/json"));
        let resp = self.send(Method::GET, path, get).await?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            s => return Err(HarborApiError::Status(s)),
        }
        let body = send::read_body(resp, send::MAX_BODY_BYTES, path).await?;
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| HarborApiError::Request(format!("{path}: unexpected response body ({e})")))
    }
}

/// `/api/v2.0/projects/{project}/repositories/{name}`: Harbor wants the
/// repository name inside the project URL-encoded twice (`a/b` → `a%252Fb`).
fn repository_path(repository: &RepositoryPath) -> String {
    let project = repository.project();
    let rest = repository.as_str().strip_prefix(project).unwrap_or_default().trim_start_matches('/');
    format!("/api/v2.0/projects/{}/repositories/{}", segment(project), segment(rest).replace("%2F", "%252F"))
}

/// One URL path segment, percent-encoded.
fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20")
}

fn names(named: Option<Vec<Named>>) -> Vec<String> {
    named.unwrap_or_default().into_iter().map(|n| n.name).collect()
}

/// An artifact's labels and type, as the filters see them.
fn facts(labels: Option<Vec<Named>>, artifact_type: Option<String>) -> ArtifactFacts {
    ArtifactFacts { artifact_type: artifact_type.as_deref().map(ArtifactType::new), labels: names(labels) }
}

fn tags(named: Option<Vec<Named>>) -> Vec<Tag> {
    named.unwrap_or_default().into_iter().filter_map(|t| t.name.parse().ok()).collect()
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
