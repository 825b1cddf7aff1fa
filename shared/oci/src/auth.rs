//! Registry authentication: the `WWW-Authenticate` challenge, Basic, and the
//! Bearer token flow (realm/service/scope) with tokens cached per scope until
//! shortly before they expire.

use std::collections::HashMap;
use std::fmt;
use std::sync::{LockResult, PoisonError};
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

/// The longest a token is kept, whatever its service says: a lifetime of
/// centuries (`expires_in` at `u64::MAX`) is a broken service, not a
/// promise, and asking again once an hour costs one request. It also keeps
/// `Instant` arithmetic far from its end, which panics.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// The lifetime of a token whose answer gives none (the distribution token
/// spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

impl TokenCache {
    pub fn get(&self, scope: &str) -> Option<String> {
        self.tokens.get(scope).filter(|(_, until)| Instant::now() < *until).map(|(t, _)| t.clone())
    }

    /// Keeps `token` for `scope` until shortly before `lifetime` ends (at
    /// most [`MAX_TOKEN_LIFETIME`]); a token that ends sooner than the
    /// margin is not kept (it serves the request it was asked for). Cannot
    /// panic: it runs with the client's auth lock held.
    pub fn put(&mut self, scope: &str, token: String, lifetime: Duration) {
        let kept = lifetime.min(MAX_TOKEN_LIFETIME).saturating_sub(EXPIRY_MARGIN);
        match Instant::now().checked_add(kept) {
            Some(until) if !kept.is_zero() => {
                self.tokens.insert(scope.to_owned(), (token, until));
            }
            _ => {
                self.tokens.remove(scope);
            }
        }
    }

    pub fn forget(&mut self, scope: &str) {
        self.tokens.remove(scope);
    }
}

/// The guard of a lock, whoever held it before: a panic elsewhere while it
/// was held (a bug, isolated per message by the worker) must not make the
/// registry unusable until the process restarts. What these locks guard
/// (credentials, a challenge, cached tokens) is whole after any panic: at
/// worst a token is asked for again.
pub fn unpoisoned<G>(result: LockResult<G>) -> G {
    result.unwrap_or_else(PoisonError::into_inner)
}

/// The token endpoint's answer (distribution token spec).
#[derive(serde::Deserialize)]
pub struct TokenResponse {
    pub token: Option<String>,
    pub access_token: Option<String>,
    /// Seconds the token lives, as sent: any JSON (a negative, a float, a
    /// number past `u64`, a string) is read by [`TokenResponse::lifetime`]
    /// rather than refusing the token over it.
    #[serde(default)]
    pub expires_in: Option<serde_json::Value>,
}

impl TokenResponse {
    /// How long the token may be used: 60 s when the answer does not say
    /// (or says something that is not a number), nothing when it says zero
    /// or less (it is used for the request that asked, and not kept).
    pub fn lifetime(&self) -> Duration {
        let number = match &self.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_f64(),
            Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match number {
            None => DEFAULT_TOKEN_LIFETIME,
            Some(secs) if secs.is_nan() => DEFAULT_TOKEN_LIFETIME,
            Some(secs) if secs <= 0.0 => Duration::ZERO,
            Some(secs) => Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX),
        }
    }
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

    /// (`expires_in` as sent, the lifetime read): absent or not a number is
    /// the spec's 60 s; zero or less expires now; past any clock, the
    /// longest `Duration`.
    #[test]
    fn token_lifetimes_of_any_expires_in() {
        let table: [(&str, Duration); 11] = [
            (r#"{"token":"t"}"#, DEFAULT_TOKEN_LIFETIME),
            (r#"{"token":"t","expires_in":null}"#, DEFAULT_TOKEN_LIFETIME),
            (r#"{"token":"t","expires_in":300}"#, Duration::from_secs(300)),
            (r#"{"token":"t","expires_in":"300"}"#, Duration::from_secs(300)),
            (r#"{"token":"t","expires_in":"soon"}"#, DEFAULT_TOKEN_LIFETIME),
            (r#"{"token":"t","expires_in":0}"#, Duration::ZERO),
            (r#"{"token":"t","expires_in":-1}"#, Duration::ZERO),
            (r#"{"token":"t","expires_in":-9223372036854775808}"#, Duration::ZERO),
            (r#"{"token":"t","expires_in":9223372036854775807}"#, Duration::from_secs(i64::MAX as u64 + 1)),
            (r#"{"token":"t","expires_in":18446744073709551615}"#, Duration::MAX),
            (r#"{"token":"t","expires_in":1e300}"#, Duration::MAX),
        ];
        for (json, want) in table {
            let answer: TokenResponse = serde_json::from_str(json).expect(json);
            assert_eq!(answer.lifetime(), want, "{json}");
        }
    }

    /// Whatever the lifetime, keeping a token never panics (it runs under
    /// the auth lock): a huge one is kept for at most an hour, one that
    /// ends within the margin not at all.
    #[test]
    fn any_token_lifetime_is_kept_without_overflow() {
        let lifetimes = [
            Duration::MAX,
            Duration::from_secs(u64::MAX),
            Duration::from_secs(i64::MAX as u64),
            MAX_TOKEN_LIFETIME * 2,
            Duration::ZERO,
        ];
        for lifetime in lifetimes {
            let mut cache = TokenCache::default();
            cache.put("s", "t".into(), lifetime);
            let kept = cache.tokens.get("s").map(|(_, until)| until.saturating_duration_since(Instant::now()));
            match kept {
                Some(left) => assert!(left <= MAX_TOKEN_LIFETIME, "{lifetime:?}: kept for {left:?}"),
                None => assert!(lifetime.is_zero(), "{lifetime:?}: not kept"),
            }
        }
        let mut cache = TokenCache::default();
        cache.put("s", "old".into(), Duration::from_secs(300));
        cache.put("s", "new".into(), Duration::ZERO);
        assert_eq!(cache.get("s"), None, "a token that expires now replaces the kept one, and is not kept");
    }

    /// A panic while a lock is held leaves it usable by the next holder.
    #[test]
    fn a_poisoned_lock_is_used_again() {
        let lock = std::sync::Mutex::new(TokenCache::default());
        let poisoned = std::panic::catch_unwind(|| {
            let _held = lock.lock();
            panic!("a bug while the lock is held");
        });
        assert!(poisoned.is_err() && lock.is_poisoned());
        unpoisoned(lock.lock()).put("s", "t".into(), Duration::from_secs(300));
        assert_eq!(unpoisoned(lock.lock()).get("s").as_deref(), Some("t"));
    }
}
