//! Building the long-lived parts from the configuration, once per cold
//! start: registry clients with resolved credentials, the webhook, the
//! worker. Both binaries call these so Lambda and standalone modes match.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, CredentialsRef, HarborApiUse, Registry};
use crate::destination::{Destination, KindRuntime};
use crate::ecr::EcrControl;
use crate::harbor_api::HarborApi;
use crate::health::Health;
use crate::queue::TaskQueue;
use crate::registry::pace::MinThroughput;
use crate::registry::retry::RetryPolicy;
use crate::registry::{ClientOptions, Credentials, RegistryClient, Role};
use crate::registry_kind::{CaSource, RegistryKind};
use crate::secrets::{CredentialReloader, CredentialSource, SecretError, SecretSource, WebhookAuth};
use crate::settings::Settings;
use crate::webhook::{Webhook, WebhookOptions};
use crate::worker::Worker;
use crate::written::Written;

// The SDK configuration and the configuration's store, where they always
// were for the CLI and the tests.
pub use crate::config_store::{
    config_parameter, load_config, push_config, ConfigLoadError, PushedConfig, SSM_STANDARD_MAX_BYTES,
};
pub use crate::sdk::{aws_clients, aws_config, aws_config_of, AWS_ATTEMPT_TIMEOUT, AWS_CONNECT_TIMEOUT};

/// Bound on one Harbor API call from the webhook: Harbor waits 3 s at most.
pub const HARBOR_API_TIMEOUT: Duration = Duration::from_secs(2);

/// Bound on one Harbor API call that prepares a destination project.
pub const HARBOR_PREPARE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("credentials of {registry}: {source}")]
    Credentials { registry: String, source: SecretError },
    #[error("webhook auth values: {0}")]
    WebhookAuth(SecretError),
    #[error("HTTP client for {registry}: {reason}")]
    Client { registry: String, reason: String },
    #[error("rules {rules} filter on labels or resource type, which are read from Harbor's API, and the source does not answer as a Harbor (GET /api/v2.0/ping)")]
    NotHarbor { rules: String },
}

/// What a function builds once from its [`Settings`] and hands down: the
/// one AWS SDK configuration every client is made from, the SQS and
/// Secrets Manager clients, and the record of written tags
/// (`RELAY_RECORD_BUCKET`). A configuration reload builds a new worker on
/// the same ones.
#[derive(Clone, Debug)]
pub struct Aws {
    pub sdk: aws_config::SdkConfig,
    pub sqs: aws_sdk_sqs::Client,
    pub secrets_manager: aws_sdk_secretsmanager::Client,
    pub written: Option<Arc<Written>>,
}

impl Aws {
    /// The clients of `sdk`; the record when `settings` name its bucket.
    pub fn new(sdk: aws_config::SdkConfig, settings: &Settings) -> Aws {
        Aws {
            sqs: aws_sdk_sqs::Client::new(&sdk),
            secrets_manager: aws_sdk_secretsmanager::Client::new(&sdk),
            written: settings.record_bucket.as_ref().map(|bucket| Arc::new(Written::in_bucket(&sdk, bucket))),
            sdk,
        }
    }

    /// An SSM client of the same configuration.
    pub fn ssm(&self) -> aws_sdk_ssm::Client {
        aws_sdk_ssm::Client::new(&self.sdk)
    }
}

/// Builds the worker for the CLI and tests, from the process environment:
/// its own SDK configuration when a destination is ECR, and the record of
/// [`written_record`]. The functions build theirs with [`worker_with`].
pub async fn worker(config: &Config, secrets: &SecretSource, retry: RetryPolicy) -> Result<Worker, StartupError> {
    let sdk = match config.registries.iter().any(|r| matches!(r.kind, RegistryKind::Ecr(_))) {
        true => Some(aws_config().await),
        false => None,
    };
    build_worker(config, secrets, retry, sdk.as_ref(), written_record().await).await
}

/// Builds the worker on a function's [`Aws`]: one client for the source and
/// one per destination.
pub async fn worker_with(
    config: &Config,
    secrets: &SecretSource,
    retry: RetryPolicy,
    aws: &Aws,
) -> Result<Worker, StartupError> {
    build_worker(config, secrets, retry, Some(&aws.sdk), aws.written.clone()).await
}

async fn build_worker(
    config: &Config,
    secrets: &SecretSource,
    retry: RetryPolicy,
    sdk: Option<&aws_config::SdkConfig>,
    written: Option<Arc<Written>>,
) -> Result<Worker, StartupError> {
    let source = Arc::new(source_client(config, secrets, retry).await?);
    let mut refs = HashMap::new();
    if let Some(c) = &config.source.credentials {
        refs.insert("source".to_owned(), CredentialSource::Configured(c.clone()));
    }
    let mut destinations = HashMap::new();
    let min_throughput = config.worker.min_throughput();
    for r in &config.registries {
        let (client, kind, credentials) = destination_client(r, secrets, retry, min_throughput, sdk).await?;
        if let Some(c) = credentials {
            refs.insert(r.name.clone(), c);
        }
        let w = &config.worker;
        let health = Health::new(
            w.breaker_failures,
            Duration::from_secs(w.park_base_seconds),
            Duration::from_secs(w.park_max_seconds),
        );
        destinations.insert(r.name.clone(), Destination::new(client, health, kind));
    }
    let harbor = harbor_api(config, secrets).await?;
    Ok(Worker {
        credentials: CredentialReloader::new(secrets.clone(), refs, config.secrets.ttl()),
        source,
        destinations,
        settings: config.worker.clone(),
        streams: Arc::new(tokio::sync::Semaphore::new(config.worker.stream_concurrency)),
        retry,
        stats: Default::default(),
        harbor,
        rules: config.rules.clone(),
        source_health: Health::new(
            config.worker.breaker_failures,
            Duration::from_secs(config.worker.park_base_seconds),
            Duration::from_secs(config.worker.park_max_seconds),
        ),
        parking: None,
        written,
    })
}

/// The record of the tags the relay wrote ([`Written`]) for the CLI and
/// tests, when the process's `RELAY_RECORD_BUCKET` names its bucket: built
/// once per process (the functions build theirs in [`Aws::new`]).
pub async fn written_record() -> Option<Arc<Written>> {
    static RECORD: tokio::sync::OnceCell<Option<Arc<Written>>> = tokio::sync::OnceCell::const_new();
    RECORD
        .get_or_init(|| async {
            let bucket = std::env::var(crate::written::BUCKET_ENV).ok().filter(|b| !b.is_empty())?;
            Some(Arc::new(Written::in_bucket(&aws_config().await, bucket)))
        })
        .await
        .clone()
}

/// A destination's client, what its kind needs at run time, and where its
/// credentials come from (to read them again). `sdk` is needed for `ecr`;
/// `min_throughput` is the worker's ([`ClientOptions::min_throughput`]).
pub async fn destination_client(
    r: &Registry,
    secrets: &SecretSource,
    retry: RetryPolicy,
    min_throughput: MinThroughput,
    sdk: Option<&aws_config::SdkConfig>,
) -> Result<(RegistryClient, KindRuntime, Option<CredentialSource>), StartupError> {
    let ca_pem = ca_bundle(&r.name, r.ca.as_ref(), secrets).await?;
    let client_error = |e: reqwest::Error| StartupError::Client { registry: r.name.clone(), reason: e.to_string() };
    let options = ClientOptions {
        insecure: r.insecure,
        retry,
        token_realms: r.token_realms.clone(),
        ca_pem: ca_pem.clone(),
        // What the kind does not do the standard way (ECR: whole blobs only).
        quirks: r.kind.quirks(),
        min_throughput,
        ..Default::default()
    };
    let configured = r.credentials.clone().map(CredentialSource::Configured);
    match &r.kind {
        RegistryKind::Harbor(settings) => {
            let credentials = credentials(&r.name, r.credentials.as_ref(), secrets).await?;
            let api = HarborApi::new(
                r.url.clone(),
                credentials.clone(),
                r.insecure,
                ca_pem.as_deref(),
                HARBOR_PREPARE_TIMEOUT,
            )
            .map_err(client_error)?;
            let client = RegistryClient::new(&r.name, r.url.clone(), Role::Destination, credentials, options)
                .map_err(client_error)?;
            Ok((client, KindRuntime::Harbor { api, settings: settings.clone() }, configured))
        }
        RegistryKind::Ecr(settings) => {
            let sdk = match sdk {
                Some(s) => s.clone(),
                None => aws_config().await,
            };
            let ecr = Arc::new(EcrControl::new(&sdk, settings.clone()).await);
            // A token that cannot be had now is asked for again on the first
            // denial: one unreachable ECR must not stop the other destinations.
            let credentials = match ecr.credentials(false).await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(registry = %r.name, error = %e, "no ECR token at start; asking again on first use");
                    None
                }
            };
            let client = RegistryClient::new(&r.name, r.url.clone(), Role::Destination, credentials, options)
                .map_err(client_error)?;
            Ok((client, KindRuntime::Ecr(ecr.clone()), Some(CredentialSource::Ecr(ecr))))
        }
        // `registry`, and any kind that differs only in its quirks:
        // credentials from the configuration, nothing done before a push.
        _ => {
            let credentials = credentials(&r.name, r.credentials.as_ref(), secrets).await?;
            let client = RegistryClient::new(&r.name, r.url.clone(), Role::Destination, credentials, options)
                .map_err(client_error)?;
            Ok((client, KindRuntime::Registry, configured))
        }
    }
}

/// The client for the source Harbor (read-only scopes).
pub async fn source_client(
    config: &Config,
    secrets: &SecretSource,
    retry: RetryPolicy,
) -> Result<RegistryClient, StartupError> {
    let credentials = credentials("source", config.source.credentials.as_ref(), secrets).await?;
    let options = ClientOptions {
        insecure: config.source.insecure,
        retry,
        token_realms: config.source.token_realms.clone(),
        ca_pem: ca_bundle("source", config.source.ca.as_ref(), secrets).await?,
        ..Default::default()
    };
    RegistryClient::new("source", config.source.api_url.clone(), Role::Source, credentials, options)
        .map_err(|e| StartupError::Client { registry: "source".into(), reason: e.to_string() })
}

/// Builds the webhook with its accepted auth values, and Harbor's API when
/// an enabled rule has a label or resource filter (nothing else in the
/// webhook asks Harbor). Without such a rule the source's credentials are
/// not read: the public webhook's role then needs no source secret
/// (docs/deploy.md, "Secrets per function").
pub async fn webhook(
    config: Arc<Config>,
    secrets: &SecretSource,
    queue: TaskQueue,
    options: WebhookOptions,
) -> Result<Webhook, StartupError> {
    let auth = WebhookAuth::load(config.webhook.clone(), secrets.clone(), &config.secrets)
        .await
        .map_err(StartupError::WebhookAuth)?;
    let harbor = match config.rules.iter().any(|r| r.enabled && r.needs_facts()) {
        true => harbor_api(&config, secrets).await?,
        false => None,
    };
    Ok(Webhook::new(config, auth, queue, options, harbor))
}

/// Harbor's REST API client when `source.harbor_api` is on, or when it is
/// absent and the source answers as a Harbor (one unauthenticated request).
/// A detected non-Harbor with rules that need the API (label or resource
/// filters) is refused, naming the rules.
pub async fn harbor_api(config: &Config, secrets: &SecretSource) -> Result<Option<HarborApi>, StartupError> {
    if config.source.harbor_api == HarborApiUse::Off {
        return Ok(None);
    }
    let credentials = credentials("source", config.source.credentials.as_ref(), secrets).await?;
    let ca = ca_bundle("source", config.source.ca.as_ref(), secrets).await?;
    let api = HarborApi::new(
        config.source.api_url.clone(),
        credentials,
        config.source.insecure,
        ca.as_deref(),
        HARBOR_API_TIMEOUT,
    )
    .map_err(|e| StartupError::Client { registry: "source (Harbor API)".into(), reason: e.to_string() })?;
    // A rotated robot secret is read again, as the registry clients do.
    let api = match &config.source.credentials {
        Some(reference) => api.with_reread(secrets.clone(), reference.clone(), config.secrets.ttl()),
        None => api,
    };
    if config.source.harbor_api == HarborApiUse::On {
        return Ok(Some(api));
    }
    let harbor = api.is_harbor().await.map_err(|e| StartupError::Client {
        registry: "source (Harbor API)".into(),
        reason: format!(
            "cannot tell whether the source is a Harbor (GET /api/v2.0/ping; set source.harbor_api to say): {e}"
        ),
    })?;
    if harbor {
        tracing::info!(source = %config.source.api_url, "the source answers as a Harbor: listings, labels and types through its API");
        return Ok(Some(api));
    }
    let needing: Vec<&str> =
        config.rules.iter().filter(|r| r.enabled && r.needs_facts()).map(|r| r.name.as_str()).collect();
    if !needing.is_empty() {
        return Err(StartupError::NotHarbor { rules: needing.join(", ") });
    }
    Ok(None)
}

/// The private CA bundle a registry's certificate is verified against.
async fn ca_bundle(
    registry: &str,
    source: Option<&CaSource>,
    secrets: &SecretSource,
) -> Result<Option<Vec<u8>>, StartupError> {
    let Some(source) = source else { return Ok(None) };
    let pem = secrets
        .ca_bundle(source)
        .await
        .map_err(|source| StartupError::Credentials { registry: registry.to_owned(), source })?;
    Ok(Some(pem))
}

async fn credentials(
    registry: &str,
    reference: Option<&CredentialsRef>,
    secrets: &SecretSource,
) -> Result<Option<Credentials>, StartupError> {
    let Some(r) = reference else { return Ok(None) };
    let c = secrets
        .credentials(r)
        .await
        .map_err(|source| StartupError::Credentials { registry: registry.to_owned(), source })?;
    Ok(Some(c))
}

/// Completes on SIGTERM or Ctrl-C: how the standalone binaries stop.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Turns a Lambda context deadline (wall-clock milliseconds since the
/// epoch, as AWS sends it) into an `Instant`, which the copy engine and
/// reconcile compare against without further clock reads.
///
/// A deadline that cannot be trusted — already past when the invocation
/// starts, or further away than the function's `timeout` allows (a local
/// Runtime API emulator may send a relative value: cargo-lambda 1.9 sends
/// 600000) — is replaced by `timeout` from now, and said once in the log.
/// On AWS the deadline is always in the window, so nothing changes there.
pub fn invocation_deadline(deadline_ms: u64, timeout: Duration) -> std::time::Instant {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let left = Duration::from_millis(deadline_ms).checked_sub(now);
    match left {
        Some(left) if !left.is_zero() && left <= timeout + DEADLINE_SLACK => std::time::Instant::now() + left,
        _ => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!(
                    deadline_ms,
                    timeout_s = timeout.as_secs(),
                    "the invocation deadline is not a time in the next function timeout (a local emulator?); using the function timeout instead"
                )
            });
            std::time::Instant::now() + timeout
        }
    }
}

/// Awaits a function's initialisation. Under Lambda (`runtime_api`, the
/// Runtime API's address) a failure is also posted to the Runtime API's
/// `init/error`, so the invocation that started the environment fails with
/// the reason (a bad configuration, an unreadable secret) instead of an
/// unexplained `Runtime.ExitError`.
pub async fn initialised<T, E: std::fmt::Display>(
    runtime_api: Option<&str>,
    init: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let result = init.await;
    if let (Err(e), Some(api)) = (&result, runtime_api) {
        let message = format!("{e:#}");
        tracing::error!(error = %message, "initialisation failed");
        report_init_error(api, &message).await;
    }
    result
}

/// POSTs `message` to `{api}/2018-06-01/runtime/init/error` in the Runtime
/// API's error format. A failure to report is logged; the process exits
/// with the error either way.
async fn report_init_error(api: &str, message: &str) {
    // AWS sets `host:port`; emulators may give a URL with a scheme and a path.
    let base = match api.starts_with("http://") || api.starts_with("https://") {
        true => api.trim_end_matches('/').to_owned(),
        false => format!("http://{api}"),
    };
    let body = serde_json::json!({ "errorType": "Runtime.InitError", "errorMessage": message, "stackTrace": [] });
    let sent = reqwest::Client::new()
        .post(format!("{base}/2018-06-01/runtime/init/error"))
        .header("Lambda-Runtime-Function-Error-Type", "Runtime.InitError")
        .header("content-type", "application/vnd.aws.lambda.error+json")
        .timeout(Duration::from_secs(2))
        .body(body.to_string())
        .send()
        .await;
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot report the initialisation error to the Runtime API");
    }
}

/// How far past the configured timeout a deadline may lie and still be
/// believed (clock skew between the runtime and this process).
const DEADLINE_SLACK: Duration = Duration::from_secs(60);

/// Tunes glibc's malloc for a process that streams blobs for a long time.
///
/// - One arena. The copy engine's buffers are short-lived and cross threads
///   (a piece read on one tokio worker is written on another); with an
///   arena per thread, freed pieces stay resident in each. Measured on an
///   8-layer copy (`relay-bench copy-once`, release): peak RSS 18.2 → 16.1
///   MiB, same wall time.
/// - A fixed mmap threshold (64 KiB) and trim threshold (128 KiB). By
///   default glibc raises its mmap threshold each time a large buffer is
///   freed, so later buffers of that size live in the heap and stay
///   resident after use: a long-running worker's peak crept by about
///   0.2 MiB per 1 GiB copy (17.1 → 17.7 MiB over 5 copies). Fixed, the
///   socket and stream buffers go back to the system when freed: 16.1 MiB
///   flat over 5 copies, same wall time (`relay-bench copy-many … one-by-one`).
///
/// Call before any thread starts, i.e. before the tokio runtime is built.
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before
    // other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
    }
}

/// The multi-threaded tokio runtime the binaries run on, built after
/// [`tune_malloc`].
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tune_malloc();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch_ms_in(d: Duration) -> u64 {
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap() + d).as_millis() as u64
    }

    fn left(deadline: std::time::Instant) -> Duration {
        deadline.saturating_duration_since(std::time::Instant::now())
    }

    #[test]
    fn a_deadline_in_the_timeout_window_is_believed_and_others_are_replaced_by_the_timeout() {
        let timeout = Duration::from_secs(300);
        // AWS: epoch milliseconds, inside the timeout.
        let d = left(invocation_deadline(epoch_ms_in(Duration::from_secs(120)), timeout));
        assert!(d > Duration::from_secs(119) && d <= Duration::from_secs(120), "{d:?}");
        // cargo-lambda's emulator: 600000, a relative value, i.e. 1970.
        let d = left(invocation_deadline(600_000, timeout));
        assert!(d > Duration::from_secs(299) && d <= timeout, "{d:?}");
        // Absurdly far off.
        let d = left(invocation_deadline(epoch_ms_in(Duration::from_secs(86_400)), timeout));
        assert!(d <= timeout, "{d:?}");
        // Zero (no deadline sent).
        assert!(left(invocation_deadline(0, timeout)) > Duration::from_secs(299));
    }
}
