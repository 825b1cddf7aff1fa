//! Harbor's API keeps working across a rotation of the robot's secret, as
//! the registry clients do ([`crate::secrets::CredentialReloader`]): the
//! credentials are read again when `secrets.ttl_seconds` has passed — in
//! the background, so a webhook request never waits on Secrets Manager —
//! and at once when Harbor answers 401, after which the call is sent once
//! more. The webhook's label lookups, the worker's tag and source listings
//! and reconcile all ask Harbor through this one client.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::HarborApi;
use crate::config::CredentialsRef;
use crate::registry::auth::unpoisoned;
use crate::registry::Credentials;
use crate::secrets::{SecretSource, REREAD_EVERY};

/// Where the API's credentials come from, and when they were last read.
pub(super) struct Reread {
    secrets: SecretSource,
    reference: CredentialsRef,
    ttl: Duration,
    read_at: Mutex<Instant>,
    denied_at: Mutex<Option<Instant>>,
}

impl HarborApi {
    /// Reads the credentials again from `reference` after `ttl`, and on a
    /// 401 (they were read from it just now).
    pub fn with_reread(mut self, secrets: SecretSource, reference: CredentialsRef, ttl: Duration) -> Self {
        self.reread = Some(Arc::new(Reread {
            secrets,
            reference,
            ttl,
            read_at: Mutex::new(Instant::now()),
            denied_at: Mutex::new(None),
        }));
        self
    }

    /// Starts a background read when the TTL has passed (one at a time);
    /// a failed read keeps the current credentials, and Harbor judges them.
    pub(super) fn refresh_if_due(&self) {
        let Some(reread) = &self.reread else { return };
        {
            let mut read_at = unpoisoned(reread.read_at.lock());
            if read_at.elapsed() < reread.ttl {
                return;
            }
            *read_at = Instant::now();
        }
        let (reread, credentials) = (reread.clone(), self.credentials.clone());
        tokio::spawn(async move { read_into(&reread, &credentials).await });
    }

    /// After a 401: reads the credentials again (at most once a second,
    /// however many calls were refused together). False when there is
    /// nothing to read again, or the read failed: the 401 stands.
    pub(super) async fn reread_after_denial(&self) -> bool {
        let Some(reread) = &self.reread else { return false };
        let due = {
            let mut denied_at = unpoisoned(reread.denied_at.lock());
            let due = denied_at.is_none_or(|t| t.elapsed() >= REREAD_EVERY);
            if due {
                *denied_at = Some(Instant::now());
            }
            due
        };
        // A read another call made within the second counts for this one.
        !due || read_into(reread, &self.credentials).await
    }
}

async fn read_into(reread: &Reread, credentials: &RwLock<Option<Credentials>>) -> bool {
    match reread.secrets.credentials(&reread.reference).await {
        Ok(c) => {
            *unpoisoned(credentials.write()) = Some(c);
            *unpoisoned(reread.read_at.lock()) = Instant::now();
            tracing::info!("Harbor API: credentials read again");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "Harbor API: reading the credentials again failed; keeping the current ones");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;
    use base64::Engine;

    use super::*;

    /// A Harbor API on 127.0.0.1 whose robot's password is `password` (the
    /// test changes it); counts the requests it refused.
    async fn harbor(password: Arc<Mutex<String>>, refused: Arc<AtomicUsize>) -> url::Url {
        let app = axum::Router::new().route(
            "/api/v2.0/projects",
            get(move |headers: HeaderMap| {
                let (password, refused) = (password.clone(), refused.clone());
                async move {
                    let expected = format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD
                            .encode(format!("robot$relay:{}", password.lock().unwrap()))
                    );
                    let presented = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
                    if presented != expected {
                        refused.fetch_add(1, Ordering::Relaxed);
                        return (StatusCode::UNAUTHORIZED, "[]".to_owned());
                    }
                    (StatusCode::OK, r#"[{"project_id": 1, "name": "library"}]"#.to_owned())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap()).parse().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    #[tokio::test]
    async fn a_rotated_robot_secret_is_read_again_on_the_401_and_the_call_succeeds() {
        let password = Arc::new(Mutex::new("first".to_owned()));
        let refused = Arc::new(AtomicUsize::new(0));
        let base = harbor(password.clone(), refused.clone()).await;
        // The "environment" the secret is read from: rotated with the robot.
        let current = password.clone();
        let secrets = SecretSource::new(None, move |k| (k == "ROBOT").then(|| current.lock().unwrap().clone()));
        let reference = CredentialsRef::Env { username: "robot$relay".into(), password_env: "ROBOT".into() };
        let first = secrets.credentials(&reference).await.unwrap();
        let api = HarborApi::new(base, Some(first), false, None, Duration::from_secs(5)).unwrap().with_reread(
            secrets,
            reference,
            Duration::from_secs(3600),
        );
        assert_eq!(api.projects().await.unwrap(), vec!["library".to_owned()]);

        *password.lock().unwrap() = "second".to_owned();
        assert_eq!(api.projects().await.unwrap(), vec!["library".to_owned()], "no restart needed");
        assert_eq!(refused.load(Ordering::Relaxed), 1, "one 401, then the new secret");
    }

    #[tokio::test]
    async fn without_a_reference_a_401_stands() {
        let password = Arc::new(Mutex::new("first".to_owned()));
        let refused = Arc::new(AtomicUsize::new(0));
        let base = harbor(password.clone(), refused.clone()).await;
        let stale = Credentials { username: "robot$relay".into(), password: "stale".into() };
        let api = HarborApi::new(base, Some(stale), false, None, Duration::from_secs(5)).unwrap();
        assert!(api.projects().await.is_err());
        assert_eq!(refused.load(Ordering::Relaxed), 1, "asked once: nothing to read again");
    }
}
