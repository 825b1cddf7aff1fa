//! Registry authentication: the `WWW-Authenticate` challenge, Basic, and the
//! Bearer token flow (realm/service/scope) with tokens cached per scope until
//! shortly before they expire.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use base64::Engine as _;

/// A user name and password, resolved from the environment or Secrets
/// Manager. `Debug` never prints the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

impl Credentials {
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

/// What the registry asked for on its last 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String> },
}

impl Challenge {
    /// Parses a `WWW-Authenticate` value (RFC 7235 auth-params; quoted
    /// strings may contain commas and escaped quotes).
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = auth_params(rest);
        let realm = params.get("realm")?.clone();
        Some(Challenge::Bearer { realm, service: params.get("service").cloned() })
    }
}

fn auth_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(' ' | ',')) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|&c| c != ',').collect();
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    out
}

/// Bearer tokens by scope string.
#[derive(Default)]
pub struct TokenCache {
    tokens: HashMap<String, (String, Instant)>,
}

/// Tokens are dropped this long before they expire, so a token is never
/// used for a request that outlives it.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

impl TokenCache {
    pub fn get(&self, scope: &str) -> Option<String> {
        self.tokens.get(scope).filter(|(_, until)| Instant::now() < *until).map(|(t, _)| t.clone())
    }

    pub fn put(&mut self, scope: &str, token: String, expires_in: Duration) {
        let until = Instant::now() + expires_in.saturating_sub(EXPIRY_MARGIN);
        self.tokens.insert(scope.to_owned(), (token, until));
    }

    pub fn forget(&mut self, scope: &str) {
        self.tokens.remove(scope);
    }
}

/// The token endpoint's answer (distribution token spec).
#[derive(serde::Deserialize)]
pub struct TokenResponse {
    pub token: Option<String>,
    pub access_token: Option<String>,
    pub expires_in: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show_their_password_in_debug() {
        let c = Credentials { username: "robot$relay".into(), password: "do-not-print-0123".into() };
        let shown = format!("{c:?} {:?}", Some(&c));
        assert!(shown.contains("robot$relay") && shown.contains("<redacted>"), "{shown}");
        assert!(!shown.contains("do-not-print"), "{shown}");
    }

    #[test]
    fn parses_challenges() {
        assert_eq!(Challenge::parse("Basic realm=\"Registry Realm\""), Some(Challenge::Basic));
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into())
            })
        );
        assert_eq!(
            Challenge::parse(r#"bearer service="s", realm="http://127.0.0.1:9/t?x=\"y\"""#),
            Some(Challenge::Bearer { realm: "http://127.0.0.1:9/t?x=\"y\"".into(), service: Some("s".into()) })
        );
        assert_eq!(Challenge::parse("Bearer service=\"s\""), None);
        assert_eq!(Challenge::parse("Negotiate abc"), None);
    }

    #[test]
    fn debug_hides_password() {
        let c = Credentials { username: "u".into(), password: "hunter2".into() };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn tokens_expire_with_margin() {
        let mut cache = TokenCache::default();
        cache.put("s", "t".into(), Duration::from_secs(300));
        assert_eq!(cache.get("s").as_deref(), Some("t"));
        cache.put("short", "t".into(), Duration::from_secs(5));
        assert_eq!(cache.get("short"), None);
        cache.forget("s");
        assert_eq!(cache.get("s"), None);
    }
}
