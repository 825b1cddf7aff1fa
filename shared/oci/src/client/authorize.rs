//! The registry client's side of authentication: it asks its
//! [`Authorizer`](super::super::auth::Authorizer) once per request, fetches the tokens it asks for (with
//! the credentials only for the token service's origin), and hands it
//! each 401.

use std::time::Duration;

use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use url::Url;

pub(super) use super::super::auth::same_origin;
use super::super::auth::{realm_shown, Authorization, Credentials, TokenRequest, TokenResponse};
use super::error::redact;
use super::transport::{Bound, Credential, Exchange, Outgoing};
use super::{header_str, RegistryClient, RegistryError};

/// A token answer larger than this is refused.
const MAX_TOKEN_BYTES: usize = 1024 * 1024;

impl RegistryClient {
    pub(super) fn same_origin(&self, url: &Url) -> bool {
        same_origin(url, &self.base)
    }

    /// The credentials in use (for the same registry's other APIs).
    pub fn credentials(&self) -> Option<Credentials> {
        self.auth.credentials()
    }

    /// Uses `credentials` from now on (a rotated secret, re-read), and
    /// forgets the tokens the old ones obtained.
    pub fn set_credentials(&self, credentials: Option<Credentials>) {
        self.auth.set_credentials(credentials)
    }

    /// See [`Authorizer::challenged`](super::super::auth::Authorizer::challenged).
    pub(super) fn learn_challenge(&self, resp: &Response, scope: &str, sent: Option<&str>) -> bool {
        self.auth.challenged(resp.url(), header_str(resp.headers(), WWW_AUTHENTICATE), scope, sent)
    }

    /// The `Authorization` value of a request for `scope`, fetching a token
    /// first when the authorizer asks for one.
    pub(super) async fn authorization(&self, scope: &str) -> Result<Option<String>, RegistryError> {
        match self.auth.for_request(scope)? {
            Authorization::Ready(value) => Ok(value),
            Authorization::Token(request) => {
                let (token, lifetime) = self.fetch_token(&request).await?;
                Ok(Some(self.auth.token_received(scope, token, lifetime)))
            }
        }
    }

    /// Asks the token service, with the credentials only for its origin.
    async fn fetch_token(&self, request: &TokenRequest) -> Result<(String, Duration), RegistryError> {
        let fail = |reason: String| RegistryError::Token { registry: self.name.clone(), reason };
        let url = &request.url;
        let credential = request.basic.as_deref().map(|value| Credential { origin: url, value });
        tracing::debug!(registry = %self.name, realm = %realm_shown(url), scope = request.scope, credentials = ?self.credentials(), "token requested");
        let outgoing = Outgoing {
            method: Method::GET,
            url: url.clone(),
            headers: HeaderMap::new(),
            body: None,
            bound: Bound::Whole,
        };
        let resp = match self.exchange(outgoing, credential, None).await? {
            Exchange::Answer { response, .. } => response,
            Exchange::Failed(e) => return Err(fail(redact(&e))),
            Exchange::NoAnswer => return Err(fail(format!("timed out: no answer within {:?}", self.request_timeout))),
        };
        // The token service refused the account: a credential failure, so
        // the worker reads the secret again (it may have been rotated) and
        // tries once more, like a registry's own 401.
        if matches!(resp.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            let path = format!("token service {}", url.path());
            return Err(RegistryError::Denied { registry: self.name.clone(), path, status: resp.status() });
        }
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP {}", resp.status())));
        }
        let body = self.read_capped(resp, MAX_TOKEN_BYTES, "token response").await?;
        let body: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| fail(format!("token response is not JSON: {e}")))?;
        let lifetime = body.lifetime();
        let token = body.token.or(body.access_token).ok_or_else(|| fail("no token in response".into()))?;
        Ok((token, lifetime))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use axum::extract::Request;
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;

    use super::*;
    use crate::client::{ClientOptions, Role};

    /// A registry on 127.0.0.1 whose `/v2/` wants a token from its own
    /// `/token`, which gives `expires_in` as this raw JSON (absent when
    /// `None`). Returns its URL and the count of tokens it issued.
    async fn token_registry(expires_in: Option<&'static str>) -> (Url, Arc<AtomicUsize>) {
        let issued = Arc::new(AtomicUsize::new(0));
        let counter = issued.clone();
        let handler = move |req: Request| {
            let counter = counter.clone();
            async move {
                let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
                match req.uri().path() {
                    "/token" => {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let lifetime = expires_in.map(|e| format!(",\"expires_in\":{e}")).unwrap_or_default();
                        format!("{{\"token\":\"tok\"{lifetime}}}").into_response()
                    }
                    _ if req.headers().get(header::AUTHORIZATION).is_some_and(|a| a == "Bearer tok") => {
                        StatusCode::OK.into_response()
                    }
                    _ => {
                        let challenge = format!("Bearer realm=\"http://{host}/token\",service=\"test\"");
                        (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, challenge)]).into_response()
                    }
                }
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(handler)).await });
        (url, issued)
    }

    fn bearer_client(base: Url) -> RegistryClient {
        RegistryClient::new("r", base, Role::Source, None, ClientOptions::default()).unwrap()
    }

    /// A token service that refuses the account (401) is a denial, not a
    /// transient failure: the worker reads the secret again (a rotation)
    /// and tries once more, and a denial after that is final.
    #[tokio::test]
    async fn a_token_service_refusing_the_account_is_a_denial() {
        let handler = |req: Request| async move {
            let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default().to_owned();
            match req.uri().path() {
                "/token" => StatusCode::UNAUTHORIZED.into_response(),
                _ => {
                    let challenge = format!("Bearer realm=\"http://{host}/token\",service=\"test\"");
                    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, challenge)]).into_response()
                }
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(handler)).await });
        let credentials = Credentials { username: "robot".into(), password: "rotated-away".into() };
        let c = RegistryClient::new("r", base, Role::Source, Some(credentials), ClientOptions::default()).unwrap();
        let err = c.ping().await.unwrap_err();
        assert!(matches!(err, RegistryError::Denied { status: StatusCode::UNAUTHORIZED, .. }), "{err}");
    }

    /// Requests sent together by a fresh client to a Basic registry: the
    /// first is refused (401) and teaches the challenge; the others wait
    /// for that answer and go with the credentials, not one 401 each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_requests_learn_the_challenge_once() {
        let refused = Arc::new(AtomicUsize::new(0));
        let counter = refused.clone();
        let handler = move |req: Request| {
            let counter = counter.clone();
            async move {
                if req.headers().get(header::AUTHORIZATION).is_some() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    return StatusCode::OK.into_response();
                }
                counter.fetch_add(1, Ordering::SeqCst);
                // A round trip's time, as a real registry takes.
                tokio::time::sleep(Duration::from_millis(50)).await;
                (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Basic realm=\"r\"")]).into_response()
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(handler)).await });
        let credentials = Credentials { username: "relay".into(), password: "a-password-0123".into() };
        let c = RegistryClient::new("r", base, Role::Destination, Some(credentials), ClientOptions::default()).unwrap();
        let pings = futures_util::future::join_all((0..10).map(|_| c.ping())).await;
        assert!(pings.iter().all(Result::is_ok), "{pings:?}");
        assert_eq!(refused.load(Ordering::SeqCst), 1, "401s for 10 requests sent together");
        assert_eq!(c.requests(), 11, "the refused one sent again, the others once");
    }

    /// (`expires_in` as sent, tokens issued for two requests): whatever the
    /// token service says, the requests go through and nothing panics; a
    /// token past any clock is kept, one that expired already is not.
    #[tokio::test]
    async fn any_expires_in_is_survived() {
        let table: [(Option<&'static str>, usize); 6] = [
            (Some("18446744073709551615"), 1),
            (Some("9223372036854775807"), 1),
            (Some("1e300"), 1),
            (Some("-1"), 2),
            (Some("-9223372036854775808"), 2),
            (None, 1),
        ];
        for (expires_in, want) in table {
            let (base, issued) = token_registry(expires_in).await;
            let c = bearer_client(base);
            c.ping().await.unwrap_or_else(|e| panic!("{expires_in:?}: {e}"));
            c.ping().await.unwrap_or_else(|e| panic!("{expires_in:?}, again: {e}"));
            assert_eq!(issued.load(Ordering::SeqCst), want, "tokens issued with expires_in {expires_in:?}");
            assert!(!c.auth.is_poisoned(), "{expires_in:?}");
        }
    }

    /// A panic while the auth or credentials lock is held (a bug anywhere)
    /// does not break the requests after it: the next ones still learn the
    /// challenge, get a token and pass, and rotated credentials still land.
    #[tokio::test]
    async fn a_panic_holding_the_locks_does_not_break_the_next_request() {
        let (base, issued) = token_registry(Some("300")).await;
        let c = bearer_client(base);
        c.ping().await.expect("before");
        c.auth.poison();
        assert!(c.auth.is_poisoned(), "both locks poisoned");
        c.ping().await.expect("after a panic, with the cached token");
        c.set_credentials(None);
        c.ping().await.expect("after a panic, with a token asked for again");
        assert_eq!(issued.load(Ordering::SeqCst), 2);
    }
}
