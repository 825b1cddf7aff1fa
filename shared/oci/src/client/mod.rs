//! A thin registry client over reqwest: one pooled HTTP/1.1 client per
//! registry, authentication on demand, retries with backoff, and streaming
//! blob bodies. Speaks only to the registry it was built for.
//!
//! Where things are: `transport` sends requests (authentication, retries,
//! bounded reads, errors), `authorize` the client's side of the
//! authentication layer (`crate::auth`) it asks once per request for the
//! `Authorization`: the token requests, `listing` the paginated catalog and tag
//! lists, `manifests` manifests and referrers, `uploads` blob reads and
//! upload sessions, `learnt` what a registry's answers taught at run time
//! (whole blobs refused → chunks; no referrers API → tag schema; mounts
//! refused → plain uploads), kept beside the client so a rebuilt client
//! keeps it. What a registry's kind says it does not do is data of its
//! host description (relay-domain's `host::Quirks`), read here in the one
//! place each quirk changes; the recipe for a new one is in that module.

use std::sync::Arc;
use std::time::Duration;

use relay_domain::host::Quirks;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use url::Url;

use super::auth::{Authorizer, Credentials};
use super::pace::MinThroughput;
use super::retry::RetryPolicy;
use crate::repository::RepositoryPath;

mod authorize;
mod error;
mod learnt;
mod listing;
mod manifests;
mod transport;
mod uploads;

pub use error::{Answer, OciError, OciErrorCode, RegistryError};
pub use learnt::Learnt;
pub use manifests::Pushed;
pub use uploads::{InPlace, UploadStart};

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
    /// See [`ClientOptions::token_realms`]: hosts a redirect may lead to.
    token_realms: Vec<Url>,
    request_timeout: Duration,
    min_throughput: MinThroughput,
    /// Whose credentials go where: asked once per request.
    auth: Authorizer,
    /// Held by the client's first request until its answer: how the
    /// registry authenticates is unknown until then, and requests sent
    /// beside it would all be refused (401) and sent again.
    first_exchange: tokio::sync::Mutex<()>,
    /// The first request has been answered (or has failed).
    exchanged: std::sync::atomic::AtomicBool,
    retry: RetryPolicy,
    /// Requests sent to this registry (token requests excluded): for
    /// metrics and the request budgets of the benchmarks.
    requests: std::sync::atomic::AtomicU64,
    /// What this registry does not do the standard way, as its kind says.
    quirks: Quirks,
    /// What its answers taught, shared with every client built for the
    /// same registry ([`Learnt::of`]).
    learnt: Arc<Learnt>,
}

/// Settings for building a client.
pub struct ClientOptions {
    pub insecure: bool,
    pub retry: RetryPolicy,
    /// Token services trusted besides https ones and the registry's own
    /// origin (the configuration's `token_realms`).
    pub token_realms: Vec<Url>,
    /// Whole-request bound for everything but blob streams; for those, the
    /// bound on the wait for the answer (before a blob's body, after an
    /// upload's).
    pub request_timeout: Duration,
    /// The worker's throughput floor: an upload whose body the registry
    /// leaves unasked for bytes for its window is given up, and the wait
    /// for the answer to an upload allows for the bytes in flight at its
    /// rate ([`super::pace::watched`]).
    pub min_throughput: MinThroughput,
    /// A private CA bundle (PEM) to verify the certificate against instead
    /// of the platform's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// What the registry does not do the standard way (its kind's
    /// [`Quirks`]).
    pub quirks: Quirks,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure: false,
            retry: RetryPolicy::default(),
            token_realms: Vec::new(),
            request_timeout: REQUEST_TIMEOUT,
            min_throughput: MinThroughput::DEFAULT,
            ca_pem: None,
            quirks: Quirks::STANDARD,
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
        let builder = reqwest::Client::builder()
            .http1_only()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(32)
            .connect_timeout(Duration::from_secs(10))
            // Redirects are followed by `transport`, which checks each hop
            // and decides who gets credentials.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("harbor-relay/", env!("CARGO_PKG_VERSION")));
        let http = crate::tls::configure(builder, options.insecure, options.ca_pem.as_deref())?.build()?;
        let name = name.into();
        let learnt = Learnt::of(&name, &base);
        let auth = Authorizer::new(name.clone(), base.clone(), options.token_realms.clone(), credentials);
        Ok(RegistryClient {
            name,
            base,
            role,
            http,
            auth,
            first_exchange: Default::default(),
            exchanged: Default::default(),
            token_realms: options.token_realms,
            request_timeout: options.request_timeout,
            min_throughput: options.min_throughput,
            retry: options.retry,
            requests: Default::default(),
            quirks: options.quirks,
            learnt,
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

    pub(super) fn scope(&self, repo: &RepositoryPath) -> String {
        match self.role {
            Role::Source => format!("repository:{repo}:pull"),
            Role::Destination => format!("repository:{repo}:pull,push"),
        }
    }

    /// An answer of this registry the client cannot use.
    pub(super) fn malformed(&self, answer: Answer, reason: String) -> RegistryError {
        RegistryError::Malformed { registry: self.name.clone(), answer, reason }
    }

    pub(super) fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        url.set_path(path);
        url
    }
}

pub(super) fn header_str<K: reqwest::header::AsHeaderName>(headers: &HeaderMap, key: K) -> Option<&str> {
    headers.get(key).and_then(|v| v.to_str().ok())
}

pub(super) fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}
