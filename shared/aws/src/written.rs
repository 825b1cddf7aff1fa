//! The relay's record of the destination tags it wrote: one S3 object per
//! tag, `<registry>/<repository>:<tag>`, holding the digest it pointed the
//! tag at.
//!
//! Reconcile needs it to tell a tag Harbor deleted without an event reaching
//! the relay (a missed webhook: the relay wrote it, the source no longer has
//! it, so it goes) from a tag the relay never wrote (pushed straight to the
//! destination by a person, or from a mapping changed since: it stays). A
//! destination tag alone cannot say which it is, and the record must outlive
//! a cold start, so it lives beside the queues rather than in a process.
//! S3, not SSM (a parameter per tag would meet the account's parameter
//! quota) nor DynamoDB (not in the local stack the tests run against): a
//! PUT per tag written, a GET per tag reconcile considers deleting, both a
//! fraction of a cent per thousand.
//!
//! The worker writes the record after a copy, and removes it after a delete;
//! reconcile only reads it. A failed write is logged and counted, never a
//! failed copy: a missing record keeps a tag (reconcile leaves it alone),
//! it never loses one.

use aws_sdk_s3::primitives::ByteStream;

use crate::digest::Digest;
use crate::repository::{RepositoryPath, Tag};

/// Why the record could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("the record of written tags (s3://{bucket}/{key}): {reason}")]
pub struct RecordError {
    pub bucket: String,
    pub key: String,
    pub reason: String,
}

/// The record, in the bucket `RELAY_RECORD_BUCKET` names.
#[derive(Clone)]
pub struct Written {
    s3: aws_sdk_s3::Client,
    bucket: String,
}

impl std::fmt::Debug for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Written").field("bucket", &self.bucket).finish()
    }
}

/// The object key of one destination tag. The registry's name is
/// percent-encoded (a name is any string, `/` included) and a repository
/// path never holds `:`, so the key names one tag of one repository of one
/// registry.
fn key(registry: &str, repository: &RepositoryPath, tag: &Tag) -> String {
    let registry: String = url::form_urlencoded::byte_serialize(registry.as_bytes()).collect();
    format!("{registry}/{repository}:{tag}")
}

impl Written {
    pub fn new(s3: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        Written { s3, bucket: bucket.into() }
    }

    /// The record in `bucket` (`RELAY_RECORD_BUCKET`), on the one SDK
    /// configuration. Path-style addressing: the same requests reach S3 and
    /// a local stand-in at `AWS_ENDPOINT_URL`.
    pub fn in_bucket(shared: &aws_config::SdkConfig, bucket: impl Into<String>) -> Self {
        let config = aws_sdk_s3::config::Builder::from(shared).force_path_style(true).build();
        Written::new(aws_sdk_s3::Client::from_conf(config), bucket)
    }

    fn error(&self, key: &str, reason: impl std::fmt::Display) -> RecordError {
        RecordError { bucket: self.bucket.clone(), key: key.to_owned(), reason: reason.to_string() }
    }

    /// Records that the relay pointed `tags` of `repository` at `digest`.
    pub async fn note(
        &self,
        registry: &str,
        repository: &RepositoryPath,
        tags: &[Tag],
        digest: &Digest,
    ) -> Result<(), RecordError> {
        for tag in tags {
            let key = key(registry, repository, tag);
            self.s3
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .content_type("text/plain")
                .body(ByteStream::from(digest.to_string().into_bytes()))
                .send()
                .await
                .map_err(|e| self.error(&key, aws_sdk_s3::error::DisplayErrorContext(&e)))?;
        }
        Ok(())
    }

    /// Forgets `tags` of `repository`: the relay deleted them.
    pub async fn forget(&self, registry: &str, repository: &RepositoryPath, tags: &[Tag]) -> Result<(), RecordError> {
        for tag in tags {
            let key = key(registry, repository, tag);
            self.s3
                .delete_object()
                .bucket(&self.bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| self.error(&key, aws_sdk_s3::error::DisplayErrorContext(&e)))?;
        }
        Ok(())
    }

    /// The digest the relay last pointed `tag` at, if it wrote the tag.
    pub async fn wrote(
        &self,
        registry: &str,
        repository: &RepositoryPath,
        tag: &Tag,
    ) -> Result<Option<Digest>, RecordError> {
        let key = key(registry, repository, tag);
        let out = match self.s3.get_object().bucket(&self.bucket).key(&key).send().await {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(self.error(&key, aws_sdk_s3::error::DisplayErrorContext(&e))),
        };
        let body = out.body.collect().await.map_err(|e| self.error(&key, e))?.into_bytes();
        let text = std::str::from_utf8(&body).map_err(|e| self.error(&key, e))?;
        text.trim().parse().map(Some).map_err(|e| self.error(&key, format!("not a digest: {e}")))
    }
}

/// The environment variable naming the record's bucket.
pub const BUCKET_ENV: &str = "RELAY_RECORD_BUCKET";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_one_tag_of_one_repository_of_one_registry() {
        let repo: RepositoryPath = "team/app".parse().unwrap();
        let tag: Tag = "v1.2".parse().unwrap();
        assert_eq!(key("cluster1", &repo, &tag), "cluster1/team/app:v1.2");
        // A registry named like a repository prefix still gives another key.
        let other: RepositoryPath = "app".parse().unwrap();
        assert_eq!(key("cluster1/team", &other, &tag), "cluster1%2Fteam/app:v1.2");
    }
}
