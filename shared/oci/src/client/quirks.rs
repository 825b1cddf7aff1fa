//! What a registry turned out to need, learnt from its answers at run time
//! and kept for the client's life, so later tasks start right. Each quirk
//! is named with the answer that reveals it. A new one (a registry that
//! mishandles something) goes here.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{RegistryClient, RegistryError};

pub(super) struct Quirks {
    /// Chunks are never tried (the registry mishandles them; it says so
    /// through its kind, not an answer).
    chunks_allowed: bool,
    /// The referrers API answered 404: the tag schema is asked straight away.
    referrers_api_absent: AtomicBool,
    /// 0: whole blobs in one `PUT`. Otherwise the chunk size for `PATCH`
    /// uploads, set when the registry (or a proxy in front of it) refused
    /// a whole blob with 413.
    pub(super) chunk_size: AtomicU64,
}

impl Quirks {
    pub(super) fn new(chunks_allowed: bool) -> Quirks {
        Quirks { chunks_allowed, referrers_api_absent: Default::default(), chunk_size: Default::default() }
    }

    pub(super) fn referrers_api_absent(&self) -> bool {
        self.referrers_api_absent.load(Ordering::Relaxed)
    }

    pub(super) fn mark_referrers_api_absent(&self) {
        self.referrers_api_absent.store(true, Ordering::Relaxed);
    }
}

/// Chunk size after the first 413 to a whole-blob `PUT`.
const FIRST_CHUNK: u64 = 8 * 1024 * 1024;
/// Chunks are never made smaller than this when 413s continue.
const SMALLEST_CHUNK: u64 = 64 * 1024;

impl RegistryError {
    /// The registry refused to move an immutable tag: ECR answers a
    /// manifest `PUT` onto a tag of an `IMMUTABLE` repository that points
    /// elsewhere with 400 `TAG_INVALID` "… cannot be overwritten because
    /// the repository is immutable".
    pub fn is_immutable_tag(&self) -> bool {
        match self {
            RegistryError::Status { status, detail, .. } => {
                *status == reqwest::StatusCode::BAD_REQUEST
                    && detail.contains("TAG_INVALID")
                    && detail.contains("immutable")
            }
            _ => false,
        }
    }
}

impl RegistryClient {
    /// Whether this registry takes chunked uploads (`PATCH`): ECR, by its
    /// documentation, does not through the distribution API.
    pub fn takes_chunks(&self) -> bool {
        self.quirks.chunks_allowed
    }

    /// The chunk size for uploads to this registry; `None`: whole blobs.
    pub fn chunk_size(&self) -> Option<u64> {
        Some(self.quirks.chunk_size.load(std::sync::atomic::Ordering::Relaxed)).filter(|&c| c > 0)
    }

    /// After a 413 to an upload sent with `used` ([`RegistryClient::chunk_size`]
    /// at the time; `None`: the whole blob of `blob_size` bytes in one
    /// `PUT`): switch to chunks, or halve them. `false` when they cannot get
    /// smaller. Concurrent uploads that fail together shrink once.
    pub fn shrink_chunks(&self, used: Option<u64>, blob_size: u64) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        if !self.quirks.chunks_allowed {
            return false;
        }
        let was = used.unwrap_or(0);
        if self.quirks.chunk_size.load(SeqCst) != was {
            return true; // another upload shrank them meanwhile: retry with those
        }
        let next = match used {
            None => FIRST_CHUNK.min(blob_size / 2),
            Some(c) => c / 2,
        };
        if next < SMALLEST_CHUNK {
            return false;
        }
        if self.quirks.chunk_size.compare_exchange(was, next, SeqCst, SeqCst).is_ok() {
            tracing::warn!(registry = %self.name, chunk_bytes = next, "the registry refused an upload as too large (413): sending chunks");
        }
        true
    }
}
