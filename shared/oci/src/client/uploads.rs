//! Blobs: HEAD, streaming GET, and upload sessions (mount, whole-blob PUT,
//! chunks, cancel).

use bytes::Bytes;
use futures_util::stream::BoxStream;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::super::chunks::BoxError;
use super::error::Answer;
use super::transport::Bound;
use super::{header_str, OciErrorCode, RegistryClient, RegistryError};
use crate::digest::Digest;
use crate::repository::RepositoryPath;

/// Whether an answer to a mount request says the registry does not mount
/// at all: 400 or 405 (the method with that query refused), or an
/// `UNSUPPORTED` error code whatever the status (a 501 is a server error,
/// retried as one).
fn is_mount_refusal(e: &RegistryError) -> bool {
    let refused = matches!(e.status().map(|s| s.as_u16()), Some(400 | 405));
    refused || e.oci_errors().iter().any(|e| e.code == OciErrorCode::Unsupported)
}

/// Result of opening a blob upload.
pub enum UploadStart {
    /// The registry mounted the blob from another repository (201).
    Mounted,
    /// An upload session to send the bytes to, with the smallest chunk the
    /// registry takes (`OCI-Chunk-Min-Length`) if it says.
    Session { url: Url, chunk_min: Option<u64> },
}

/// What a mount of a blob from its own repository said
/// ([`RegistryClient::check_in_place`]).
pub enum InPlace {
    /// The repository holds the blob (201).
    Present,
    /// It does not: the upload session the registry opened (202).
    Absent(UploadStart),
    /// The registry would not say (it does not answer presence by mounts,
    /// refused the mount, or denied it): ask with a `HEAD`.
    Unknown,
}

impl RegistryClient {
    /// Whether `repo` holds `digest`, asked as the upload's own `POST`: a
    /// mount from the repository itself, which a registry that answers
    /// presence by mounts ([`Quirks::mount_answers_presence`]) answers
    /// 201 when the repository has the blob and otherwise with the session
    /// the upload goes on with — one request where a `HEAD` and a `POST`
    /// were two. A refusal is learnt as any mount's is.
    pub async fn check_in_place(&self, repo: &RepositoryPath, digest: &Digest) -> Result<InPlace, RegistryError> {
        if !(self.quirks.mount_answers_presence && self.asks_mounts()) {
            return Ok(InPlace::Unknown);
        }
        match self.post_upload(repo, Some((digest, repo))).await {
            Ok(UploadStart::Mounted) => Ok(InPlace::Present),
            Ok(session) => Ok(InPlace::Absent(session)),
            Err(e) if is_mount_refusal(&e) => {
                if self.learnt.mark_mounts_refused() {
                    tracing::warn!(registry = %self.name, error = %e, "the registry refuses mounts: checking blobs with HEAD and uploading them");
                }
                Ok(InPlace::Unknown)
            }
            Err(e) if matches!(e.status().map(|s| s.as_u16()), Some(401 | 403 | 404)) => Ok(InPlace::Unknown),
            Err(e) => Err(e),
        }
    }

    pub async fn blob_exists(&self, repo: &RepositoryPath, digest: &Digest) -> Result<bool, RegistryError> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self.execute(Method::HEAD, url, &self.scope(repo), HeaderMap::new(), None).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(false),
            _ => self.expect(resp, &[StatusCode::OK]).await.map(|_| true),
        }
    }

    /// Opens a blob for streaming (redirects to storage are followed; the
    /// Authorization header is not sent to another host), from byte `from`
    /// on: a `Range` request past 0. A registry may ignore the range and
    /// answer the whole blob (200); the caller tells by the status.
    pub async fn open_blob(
        &self,
        repo: &RepositoryPath,
        digest: &Digest,
        from: u64,
    ) -> Result<Response, RegistryError> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let mut headers = HeaderMap::new();
        if from > 0 {
            headers.insert(RANGE, HeaderValue::from_str(&format!("bytes={from}-")).expect("digits are a header value"));
        }
        let resp = self.execute_bounded(Method::GET, url, &self.scope(repo), headers, None, Bound::Answer).await?;
        let ok: &[StatusCode] =
            if from > 0 { &[StatusCode::OK, StatusCode::PARTIAL_CONTENT] } else { &[StatusCode::OK] };
        self.expect(resp, ok).await
    }

    /// `POST /blobs/uploads/`, optionally asking to mount `digest` from
    /// another repository of the same registry. A registry that refuses
    /// mounts ([`is_mount_refusal`]) gets the plain `POST` instead, and is
    /// not asked to mount again ([`Learnt`](super::Learnt)); one that
    /// denies the mount (401, 403: perhaps only the other repository's
    /// scope) or does not find it (404) gets the plain `POST` for this blob.
    pub async fn start_upload(
        &self,
        repo: &RepositoryPath,
        mount: Option<(&Digest, &RepositoryPath)>,
    ) -> Result<UploadStart, RegistryError> {
        if let Some((digest, from)) = mount.filter(|_| self.asks_mounts()) {
            match self.post_upload(repo, Some((digest, from))).await {
                Err(e) if is_mount_refusal(&e) => {
                    if self.learnt.mark_mounts_refused() {
                        tracing::warn!(registry = %self.name, error = %e, "the registry refuses cross-repository mounts: uploading blobs instead");
                    }
                }
                Err(e) if matches!(e.status().map(|s| s.as_u16()), Some(401 | 403 | 404)) => {
                    tracing::debug!(registry = %self.name, %digest, error = %e, "mount not allowed: uploading the blob instead");
                }
                started => return started,
            }
        }
        self.post_upload(repo, None).await
    }

    /// One `POST /blobs/uploads/`, with the mount query when given.
    async fn post_upload(
        &self,
        repo: &RepositoryPath,
        mount: Option<(&Digest, &RepositoryPath)>,
    ) -> Result<UploadStart, RegistryError> {
        let mut url = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        let mut scope = self.scope(repo);
        if let Some((digest, from)) = mount {
            url.query_pairs_mut().append_pair("mount", &digest.to_string()).append_pair("from", from.as_str());
            // Pull from another repository is a scope of its own; from the
            // repository itself the push scope holds it (one token).
            if from != repo {
                scope = format!("{scope} repository:{from}:pull");
            }
        }
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let resp = self.execute(Method::POST, url, &scope, headers, None).await?;
        let status = resp.status();
        let resp = self.expect(resp, &[StatusCode::CREATED, StatusCode::ACCEPTED]).await?;
        if mount.is_some() && status == StatusCode::CREATED {
            return Ok(UploadStart::Mounted);
        }
        let chunk_min = header_str(resp.headers(), "oci-chunk-min-length").and_then(|v| v.parse().ok());
        Ok(UploadStart::Session { url: self.location(&resp)?, chunk_min })
    }

    /// Completes an upload session with the whole blob in one `PUT`
    /// (`Content-Length` from the descriptor). The copy hands a verified
    /// read ([`crate::verify`]): its last bytes come only once
    /// they hash to `digest`, so even a registry that does not check the
    /// digest cannot commit other bytes (a body that fails is never
    /// complete).
    pub async fn finish_upload(
        &self,
        repo: &RepositoryPath,
        session: Url,
        digest: &Digest,
        size: u64,
        body: BoxStream<'static, Result<Bytes, BoxError>>,
    ) -> Result<(), RegistryError> {
        let mut url = session;
        url.query_pairs_mut().append_pair("digest", &digest.to_string());
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
        let resp = self.send_once(Method::PUT, url, &self.scope(repo), headers, body, size).await?;
        self.expect(resp, &[StatusCode::CREATED]).await.map(drop)
    }

    /// Sends `len` bytes at `offset` of an upload (`PATCH` with
    /// `Content-Range`); returns the session's next URL.
    pub async fn upload_chunk(
        &self,
        repo: &RepositoryPath,
        session: Url,
        offset: u64,
        len: u64,
        body: BoxStream<'static, Result<Bytes, BoxError>>,
    ) -> Result<Url, RegistryError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        let range = format!("{offset}-{}", offset + len - 1);
        headers.insert("content-range", HeaderValue::from_str(&range).expect("digits and a dash"));
        let resp = self.send_once(Method::PATCH, session, &self.scope(repo), headers, body, len).await?;
        let resp = self.expect(resp, &[StatusCode::ACCEPTED]).await?;
        self.location(&resp)
    }

    /// Where an upload session stands: its latest URL and how many bytes
    /// it holds (`GET` on the session: 204 with `Range: 0-<last byte>`);
    /// `None` when the registry no longer knows it (expired, or restarted
    /// without its state). The session URL must be on the registry's origin.
    pub async fn upload_status(
        &self,
        repo: &RepositoryPath,
        session: Url,
    ) -> Result<Option<(Url, u64)>, RegistryError> {
        if session.origin() != self.base.origin() {
            return Ok(None);
        }
        let resp = self.execute(Method::GET, session, &self.scope(repo), HeaderMap::new(), None).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = self.expect(resp, &[StatusCode::NO_CONTENT]).await?;
        // Distribution writes `0-0` for an empty session as for one byte:
        // only sessions that took whole chunks are resumed.
        let taken = header_str(resp.headers(), "range")
            .and_then(|r| r.split_once('-'))
            .and_then(|(_, last)| last.parse::<u64>().ok())
            .map_or(0, |last| last + 1);
        Ok(Some((self.location(&resp)?, taken)))
    }

    /// Abandons an upload session (best effort): `session` is its latest
    /// URL (after chunks, the last `Location`).
    pub async fn cancel_upload(&self, repo: &RepositoryPath, session: Url) {
        let _ = self.execute(Method::DELETE, session, &self.scope(repo), HeaderMap::new(), None).await;
    }

    /// The upload session an answer points at: its `Location`, which must
    /// be on the registry's origin (the session's requests carry the
    /// credentials).
    pub(super) fn location(&self, resp: &Response) -> Result<Url, RegistryError> {
        let bad = |reason: String| self.malformed(Answer::UploadLocation, reason);
        let loc = header_str(resp.headers(), LOCATION).ok_or_else(|| bad("upload response has no Location".into()))?;
        let url = resp.url().join(loc).map_err(|e| bad(format!("bad upload Location: {e}")))?;
        if !self.same_origin(&url) {
            return Err(bad(format!("upload Location points at another host ({})", url.host_str().unwrap_or("?"))));
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;

    use super::*;
    use crate::client::{ClientOptions, Role};

    /// (upload answer's Location, error): a session the client cannot use
    /// is told by its kind, not its text.
    #[tokio::test]
    async fn an_unusable_upload_location_is_typed() {
        for location in [None, Some("http://elsewhere.example/v2/a/blobs/uploads/1")] {
            let handler = move || async move {
                match location {
                    Some(l) => (StatusCode::ACCEPTED, [("location", l)]).into_response(),
                    None => StatusCode::ACCEPTED.into_response(),
                }
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
            tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(handler)).await });
            let c = RegistryClient::new("r", base, Role::Destination, None, ClientOptions::default()).unwrap();
            let err = c.start_upload(&"a".parse().unwrap(), None).await.err().expect("refused");
            assert!(
                matches!(err, RegistryError::Malformed { answer: Answer::UploadLocation, .. }),
                "{location:?}: {err}"
            );
        }
    }
}
