//! What a registry's answers taught at run time, and what the client does
//! with it. The registry's kind says what it does not do the standard way
//! ([`Quirks`], data of its host description); an answer can reveal more,
//! and that is learnt here, once, so later tasks start right. Each flag is
//! named with the answer that reveals it.
//!
//! The learnt state lives beside the client, not in it: one [`Learnt`] per
//! registry (name and endpoint) for the process, so the clients a
//! configuration reload builds again keep what the old ones learnt.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use relay_domain::host::Quirks;
use url::Url;

use super::super::auth::unpoisoned;
use super::RegistryClient;

/// What one registry's answers taught.
#[derive(Debug, Default)]
pub struct Learnt {
    /// The referrers API answered 404: the tag schema is asked straight away.
    referrers_api_absent: AtomicBool,
    /// 0: whole blobs in one `PUT`. Otherwise the chunk size for `PATCH`
    /// uploads, set when the registry (or a proxy in front of it) refused
    /// a whole blob with 413.
    chunk_size: AtomicU64,
    /// A cross-repository mount was refused (400 or 405 instead of
    /// 201 or 202): blobs are uploaded without asking again.
    mounts_refused: AtomicBool,
}

impl Learnt {
    /// The process's learnt state of the registry `name` at `base`: the
    /// same value for every client built for it. The endpoint is part of
    /// the key: a registry moved elsewhere is another registry.
    pub fn of(name: &str, base: &Url) -> Arc<Learnt> {
        static ALL: OnceLock<Mutex<HashMap<Key, Arc<Learnt>>>> = OnceLock::new();
        let mut all = unpoisoned(ALL.get_or_init(Default::default).lock());
        all.entry((name.to_owned(), base.as_str().to_owned())).or_default().clone()
    }

    pub fn referrers_api_absent(&self) -> bool {
        self.referrers_api_absent.load(Ordering::Relaxed)
    }

    pub fn mark_referrers_api_absent(&self) {
        self.referrers_api_absent.store(true, Ordering::Relaxed);
    }

    pub fn mounts_refused(&self) -> bool {
        self.mounts_refused.load(Ordering::Relaxed)
    }

    /// Marks mounts refused; `true` the first time.
    pub fn mark_mounts_refused(&self) -> bool {
        !self.mounts_refused.swap(true, Ordering::Relaxed)
    }
}

/// A registry's name and endpoint.
type Key = (String, String);

/// Chunk size after the first 413 to a whole-blob `PUT`.
const FIRST_CHUNK: u64 = 8 * 1024 * 1024;
/// Chunks are never made smaller than this when 413s continue.
const SMALLEST_CHUNK: u64 = 64 * 1024;

impl RegistryClient {
    /// This registry's quirks, as its kind says.
    pub fn quirks(&self) -> Quirks {
        self.quirks
    }

    /// What this registry's answers taught so far.
    pub fn learnt(&self) -> &Learnt {
        &self.learnt
    }

    /// Whether this registry takes chunked uploads (`PATCH`): ECR, by its
    /// documentation, does not through the distribution API.
    pub fn takes_chunks(&self) -> bool {
        self.quirks.chunked_uploads
    }

    /// Whether a blob may be asked to be mounted from another repository:
    /// the kind allows it and no refusal was learnt.
    pub fn asks_mounts(&self) -> bool {
        self.quirks.cross_repo_mounts && !self.learnt.mounts_refused()
    }

    /// Whether referrers are asked through the referrers API: the kind
    /// has it and no 404 taught otherwise.
    pub(super) fn asks_referrers(&self) -> bool {
        self.quirks.referrers_api && !self.learnt.referrers_api_absent()
    }

    /// The chunk size for uploads to this registry; `None`: whole blobs.
    pub fn chunk_size(&self) -> Option<u64> {
        Some(self.learnt.chunk_size.load(Ordering::Relaxed)).filter(|&c| c > 0)
    }

    /// After a 413 to an upload sent with `used` ([`RegistryClient::chunk_size`]
    /// at the time; `None`: the whole blob of `blob_size` bytes in one
    /// `PUT`): switch to chunks, or halve them. `false` when they cannot get
    /// smaller. Concurrent uploads that fail together shrink once.
    pub fn shrink_chunks(&self, used: Option<u64>, blob_size: u64) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        if !self.quirks.chunked_uploads {
            return false;
        }
        let was = used.unwrap_or(0);
        if self.learnt.chunk_size.load(SeqCst) != was {
            return true; // another upload shrank them meanwhile: retry with those
        }
        let next = match used {
            None => FIRST_CHUNK.min(blob_size / 2),
            Some(c) => c / 2,
        };
        if next < SMALLEST_CHUNK {
            return false;
        }
        if self.learnt.chunk_size.compare_exchange(was, next, SeqCst, SeqCst).is_ok() {
            tracing::warn!(registry = %self.name, chunk_bytes = next, "the registry refused an upload as too large (413): sending chunks");
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use axum::extract::Request;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;

    use super::*;
    use crate::client::{ClientOptions, InPlace, Role, UploadStart};
    use crate::digest::Digest;
    use crate::repository::RepositoryPath;

    /// A registry whose upload `POST`s with a mount query get `refusal`
    /// (status, body) and the others a session. Returns its URL and the
    /// count of mount requests.
    async fn refusing_mounts(refusal: (u16, &'static str)) -> (Url, Arc<AtomicUsize>) {
        let mounts = Arc::new(AtomicUsize::new(0));
        let counter = mounts.clone();
        let handler = move |req: Request| {
            let counter = counter.clone();
            async move {
                if req.uri().query().is_some_and(|q| q.contains("mount=")) {
                    counter.fetch_add(1, Ordering::SeqCst);
                    return (StatusCode::from_u16(refusal.0).unwrap(), refusal.1).into_response();
                }
                (StatusCode::ACCEPTED, [("location", "/v2/a/blobs/uploads/s1")]).into_response()
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(handler)).await });
        (url, mounts)
    }

    fn client(base: &Url, quirks: Quirks) -> RegistryClient {
        let options = ClientOptions { quirks, ..Default::default() };
        RegistryClient::new("dst", base.clone(), Role::Destination, None, options).unwrap()
    }

    /// (refusal, mount requests after three blobs, learnt): a refusal
    /// falls back to a plain upload each time; one that says the registry
    /// does not mount is learnt, so the mount is asked once; a denial is
    /// not learnt (it may be the other repository's scope only).
    #[tokio::test]
    async fn a_refused_mount_uploads_and_is_learnt_once() {
        let unsupported = r#"{"errors":[{"code":"UNSUPPORTED","message":"mount"}]}"#;
        for (refusal, mounts_asked, learnt) in [
            ((405, unsupported), 1, true),
            ((400, ""), 1, true),
            ((409, unsupported), 1, true),
            ((403, ""), 3, false),
            ((404, ""), 3, false),
        ] {
            let (base, mounts) = refusing_mounts(refusal).await;
            let c = client(&base, Quirks::STANDARD);
            let (repo, from): (RepositoryPath, RepositoryPath) = ("a".parse().unwrap(), "b".parse().unwrap());
            let digest: Digest = format!("sha256:{}", "0".repeat(64)).parse().unwrap();
            for _ in 0..3 {
                let started = c.start_upload(&repo, Some((&digest, &from))).await;
                assert!(matches!(started, Ok(UploadStart::Session { .. })), "{refusal:?}");
            }
            assert_eq!(mounts.load(Ordering::SeqCst), mounts_asked, "{refusal:?}");
            assert_eq!(c.learnt().mounts_refused(), learnt, "{refusal:?}");
        }
    }

    /// A kind that does not mount is never asked to.
    #[tokio::test]
    async fn a_kind_without_mounts_is_never_asked() {
        let (base, mounts) = refusing_mounts((405, "")).await;
        let c = client(&base, Quirks { cross_repo_mounts: false, ..Quirks::STANDARD });
        let digest: Digest = format!("sha256:{}", "1".repeat(64)).parse().unwrap();
        let from: RepositoryPath = "b".parse().unwrap();
        let started = c.start_upload(&"a".parse().unwrap(), Some((&digest, &from))).await;
        assert!(matches!(started, Ok(UploadStart::Session { .. })));
        assert_eq!(mounts.load(Ordering::SeqCst), 0);
    }

    /// A blob's check in place: a mount from its own repository answers
    /// presence (201) or opens the upload (202) where the kind says its
    /// answer tells; a kind whose 202 says nothing (ECR) is never asked
    /// this way, nor a registry that refused a mount (both get a HEAD).
    #[tokio::test]
    async fn a_check_in_place_asks_only_where_the_answer_tells() {
        let present: Digest = format!("sha256:{}", "3".repeat(64)).parse().unwrap();
        let absent: Digest = format!("sha256:{}", "4".repeat(64)).parse().unwrap();
        let posts = Arc::new(AtomicUsize::new(0));
        // The hex of the digest the repository holds (the query encodes `:`).
        let (counter, held) = (posts.clone(), "3".repeat(64));
        let handler = move |req: Request| {
            let (counter, held) = (counter.clone(), held.clone());
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let query = req.uri().query().unwrap_or_default().to_owned();
                if query.contains(&held) && query.contains("from=a") {
                    return (StatusCode::CREATED, [("location", "/v2/a/blobs/x")]).into_response();
                }
                (StatusCode::ACCEPTED, [("location", "/v2/a/blobs/uploads/s1")]).into_response()
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(handler)).await });
        let repo: RepositoryPath = "a".parse().unwrap();

        let c = client(&base, Quirks::STANDARD);
        assert!(matches!(c.check_in_place(&repo, &present).await, Ok(InPlace::Present)));
        assert!(matches!(c.check_in_place(&repo, &absent).await, Ok(InPlace::Absent(UploadStart::Session { .. }))));
        assert_eq!(posts.load(Ordering::SeqCst), 2, "one request each");

        posts.store(0, Ordering::SeqCst);
        let ecr_like =
            client(&base.join("ecr/").unwrap(), Quirks { mount_answers_presence: false, ..Quirks::STANDARD });
        assert!(matches!(ecr_like.check_in_place(&repo, &present).await, Ok(InPlace::Unknown)));
        assert_eq!(posts.load(Ordering::SeqCst), 0, "a kind whose 202 says nothing is not asked");

        let (refusing, mounts) = refusing_mounts((405, "")).await;
        let c = client(&refusing, Quirks::STANDARD);
        for _ in 0..2 {
            assert!(matches!(c.check_in_place(&repo, &present).await, Ok(InPlace::Unknown)));
        }
        assert_eq!(mounts.load(Ordering::SeqCst), 1, "a refusal is learnt: asked once");
    }

    /// A registry without the referrers API (404): asked once, then the
    /// tag schema straight away; a kind without it is never asked.
    #[tokio::test]
    async fn referrers_are_asked_as_the_quirk_and_the_answers_say() {
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = asked.clone();
        let handler = move |req: Request| {
            let counter = counter.clone();
            async move {
                if req.uri().path().contains("/referrers/") {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                StatusCode::NOT_FOUND
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(handler)).await });
        let (repo, digest): (RepositoryPath, Digest) =
            ("a".parse().unwrap(), format!("sha256:{}", "2".repeat(64)).parse().unwrap());
        for (quirks, expected) in [(Quirks::STANDARD, 1), (Quirks { referrers_api: false, ..Quirks::STANDARD }, 0)] {
            asked.store(0, Ordering::SeqCst);
            // A fresh endpoint for each: what is learnt is kept per endpoint.
            let c = client(&base.join(&format!("q{expected}/")).unwrap(), quirks);
            for _ in 0..3 {
                assert!(c.referrers(&repo, &digest).await.unwrap().is_none(), "{quirks:?}");
            }
            assert_eq!(asked.load(Ordering::SeqCst), expected, "{quirks:?}");
        }
    }

    /// The clients a configuration reload builds for the same registry
    /// keep what the old ones learnt; another endpoint starts afresh.
    #[tokio::test]
    async fn what_was_learnt_survives_a_rebuilt_client() {
        let (base, _) = refusing_mounts((405, "")).await;
        let old = client(&base, Quirks::STANDARD);
        old.learnt().mark_referrers_api_absent();
        assert!(old.learnt().mark_mounts_refused());
        assert!(old.shrink_chunks(None, 64 << 20));
        drop(old);
        let rebuilt = client(&base, Quirks::STANDARD);
        assert!(rebuilt.learnt().mounts_refused() && rebuilt.learnt().referrers_api_absent());
        assert_eq!(rebuilt.chunk_size(), Some(FIRST_CHUNK));
        let (elsewhere, _) = refusing_mounts((405, "")).await;
        let moved = client(&elsewhere, Quirks::STANDARD);
        assert!(!moved.learnt().mounts_refused() && moved.chunk_size().is_none());
    }
}
