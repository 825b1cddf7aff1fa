//! Every streamed blob is hashed as it is read, and its last bytes are let
//! through only once the digest and the length are the descriptor's:
//! a destination commits an upload when it has every byte, so the
//! bytes it does not get cannot be committed, whether or not it checks the
//! digest itself. One hash per source read, shared by every upload it feeds
//! ([`super::tee`]); constant memory (the hash state and at most one held
//! piece).

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use sha2::{Digest as _, Sha256, Sha512};

use crate::digest::{Algorithm, Digest};

/// What an upload fed by a shared read sees instead of bytes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadFault {
    /// The source's stream failed (or could not be opened): every upload
    /// of the read fails, and each retries alone.
    #[error("{0}")]
    Source(Arc<str>),
    /// The source's bytes are not the blob (digest or length): every
    /// upload of the read fails for good.
    #[error("the source's blob is not the one its descriptor names: {0}")]
    Refused(Refusal),
    /// The upload goes on with a read of its own ([`super::tee::go_on_alone`]), from
    /// the byte it had reached, whose hash this is.
    #[error("this destination fell behind the shared read of the source")]
    Detached(Box<Hashed>),
}

/// A blob's bytes as an upload consumes them.
pub type BlobStream = BoxStream<'static, Result<Bytes, ReadFault>>;

/// Why a source read's bytes are not the blob its descriptor names. What
/// the source serves is wrong, so reading it again would not help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Exactly the descriptor's size, hashing to another digest.
    #[error("its bytes have digest {actual}")]
    Mismatch { actual: Digest },
    /// More bytes than the descriptor's size.
    #[error("it has more bytes than the descriptor")]
    Longer,
}

/// The running hash of a blob's first [`Hashed::offset`] bytes: where a read
/// that goes on from a byte past 0 (a `Range` request after an upload was
/// detached from a shared read) takes the hash up.
#[derive(Clone)]
pub struct Hashed {
    hasher: Hasher,
    len: u64,
}

#[derive(Clone)]
enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hashed {
    /// Nothing hashed yet, with the algorithm of `digest`.
    pub fn start(digest: &Digest) -> Hashed {
        let hasher = match digest.algorithm() {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        };
        Hashed { hasher, len: 0 }
    }

    /// How many bytes are hashed: the offset a read goes on from.
    pub fn offset(&self) -> u64 {
        self.len
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.hasher {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
        self.len += bytes.len() as u64;
    }

    /// The hash state as text (base64), to carry in a message to the run
    /// that goes on with the upload ([`super::resume`]).
    pub fn to_state(&self) -> String {
        use base64::Engine;
        use sha2::digest::common::hazmat::SerializableState;
        let bytes = match &self.hasher {
            Hasher::Sha256(h) => h.serialize().to_vec(),
            Hasher::Sha512(h) => h.serialize().to_vec(),
        };
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// The hash of a blob `digest`'s first `len` bytes from
    /// [`Hashed::to_state`]; `None` when the state is not one (then the
    /// upload starts over).
    pub fn from_state(digest: &Digest, state: &str, len: u64) -> Option<Hashed> {
        use base64::Engine;
        use sha2::digest::common::hazmat::SerializableState;
        let bytes = base64::engine::general_purpose::STANDARD.decode(state).ok()?;
        let hasher = match digest.algorithm() {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::deserialize(bytes.as_slice().try_into().ok()?).ok()?),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::deserialize(bytes.as_slice().try_into().ok()?).ok()?),
        };
        Some(Hashed { hasher, len })
    }

    /// The digest of the bytes hashed so far (the state is kept).
    fn digest(&self) -> Digest {
        let (algorithm, hex) = match &self.hasher {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.clone().finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.clone().finalize())),
        };
        format!("{}:{hex}", algorithm.name()).parse().expect("a hash in hex is a digest")
    }
}

impl std::fmt::Debug for Hashed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hashed").field("len", &self.len).finish_non_exhaustive()
    }
}

/// A source read of a blob that refuses to be what its descriptor does not
/// name: bytes past the descriptor's size end it with
/// [`Refusal::Longer`]; the piece that completes the size is hashed and,
/// if the digest is not the descriptor's, replaced by
/// [`Refusal::Mismatch`]; if it is, held until the source's own end (more
/// bytes after it are refused too), then let through. A source that ends
/// short fails as a broken read (retried).
pub struct Verified {
    inner: BlobStream,
    digest: Digest,
    size: u64,
    hashed: Hashed,
    /// The last piece, verified, waiting for the source's end.
    last: Option<Bytes>,
    /// The source ended or failed: nothing more is read from it.
    ended: bool,
}

impl Verified {
    /// `read` holds the blob `digest` of `size` bytes from byte
    /// `from.offset()` on; `from` is the hash of the bytes before it.
    pub fn new(read: BlobStream, digest: &Digest, size: u64, from: Hashed) -> Verified {
        Verified { inner: read, digest: digest.clone(), size, hashed: from, last: None, ended: false }
    }

    /// The hash of every byte this read has let through, taken before the
    /// next item is asked for: where an upload detached then goes on.
    pub fn position(&self) -> Hashed {
        self.hashed.clone()
    }

    fn refuse(&mut self, refusal: Refusal) -> Poll<Option<Result<Bytes, ReadFault>>> {
        self.ended = true;
        self.last = None;
        Poll::Ready(Some(Err(ReadFault::Refused(refusal))))
    }

    /// The whole blob is hashed: its digest must be the descriptor's.
    fn check(&self) -> Result<(), Refusal> {
        let actual = self.hashed.digest();
        if actual == self.digest {
            Ok(())
        } else {
            Err(Refusal::Mismatch { actual })
        }
    }
}

impl Stream for Verified {
    type Item = Result<Bytes, ReadFault>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(this.last.take().map(Ok));
            }
            match ready!(this.inner.poll_next_unpin(cx)) {
                Some(Ok(piece)) if piece.is_empty() => continue,
                Some(Ok(piece)) => {
                    if this.last.is_some() || this.hashed.offset() + piece.len() as u64 > this.size {
                        return this.refuse(Refusal::Longer);
                    }
                    this.hashed.update(&piece);
                    if this.hashed.offset() < this.size {
                        return Poll::Ready(Some(Ok(piece)));
                    }
                    if let Err(refusal) = this.check() {
                        return this.refuse(refusal);
                    }
                    this.last = Some(piece);
                }
                Some(Err(e)) => {
                    this.ended = true;
                    this.last = None;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.ended = true;
                    if this.hashed.offset() < this.size {
                        let reason = format!("the source ended at byte {} of {}", this.hashed.offset(), this.size);
                        return Poll::Ready(Some(Err(ReadFault::Source(reason.into()))));
                    }
                    // An empty blob has no last piece: checked here.
                    if this.size == 0 {
                        if let Err(refusal) = this.check() {
                            return this.refuse(refusal);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{stream, TryStreamExt};

    use super::*;

    /// `pieces` read through a [`Verified`] for the blob `blob`.
    async fn read(blob: &[u8], pieces: &[&[u8]]) -> Result<Vec<u8>, ReadFault> {
        let items: Vec<Result<Bytes, ReadFault>> = pieces.iter().map(|p| Ok(Bytes::copy_from_slice(p))).collect();
        let d = Digest::sha256_of(blob);
        let v = Verified::new(stream::iter(items).boxed(), &d, blob.len() as u64, Hashed::start(&d));
        let got: Vec<Bytes> = v.try_collect().await?;
        Ok(got.concat())
    }

    /// A hash carried to another run as text goes on where it stopped: the
    /// state of the first half, restored, hashes the second half to the
    /// whole blob's digest.
    #[test]
    fn a_hash_state_survives_the_trip_to_the_next_run() {
        let blob: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let d = Digest::sha256_of(&blob);
        let mut first = Hashed::start(&d);
        first.update(&blob[..40_001]);
        let mut then = Hashed::from_state(&d, &first.to_state(), first.offset()).expect("a state");
        assert_eq!(then.offset(), 40_001);
        then.update(&blob[40_001..]);
        assert_eq!(then.digest(), d);
        assert!(Hashed::from_state(&d, "bm90IGEgc3RhdGU=", 1).is_none(), "not a state: start over");
    }

    #[tokio::test]
    async fn the_described_bytes_pass_in_their_pieces() {
        assert_eq!(read(b"abcdefgh", &[b"abc", b"", b"defg", b"h"]).await.unwrap(), b"abcdefgh");
        assert_eq!(read(b"", &[]).await.unwrap(), b"");
    }

    #[tokio::test]
    async fn other_bytes_of_the_same_length_are_refused_before_their_last_piece() {
        let d = Digest::sha256_of(b"abcdefgh");
        let items = vec![Ok(Bytes::from_static(b"abcd")), Ok(Bytes::from_static(b"efgX"))];
        let mut v = Verified::new(stream::iter(items).boxed(), &d, 8, Hashed::start(&d));
        assert_eq!(v.next().await.unwrap().unwrap(), "abcd");
        let actual = Digest::sha256_of(b"abcdefgX");
        assert!(
            matches!(v.next().await, Some(Err(ReadFault::Refused(Refusal::Mismatch { actual: a }))) if a == actual),
            "the last piece is withheld"
        );
        assert!(v.next().await.is_none());
    }

    #[tokio::test]
    async fn more_bytes_than_described_are_refused_even_after_a_right_prefix() {
        for pieces in [&[&b"abcdefghi"[..]][..], &[b"abcd", b"efgh", b"i"]] {
            let got = read(b"abcdefgh", pieces).await;
            assert!(matches!(got, Err(ReadFault::Refused(Refusal::Longer))), "{pieces:?}: {got:?}");
        }
    }

    #[tokio::test]
    async fn a_short_read_is_a_broken_read_not_a_refusal() {
        let got = read(b"abcdefgh", &[b"abcd"]).await;
        assert!(matches!(got, Err(ReadFault::Source(_))), "{got:?}");
    }

    #[tokio::test]
    async fn a_read_from_a_byte_past_0_takes_up_the_hash_of_those_before() {
        let d = Digest::sha256_of(b"abcdefgh");
        let mut before = Hashed::start(&d);
        before.update(b"abc");
        let rest = vec![Ok(Bytes::from_static(b"defgh"))];
        let v = Verified::new(stream::iter(rest).boxed(), &d, 8, before.clone());
        let got: Vec<Bytes> = v.try_collect().await.unwrap();
        assert_eq!(got.concat(), b"defgh");
        let wrong = vec![Ok(Bytes::from_static(b"Defgh"))];
        let v = Verified::new(stream::iter(wrong).boxed(), &d, 8, before);
        assert!(matches!(v.try_collect::<Vec<Bytes>>().await, Err(ReadFault::Refused(Refusal::Mismatch { .. }))));
    }

    #[test]
    fn sha512_blobs_are_hashed_with_sha512() {
        let d: Digest = format!("sha512:{}", hex::encode(Sha512::digest(b"abc"))).parse().unwrap();
        let mut h = Hashed::start(&d);
        h.update(b"abc");
        assert_eq!(h.digest(), d);
    }
}
