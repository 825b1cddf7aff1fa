//! Bearer tokens: the token service's answer and the cache per scope.

use std::collections::HashMap;
use std::time::{Duration, Instant};

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
}
