//! Registry authentication, on its own: the credentials, the
//! `WWW-Authenticate` challenge (`challenge`), Bearer tokens cached per
//! scope until shortly before they expire (`tokens`), and the layer the
//! registry client asks once per request (`authorizer`): what
//! `Authorization` to send, which token to fetch, what a 401 changes.
//! Nothing here does I/O; the client fetches the tokens.

use std::fmt;
use std::sync::{LockResult, PoisonError};

use base64::Engine as _;

mod authorizer;
mod challenge;
mod tokens;

pub(crate) use authorizer::realm_shown;
pub use authorizer::{same_origin, Authorization, Authorizer, TokenRequest};
pub use challenge::Challenge;
pub use tokens::{TokenCache, TokenResponse};

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

/// The guard of a lock, whoever held it before: a panic elsewhere while it
/// was held (a bug, isolated per message by the worker) must not make the
/// registry unusable until the process restarts. What these locks guard
/// (credentials, a challenge, cached tokens) is whole after any panic: at
/// worst a token is asked for again.
pub fn unpoisoned<G>(result: LockResult<G>) -> G {
    result.unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn credentials_never_show_their_password_in_debug() {
        let c = Credentials { username: "robot$relay".into(), password: "do-not-print-0123".into() };
        let shown = format!("{c:?} {:?}", Some(&c));
        assert!(shown.contains("robot$relay") && shown.contains("<redacted>"), "{shown}");
        assert!(!shown.contains("do-not-print"), "{shown}");
    }

    #[test]
    fn debug_hides_password() {
        let c = Credentials { username: "u".into(), password: "hunter2".into() };
        assert!(!format!("{c:?}").contains("hunter2"));
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
