//! Deletes at the destination (`deletion: true`), with the two guards that
//! keep a delete from removing what is still wanted there: every source
//! repository feeding the destination repository is asked first, and the
//! manifest goes only when no tag outside the deleted artifact's mapping
//! points at it (distribution deletes a manifest by digest, with every tag
//! on it; it cannot delete one tag alone).

use futures_util::{stream, StreamExt, TryStreamExt};

use super::client::{RegistryClient, RegistryError};
use super::report::{CopyError, CopyReport, Outcome};
use crate::digest::Digest;
use crate::repository::{RepositoryPath, Tag};
use crate::task::Task;

/// Destination tags resolved at the same time when looking for foreign ones.
const TAGS_IN_FLIGHT: usize = 16;

/// Deletes one task's artifact at the destination. It copies nothing, so
/// it needs the two registries only: the source to ask whether the digest
/// is still wanted, the destination to delete it.
pub struct Deleter<'a> {
    pub source: &'a RegistryClient,
    pub destination: &'a RegistryClient,
}

impl Deleter<'_> {
    /// Deletes the task's digest at the destination unless a source
    /// repository in `feeders` (those the enabled rules map onto the
    /// destination repository; the task's own is always asked) still holds
    /// it, or a tag the deleted artifact did not map to points at it.
    pub async fn delete(&self, task: &Task, feeders: &[RepositoryPath]) -> Result<CopyReport, CopyError> {
        let digest = &task.source.digest;
        let mut report = CopyReport::default();
        let others = feeders.iter().filter(|r| **r != task.source.repository);
        for repo in std::iter::once(&task.source.repository).chain(others) {
            if self.source.head_manifest(repo, &digest.to_string()).await?.is_some() {
                if repo != &task.source.repository {
                    tracing::info!(held_by = %repo, "another source repository mapped onto this destination still holds the digest: nothing deleted");
                }
                report.held_by = Some(repo.clone());
                report.outcome = Some(Outcome::SourceStillHas);
                return Ok(report);
            }
        }
        let dst_repo = &task.destination.repository;
        if self.destination.head_manifest(dst_repo, &digest.to_string()).await?.as_ref() != Some(digest) {
            report.outcome = Some(Outcome::NotPresent);
            return Ok(report);
        }
        let foreign = self.foreign_tags(dst_repo, digest, &task.destination.tags).await?;
        if !foreign.is_empty() {
            tracing::warn!(foreign_tags = ?foreign.iter().map(Tag::as_str).collect::<Vec<_>>(), "tags the deleted artifact did not map to point at its digest, and the registry deletes by digest: kept");
            report.foreign_tags = foreign;
            report.outcome = Some(Outcome::KeptForeignTags);
            return Ok(report);
        }
        let deleted = self.destination.delete_manifest(dst_repo, digest).await?;
        report.outcome = Some(if deleted { Outcome::Deleted } else { Outcome::NotPresent });
        Ok(report)
    }

    /// The tags of `repo` outside `mapped` that point at `digest`.
    async fn foreign_tags(
        &self,
        repo: &RepositoryPath,
        digest: &Digest,
        mapped: &[Tag],
    ) -> Result<Vec<Tag>, RegistryError> {
        let candidates = self.destination.tags(repo).await?.into_iter().filter(|t| !mapped.contains(t));
        stream::iter(candidates)
            .map(|tag| async move {
                let at = self.destination.head_manifest(repo, tag.as_str()).await?;
                Ok::<_, RegistryError>((at.as_ref() == Some(digest)).then_some(tag))
            })
            .buffered(TAGS_IN_FLIGHT)
            .try_filter_map(|found| async move { Ok(found) })
            .try_collect()
            .await
    }
}
