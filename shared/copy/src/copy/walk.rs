//! Reading what a copy needs from the source before it is planned: the
//! children of an index that the destination lacks (one `HEAD` each at the
//! destination, one `GET` at the source for those missing), within the
//! index bounds. An index past them (children, depth, the task's manifest
//! bytes) fails the task for good before anything is pushed: the source
//! would serve the same tree again.

use std::collections::{HashMap, HashSet};

use crate::copy::Copier;
use crate::digest::Digest;
use crate::manifest::{Contents, Manifest, ManifestError, MAX_INDEX_CHILDREN, MAX_INDEX_DEPTH};
use crate::report::{CopyError, CopyReport};
use crate::repository::RepositoryPath;

/// What the walk learnt of a tree's children.
#[derive(Default)]
struct Walked {
    /// Read from the source: the destination lacks them.
    fetched: HashMap<Digest, Manifest>,
    /// Found at the destination: neither read nor walked.
    present: HashSet<Digest>,
}

impl Copier<'_> {
    /// The children of `root`, at any depth, that the destination lacks,
    /// read from the source and counted in the task's manifest bytes.
    pub(crate) async fn missing_children(
        &self,
        src_repo: &RepositoryPath,
        dst_repo: &RepositoryPath,
        root: &Manifest,
        report: &mut CopyReport,
    ) -> Result<HashMap<Digest, Manifest>, CopyError> {
        let mut walked = Walked::default();
        self.walk(src_repo, dst_repo, root, 0, &mut walked, report).await?;
        Ok(walked.fetched)
    }

    /// Walks `manifest`, `depth` levels below the walk's root.
    async fn walk(
        &self,
        src_repo: &RepositoryPath,
        dst_repo: &RepositoryPath,
        manifest: &Manifest,
        depth: usize,
        walked: &mut Walked,
        report: &mut CopyReport,
    ) -> Result<(), CopyError> {
        let Contents::Index(children) = manifest.contents()? else { return Ok(()) };
        if children.len() > MAX_INDEX_CHILDREN {
            let (digest, limit) = (manifest.digest.clone(), MAX_INDEX_CHILDREN);
            return Err(ManifestError::TooManyChildren { digest, children: children.len(), limit }.into());
        }
        for child in children {
            let reference = child.digest.to_string();
            if walked.fetched.contains_key(&child.digest) || walked.present.contains(&child.digest) {
                continue;
            }
            if self.destination.head_manifest(dst_repo, &reference).await?.as_ref() == Some(&child.digest) {
                walked.present.insert(child.digest);
                continue;
            }
            if depth >= MAX_INDEX_DEPTH {
                let (digest, limit) = (manifest.digest.clone(), MAX_INDEX_DEPTH);
                return Err(ManifestError::TooDeep { digest, limit }.into());
            }
            // By its descriptor first: no GET for what would not fit.
            report.within_budget(&child.digest, child.size)?;
            let m = self.source.get_manifest(src_repo, &reference, Some(&child.digest)).await?;
            report.read_manifest(&child.digest, m.bytes.len() as u64)?;
            Box::pin(self.walk(src_repo, dst_repo, &m, depth + 1, walked, report)).await?;
            walked.fetched.insert(child.digest, m);
        }
        Ok(())
    }
}
