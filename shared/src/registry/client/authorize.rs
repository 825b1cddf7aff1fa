//! Whose credentials go where: the learnt `WWW-Authenticate` challenge,
//! Basic, the Bearer token flow with its realm checks, and rotation.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::Response;
use url::Url;

use super::super::auth::TokenCache;
use super::super::auth::{Challenge, Credentials, TokenResponse};
use super::error::redact;
use super::{header_str, RegistryClient, RegistryError};

#[derive(Default)]
pub(super) struct AuthState {
    challenge: Option<Challenge>,
    tokens: TokenCache,
}

/// A token answer larger than this is refused.
const MAX_TOKEN_BYTES: usize = 1024 * 1024;

/// Same scheme, host and port.
fn same_origin(a: &Url, b: &Url) -> bool {
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
        self.credentials.read().expect("credentials lock").as_ref().map(Credentials::basic_header)
    }

    /// The credentials in use (for the same registry's other APIs).
    pub fn credentials(&self) -> Option<Credentials> {
        self.credentials.read().expect("credentials lock").clone()
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
    pub(super) fn learn_challenge(&self, resp: &Response, scope: &str, sent: Option<&str>) -> bool {
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

    pub(super) async fn authorization(&self, scope: &str) -> Result<Option<String>, RegistryError> {
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
        let mut req = self.http.get(url).timeout(self.request_timeout);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::client::{ClientOptions, Role};

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
