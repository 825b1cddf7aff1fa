//! Resolving credential references from the configuration into values:
//! from environment variables named in the file, or from Secrets Manager.
//! Values are kept in memory only and never logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;
use tokio::sync::RwLock;

use crate::config::{CredentialsRef, WebhookAuthSource};
use crate::registry::Credentials;

/// Re-reads a registry's credentials when the registry denies them: a
/// password rotated together with its secret needs no redeploy, and a
/// denial that persists after the re-read is a real one (the worker then
/// dead-letters the task with the reason instead of retrying it).
pub struct CredentialReloader {
    secrets: SecretSource,
    /// Registry name (`source` for the source) → where its credentials live.
    refs: std::collections::HashMap<String, CredentialsRef>,
    /// When each was last re-read: tasks denied together re-read once.
    last: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
}

/// A registry's credentials are re-read at most this often: the tasks of a
/// batch denied together cause one read, not one each.
pub const REREAD_EVERY: Duration = Duration::from_secs(1);

impl CredentialReloader {
    pub fn new(secrets: SecretSource, refs: std::collections::HashMap<String, CredentialsRef>) -> Self {
        CredentialReloader { secrets, refs, last: Default::default() }
    }

    /// Re-reads `client`'s credentials and hands them to it. `Ok(false)`
    /// when it has none configured (nothing a re-read could change).
    pub async fn reread(&self, client: &crate::registry::RegistryClient) -> Result<bool, SecretError> {
        let Some(r) = self.refs.get(client.name()) else { return Ok(false) };
        {
            let mut last = self.last.lock().expect("reread lock");
            if last.get(client.name()).is_some_and(|t| t.elapsed() < REREAD_EVERY) {
                return Ok(true);
            }
            last.insert(client.name().to_owned(), Instant::now());
        }
        let fresh = self.secrets.credentials(r).await?;
        client.set_credentials(Some(fresh));
        tracing::info!(registry = client.name(), "credentials denied: read them again");
        Ok(true)
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

/// The accepted webhook values, cached and re-read from their source once
/// `ttl` has passed, so a rotated secret is picked up without a redeploy.
pub struct WebhookAuth {
    source: WebhookAuthSource,
    secrets: SecretSource,
    ttl: Duration,
    cached: RwLock<(AuthValues, Instant)>,
}

impl WebhookAuth {
    /// Reads the values once; start-up fails if they cannot be read.
    pub async fn load(source: WebhookAuthSource, secrets: SecretSource, ttl: Duration) -> Result<Self, SecretError> {
        let values = secrets.webhook_auth(&source).await?;
        Ok(WebhookAuth { source, secrets, ttl, cached: RwLock::new((values, Instant::now())) })
    }

    /// The current values. A failed refresh keeps the previous values (and
    /// is logged without them), so a Secrets Manager hiccup does not turn
    /// into 401s for Harbor.
    pub async fn current(&self) -> AuthValues {
        {
            let cached = self.cached.read().await;
            if cached.1.elapsed() < self.ttl {
                return cached.0.clone();
            }
        }
        let mut cached = self.cached.write().await;
        if cached.1.elapsed() >= self.ttl {
            match self.secrets.webhook_auth(&self.source).await {
                Ok(values) => *cached = (values, Instant::now()),
                Err(e) => {
                    tracing::warn!(error = %e, "refreshing webhook auth values failed; keeping the previous ones");
                    cached.1 = Instant::now();
                }
            }
        }
        cached.0.clone()
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

    #[tokio::test]
    async fn webhook_auth_is_cached_then_refreshed() {
        const OLD: &str = "Bearer old-value-0123";
        const NEW: &str = "Bearer new-value-0123";
        let value = Arc::new(std::sync::Mutex::new(OLD.to_owned()));
        let v = value.clone();
        let secrets = SecretSource::new(None, move |_| Some(v.lock().unwrap().clone()));
        let auth =
            WebhookAuth::load(WebhookAuthSource::Env("X".into()), secrets, Duration::from_millis(50)).await.unwrap();
        *value.lock().unwrap() = NEW.into();
        assert!(auth.current().await.accepts(Some(OLD)), "cached within the TTL");
        tokio::time::sleep(Duration::from_millis(60)).await;
        let now = auth.current().await;
        assert!(now.accepts(Some(NEW)) && !now.accepts(Some(OLD)), "re-read after the TTL");
        *value.lock().unwrap() = String::new();
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(auth.current().await.accepts(Some(NEW)), "a failed refresh keeps the last good values");
    }

    #[tokio::test]
    async fn secret_without_client_is_a_clear_error() {
        let err = source().credentials(&CredentialsRef::Secret { secret_id: "x".into() }).await.unwrap_err();
        assert!(err.to_string().contains("secret x"));
    }
}
