//! Counters a long listing (`relay replicate`, `relay reconcile`) moves as
//! it goes, read by the CLI to show progress on a terminal. Atomics: the
//! listing and the reader run on different tasks.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct Progress {
    /// Repositories selected, once the listing has them (0 until then).
    repositories_total: AtomicU64,
    repositories_done: AtomicU64,
    artifacts: AtomicU64,
    /// Artifacts (or tags) × destinations found to need a copy or delete,
    /// before tasks for one place are merged.
    to_replicate: AtomicU64,
}

impl Progress {
    pub fn selected(&self, repositories: usize) {
        self.repositories_total.store(repositories as u64, Relaxed);
    }

    /// One repository walked: `artifacts` looked at, `to_replicate` of
    /// them (per destination) in need of a task.
    pub fn walked(&self, artifacts: usize, to_replicate: usize) {
        self.repositories_done.fetch_add(1, Relaxed);
        self.artifacts.fetch_add(artifacts as u64, Relaxed);
        self.to_replicate.fetch_add(to_replicate as u64, Relaxed);
    }

    /// `repositories 3/40, 120 artifacts, 7 to replicate`.
    pub fn line(&self) -> String {
        let total = self.repositories_total.load(Relaxed);
        let total = if total == 0 { "?".to_owned() } else { total.to_string() };
        format!(
            "repositories {}/{total}, {} artifacts, {} to replicate",
            self.repositories_done.load(Relaxed),
            self.artifacts.load(Relaxed),
            self.to_replicate.load(Relaxed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_was_walked() {
        let p = Progress::default();
        assert_eq!(p.line(), "repositories 0/?, 0 artifacts, 0 to replicate");
        p.selected(2);
        p.walked(5, 1);
        p.walked(3, 0);
        assert_eq!(p.line(), "repositories 2/2, 8 artifacts, 1 to replicate");
    }
}
