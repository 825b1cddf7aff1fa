//! What one worker knows about a destination's blobs: which repository
//! already holds a digest (so later tasks mount instead of upload), and
//! which digests are being uploaded right now (so concurrent tasks wait for
//! that upload and mount, instead of sending the same bytes twice).
//!
//! It lives in the worker's memory, one per destination registry: a warm
//! Lambda container or a standalone worker keeps it across tasks; a cold
//! start begins empty and falls back to HEAD + upload. It is a hint, never
//! trusted without the registry's answer: a mount the registry declines
//! turns into a normal upload.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::digest::Digest;
use crate::repository::RepositoryPath;

/// Entries kept before the ledger starts over (bounded memory).
const MAX_ENTRIES: usize = 100_000;

#[derive(Default)]
pub struct BlobLedger {
    entries: Mutex<HashMap<Digest, Entry>>,
    /// One manifest push per root digest at a time: distribution answers
    /// 500 to concurrent pushes of the same manifest into one repository.
    manifests: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Default)]
struct Entry {
    /// A repository of the destination known to hold the blob.
    holder: Option<RepositoryPath>,
    /// Someone in this process is uploading it; the receiver turns true
    /// when they finish (or closes if they fail).
    in_flight: Option<watch::Receiver<bool>>,
}

/// The caller's part in a blob's upload.
pub enum Claim<'a> {
    /// Upload it; tell the ledger how it went through the guard.
    Owner(OwnerGuard<'a>),
    /// Another task is uploading it: wait, then mount from where it landed.
    Wait(watch::Receiver<bool>),
}

/// Held by the uploading task. Dropping it without [`OwnerGuard::done`]
/// releases waiters to try for themselves.
pub struct OwnerGuard<'a> {
    ledger: &'a BlobLedger,
    digest: Digest,
    tx: watch::Sender<bool>,
}

impl BlobLedger {
    /// Serialises pushes of the manifest `digest` within this worker. The
    /// flag says whether another task held it meanwhile (what it pushed is
    /// worth checking for before pushing again).
    pub async fn manifest_lock(&self, digest: &Digest) -> (tokio::sync::OwnedMutexGuard<()>, bool) {
        let lock = {
            let mut locks = self.manifests.lock().expect("ledger lock");
            if locks.len() >= MAX_ENTRIES {
                locks.retain(|_, l| Arc::strong_count(l) > 1);
            }
            locks.entry(digest.clone()).or_default().clone()
        };
        match lock.clone().try_lock_owned() {
            Ok(guard) => (guard, false),
            Err(_) => (lock.lock_owned().await, true),
        }
    }

    /// A repository known to hold `digest`, to mount from.
    pub fn holder(&self, digest: &Digest) -> Option<RepositoryPath> {
        self.entries.lock().expect("ledger lock").get(digest).and_then(|e| e.holder.clone())
    }

    /// Records that `repo` holds `digest` (seen by HEAD, mount or upload).
    pub fn record(&self, digest: &Digest, repo: &RepositoryPath) {
        let mut entries = self.entries.lock().expect("ledger lock");
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| e.in_flight.is_some());
        }
        entries.entry(digest.clone()).or_default().holder = Some(repo.clone());
    }

    /// Whether another task of this worker is uploading `digest` right now.
    pub fn uploading(&self, digest: &Digest) -> bool {
        let entries = self.entries.lock().expect("ledger lock");
        entries.get(digest).and_then(|e| e.in_flight.as_ref()).is_some_and(|rx| rx.has_changed().is_ok())
    }

    /// Claims the upload of `digest`, unless another task has it in flight.
    pub fn claim(&self, digest: &Digest) -> Claim<'_> {
        let mut entries = self.entries.lock().expect("ledger lock");
        let entry = entries.entry(digest.clone()).or_default();
        if let Some(rx) = &entry.in_flight {
            // has_changed() errs once the owner is gone: then take over.
            if rx.has_changed().is_ok() {
                return Claim::Wait(rx.clone());
            }
        }
        let (tx, rx) = watch::channel(false);
        entry.in_flight = Some(rx);
        Claim::Owner(OwnerGuard { ledger: self, digest: digest.clone(), tx })
    }
}

impl OwnerGuard<'_> {
    /// The blob is now in `repo`; waiters may mount it from there.
    pub fn done(self, repo: &RepositoryPath) {
        self.ledger.record(&self.digest, repo);
        let _ = self.tx.send(true);
        // Drop clears the in-flight mark.
    }
}

impl Drop for OwnerGuard<'_> {
    fn drop(&mut self) {
        if let Some(e) = self.ledger.entries.lock().expect("ledger lock").get_mut(&self.digest) {
            e.in_flight = None;
        }
        // Dropping the sender closes the channel: waiters stop waiting.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Digest {
        Digest::sha256_of(s.as_bytes())
    }
    fn r(s: &str) -> RepositoryPath {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn second_claim_waits_for_the_first() {
        let ledger = BlobLedger::default();
        let Claim::Owner(owner) = ledger.claim(&d("a")) else { panic!("first claim owns") };
        assert!(ledger.uploading(&d("a")));
        let Claim::Wait(mut rx) = ledger.claim(&d("a")) else { panic!("second claim waits") };
        owner.done(&r("p/one"));
        assert!(!ledger.uploading(&d("a")), "done");
        assert!(rx.wait_for(|v| *v).await.is_ok());
        assert_eq!(ledger.holder(&d("a")), Some(r("p/one")));
    }

    #[tokio::test]
    async fn a_failed_owner_releases_waiters() {
        let ledger = BlobLedger::default();
        let Claim::Owner(owner) = ledger.claim(&d("a")) else { panic!() };
        let Claim::Wait(mut rx) = ledger.claim(&d("a")) else { panic!() };
        drop(owner);
        assert!(rx.wait_for(|v| *v).await.is_err(), "closed, not done");
        assert!(!ledger.uploading(&d("a")), "a failed upload is no longer in flight");
        assert!(matches!(ledger.claim(&d("a")), Claim::Owner(_)), "the next task may try");
    }

    #[test]
    fn holder_survives_a_new_claim() {
        let ledger = BlobLedger::default();
        ledger.record(&d("a"), &r("p/one"));
        let Claim::Owner(_g) = ledger.claim(&d("a")) else { panic!() };
        assert_eq!(ledger.holder(&d("a")), Some(r("p/one")));
        assert!(matches!(ledger.claim(&d("a")), Claim::Wait(_)), "still one upload at a time");
    }
}
