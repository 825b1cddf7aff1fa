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

/// What a task does with one blob at one destination repository, as far
/// as this worker knows: one answer instead of a lookup, a claim and a
/// record in turn. Every variant but [`BlobDecision::Present`] and
/// [`BlobDecision::Wait`] makes the caller the blob's one uploader in this
/// worker until its guard is done or dropped.
pub enum BlobDecision<'a> {
    /// Another task of this worker just put it in this repository: nothing
    /// to send.
    Present,
    /// Nothing known, or only that this repository held it once (a hint
    /// from an earlier task, not trusted alone): ask the destination
    /// (`HEAD`), then upload if it lacks it.
    Check(OwnerGuard<'a>),
    /// Another repository of the destination holds it: mount from there
    /// (a mount answers 201 where the blob already is, too; a declined one
    /// is an upload session).
    MountFrom(RepositoryPath, OwnerGuard<'a>),
    /// An upload of this worker failed meanwhile, the destination was not
    /// found holding it before: upload it, no question asked.
    Upload(OwnerGuard<'a>),
    /// Another task of this worker is uploading it: wait for that upload
    /// ([`Waiting::finished`]), which decides again.
    Wait(Waiting<'a>),
}

/// A task waiting for another's upload of a blob.
pub struct Waiting<'a> {
    ledger: &'a BlobLedger,
    digest: Digest,
    repo: RepositoryPath,
    rx: watch::Receiver<bool>,
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

    /// What to do with `digest` for `repo`: see [`BlobDecision`].
    pub fn decide(&self, digest: &Digest, repo: &RepositoryPath) -> BlobDecision<'_> {
        self.decision(digest, repo, false)
    }

    /// Decides for `digest` and `repo`; `waited` when the caller has just
    /// waited for another task's upload of it (then what that upload
    /// recorded is fresh enough to trust).
    fn decision(&self, digest: &Digest, repo: &RepositoryPath, waited: bool) -> BlobDecision<'_> {
        let mut entries = self.entries.lock().expect("ledger lock");
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(digest) {
            entries.retain(|_, e| e.in_flight.is_some());
        }
        let entry = entries.entry(digest.clone()).or_default();
        // has_changed() errs once the owner is gone: then take over.
        if let Some(rx) = entry.in_flight.as_ref().filter(|rx| rx.has_changed().is_ok()) {
            let (digest, repo, rx) = (digest.clone(), repo.clone(), rx.clone());
            return BlobDecision::Wait(Waiting { ledger: self, digest, repo, rx });
        }
        let holder = entry.holder.clone();
        if waited && holder.as_ref() == Some(repo) {
            return BlobDecision::Present;
        }
        let (tx, rx) = watch::channel(false);
        entry.in_flight = Some(rx);
        let owner = OwnerGuard { ledger: self, digest: digest.clone(), tx };
        match holder {
            Some(from) if &from != repo => BlobDecision::MountFrom(from, owner),
            _ if waited => BlobDecision::Upload(owner),
            _ => BlobDecision::Check(owner),
        }
    }

    /// Records that `repo` holds `digest` (seen by HEAD, mount or upload).
    fn record(&self, digest: &Digest, repo: &RepositoryPath) {
        let mut entries = self.entries.lock().expect("ledger lock");
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| e.in_flight.is_some());
        }
        entries.entry(digest.clone()).or_default().holder = Some(repo.clone());
    }
}

impl<'a> Waiting<'a> {
    /// Waits for the other task's upload to end (done or failed), then
    /// decides again: present if it landed in this repository, mounted if
    /// elsewhere, uploaded by this task if it failed.
    pub async fn finished(mut self) -> BlobDecision<'a> {
        let _ = self.rx.wait_for(|done| *done).await;
        self.ledger.decision(&self.digest, &self.repo, true)
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

    /// The decision's name, the repository it mounts from, and whether it
    /// made the caller the uploader.
    fn shape(decision: &BlobDecision<'_>) -> (&'static str, Option<String>) {
        match decision {
            BlobDecision::Present => ("present", None),
            BlobDecision::Check(_) => ("check", None),
            BlobDecision::MountFrom(from, _) => ("mount", Some(from.to_string())),
            BlobDecision::Upload(_) => ("upload", None),
            BlobDecision::Wait(_) => ("wait", None),
        }
    }

    fn owner(decision: BlobDecision<'_>) -> OwnerGuard<'_> {
        match decision {
            BlobDecision::Check(g) | BlobDecision::MountFrom(_, g) | BlobDecision::Upload(g) => g,
            other => panic!("not an owner: {:?}", shape(&other)),
        }
    }

    #[test]
    fn one_decision_per_blob_from_what_the_worker_knows() {
        let ledger = BlobLedger::default();
        assert_eq!(shape(&ledger.decide(&d("new"), &r("p/a"))), ("check", None), "nothing known: HEAD first");

        ledger.record(&d("held"), &r("p/b"));
        assert_eq!(shape(&ledger.decide(&d("held"), &r("p/a"))), ("mount", Some("p/b".into())), "repo B holds it");

        ledger.record(&d("here"), &r("p/a"));
        assert_eq!(
            shape(&ledger.decide(&d("here"), &r("p/a"))),
            ("check", None),
            "a hint from an earlier task is checked, not trusted"
        );

        let _uploading = owner(ledger.decide(&d("busy"), &r("p/b")));
        assert_eq!(shape(&ledger.decide(&d("busy"), &r("p/a"))), ("wait", None), "in flight elsewhere: wait");
    }

    #[tokio::test]
    async fn a_waiter_mounts_from_where_the_upload_landed() {
        let ledger = BlobLedger::default();
        let uploader = owner(ledger.decide(&d("a"), &r("p/one")));
        let BlobDecision::Wait(elsewhere) = ledger.decide(&d("a"), &r("p/two")) else { panic!("second waits") };
        let BlobDecision::Wait(same) = ledger.decide(&d("a"), &r("p/one")) else { panic!("third waits") };
        uploader.done(&r("p/one"));
        assert_eq!(shape(&elsewhere.finished().await), ("mount", Some("p/one".into())));
        assert_eq!(shape(&same.finished().await), ("present", None), "just put there: no HEAD");
    }

    #[tokio::test]
    async fn a_failed_upload_lets_a_waiter_upload_without_asking_again() {
        let ledger = BlobLedger::default();
        let uploader = owner(ledger.decide(&d("a"), &r("p/one")));
        let BlobDecision::Wait(waiting) = ledger.decide(&d("a"), &r("p/one")) else { panic!() };
        drop(uploader);
        let next = waiting.finished().await;
        assert_eq!(shape(&next), ("upload", None));
        assert_eq!(shape(&ledger.decide(&d("a"), &r("p/two"))), ("wait", None), "still one upload at a time");
    }

    #[test]
    fn a_holder_survives_a_new_upload() {
        let ledger = BlobLedger::default();
        ledger.record(&d("a"), &r("p/one"));
        let g = owner(ledger.decide(&d("a"), &r("p/one")));
        drop(g);
        assert_eq!(shape(&ledger.decide(&d("a"), &r("p/two"))), ("mount", Some("p/one".into())));
    }
}
