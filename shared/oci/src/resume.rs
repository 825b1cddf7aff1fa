//! What a run cut at the invocation's deadline leaves for the next: whether
//! it placed any blob (then a continuation is worth it), and the uploads it
//! had open — each a session at the destination, the bytes it took, and the
//! hash of those bytes — so a layer longer than one invocation goes on from
//! where it stopped instead of starting over (and never arriving).
//!
//! Only the distribution API's chunked uploads can be resumed: a `PATCH`
//! the registry accepted stays in the session, which the next run asks
//! for its range (`GET` on the session) and goes on with from that offset,
//! reading the source from the same byte (`Range`). A session the registry
//! lost starts over. A whole-blob `PUT` cut in flight leaves nothing.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::auth::unpoisoned;
use crate::digest::Digest;

/// Message attribute of a continuation: its open uploads, as JSON.
pub const UPLOADS: &str = "RelayUploads";

/// An upload a later run can go on with. Carries no credential: the
/// session URL is the registry's (the worker sends it only to the
/// registry the task names, whose origin it must have).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenUpload {
    /// The destination registry's configured name.
    pub registry: String,
    pub repository: String,
    pub digest: Digest,
    /// The session's latest URL (after the last accepted chunk).
    pub session: String,
    /// Bytes the registry accepted.
    pub offset: u64,
    /// The hash of those bytes ([`super::verify::Hashed::to_state`]).
    pub hash: String,
}

/// One run's record.
#[derive(Debug, Default)]
pub struct RunRecord {
    placed: AtomicBool,
    open: Mutex<HashMap<Digest, OpenUpload>>,
    /// Uploads an earlier run left, to go on with.
    given: Vec<OpenUpload>,
}

impl RunRecord {
    /// A record that starts with the uploads an earlier run left.
    pub fn resuming(given: Vec<OpenUpload>) -> RunRecord {
        RunRecord { given, ..Default::default() }
    }

    /// Whether the run placed a blob (copied or mounted).
    pub fn placed_any(&self) -> bool {
        self.placed.load(Ordering::Relaxed)
    }

    /// The uploads open now, with the bytes they took.
    pub fn open_uploads(&self) -> Vec<OpenUpload> {
        unpoisoned(self.open.lock()).values().cloned().collect()
    }
}

tokio::task_local! {
    static RECORD: Arc<RunRecord>;
}

/// Runs `f`, keeping its record in `record`; the record outlives `f`: a
/// run cut at the deadline is judged by it after its future is gone.
pub async fn recording<F: Future>(record: Arc<RunRecord>, f: F) -> F::Output {
    RECORD.scope(record, f).await
}

/// The running task placed a blob (outside [`recording`]: nothing to record).
pub fn placed() {
    let _ = RECORD.try_with(|r| r.placed.store(true, Ordering::Relaxed));
}

/// An upload has taken `upload.offset` bytes (its latest chunk accepted).
pub fn took(upload: OpenUpload) {
    let _ = RECORD.try_with(|r| unpoisoned(r.open.lock()).insert(upload.digest.clone(), upload));
}

/// The upload of `digest` is over (committed, or abandoned).
pub fn closed(digest: &Digest) {
    let _ = RECORD.try_with(|r| unpoisoned(r.open.lock()).remove(digest));
}

/// The upload an earlier run left for `digest` into `registry`/`repository`.
pub fn given(registry: &str, repository: &str, digest: &Digest) -> Option<OpenUpload> {
    RECORD
        .try_with(|r| {
            r.given
                .iter()
                .find(|u| &u.digest == digest && u.registry == registry && u.repository == repository)
                .cloned()
        })
        .ok()
        .flatten()
}

/// Whether the running task may carry open uploads to a next run (it runs
/// under a deadline, inside [`recording`]).
pub fn recorded() -> bool {
    RECORD.try_with(|_| ()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(offset: u64) -> OpenUpload {
        OpenUpload {
            registry: "r".into(),
            repository: "p/app".into(),
            digest: Digest::sha256_of(b"layer"),
            session: "https://r/v2/p/app/blobs/uploads/u?_state=s".into(),
            offset,
            hash: "state".into(),
        }
    }

    #[tokio::test]
    async fn a_record_keeps_what_its_run_left_after_the_run_is_gone() {
        placed();
        took(upload(1));
        assert!(!recorded(), "outside a record: nothing kept");
        let record = Arc::new(RunRecord::resuming(vec![upload(5)]));
        let run = recording(record.clone(), async {
            assert_eq!(given("r", "p/app", &Digest::sha256_of(b"layer")).map(|u| u.offset), Some(5));
            assert_eq!(given("other", "p/app", &Digest::sha256_of(b"layer")), None, "another registry's");
            took(upload(10));
            took(upload(20));
            std::future::pending::<()>().await;
        });
        assert!(tokio::time::timeout(std::time::Duration::from_millis(10), run).await.is_err(), "cut");
        assert!(!record.placed_any());
        assert_eq!(record.open_uploads(), vec![upload(20)], "the latest accepted chunk");
        let done = Arc::new(RunRecord::default());
        recording(done.clone(), async {
            took(upload(3));
            closed(&Digest::sha256_of(b"layer"));
            placed();
        })
        .await;
        assert!(done.placed_any() && done.open_uploads().is_empty());
    }
}
