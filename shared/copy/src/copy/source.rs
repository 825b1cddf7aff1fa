//! The source's side of a blob: its read opened (from a byte on, for a
//! resumed upload), checked against the descriptor, verified as it comes
//! ([`crate::verify`]), paced and counted; and what its errors name.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};

use crate::client::RegistryError;
use crate::copy::Copier;
use crate::manifest::Descriptor;
use crate::pace::{self, Paced};
use crate::report::Counters;
use crate::repository::RepositoryPath;
use crate::tee::{BlobStream, ReadFault};
use crate::verify::{Hashed, Refusal, Verified};

impl Copier<'_> {
    /// The source's read, paced and counted: both ends are timed together
    /// (a trickling source and a destination that accepts a trickle hold a
    /// worker alike), the bytes are counted, and the task's bandwidth limit
    /// is kept.
    pub(crate) fn metered(
        &self,
        source: impl futures_util::Stream<Item = Result<bytes::Bytes, ReadFault>> + Send + Unpin + 'static,
        counters: &Arc<Counters>,
    ) -> impl futures_util::Stream<Item = Result<bytes::Bytes, crate::chunks::BoxError>> + Send + 'static {
        let limit = self.throttle.as_ref().map(|t| t.bytes_per_second());
        let (counters, throttle) = (counters.clone(), self.throttle.clone());
        Paced::new(source, self.min_throughput.under_limit(limit)).then(move |piece| {
            let (counters, throttle) = (counters.clone(), throttle.clone());
            async move {
                let piece = piece?;
                counters.bytes.fetch_add(piece.len() as u64, Ordering::Relaxed);
                if let Some(t) = &throttle {
                    t.take(piece.len()).await;
                }
                Ok(piece)
            }
        })
    }

    /// What the errors of a read of `d` from `src_repo` name.
    pub(crate) fn source_blob(&self, src_repo: &RepositoryPath, d: &Descriptor) -> SourceBlob {
        SourceBlob {
            registry: self.source.name().to_owned(),
            path: format!("/v2/{src_repo}/blobs/{}", d.digest),
            descriptor: d.clone(),
        }
    }

    /// Whether `size` bytes at the task's bandwidth limit take longer than
    /// this run has before its deadline's margin.
    pub(crate) fn outlasts_the_run(&self, size: u64) -> bool {
        let (Some(stop_at), Some(throttle)) = (self.stop_at, &self.throttle) else { return false };
        let left = stop_at.saturating_duration_since(std::time::Instant::now()).as_secs_f64();
        size as f64 / throttle.bytes_per_second().max(1) as f64 > left
    }

    /// Opens the blob at the source from byte `hashed.offset()` on (`hashed`:
    /// the hash of the bytes before it), refusing one whose announced length is
    /// not the descriptor's, and verifying the bytes as they come: the
    /// destination must get exactly the described blob. A source that
    /// ignores the range (200) is read from the start and its first bytes
    /// dropped. The bytes read are counted in `counters`.
    pub(crate) async fn open_source(
        &self,
        src_repo: &RepositoryPath,
        d: &Descriptor,
        counters: &Arc<Counters>,
        hashed: Hashed,
    ) -> Result<Verified, RegistryError> {
        let from = hashed.offset();
        // Held until the stream is dropped: the read is what costs memory
        // and bandwidth, however many uploads it feeds.
        let permit = self.streams.clone().acquire_owned().await.expect("the stream budget is never closed");
        let source = self.source.open_blob(src_repo, &d.digest, from).await?;
        let ranged = source.status() == reqwest::StatusCode::PARTIAL_CONTENT;
        let protocol = |reason: String| RegistryError::Protocol { registry: self.source.name().to_owned(), reason };
        let starts = source.headers().get(reqwest::header::CONTENT_RANGE).and_then(|v| v.to_str().ok());
        if ranged && !starts.is_some_and(|r| r.starts_with(&format!("bytes {from}-"))) {
            return Err(protocol(format!("blob {}: asked from byte {from}, got Content-Range {starts:?}", d.digest)));
        }
        let (skip, expected) = if ranged { (0, d.size.saturating_sub(from)) } else { (from, d.size) };
        if let Some(len) = source.content_length().filter(|&l| l != expected) {
            let from_byte = if ranged { format!(" from byte {from}") } else { String::new() };
            let what = format!("{len} bytes long, its descriptor says {} in all", d.size);
            // Longer is what the source holds: refused for good. Shorter may
            // be a proxy's cut: tried again.
            if len > expected {
                return Err(RegistryError::TooLarge {
                    registry: self.source.name().to_owned(),
                    reference: format!("blob {}{from_byte} ({what})", d.digest),
                    limit: usize::try_from(d.size).unwrap_or(usize::MAX),
                });
            }
            return Err(protocol(format!("blob {}{from_byte} is {what}", d.digest)));
        }
        let counters = counters.clone();
        let silence = pace::Silence::new(source.bytes_stream(), self.min_throughput.window);
        let read = silence.map_err(|e| ReadFault::Source(e.to_string().into())).inspect_ok(move |c| {
            let _held = &permit;
            counters.read.fetch_add(c.len() as u64, Ordering::Relaxed);
        });
        Ok(Verified::new(without_first(read.boxed(), skip), &d.digest, d.size, hashed))
    }
}

/// The source blob an upload streams, to name it in the upload's error.
pub(crate) struct SourceBlob {
    registry: String,
    path: String,
    descriptor: Descriptor,
}

impl SourceBlob {
    /// The error of the source's stream, as the worker reads it: a blob that
    /// is not its descriptor's fails for good, a broken read is tried again.
    pub(crate) fn error(&self, e: &crate::chunks::BoxError) -> RegistryError {
        let d = &self.descriptor;
        match e.downcast_ref::<ReadFault>() {
            Some(ReadFault::Refused(Refusal::Mismatch { actual })) => RegistryError::DigestMismatch {
                registry: self.registry.clone(),
                what: "blob",
                digest: d.digest.clone(),
                actual: actual.clone(),
            },
            Some(ReadFault::Refused(Refusal::Longer)) => RegistryError::TooLarge {
                registry: self.registry.clone(),
                reference: format!("blob {} (the source sent more bytes than the descriptor)", d.digest),
                limit: usize::try_from(d.size).unwrap_or(usize::MAX),
            },
            _ => RegistryError::Transport {
                registry: self.registry.clone(),
                method: reqwest::Method::GET,
                path: self.path.clone(),
                reason: e.to_string(),
            },
        }
    }
}

/// `read` without its first `skip` bytes.
fn without_first(read: BlobStream, skip: u64) -> BlobStream {
    if skip == 0 {
        return read;
    }
    read.scan(skip, |left, c| {
        let c = c.map(|mut c| {
            let drop = (*left).min(c.len() as u64);
            *left -= drop;
            c.split_off(drop as usize)
        });
        std::future::ready(Some(c))
    })
    .try_filter(|c| std::future::ready(!c.is_empty()))
    .boxed()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use futures_util::stream;

    use super::*;

    #[tokio::test]
    async fn a_read_that_ignored_its_range_loses_the_bytes_before_it() {
        let read = |skip| async move {
            let pieces = ["abc", "defg", "hi"].map(|p| Ok(Bytes::from(p)));
            let got: Vec<Bytes> = without_first(stream::iter(pieces).boxed(), skip).try_collect().await.unwrap();
            String::from_utf8(got.concat()).unwrap()
        };
        assert_eq!(read(0).await, "abcdefghi");
        assert_eq!(read(3).await, "defghi");
        assert_eq!(read(5).await, "fghi");
        assert_eq!(read(9).await, "");
    }
}
