//! A thin registry client over reqwest: one pooled HTTP/1.1 client per
//! registry, authentication on demand, retries with backoff, and streaming
//! blob bodies. Speaks only to the registry it was built for.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::auth::{Challenge, Credentials, TokenCache, TokenResponse};
use super::manifest::{self, Manifest};
use super::pace;
use super::retry::{is_retryable, parse_retry_after, RetryPolicy};
use crate::digest::Digest;
use crate::repository::RepositoryPath;

/// Whole-request bound for everything but blob streams (manifests, HEADs,
/// tokens, listings, upload sessions): the per-read timeout alone lets a
/// registry that trickles a body hold a worker indefinitely. Blob streams
/// are bounded by their minimum throughput instead (`pace`).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether this client reads (source) or also writes (destination). A
/// destination asks for `pull,push` on every request so one token serves
/// the whole copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Source,
    Destination,
}

pub struct RegistryClient {
    name: String,
    base: Url,
    role: Role,
    http: reqwest::Client,
    /// Replaced when the worker re-reads a rotated secret.
    credentials: std::sync::RwLock<Option<Credentials>>,
    /// See [`ClientOptions::token_realms`].
    token_realms: Vec<Url>,
    request_timeout: Duration,
    auth: Mutex<AuthState>,
    retry: RetryPolicy,
    /// Requests sent to this registry (token requests excluded): for
    /// metrics and the request budgets of the benchmarks.
    requests: std::sync::atomic::AtomicU64,
    /// Whether the referrers API answered 404 once ([`REFERRERS_API_ABSENT`]).
    referrers_api: std::sync::atomic::AtomicU8,
    /// 0: whole blobs in one `PUT`. Otherwise the chunk size for `PATCH`
    /// uploads, set when the registry (or a proxy in front of it) refused
    /// a whole blob with 413.
    chunk_size: std::sync::atomic::AtomicU64,
}

const REFERRERS_API_ABSENT: u8 = 1;

/// What a manifest push told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// The registry answered `OCI-Subject`: it lists the manifest among its
    /// subject's referrers itself (no fallback tag needed).
    pub subject_indexed: bool,
}

#[derive(Default)]
struct AuthState {
    challenge: Option<Challenge>,
    tokens: TokenCache,
}

/// Errors talking to a registry. Messages carry the registry name, method
/// and path — never a credential or token.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{registry}: {method} {path}: connection failed: {reason}")]
    Transport { registry: String, method: Method, path: String, reason: String },
    #[error("{registry}: {path}: HTTP {status}{detail}")]
    Status {
        registry: String,
        path: String,
        status: StatusCode,
        detail: String,
        /// The registry's `Retry-After`, for the task's backoff.
        retry_after: Option<Duration>,
    },
    #[error("{registry}: authentication failed ({status}) for {path}")]
    Denied { registry: String, path: String, status: StatusCode },
    /// A streamed request met a 401: its token expired mid-copy. The token
    /// is forgotten, so trying the whole operation again re-authenticates.
    #[error("{registry}: token expired during {path}")]
    Reauthenticate { registry: String, path: String },
    #[error("{registry}: token request failed: {reason}")]
    Token { registry: String, reason: String },
    #[error("{registry}: {what} {digest} has digest {actual} (refusing to copy it)")]
    DigestMismatch { registry: String, what: &'static str, digest: Digest, actual: Digest },
    #[error("{registry}: {reference} is larger than {limit} bytes")]
    TooLarge { registry: String, reference: String, limit: usize },
    #[error("{registry}: {reason}")]
    Protocol { registry: String, reason: String },
}

impl RegistryError {
    /// The HTTP status, when the registry answered one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            RegistryError::Status { status, .. } | RegistryError::Denied { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The registry the error is about (its configured name, or `source`).
    pub fn registry(&self) -> &str {
        match self {
            RegistryError::Transport { registry, .. }
            | RegistryError::Status { registry, .. }
            | RegistryError::Denied { registry, .. }
            | RegistryError::Reauthenticate { registry, .. }
            | RegistryError::Token { registry, .. }
            | RegistryError::DigestMismatch { registry, .. }
            | RegistryError::TooLarge { registry, .. }
            | RegistryError::Protocol { registry, .. } => registry,
        }
    }

    /// The registry is not there to talk to: no connection, or a server
    /// error (a maintenance window, a registry restarting). Throttling
    /// (429) is not unavailability: it says when to come back.
    pub fn is_unavailable(&self) -> bool {
        match self {
            RegistryError::Transport { .. } => true,
            RegistryError::Status { status, .. } => status.is_server_error(),
            _ => false,
        }
    }

    /// How long the registry asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RegistryError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Worth trying the whole operation again later.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Transport { .. } | RegistryError::Token { .. } | RegistryError::Reauthenticate { .. } => {
                true
            }
            RegistryError::Status { status, .. } => is_retryable(*status),
            _ => false,
        }
    }
}

/// Same scheme, host and port.
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

/// Result of opening a blob upload.
pub enum UploadStart {
    /// The registry mounted the blob from another repository (201).
    Mounted,
    /// An upload session to send the bytes to, with the smallest chunk the
    /// registry takes (`OCI-Chunk-Min-Length`) if it says.
    Session { url: Url, chunk_min: Option<u64> },
}

/// Bounds on what a registry can make us read (a hostile or broken one
/// must not hold a worker's memory): error bodies are cut, token answers
/// and listing pages refused past their bound.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
const MAX_TOKEN_BYTES: usize = 1024 * 1024;
const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Pages of one listing (catalog, tags, referrers): 10,000 pages of the
/// usual 1,000 entries is more than any registry here holds.
const MAX_PAGES: usize = 10_000;

/// Chunk size after the first 413 to a whole-blob `PUT`.
const FIRST_CHUNK: u64 = 8 * 1024 * 1024;
/// Chunks are never made smaller than this when 413s continue.
const SMALLEST_CHUNK: u64 = 64 * 1024;

/// Settings for building a client.
pub struct ClientOptions {
    pub insecure: bool,
    pub retry: RetryPolicy,
    /// Token services trusted besides https ones and the registry's own
    /// origin (the configuration's `token_realms`).
    pub token_realms: Vec<Url>,
    /// Whole-request bound for everything but blob streams.
    pub request_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure: false,
            retry: RetryPolicy::default(),
            token_realms: Vec::new(),
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

impl RegistryClient {
    pub fn new(
        name: impl Into<String>,
        base: Url,
        role: Role,
        credentials: Option<Credentials>,
        options: ClientOptions,
    ) -> Result<RegistryClient, reqwest::Error> {
        let http = reqwest::Client::builder()
            .http1_only()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(32)
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .tls_danger_accept_invalid_certs(options.insecure)
            .user_agent(concat!("harbor-relay/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(RegistryClient {
            name: name.into(),
            base,
            role,
            http,
            credentials: std::sync::RwLock::new(credentials),
            token_realms: options.token_realms,
            request_timeout: options.request_timeout,
            auth: Mutex::new(AuthState::default()),
            retry: options.retry,
            requests: Default::default(),
            referrers_api: Default::default(),
            chunk_size: Default::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Requests sent so far (retries included, token requests not).
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `GET /v2/`: Harbor's "test connection", with authentication.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        let url = self.url("/v2/");
        let resp = self.execute(Method::GET, url, "", HeaderMap::new(), None).await?;
        self.expect(resp, &[StatusCode::OK]).await.map(drop)
    }

    /// Repositories of `/v2/_catalog`, following `Link` pagination.
    pub async fn catalog(&self) -> Result<Vec<RepositoryPath>, RegistryError> {
        self.catalog_paged(1000).await
    }

    /// [`RegistryClient::catalog`] with `page` entries per request.
    pub async fn catalog_paged(&self, page: usize) -> Result<Vec<RepositoryPath>, RegistryError> {
        let mut out = Vec::new();
        self.paginate(&format!("/v2/_catalog?n={page}"), "registry:catalog:*", "repositories", |name| {
            if let Ok(r) = name.parse() {
                out.push(r);
            }
            true
        })
        .await?;
        Ok(out)
    }

    /// The repositories whose names start with `prefix`, listing only that
    /// stretch of the (lexically ordered) catalog: it starts just before
    /// the prefix (`last=`) and stops at the first name past it.
    pub async fn catalog_with_prefix(&self, prefix: &str, page: usize) -> Result<Vec<RepositoryPath>, RegistryError> {
        let mut url = self.base.join("/v2/_catalog").map_err(|e| self.protocol(e.to_string()))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("n", &page.to_string());
            let before: String = prefix.chars().take(prefix.chars().count().saturating_sub(1)).collect();
            if !before.is_empty() {
                q.append_pair("last", &before);
            }
        }
        let first = format!("{}?{}", url.path(), url.query().unwrap_or(""));
        let mut out = Vec::new();
        self.paginate(&first, "registry:catalog:*", "repositories", |name| {
            if name.starts_with(prefix) {
                if let Ok(r) = name.parse() {
                    out.push(r);
                }
                true
            } else {
                name < prefix
            }
        })
        .await?;
        Ok(out)
    }

    /// Tags of `repo` (`/v2/<repo>/tags/list`), following `Link` pagination.
    pub async fn tags(&self, repo: &RepositoryPath) -> Result<Vec<crate::repository::Tag>, RegistryError> {
        self.tags_paged(repo, 1000).await
    }

    /// [`RegistryClient::tags`] with `page` entries per request.
    pub async fn tags_paged(
        &self,
        repo: &RepositoryPath,
        page: usize,
    ) -> Result<Vec<crate::repository::Tag>, RegistryError> {
        let mut out = Vec::new();
        let first = format!("/v2/{repo}/tags/list?n={page}");
        self.paginate(&first, &self.scope(repo), "tags", |name| {
            if let Ok(t) = name.parse() {
                out.push(t);
            }
            true
        })
        .await?;
        Ok(out)
    }

    async fn paginate(
        &self,
        first: &str,
        scope: &str,
        field: &str,
        mut each: impl FnMut(&str) -> bool,
    ) -> Result<(), RegistryError> {
        let mut next = Some(self.base.join(first).map_err(|e| self.protocol(e.to_string()))?);
        let mut seen = std::collections::HashSet::new();
        while let Some(url) = next.take() {
            self.visit(&mut seen, &url)?;
            let resp = self.execute(Method::GET, url.clone(), scope, HeaderMap::new(), None).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(());
            }
            let resp = self.expect(resp, &[StatusCode::OK]).await?;
            next = self.next_page(&url, &resp)?;
            let body = self.read_capped(resp, MAX_PAGE_BYTES, url.path()).await?;
            let body: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| self.protocol(format!("{}: listing is not JSON: {e}", url.path())))?;
            for name in body[field].as_array().into_iter().flatten().filter_map(|v| v.as_str()) {
                if !each(name) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The digest a tag or digest resolves to, `None` when absent.
    pub async fn head_manifest(&self, repo: &RepositoryPath, reference: &str) -> Result<Option<Digest>, RegistryError> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let resp = self.execute(Method::HEAD, url, &self.scope(repo), accept_manifests(), None).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = self.expect(resp, &[StatusCode::OK]).await?;
        match resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()) {
            Some(d) => d.parse().map(Some).map_err(|e| self.protocol(format!("bad Docker-Content-Digest: {e}"))),
            // Without the header only the bytes can tell.
            None => Ok(Some(self.get_manifest(repo, reference, None).await?.digest)),
        }
    }

    /// Fetches a manifest; when `expected` is given its bytes must hash to it.
    pub async fn get_manifest(
        &self,
        repo: &RepositoryPath,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<Manifest, RegistryError> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let resp = self.execute(Method::GET, url, &self.scope(repo), accept_manifests(), None).await?;
        let resp = self.expect(resp, &[StatusCode::OK]).await?;
        let media_type = header_str(resp.headers(), CONTENT_TYPE).unwrap_or_default().to_owned();
        let body = self.read_capped(resp, manifest::MAX_MANIFEST_BYTES, &format!("manifest {reference}")).await?;
        let actual = Digest::sha256_of(&body);
        if let Some(expected) = expected {
            let matches =
                if expected.algorithm() == actual.algorithm() { expected == &actual } else { expected.verifies(&body) };
            if !matches {
                return Err(RegistryError::DigestMismatch {
                    registry: self.name.clone(),
                    what: "manifest",
                    digest: expected.clone(),
                    actual,
                });
            }
            return Ok(Manifest { digest: expected.clone(), media_type, bytes: body.into() });
        }
        Ok(Manifest { digest: actual, media_type, bytes: body.into() })
    }

    /// Pushes manifest bytes unchanged under `reference` (a tag or its digest).
    /// The answer tells whether the registry indexed the manifest's
    /// `subject` (the `OCI-Subject` header of OCI 1.1).
    pub async fn put_manifest(
        &self,
        repo: &RepositoryPath,
        reference: &str,
        m: &Manifest,
    ) -> Result<Pushed, RegistryError> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, header_value(m.push_type()));
        let resp = self.execute(Method::PUT, url, &self.scope(repo), headers, Some(m.bytes.clone())).await?;
        let resp = self.expect(resp, &[StatusCode::CREATED, StatusCode::OK]).await?;
        if let Some(d) = header_str(resp.headers(), "docker-content-digest") {
            if d != m.digest.to_string() {
                return Err(self.protocol(format!("pushed manifest {} but the registry stored {d}", m.digest)));
            }
        }
        Ok(Pushed { subject_indexed: resp.headers().contains_key("oci-subject") })
    }

    /// The referrers of `repo@digest` through the OCI 1.1 referrers API
    /// (following `Link` pages); `None` when the registry has no such API
    /// (404 — remembered, so later tasks ask the tag schema straight away).
    pub async fn referrers(
        &self,
        repo: &RepositoryPath,
        digest: &Digest,
    ) -> Result<Option<Vec<manifest::Descriptor>>, RegistryError> {
        if self.referrers_api.load(std::sync::atomic::Ordering::Relaxed) == REFERRERS_API_ABSENT {
            return Ok(None);
        }
        let mut out = Vec::new();
        let mut next = Some(self.url(&format!("/v2/{repo}/referrers/{digest}")));
        let mut pages = 0;
        let (mut seen, mut total) = (std::collections::HashSet::new(), 0);
        while let Some(url) = next.take() {
            self.visit(&mut seen, &url)?;
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT, header_value(manifest::OCI_INDEX));
            let resp = self.execute(Method::GET, url.clone(), &self.scope(repo), headers, None).await?;
            if resp.status() == StatusCode::NOT_FOUND && pages == 0 {
                self.referrers_api.store(REFERRERS_API_ABSENT, std::sync::atomic::Ordering::Relaxed);
                return Ok(None);
            }
            let resp = self.expect(resp, &[StatusCode::OK]).await?;
            next = self.next_page(&url, &resp)?;
            // Each page, and all pages together, within the manifest limit.
            let left = manifest::MAX_MANIFEST_BYTES.saturating_sub(total);
            let body = self.read_capped(resp, left, &format!("referrers of {digest}")).await?;
            total += body.len();
            #[derive(serde::Deserialize)]
            struct Index {
                #[serde(default)]
                manifests: Vec<manifest::Descriptor>,
            }
            let index: Index = serde_json::from_slice(&body)
                .map_err(|e| self.protocol(format!("referrers of {digest}: not an image index: {e}")))?;
            out.extend(index.manifests);
            pages += 1;
            if pages >= manifest::MAX_REFERRER_PAGES {
                return Err(self.protocol(format!("referrers of {digest}: more than {pages} pages")));
            }
        }
        Ok(Some(out))
    }

    /// Deletes a manifest by digest. `Ok(false)` when it was not there.
    pub async fn delete_manifest(&self, repo: &RepositoryPath, digest: &Digest) -> Result<bool, RegistryError> {
        let url = self.url(&format!("/v2/{repo}/manifests/{digest}"));
        let resp = self.execute(Method::DELETE, url, &self.scope(repo), HeaderMap::new(), None).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        self.expect(resp, &[StatusCode::ACCEPTED, StatusCode::OK]).await?;
        Ok(true)
    }

    pub async fn blob_exists(&self, repo: &RepositoryPath, digest: &Digest) -> Result<bool, RegistryError> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self.execute(Method::HEAD, url, &self.scope(repo), HeaderMap::new(), None).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(false),
            _ => self.expect(resp, &[StatusCode::OK]).await.map(|_| true),
        }
    }

    /// Opens a blob for streaming (redirects to storage are followed; the
    /// Authorization header is not sent to another host).
    pub async fn open_blob(&self, repo: &RepositoryPath, digest: &Digest) -> Result<Response, RegistryError> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self.execute(Method::GET, url, &self.scope(repo), HeaderMap::new(), None).await?;
        self.expect(resp, &[StatusCode::OK]).await
    }

    /// `POST /blobs/uploads/`, optionally asking to mount `digest` from
    /// another repository of the same registry.
    pub async fn start_upload(
        &self,
        repo: &RepositoryPath,
        mount: Option<(&Digest, &RepositoryPath)>,
    ) -> Result<UploadStart, RegistryError> {
        let mut url = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        let mut scope = self.scope(repo);
        if let Some((digest, from)) = mount {
            url.query_pairs_mut().append_pair("mount", &digest.to_string()).append_pair("from", from.as_str());
            scope = format!("{scope} repository:{from}:pull");
        }
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let resp = self.execute(Method::POST, url, &scope, headers, None).await?;
        let status = resp.status();
        let resp = self.expect(resp, &[StatusCode::CREATED, StatusCode::ACCEPTED]).await?;
        if mount.is_some() && status == StatusCode::CREATED {
            return Ok(UploadStart::Mounted);
        }
        let chunk_min = header_str(resp.headers(), "oci-chunk-min-length").and_then(|v| v.parse().ok());
        Ok(UploadStart::Session { url: self.location(&resp)?, chunk_min })
    }

    /// Completes an upload session with the whole blob in one `PUT`
    /// (`Content-Length` from the descriptor). The registry verifies the
    /// digest; a body that does not match is refused there.
    pub async fn finish_upload(
        &self,
        repo: &RepositoryPath,
        session: Url,
        digest: &Digest,
        size: u64,
        body: reqwest::Body,
    ) -> Result<(), RegistryError> {
        let mut url = session;
        url.query_pairs_mut().append_pair("digest", &digest.to_string());
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
        let resp = self.send_once(Method::PUT, url, &self.scope(repo), headers, body).await?;
        self.expect(resp, &[StatusCode::CREATED]).await.map(drop)
    }

    /// The chunk size for uploads to this registry; `None`: whole blobs.
    pub fn chunk_size(&self) -> Option<u64> {
        Some(self.chunk_size.load(std::sync::atomic::Ordering::Relaxed)).filter(|&c| c > 0)
    }

    /// After a 413 to an upload sent with `used` ([`RegistryClient::chunk_size`]
    /// at the time; `None`: the whole blob of `blob_size` bytes in one
    /// `PUT`): switch to chunks, or halve them. `false` when they cannot get
    /// smaller. Concurrent uploads that fail together shrink once.
    pub fn shrink_chunks(&self, used: Option<u64>, blob_size: u64) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let was = used.unwrap_or(0);
        if self.chunk_size.load(SeqCst) != was {
            return true; // another upload shrank them meanwhile: retry with those
        }
        let next = match used {
            None => FIRST_CHUNK.min(blob_size / 2),
            Some(c) => c / 2,
        };
        if next < SMALLEST_CHUNK {
            return false;
        }
        if self.chunk_size.compare_exchange(was, next, SeqCst, SeqCst).is_ok() {
            tracing::warn!(registry = %self.name, chunk_bytes = next, "the registry refused an upload as too large (413): sending chunks");
        }
        true
    }

    /// Sends `len` bytes at `offset` of an upload (`PATCH` with
    /// `Content-Range`); returns the session's next URL.
    pub async fn upload_chunk(
        &self,
        repo: &RepositoryPath,
        session: Url,
        offset: u64,
        len: u64,
        body: reqwest::Body,
    ) -> Result<Url, RegistryError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        let range = format!("{offset}-{}", offset + len - 1);
        headers.insert("content-range", HeaderValue::from_str(&range).expect("digits and a dash"));
        let resp = self.send_once(Method::PATCH, session, &self.scope(repo), headers, body).await?;
        let resp = self.expect(resp, &[StatusCode::ACCEPTED]).await?;
        self.location(&resp)
    }

    /// Abandons an upload session (best effort).
    pub async fn cancel_upload(&self, repo: &RepositoryPath, session: Url) {
        let _ = self.execute(Method::DELETE, session, &self.scope(repo), HeaderMap::new(), None).await;
    }

    fn scope(&self, repo: &RepositoryPath) -> String {
        match self.role {
            Role::Source => format!("repository:{repo}:pull"),
            Role::Destination => format!("repository:{repo}:pull,push"),
        }
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        url.set_path(path);
        url
    }

    fn same_origin(&self, url: &Url) -> bool {
        same_origin(url, &self.base)
    }

    /// Whether the credentials may go to `realm` for a token: an https
    /// realm, this registry's own origin when it is plain http, or a realm
    /// the configuration lists. Anything else could be a hostile registry
    /// (or a hostile redirect) fishing for the password.
    fn check_realm(&self, realm: &Url) -> Result<(), RegistryError> {
        let trusted = realm.scheme() == "https"
            || self.same_origin(realm)
            || self.token_realms.iter().any(|t| same_origin(t, realm));
        if trusted {
            return Ok(());
        }
        Err(RegistryError::Protocol {
            registry: self.name.clone(),
            reason: format!(
                "token realm {}://{} refused: a realm must be https or this registry's own origin (list it in token_realms to trust it)",
                realm.scheme(),
                realm.host_str().unwrap_or_default()
            ),
        })
    }

    /// Sends a request whose body can be re-sent, with authentication and
    /// retries. Returns any final response (404 included) for the caller
    /// to interpret.
    async fn execute(
        &self,
        method: Method,
        url: Url,
        scope: &str,
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<Response, RegistryError> {
        let mut retry = 0;
        let mut reauthenticated = false;
        loop {
            let mut req =
                self.http.request(method.clone(), url.clone()).headers(headers.clone()).timeout(self.request_timeout);
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            let mut sent = None;
            if self.same_origin(&url) {
                sent = self.authorization(scope).await?;
                if let Some(auth) = &sent {
                    req = req.header(AUTHORIZATION, auth);
                }
            }
            self.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let outcome = req.send().await;
            retry += 1;
            let resp = match outcome {
                Ok(resp) => resp,
                Err(e) if retry < self.retry.attempts && pace::wait_fits(self.retry.delay(retry, None)) => {
                    tracing::warn!(registry = %self.name, %method, path = url.path(), error = %e, retry, "request failed, retrying");
                    tokio::time::sleep(self.retry.delay(retry, None)).await;
                    continue;
                }
                Err(e) => return Err(self.transport(&method, url.path(), &e)),
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED
                && !reauthenticated
                && self.learn_challenge(&resp, scope, sent.as_deref())
            {
                reauthenticated = true;
                retry -= 1;
                continue;
            }
            if is_retryable(status) && retry < self.retry.attempts {
                let after =
                    header_str(resp.headers(), RETRY_AFTER).and_then(|v| parse_retry_after(v, SystemTime::now()));
                let wait = self.retry.delay(retry, after);
                // A wait past the task's deadline is not taken: the answer
                // goes back, and its Retry-After to the message's backoff.
                if !pace::wait_fits(wait) {
                    return Ok(resp);
                }
                tracing::warn!(registry = %self.name, %method, path = url.path(), status = status.as_u16(), wait_ms = wait.as_millis() as u64, retry, "registry asked to retry");
                tokio::time::sleep(wait).await;
                continue;
            }
            return Ok(resp);
        }
    }

    /// Sends a one-shot (streaming) body once, authenticated. The caller
    /// retries the whole operation, re-opening its source stream.
    async fn send_once(
        &self,
        method: Method,
        url: Url,
        scope: &str,
        headers: HeaderMap,
        body: reqwest::Body,
    ) -> Result<Response, RegistryError> {
        let mut req = self.http.request(method.clone(), url.clone()).headers(headers).body(body);
        let mut sent = None;
        if self.same_origin(&url) {
            sent = self.authorization(scope).await?;
            if let Some(auth) = &sent {
                req = req.header(AUTHORIZATION, auth);
            }
        }
        self.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let resp = req.send().await.map_err(|e| self.transport(&method, url.path(), &e))?;
        let bearer = header_str(resp.headers(), WWW_AUTHENTICATE).and_then(Challenge::parse);
        if resp.status() == StatusCode::UNAUTHORIZED && matches!(bearer, Some(Challenge::Bearer { .. })) {
            // A token that expired mid-copy (possibly renewed meanwhile by a
            // concurrent request): forget it, so the retry gets a fresh one.
            self.learn_challenge(&resp, scope, sent.as_deref());
            return Err(RegistryError::Reauthenticate { registry: self.name.clone(), path: url.path().to_owned() });
        }
        Ok(resp)
    }

    /// The Basic header of the current credentials, if there are any.
    fn basic_header(&self) -> Option<String> {
        self.credentials.read().expect("credentials lock").as_ref().map(Credentials::basic_header)
    }

    /// Uses `credentials` from now on (a rotated secret, re-read), and
    /// forgets the tokens the old ones obtained.
    pub fn set_credentials(&self, credentials: Option<Credentials>) {
        *self.credentials.write().expect("credentials lock") = credentials;
        self.auth.lock().expect("auth lock").tokens = Default::default();
    }

    /// Records the challenge of a 401 answered to a request that carried
    /// `sent`. Returns whether a retry can help: the request went without
    /// credentials (concurrent requests may all race the first challenge),
    /// the scheme changed, or its token expired (forgotten here unless a
    /// concurrent request already renewed it).
    fn learn_challenge(&self, resp: &Response, scope: &str, sent: Option<&str>) -> bool {
        // A challenge from where a redirect led (another host) is not this
        // registry's: learning it would send the credentials there.
        if !self.same_origin(resp.url()) {
            return false;
        }
        let Some(challenge) = header_str(resp.headers(), WWW_AUTHENTICATE).and_then(Challenge::parse) else {
            return false;
        };
        let mut state = self.auth.lock().expect("auth lock");
        let changed = state.challenge.as_ref() != Some(&challenge);
        let sent_token = sent.and_then(|s| s.strip_prefix("Bearer "));
        if let Some(t) = sent_token {
            if state.tokens.get(scope).as_deref() == Some(t) {
                state.tokens.forget(scope);
            }
        }
        state.challenge = Some(challenge);
        // Basic with the same credentials again cannot help, nor can anonymous.
        let can_authenticate = self.credentials.read().expect("credentials lock").is_some()
            || matches!(state.challenge, Some(Challenge::Bearer { .. }));
        can_authenticate && (sent.is_none() || changed || sent_token.is_some())
    }

    async fn authorization(&self, scope: &str) -> Result<Option<String>, RegistryError> {
        let challenge = {
            let state = self.auth.lock().expect("auth lock");
            match &state.challenge {
                None => return Ok(None),
                Some(Challenge::Basic) => return Ok(self.basic_header()),
                Some(Challenge::Bearer { .. }) => {
                    if let Some(token) = state.tokens.get(scope) {
                        return Ok(Some(format!("Bearer {token}")));
                    }
                }
            }
            state.challenge.clone()
        };
        let Some(Challenge::Bearer { realm, service }) = challenge else {
            return Ok(None);
        };
        let (token, expires_in) = self.fetch_token(&realm, service.as_deref(), scope).await?;
        self.auth.lock().expect("auth lock").tokens.put(scope, token.clone(), expires_in);
        Ok(Some(format!("Bearer {token}")))
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(String, Duration), RegistryError> {
        let fail = |reason: String| RegistryError::Token { registry: self.name.clone(), reason };
        let mut url = Url::parse(realm).map_err(|e| fail(format!("bad realm: {e}")))?;
        self.check_realm(&url)?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in scope.split(' ').filter(|s| !s.is_empty()) {
                q.append_pair("scope", s);
            }
        }
        let mut req = self.http.get(url);
        if let Some(basic) = self.basic_header() {
            req = req.header(AUTHORIZATION, basic);
        }
        let resp = req.send().await.map_err(|e| fail(redact(&e)))?;
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP {}", resp.status())));
        }
        let body = self.read_capped(resp, MAX_TOKEN_BYTES, "token response").await?;
        let body: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| fail(format!("token response is not JSON: {e}")))?;
        let token = body.token.or(body.access_token).ok_or_else(|| fail("no token in response".into()))?;
        Ok((token, Duration::from_secs(body.expires_in.unwrap_or(60).max(1))))
    }

    async fn expect(&self, resp: Response, ok: &[StatusCode]) -> Result<Response, RegistryError> {
        let status = resp.status();
        if ok.contains(&status) {
            return Ok(resp);
        }
        let path = resp.url().path().to_owned();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(RegistryError::Denied { registry: self.name.clone(), path, status });
        }
        let retry_after = header_str(resp.headers(), RETRY_AFTER).and_then(|v| parse_retry_after(v, SystemTime::now()));
        // The registry's error code tells an operator most; keep it short,
        // and read no more than that of a body that may never end.
        let text = self.read_prefix(resp, MAX_ERROR_BODY_BYTES).await;
        let detail = if text.is_empty() {
            String::new()
        } else {
            format!(": {}", text.chars().take(300).collect::<String>().trim())
        };
        Err(RegistryError::Status { registry: self.name.clone(), path, status, detail, retry_after })
    }

    /// The whole body, refused past `limit` bytes (announced or sent).
    async fn read_capped(&self, resp: Response, limit: usize, what: &str) -> Result<Vec<u8>, RegistryError> {
        let too_large = || RegistryError::TooLarge { registry: self.name.clone(), reference: what.to_owned(), limit };
        if resp.content_length().is_some_and(|l| l > limit as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.transport(&Method::GET, what, &e))?;
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// At most `limit` bytes of the body, as text; the rest is not read.
    async fn read_prefix(&self, resp: Response, limit: usize) -> String {
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(Ok(chunk)) = stream.next().await {
            let room = limit - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= limit {
                break;
            }
        }
        String::from_utf8_lossy(&body).into_owned()
    }

    /// Records a listing page; refuses a `Link` that loops back to a page
    /// already read, and listings longer than [`MAX_PAGES`].
    fn visit(&self, seen: &mut std::collections::HashSet<Url>, url: &Url) -> Result<(), RegistryError> {
        if !seen.insert(url.clone()) {
            return Err(self.protocol(format!("listing loops: Link points back at {}", url.path())));
        }
        if seen.len() > MAX_PAGES {
            return Err(self.protocol(format!("listing longer than {MAX_PAGES} pages")));
        }
        Ok(())
    }

    /// The next page a listing answer points at (`Link: </v2/_catalog?last=x&n=1000>; rel="next"`),
    /// on this registry's origin only.
    fn next_page(&self, url: &Url, resp: &Response) -> Result<Option<Url>, RegistryError> {
        let Some(link) = header_str(resp.headers(), "link") else { return Ok(None) };
        let target = link.split(';').next().unwrap_or("").trim().trim_start_matches('<').trim_end_matches('>');
        let joined = url.join(target).map_err(|e| self.protocol(format!("bad Link header: {e}")))?;
        if !self.same_origin(&joined) {
            return Err(self.protocol("Link header points at another host".into()));
        }
        Ok(Some(joined))
    }

    fn location(&self, resp: &Response) -> Result<Url, RegistryError> {
        let loc = header_str(resp.headers(), LOCATION)
            .ok_or_else(|| self.protocol("upload response has no Location".into()))?;
        let url = resp.url().join(loc).map_err(|e| self.protocol(format!("bad upload Location: {e}")))?;
        if !self.same_origin(&url) {
            return Err(
                self.protocol(format!("upload Location points at another host ({})", url.host_str().unwrap_or("?")))
            );
        }
        Ok(url)
    }

    fn transport(&self, method: &Method, path: &str, e: &reqwest::Error) -> RegistryError {
        RegistryError::Transport {
            registry: self.name.clone(),
            method: method.clone(),
            path: path.to_owned(),
            reason: redact(e),
        }
    }

    fn protocol(&self, reason: String) -> RegistryError {
        RegistryError::Protocol { registry: self.name.clone(), reason }
    }
}

/// A reqwest error's text without its URL (which may carry a query with
/// upload-session state) — the kind of failure is what matters.
fn redact(e: &reqwest::Error) -> String {
    let mut s = String::from(if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() {
        "body interrupted"
    } else if e.is_decode() {
        "cannot decode response"
    } else if e.is_redirect() {
        "redirect refused"
    } else {
        "request failed"
    });
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn accept_manifests() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(ACCEPT, HeaderValue::from_static(manifest::ACCEPT));
    h
}

fn header_str<K: reqwest::header::AsHeaderName>(headers: &HeaderMap, key: K) -> Option<&str> {
    headers.get(key).and_then(|v| v.to_str().ok())
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str, listed: &[&str]) -> RegistryClient {
        let options = ClientOptions {
            token_realms: listed.iter().map(|u| Url::parse(u).unwrap()).collect(),
            ..Default::default()
        };
        RegistryClient::new("r", Url::parse(base).unwrap(), Role::Destination, None, options).unwrap()
    }

    /// (registry, listed realms, realm, trusted)
    #[test]
    fn credentials_go_only_to_trusted_token_realms() {
        let table: [(&str, &[&str], &str, bool); 7] = [
            ("https://reg.example", &[], "https://auth.example/token", true),
            ("https://reg.example", &[], "http://auth.example/token", false),
            ("https://reg.example", &[], "http://reg.example/token", false),
            ("http://10.0.0.5:5000", &[], "http://10.0.0.5:5000/token", true),
            ("http://10.0.0.5:5000", &[], "http://10.0.0.5:5001/token", false),
            ("http://10.0.0.5:5000", &["http://10.0.0.5:5001/auth"], "http://10.0.0.5:5001/token", true),
            ("https://reg.example", &["http://auth.example"], "http://auth.example:8080/token", false),
        ];
        for (base, listed, realm, trusted) in table {
            let got = client(base, listed).check_realm(&Url::parse(realm).unwrap());
            assert_eq!(got.is_ok(), trusted, "{base} {listed:?} {realm}: {got:?}");
            if let Err(e) = got {
                let host = Url::parse(realm).unwrap().host_str().unwrap().to_owned();
                assert!(e.to_string().contains(&host), "the error names the realm host: {e}");
            }
        }
    }
}
