//! The layer the registry client asks once per request:
//! [`Authorizer::for_request`] says what `Authorization` a request carries
//! (or which token to ask for first), [`Authorizer::challenged`] takes a
//! 401's `WWW-Authenticate`. It holds the credentials (rotated in place),
//! the learnt challenge, the tokens per scope and the realm checks, and
//! does no I/O: the client fetches the tokens it asks for.

use std::fmt;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use url::Url;

use super::{unpoisoned, Challenge, Credentials, TokenCache};
use crate::client::RegistryError;

/// One registry's authentication: its credentials, what its last 401 asked
/// for, and the tokens it gave. Nothing that can panic runs while a lock
/// is held, and a lock poisoned all the same is used again
/// ([`unpoisoned`]).
pub struct Authorizer {
    /// The registry's name, for errors and logs.
    registry: String,
    /// The registry's origin: challenges from elsewhere are not its own.
    origin: Url,
    /// Token services trusted besides https ones and the registry's own
    /// origin (the configuration's `token_realms`).
    token_realms: Vec<Url>,
    /// Replaced when the worker re-reads a rotated secret.
    credentials: RwLock<Option<Credentials>>,
    state: Mutex<AuthState>,
}

/// What was learnt about authenticating, behind the `state` lock.
#[derive(Default)]
struct AuthState {
    challenge: Option<Challenge>,
    tokens: TokenCache,
}

/// What a request needs before it goes.
#[derive(PartialEq, Eq)]
pub enum Authorization {
    /// This `Authorization` value, or none.
    Ready(Option<String>),
    /// A token first: ask the token service, then hand the answer to
    /// [`Authorizer::token_received`].
    Token(TokenRequest),
}

/// A token to ask for: the realm (checked) with its query, the Basic
/// header of the credentials if any, and the scope it is for.
#[derive(PartialEq, Eq)]
pub struct TokenRequest {
    pub url: Url,
    pub basic: Option<String>,
    pub scope: String,
}

impl fmt::Debug for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Authorization::Ready(value) => {
                let scheme = value.as_deref().map(|v| v.split(' ').next().unwrap_or_default());
                f.debug_tuple("Ready").field(&scheme.map(|s| format!("{s} <redacted>"))).finish()
            }
            Authorization::Token(request) => f.debug_tuple("Token").field(request).finish(),
        }
    }
}

impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRequest")
            .field("realm", &realm_shown(&self.url))
            .field("scope", &self.scope)
            .field("basic", &self.basic.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Same scheme, host and port.
pub fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

impl Authorizer {
    pub fn new(
        registry: impl Into<String>,
        origin: Url,
        token_realms: Vec<Url>,
        credentials: Option<Credentials>,
    ) -> Authorizer {
        Authorizer {
            registry: registry.into(),
            origin,
            token_realms,
            credentials: RwLock::new(credentials),
            state: Mutex::default(),
        }
    }

    /// The credentials in use.
    pub fn credentials(&self) -> Option<Credentials> {
        unpoisoned(self.credentials.read()).clone()
    }

    /// Uses `credentials` from now on (a rotated secret, re-read), and
    /// forgets the tokens the old ones obtained.
    pub fn set_credentials(&self, credentials: Option<Credentials>) {
        tracing::debug!(registry = %self.registry, credentials = ?credentials, "credentials replaced; their tokens forgotten");
        *unpoisoned(self.credentials.write()) = credentials;
        unpoisoned(self.state.lock()).tokens = Default::default();
    }

    /// What `Authorization` a request for `scope` to the registry's origin
    /// carries: none until a challenge was learnt, Basic for a Basic
    /// challenge, a cached token for Bearer, else the token to ask for (its
    /// realm checked first: see [`Authorizer::check_realm`]).
    pub fn for_request(&self, scope: &str) -> Result<Authorization, RegistryError> {
        let (realm, service) = {
            let state = unpoisoned(self.state.lock());
            match &state.challenge {
                None => return Ok(Authorization::Ready(None)),
                Some(Challenge::Basic) => return Ok(Authorization::Ready(self.basic_header())),
                Some(Challenge::Bearer { realm, service }) => match state.tokens.get(scope) {
                    Some(token) => return Ok(Authorization::Ready(Some(format!("Bearer {token}")))),
                    None => (realm.clone(), service.clone()),
                },
            }
        };
        let mut url = Url::parse(&realm)
            .map_err(|e| RegistryError::Token { registry: self.registry.clone(), reason: format!("bad realm: {e}") })?;
        self.check_realm(&url)?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = &service {
                q.append_pair("service", s);
            }
            for s in scope.split(' ').filter(|s| !s.is_empty()) {
                q.append_pair("scope", s);
            }
        }
        Ok(Authorization::Token(TokenRequest { url, basic: self.basic_header(), scope: scope.to_owned() }))
    }

    /// Keeps the token the service gave for `scope` (for its `lifetime`, see
    /// [`TokenCache::put`]); returns the `Authorization` value it makes.
    pub fn token_received(&self, scope: &str, token: String, lifetime: Duration) -> String {
        let header = format!("Bearer {token}");
        unpoisoned(self.state.lock()).tokens.put(scope, token, lifetime);
        header
    }

    /// Takes the challenge of a 401 answered from `answered_by` to a
    /// request for `scope` that carried `sent`. Returns whether sending the
    /// request again can help: it went without credentials (concurrent
    /// requests may all race the first challenge), the scheme changed, or
    /// its token expired (forgotten here unless a concurrent request
    /// already renewed it).
    pub fn challenged(
        &self,
        answered_by: &Url,
        www_authenticate: Option<&str>,
        scope: &str,
        sent: Option<&str>,
    ) -> bool {
        // A challenge from where a redirect led (another host) is not this
        // registry's: learning it would send the credentials there.
        if !same_origin(answered_by, &self.origin) {
            return false;
        }
        let Some(challenge) = www_authenticate.and_then(Challenge::parse) else {
            return false;
        };
        let credentials = self.credentials();
        let bearer = matches!(challenge, Challenge::Bearer { .. });
        let sent_token = sent.and_then(|s| s.strip_prefix("Bearer "));
        let changed = {
            let mut state = unpoisoned(self.state.lock());
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
            tracing::debug!(registry = %self.registry, challenge = ?challenge, credentials = ?credentials, "registry asks for authentication");
        }
        // Basic with the same credentials again cannot help, nor can anonymous.
        let can_authenticate = credentials.is_some() || bearer;
        can_authenticate && (sent.is_none() || changed || sent_token.is_some())
    }

    /// Whether the credentials may go to `realm` for a token: an https
    /// realm, this registry's own origin when it is plain http, or a realm
    /// the configuration lists. Anything else could be a hostile registry
    /// (or a hostile redirect) fishing for the password.
    fn check_realm(&self, realm: &Url) -> Result<(), RegistryError> {
        let trusted = realm.scheme() == "https"
            || same_origin(realm, &self.origin)
            || self.token_realms.iter().any(|t| same_origin(t, realm));
        if trusted {
            return Ok(());
        }
        Err(RegistryError::UntrustedRealm {
            registry: self.registry.clone(),
            realm: format!("{}://{}", realm.scheme(), realm.host_str().unwrap_or_default()),
        })
    }

    /// Panics while holding both locks (a bug anywhere), for the tests of
    /// what comes after.
    #[cfg(test)]
    pub(crate) fn poison(&self) {
        let state = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = self.state.lock();
            panic!("a bug while the auth lock is held");
        }));
        let credentials = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = self.credentials.write();
            panic!("a bug while the credentials lock is held");
        }));
        assert!(state.is_err() && credentials.is_err());
    }

    #[cfg(test)]
    pub(crate) fn is_poisoned(&self) -> bool {
        self.state.is_poisoned() || self.credentials.is_poisoned()
    }

    /// The Basic header of the current credentials, if there are any.
    fn basic_header(&self) -> Option<String> {
        unpoisoned(self.credentials.read()).as_ref().map(Credentials::basic_header)
    }
}

/// A realm as logs show it: scheme, host and path, not its query.
pub(crate) fn realm_shown(url: &Url) -> String {
    format!("{}://{}{}", url.scheme(), url.host_str().unwrap_or_default(), url.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authorizer(base: &str, listed: &[&str], credentials: Option<Credentials>) -> Authorizer {
        let listed = listed.iter().map(|u| Url::parse(u).unwrap()).collect();
        Authorizer::new("r", Url::parse(base).unwrap(), listed, credentials)
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
            let got = authorizer(base, listed, None).check_realm(&Url::parse(realm).unwrap());
            assert_eq!(got.is_ok(), trusted, "{base} {listed:?} {realm}: {got:?}");
            if let Err(e) = got {
                let host = Url::parse(realm).unwrap().host_str().unwrap().to_owned();
                assert!(e.to_string().contains(&host), "the error names the realm host: {e}");
            }
        }
    }

    fn robot() -> Option<Credentials> {
        Some(Credentials { username: "robot".into(), password: "s3cret".into() })
    }

    /// A 401 from the registry with this challenge, to a request that
    /// carried nothing.
    fn challenge(a: &Authorizer, www_authenticate: &str) -> bool {
        a.challenged(&Url::parse("https://reg.example/v2/").unwrap(), Some(www_authenticate), SCOPE, None)
    }

    const SCOPE: &str = "repository:p/app:pull,push repository:p/base:pull";
    const BEARER: &str = r#"Bearer realm="https://auth.example/token",service="reg""#;

    /// (credentials, challenge, worth sending again, then what a request
    /// carries): each asked of the layer alone, no client, no server.
    #[test]
    fn what_each_challenge_makes_a_request_carry() {
        let basic = robot().unwrap().basic_header();
        let token_url = "https://auth.example/token?service=reg&scope=repository%3Ap%2Fapp%3Apull%2Cpush&scope=repository%3Ap%2Fbase%3Apull";
        let table: [(Option<Credentials>, &str, bool, Authorization); 5] = [
            (robot(), "Basic realm=\"reg\"", true, Authorization::Ready(Some(basic.clone()))),
            (None, "Basic realm=\"reg\"", false, Authorization::Ready(None)),
            (None, "Negotiate", false, Authorization::Ready(None)),
            (
                robot(),
                BEARER,
                true,
                Authorization::Token(TokenRequest {
                    url: Url::parse(token_url).unwrap(),
                    basic: Some(basic),
                    scope: SCOPE.into(),
                }),
            ),
            (
                None,
                BEARER,
                true,
                Authorization::Token(TokenRequest {
                    url: Url::parse(token_url).unwrap(),
                    basic: None,
                    scope: SCOPE.into(),
                }),
            ),
        ];
        for (credentials, www_authenticate, again, carries) in table {
            let a = authorizer("https://reg.example", &[], credentials.clone());
            assert_eq!(a.for_request(SCOPE).unwrap(), Authorization::Ready(None), "nothing before a challenge");
            assert_eq!(challenge(&a, www_authenticate), again, "{credentials:?} {www_authenticate}");
            assert_eq!(a.for_request(SCOPE).unwrap(), carries, "{credentials:?} {www_authenticate}");
        }
    }

    /// A token is used for its scope until shortly before it expires; a 401
    /// to a request that carried it forgets it; another scope asks again.
    #[test]
    fn tokens_serve_their_scope_until_they_expire() {
        let table: [(Duration, bool); 4] = [
            (Duration::from_secs(300), true),
            (Duration::from_secs(11), true),
            (Duration::from_secs(5), false),
            (Duration::ZERO, false),
        ];
        for (lifetime, kept) in table {
            let a = authorizer("https://reg.example", &[], robot());
            challenge(&a, BEARER);
            assert_eq!(a.token_received(SCOPE, "tok".into(), lifetime), "Bearer tok");
            let carries = a.for_request(SCOPE).unwrap();
            assert_eq!(matches!(&carries, Authorization::Ready(Some(v)) if v == "Bearer tok"), kept, "{lifetime:?}");
            assert!(matches!(a.for_request("repository:other:pull").unwrap(), Authorization::Token(_)));
        }
        let a = authorizer("https://reg.example", &[], robot());
        challenge(&a, BEARER);
        a.token_received(SCOPE, "tok".into(), Duration::from_secs(300));
        let registry = Url::parse("https://reg.example/v2/p/app/manifests/v1").unwrap();
        assert!(a.challenged(&registry, Some(BEARER), SCOPE, Some("Bearer tok")), "an expired token: worth again");
        assert!(matches!(a.for_request(SCOPE).unwrap(), Authorization::Token(_)), "the expired token is forgotten");
    }

    /// A challenge answered from another origin (where a redirect led) is
    /// not learnt; a realm the credentials may not go to is refused, by
    /// name, before any token request.
    #[test]
    fn challenges_and_realms_from_elsewhere_are_refused() {
        let a = authorizer("https://reg.example", &[], robot());
        let storage = Url::parse("https://storage.example/blob").unwrap();
        assert!(!a.challenged(&storage, Some(BEARER), SCOPE, None));
        assert_eq!(a.for_request(SCOPE).unwrap(), Authorization::Ready(None));

        assert!(challenge(&a, r#"Bearer realm="http://evil.example/token""#));
        let refused = a.for_request(SCOPE).unwrap_err();
        assert!(matches!(&refused, RegistryError::UntrustedRealm { realm, .. } if realm == "http://evil.example"));
    }

    /// What the layer prints never holds the password nor a token.
    #[test]
    fn what_it_prints_is_redacted() {
        let a = authorizer("https://reg.example", &[], robot());
        challenge(&a, BEARER);
        let Authorization::Token(request) = a.for_request(SCOPE).unwrap() else { panic!("a token is asked for") };
        let secret_basic = request.basic.clone().unwrap();
        let printed = format!("{request:?} {:?}", Authorization::Ready(Some("Bearer tok-secret".into())));
        for secret in ["s3cret", secret_basic.as_str(), "tok-secret"] {
            assert!(!printed.contains(secret), "{printed}");
        }
        assert!(printed.contains("auth.example"), "{printed}");
    }
}
