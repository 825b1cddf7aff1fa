//! Resolving credential references from the configuration into values:
//! from environment variables named in the file, or from Secrets Manager.
//! Values are kept in memory only and never logged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use crate::config::{CredentialsRef, SecretSettings, WebhookAuthSource};
use crate::registry::{Credentials, RegistryClient};

/// Keeps registry credentials fresh: read again when `ttl` has passed (so
/// a rotation is picked up before the old value stops working) and at once
/// when the registry denies them (so a rotation done in place needs no
/// redeploy either). A denial that persists after the re-read is a real one:
/// the worker then dead-letters the task with the reason.
pub struct CredentialReloader {
    secrets: SecretSource,
    /// Registry name (`source` for the source) → where its credentials live.
    refs: HashMap<String, CredentialSource>,
    ttl: Duration,
    /// When each was last read (or tried), for the TTL.
    read_at: Mutex<HashMap<String, Instant>>,
    /// When each was last read because of a denial: the tasks of a batch
    /// denied together share one read.
    denied_at: Mutex<HashMap<String, Instant>>,
    /// Reads because the TTL passed, and because a registry denied.
    pub reads_on_expiry: AtomicU64,
    pub reads_on_denial: AtomicU64,
}

/// Where a registry's credentials come from.
pub enum CredentialSource {
    /// The configuration's reference (environment or Secrets Manager).
    Configured(CredentialsRef),
    /// ECR's `GetAuthorizationToken` (kind `ecr`): cached until shortly
    /// before the token expires.
    Ecr(Arc<crate::ecr::EcrControl>),
}

/// A registry's credentials are re-read at most this often: the tasks of a
/// batch denied together cause one read, not one each.
pub const REREAD_EVERY: Duration = Duration::from_secs(1);

impl CredentialReloader {
    /// `refs` were read just now (at start-up).
    pub fn new(secrets: SecretSource, refs: HashMap<String, CredentialSource>, ttl: Duration) -> Self {
        let now = Instant::now();
        let read_at = refs.keys().map(|k| (k.clone(), now)).collect();
        CredentialReloader {
            secrets,
            refs,
            ttl,
            read_at: Mutex::new(read_at),
            denied_at: Mutex::default(),
            reads_on_expiry: AtomicU64::new(0),
            reads_on_denial: AtomicU64::new(0),
        }
    }

    /// Reads `client`'s credentials again when the TTL has passed. A failed
    /// read keeps the current ones (the registry is the judge of them) and
    /// is logged; it is tried again after another TTL.
    pub async fn refresh_if_due(&self, client: &RegistryClient) {
        if !self.claim(&self.read_at, client.name(), self.ttl) {
            return;
        }
        self.reads_on_expiry.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.read_into(client, false).await {
            tracing::warn!(registry = client.name(), error = %e, "reading credentials again failed; keeping the current ones");
        }
    }

    /// Reads `client`'s credentials again after a denial and hands them to
    /// it. `Ok(false)` when it has none configured (nothing a re-read could
    /// change).
    pub async fn reread(&self, client: &RegistryClient) -> Result<bool, SecretError> {
        if !self.refs.contains_key(client.name()) {
            return Ok(false);
        }
        if self.claim(&self.denied_at, client.name(), REREAD_EVERY) {
            self.reads_on_denial.fetch_add(1, Ordering::Relaxed);
            self.read_into(client, true).await?;
            tracing::info!(registry = client.name(), "credentials denied: read them again");
        }
        Ok(true)
    }

    /// True (and the read is this caller's) when `name` has credentials
    /// configured and `times` says it was read at least `age` ago.
    fn claim(&self, times: &Mutex<HashMap<String, Instant>>, name: &str, age: Duration) -> bool {
        if !self.refs.contains_key(name) {
            return false;
        }
        let mut times = times.lock().expect("credential read lock");
        if times.get(name).is_some_and(|t| t.elapsed() < age) {
            return false;
        }
        times.insert(name.to_owned(), Instant::now());
        true
    }

    /// `renew`: the registry denied the current ones (an ECR token is then
    /// fetched again even if it has not expired).
    async fn read_into(&self, client: &RegistryClient, renew: bool) -> Result<(), SecretError> {
        let Some(source) = self.refs.get(client.name()) else { return Ok(()) };
        self.read_at.lock().expect("credential read lock").insert(client.name().to_owned(), Instant::now());
        let credentials = match source {
            CredentialSource::Configured(r) => self.secrets.credentials(r).await?,
            CredentialSource::Ecr(ecr) => ecr.credentials(renew).await?,
        };
        client.set_credentials(Some(credentials));
        Ok(())
    }
}

/// Reads one environment variable (the process's, or a test's stand-in).
type EnvLookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// Where secrets are read from: the process environment, and Secrets
/// Manager when a reference names a secret.
#[derive(Clone)]
pub struct SecretSource {
    secrets_manager: Option<aws_sdk_secretsmanager::Client>,
    env: Arc<EnvLookup>,
}

/// Accepted webhook `Authorization` values are at least this long.
pub const MIN_AUTH_VALUE_CHARS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{field}: an accepted Authorization value has {chars} characters; use at least {MIN_AUTH_VALUE_CHARS} (e.g. `Bearer ` and 32 random characters)")]
    Weak { field: String, chars: usize },
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    #[error("secret {id}: {reason}")]
    Secret { id: String, reason: String },
    #[error("file {path}: {reason}")]
    File { path: String, reason: String },
    #[error(transparent)]
    Ecr(#[from] crate::ecr::EcrError),
}

#[derive(serde::Deserialize)]
struct UserPassword {
    username: String,
    password: String,
}

impl SecretSource {
    pub fn new(
        secrets_manager: Option<aws_sdk_secretsmanager::Client>,
        env: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        SecretSource { secrets_manager, env: Arc::new(env) }
    }

    /// The process environment, plus Secrets Manager.
    pub fn from_process(secrets_manager: Option<aws_sdk_secretsmanager::Client>) -> Self {
        Self::new(secrets_manager, |k| std::env::var(k).ok())
    }

    pub async fn credentials(&self, r: &CredentialsRef) -> Result<Credentials, SecretError> {
        match r {
            CredentialsRef::Env { username, password_env } => {
                Ok(Credentials { username: username.clone(), password: self.env_var(password_env)? })
            }
            CredentialsRef::Secret { secret_id } => {
                let raw = self.secret_string(secret_id).await?;
                let up: UserPassword = serde_json::from_str(&raw).map_err(|_| SecretError::Secret {
                    id: secret_id.clone(),
                    reason: "value is not JSON {\"username\": …, \"password\": …}".into(),
                })?;
                Ok(Credentials { username: up.username, password: up.password })
            }
        }
    }

    pub async fn webhook_auth(&self, source: &WebhookAuthSource) -> Result<AuthValues, SecretError> {
        let raw = match source {
            WebhookAuthSource::Env(name) => self.env_var(name)?,
            WebhookAuthSource::Secret(id) => self.secret_string(id).await?,
        };
        let values: Vec<String> = raw.split(',').map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned).collect();
        if values.is_empty() {
            let what = match source {
                WebhookAuthSource::Env(n) => format!("environment variable {n}"),
                WebhookAuthSource::Secret(id) => format!("secret {id}"),
            };
            return Err(SecretError::Secret { id: what, reason: "holds no accepted Authorization value".into() });
        }
        // A short value can be guessed through a public Function URL; the
        // error names the field and the length, never the value.
        if let Some(short) = values.iter().find(|v| v.chars().count() < MIN_AUTH_VALUE_CHARS) {
            let field = match source {
                WebhookAuthSource::Env(n) => format!("webhook.auth_values_env ({n})"),
                WebhookAuthSource::Secret(id) => format!("webhook.auth_secret_id ({id})"),
            };
            return Err(SecretError::Weak { field, chars: short.chars().count() });
        }
        Ok(AuthValues { values })
    }

    /// A private CA bundle (PEM) from a file or a Secrets Manager secret.
    pub async fn ca_bundle(&self, source: &crate::registry_kind::CaSource) -> Result<Vec<u8>, SecretError> {
        match source {
            crate::registry_kind::CaSource::File(path) => std::fs::read(path)
                .map_err(|e| SecretError::File { path: path.display().to_string(), reason: e.to_string() }),
            crate::registry_kind::CaSource::Secret(id) => Ok(self.secret_string(id).await?.into_bytes()),
        }
    }

    fn env_var(&self, name: &str) -> Result<String, SecretError> {
        (self.env)(name).filter(|v| !v.is_empty()).ok_or_else(|| SecretError::MissingEnv(name.to_owned()))
    }

    async fn secret_string(&self, id: &str) -> Result<String, SecretError> {
        let fail = |reason: String| SecretError::Secret { id: id.to_owned(), reason };
        let client = self.secrets_manager.as_ref().ok_or_else(|| fail("Secrets Manager is not configured".into()))?;
        let out = client
            .get_secret_value()
            .secret_id(id)
            .send()
            .await
            .map_err(|e| fail(aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string()))?;
        out.secret_string().map(str::to_owned).ok_or_else(|| fail("has no string value".into()))
    }
}

/// The accepted webhook values, read again in the background once the TTL
/// has passed: a request never waits for Secrets Manager, and a rotated
/// value is accepted (and a revoked one refused) without a redeploy.
///
/// A failed read keeps the previous values, so a Secrets Manager hiccup
/// does not turn into 401s for Harbor; but when reads have failed for longer
/// than `fail_closed_after`, the previous values are no longer trusted and
/// [`WebhookAuth::current`] refuses until a read succeeds.
#[derive(Clone)]
pub struct WebhookAuth {
    inner: Arc<AuthInner>,
}

struct AuthInner {
    source: WebhookAuthSource,
    secrets: SecretSource,
    ttl: Duration,
    fail_closed_after: Duration,
    state: Mutex<AuthState>,
}

struct AuthState {
    values: AuthValues,
    /// No read starts before this (after a success: the TTL; after a
    /// failure: a shorter pause, see [`RETRY_FAILED_READ`]).
    next_read: tokio::time::Instant,
    reading: bool,
    /// When the first of the reads failing since the last success failed.
    failing_since: Option<tokio::time::Instant>,
}

/// After a failed read of the webhook's values, the next is tried this soon
/// (or after the TTL, if that is shorter).
pub const RETRY_FAILED_READ: Duration = Duration::from_secs(30);

/// The webhook's values could not be confirmed for too long.
#[derive(Debug, thiserror::Error)]
#[error("the accepted Authorization values could not be read for {0:?} (fail closed)")]
pub struct AuthUnavailable(pub Duration);

impl WebhookAuth {
    /// Reads the values once; start-up fails if they cannot be read.
    pub async fn load(
        source: WebhookAuthSource,
        secrets: SecretSource,
        settings: &SecretSettings,
    ) -> Result<Self, SecretError> {
        let values = secrets.webhook_auth(&source).await?;
        // Their `Debug` says how many, never which.
        tracing::debug!(values = ?values, "webhook auth values read");
        let ttl = settings.ttl();
        let state =
            AuthState { values, next_read: tokio::time::Instant::now() + ttl, reading: false, failing_since: None };
        let inner = AuthInner {
            source,
            secrets,
            ttl,
            fail_closed_after: settings.fail_closed_after(),
            state: Mutex::new(state),
        };
        Ok(WebhookAuth { inner: Arc::new(inner) })
    }

    /// The current values, without waiting: when they are due, a read
    /// starts in the background and a later request sees its result.
    pub fn current(&self) -> Result<AuthValues, AuthUnavailable> {
        let now = tokio::time::Instant::now();
        let mut state = self.inner.state.lock().expect("webhook auth lock");
        if now >= state.next_read && !state.reading {
            state.reading = true;
            let auth = self.clone();
            tokio::spawn(async move { auth.read().await });
        }
        match state.failing_since {
            Some(since) if now.duration_since(since) > self.inner.fail_closed_after => {
                Err(AuthUnavailable(now.duration_since(since)))
            }
            _ => Ok(state.values.clone()),
        }
    }

    /// Reads the values from their source now (what the background read
    /// does).
    pub async fn read(&self) {
        let inner = &self.inner;
        let result = inner.secrets.webhook_auth(&inner.source).await;
        let now = tokio::time::Instant::now();
        let mut state = inner.state.lock().expect("webhook auth lock");
        state.reading = false;
        match result {
            Ok(values) => {
                tracing::debug!(values = ?values, "webhook auth values read");
                state.values = values;
                state.failing_since = None;
                state.next_read = now + inner.ttl;
            }
            Err(e) => {
                let since = *state.failing_since.get_or_insert(now);
                tracing::warn!(error = %e, failing_for_s = now.duration_since(since).as_secs(), "reading the webhook auth values again failed; keeping the previous ones until fail-closed");
                state.next_read = now + inner.ttl.min(RETRY_FAILED_READ);
            }
        }
    }
}

/// The accepted webhook `Authorization` values (several, for rotation).
#[derive(Clone)]
pub struct AuthValues {
    values: Vec<String>,
}

impl AuthValues {
    pub fn new(values: Vec<String>) -> Self {
        AuthValues { values }
    }

    /// How many values are accepted.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The value to give Harbor: the last listed (during a rotation, old
    /// and new are listed in that order).
    pub fn newest(&self) -> &str {
        self.values.last().map(String::as_str).unwrap_or_default()
    }

    /// Constant-time in the compared bytes: every accepted value is checked
    /// (no early exit) and lengths are hidden by comparing hashes.
    pub fn accepts(&self, presented: Option<&str>) -> bool {
        use sha2::{Digest, Sha256};
        let Some(presented) = presented else {
            return false;
        };
        let p = Sha256::digest(presented.as_bytes());
        let mut ok = subtle::Choice::from(0);
        for v in &self.values {
            ok |= Sha256::digest(v.as_bytes()).ct_eq(&p);
        }
        ok.into()
    }
}

impl std::fmt::Debug for AuthValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuthValues({} values, redacted)", self.values.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> SecretSource {
        SecretSource::new(None, |k| match k {
            "PW" => Some("s3cret".into()),
            "AUTH" => Some("Bearer aaaaaaaaaa, Bearer bbbbbbbbbb ,".into()),
            "WEAK" => Some("Bearer long-enough-value, Bearer short9".into()),
            _ => None,
        })
    }

    #[tokio::test]
    async fn env_credentials_and_auth_values() {
        let s = source();
        let c = s.credentials(&CredentialsRef::Env { username: "u".into(), password_env: "PW".into() }).await.unwrap();
        assert_eq!(c.password, "s3cret");
        let err = s
            .credentials(&CredentialsRef::Env { username: "u".into(), password_env: "NOPE".into() })
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "environment variable NOPE is not set");

        let auth = s.webhook_auth(&WebhookAuthSource::Env("AUTH".into())).await.unwrap();
        assert!(auth.accepts(Some("Bearer aaaaaaaaaa")));
        assert!(auth.accepts(Some("Bearer bbbbbbbbbb")));
        assert!(!auth.accepts(Some("Bearer cccccccccc")));
        assert!(!auth.accepts(Some("")));
        assert!(!auth.accepts(None));
        assert!(!format!("{auth:?}").contains("Bearer a"));
    }

    #[tokio::test]
    async fn weak_auth_values_are_refused_naming_the_field_not_the_value() {
        let err = source().webhook_auth(&WebhookAuthSource::Env("WEAK".into())).await.unwrap_err().to_string();
        assert!(
            err.starts_with("webhook.auth_values_env (WEAK): an accepted Authorization value has 13 characters"),
            "{err}"
        );
        assert!(!err.contains("short9"), "{err}");
    }

    /// A source whose value the test changes; `None` fails the read.
    fn settable(initial: &str) -> (Arc<Mutex<Option<String>>>, SecretSource) {
        let value = Arc::new(Mutex::new(Some(initial.to_owned())));
        let v = value.clone();
        (value, SecretSource::new(None, move |_| v.lock().unwrap().clone()))
    }

    /// Lets the background read run (time is paused: nothing else moves).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    const OLD: &str = "Bearer old-value-0123";
    const NEW: &str = "Bearer new-value-0123";

    #[tokio::test(start_paused = true)]
    async fn webhook_auth_is_read_again_in_the_background_after_the_ttl() {
        let (value, secrets) = settable(OLD);
        let settings = SecretSettings { ttl_seconds: 300, fail_closed_after_seconds: 3600 };
        let auth = WebhookAuth::load(WebhookAuthSource::Env("X".into()), secrets, &settings).await.unwrap();
        *value.lock().unwrap() = Some(NEW.into());
        settle().await;
        assert!(auth.current().unwrap().accepts(Some(OLD)), "cached within the TTL");

        tokio::time::advance(Duration::from_secs(301)).await;
        // The request that finds the values due does not wait for the read…
        assert!(auth.current().unwrap().accepts(Some(OLD)));
        settle().await;
        // …a later one sees it: the rotated value in, the revoked one out.
        let now = auth.current().unwrap();
        assert!(now.accepts(Some(NEW)) && !now.accepts(Some(OLD)));
    }

    #[tokio::test(start_paused = true)]
    async fn webhook_auth_fails_closed_when_reads_fail_past_the_bound_and_recovers() {
        let (value, secrets) = settable(OLD);
        let settings = SecretSettings { ttl_seconds: 300, fail_closed_after_seconds: 3600 };
        let auth = WebhookAuth::load(WebhookAuthSource::Env("X".into()), secrets, &settings).await.unwrap();
        *value.lock().unwrap() = None;
        tokio::time::advance(Duration::from_secs(301)).await;
        // Reads keep failing; the last good values stay accepted for the bound.
        for _ in 0..119 {
            assert!(auth.current().expect("within the bound").accepts(Some(OLD)));
            settle().await;
            tokio::time::advance(RETRY_FAILED_READ).await;
        }
        tokio::time::advance(Duration::from_secs(31)).await;
        let err = auth.current().expect_err("past the bound: fail closed");
        assert!(err.0 > Duration::from_secs(3600), "{err}");
        settle().await;

        // Secrets Manager answers again: the next read restores service.
        *value.lock().unwrap() = Some(NEW.into());
        settle().await;
        tokio::time::advance(RETRY_FAILED_READ).await;
        assert!(auth.current().is_err(), "still closed until a read succeeds");
        settle().await;
        assert!(auth.current().unwrap().accepts(Some(NEW)));
    }

    #[tokio::test]
    async fn secret_without_client_is_a_clear_error() {
        let err = source().credentials(&CredentialsRef::Secret { secret_id: "x".into() }).await.unwrap_err();
        assert!(err.to_string().contains("secret x"));
    }
}
