//! One byte stream cut into consecutive request bodies of given lengths,
//! for chunked (`PATCH`) uploads: the source blob is read once, and no more
//! than one network piece is held at a time — constant memory, as for a
//! whole-blob `PUT`.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Inner {
    stream: BoxStream<'static, Result<Bytes, BoxError>>,
    /// What the last piece had beyond the previous chunk's end.
    leftover: Option<Bytes>,
}

/// Hands out the stream's bytes chunk by chunk, in order.
pub struct Pieces {
    inner: Arc<tokio::sync::Mutex<Inner>>,
}

impl Pieces {
    pub fn new(stream: BoxStream<'static, Result<Bytes, BoxError>>) -> Self {
        Pieces { inner: Arc::new(tokio::sync::Mutex::new(Inner { stream, leftover: None })) }
    }

    /// The next `len` bytes, as a body stream. Take one chunk at a time:
    /// each must be read to its end before the next is asked for.
    pub fn take(&self, len: u64) -> impl Stream<Item = Result<Bytes, BoxError>> + Send + 'static {
        futures_util::stream::unfold((self.inner.clone(), len), |(inner, remaining)| async move {
            if remaining == 0 {
                return None;
            }
            let mut guard = inner.lock().await;
            let piece = match guard.leftover.take() {
                Some(b) => Ok(b),
                None => guard.stream.next().await.unwrap_or_else(|| Err("the source ended before the blob did".into())),
            };
            match piece {
                Err(e) => {
                    drop(guard);
                    Some((Err(e), (inner, 0)))
                }
                Ok(mut b) => {
                    if b.len() as u64 > remaining {
                        guard.leftover = Some(b.split_off(remaining as usize));
                    }
                    drop(guard);
                    let n = b.len() as u64;
                    Some((Ok(b), (inner, remaining - n)))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cuts_across_piece_boundaries_in_order() {
        let pieces: Vec<Result<Bytes, BoxError>> =
            vec![Ok(Bytes::from_static(b"abcde")), Ok(Bytes::from_static(b"fg")), Ok(Bytes::from_static(b"hijkl"))];
        let p = Pieces::new(futures_util::stream::iter(pieces).boxed());
        let mut chunks = Vec::new();
        for len in [3, 3, 3, 3] {
            let parts: Vec<_> = p.take(len).collect().await;
            let bytes: Vec<u8> = parts.into_iter().flat_map(|r| r.unwrap().to_vec()).collect();
            chunks.push(String::from_utf8(bytes).unwrap());
        }
        assert_eq!(chunks, ["abc", "def", "ghi", "jkl"]);
    }

    #[tokio::test]
    async fn a_short_source_is_an_error() {
        let pieces: Vec<Result<Bytes, BoxError>> = vec![Ok(Bytes::from_static(b"ab"))];
        let p = Pieces::new(futures_util::stream::iter(pieces).boxed());
        let parts: Vec<_> = p.take(4).collect().await;
        assert!(parts.last().unwrap().is_err());
    }
}
