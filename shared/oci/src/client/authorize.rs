//! Whose credentials go where: the learnt `WWW-Authenticate` challenge,
//! Basic, the Bearer token flow with its realm checks, and rotation.

use std::time::Duration;

use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::super::auth::{unpoisoned, Challenge, Credentials, TokenCache, TokenResponse};
use super::error::redact;
use super::transport::{Bound, Credential, Exchange, Outgoing};
use super::{header_str, RegistryClient, RegistryError};

/// What the client learnt about authenticating, behind its `auth` lock.
/// Nothing that can panic runs while the lock is held, and a lock poisoned
/// all the same is used again ([`unpoisoned`]).
#[derive(Default)]
pub(super) struct AuthState {
    challenge: Option<Challenge>,
    tokens: TokenCache,
}

/// A token answer larger than this is refused.
const MAX_TOKEN_BYTES: usize = 1024 * 1024;

/// Same scheme, host and port.
pub(super) fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

impl RegistryClient {
    pub(super) fn same_origin(&self, url: &Url) -> bool {
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

    /// The Basic header of the current credentials, if there are any.
    fn basic_header(&self) -> Option<String> {
        unpoisoned(self.credentials.read()).as_ref().map(Credentials::basic_header)
    }

    /// The credentials in use (for the same registry's other APIs).
    pub fn credentials(&self) -> Option<Credentials> {
        unpoisoned(self.credentials.read()).clone()
    }

    /// Uses `credentials` from now on (a rotated secret, re-read), and
    /// forgets the tokens the old ones obtained.
    pub fn set_credentials(&self, credentials: Option<Credentials>) {
        tracing::debug!(registry = %self.name, credentials = ?credentials, "credentials replaced; their tokens forgotten");
        *unpoisoned(self.credentials.write()) = credentials;
        unpoisoned(self.auth.lock()).tokens = Default::default();
    }

    /// Records the challenge of a 401 answered to a request that carried
    /// `sent`. Returns whether a retry can help: the request went without
    /// credentials (concurrent requests may all race the first challenge),
    /// the scheme changed, or its token expired (forgotten here unless a
    /// concurrent request already renewed it).
    pub(super) fn learn_challenge(&self, resp: &Response, scope: &str, sent: Option<&str>) -> bool {
        // A challenge from where a redirect led (another host) is not this
        // registry's: learning it would send the credentials there.
        if !self.same_origin(resp.url()) {
            return false;
        }
        let Some(challenge) = header_str(resp.headers(), WWW_AUTHENTICATE).and_then(Challenge::parse) else {
            return false;
        };
        let credentials = self.credentials();
        let bearer = matches!(challenge, Challenge::Bearer { .. });
        let sent_token = sent.and_then(|s| s.strip_prefix("Bearer "));
        let changed = {
            let mut state = unpoisoned(self.auth.lock());
            if let Some(t) = sent_token {
                if state.tokens.get(scope).as_deref() == Some(t) {
                    state.tokens.forget(scope);
                }
            }
            let changed = state.challenge.as_ref() != Some(&challenge);
            state.challenge = Some(challenge.clone());
            changed
        };
        if changed {
            // Which account will answer it (the password is redacted).
            tracing::debug!(registry = %self.name, challenge = ?challenge, credentials = ?credentials, "registry asks for authentication");
        }
        // Basic with the same credentials again cannot help, nor can anonymous.
        let can_authenticate = credentials.is_some() || bearer;
        can_authenticate && (sent.is_none() || changed || sent_token.is_some())
    }

    pub(super) async fn authorization(&self, scope: &str) -> Result<Option<String>, RegistryError> {
        let challenge = {
            let state = unpoisoned(self.auth.lock());
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
        let (token, lifetime) = self.fetch_token(&realm, service.as_deref(), scope).await?;
        unpoisoned(self.auth.lock()).tokens.put(scope, token.clone(), lifetime);
        Ok(Some(format!("Bearer {token}")))
    }

    pub(super) async fn fetch_token(
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
        let basic = self.basic_header();
        let credential = basic.as_deref().map(|value| Credential { origin: &url, value });
        tracing::debug!(registry = %self.name, realm = %realm_shown(&url), scope, credentials = ?self.credentials(), "token requested");
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

/// A realm as logs show it: scheme, host and path, not its query.
fn realm_shown(url: &Url) -> String {
    format!("{}://{}{}", url.scheme(), url.host_str().unwrap_or_default(), url.path())
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
        let auth = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = c.auth.lock();
            panic!("a bug while the auth lock is held");
        }));
        let credentials = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = c.credentials.write();
            panic!("a bug while the credentials lock is held");
        }));
        assert!(auth.is_err() && credentials.is_err());
        assert!(c.auth.is_poisoned() && c.credentials.is_poisoned(), "both locks poisoned");
        c.ping().await.expect("after a panic, with the cached token");
        c.set_credentials(None);
        c.ping().await.expect("after a panic, with a token asked for again");
        assert_eq!(issued.load(Ordering::SeqCst), 2);
    }

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
