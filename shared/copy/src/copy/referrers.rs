//! Referrers follow their subject (DESIGN §5.6): the signatures, SBOMs and
//! attestations attached to an artifact are copied with it, as Harbor's
//! replication copies accessories.
//!
//! Finding them at the source: the OCI 1.1 referrers API
//! (`GET /v2/<name>/referrers/<digest>`) where the source has it; where it
//! answers 404 (remembered per client), the tag schema — the tags
//! `sha256-<hex>` (OCI 1.1's fallback index) and `sha256-<hex>.sig|.att|.sbom`
//! (cosign) — found in one tag listing, not one HEAD per suffix.
//!
//! Writing them: a referrer found through the API is pushed by digest; if
//! the destination does not answer `OCI-Subject` it has no referrers API,
//! so we maintain the fallback index tag `sha256-<hex>` there (OCI 1.1's
//! client duty). A referrer found by tag is copied under the same tag.
//! Referrers of referrers (a signed SBOM) follow, a few levels deep.
//! Each referrer's own tree is walked within the index bounds of
//! [`crate::manifest`], and its manifests count in the task's manifest
//! bytes ([`crate::manifest::MAX_TASK_MANIFEST_BYTES`]).

use std::collections::{HashSet, VecDeque};

use crate::copy::{Copier, CopyError, CopyReport};
use crate::digest::Digest;
use crate::manifest::{Contents, Descriptor, Manifest, OCI_INDEX};
use crate::repository::{RepositoryPath, Tag};
use crate::RegistryError;

/// Suffixes of the cosign tag schema.
const TAG_SUFFIXES: [&str; 3] = [".sig", ".att", ".sbom"];
/// Referrers of referrers are followed this deep (artifact → SBOM → its
/// signature is depth 2).
const MAX_DEPTH: usize = 3;
/// Referrers copied per task at most: a subject with thousands of
/// attestations is a listing problem, not something to replicate blindly.
const MAX_REFERRERS: usize = 256;

/// Whether `tag` is one of the tag-schema names for the digest whose
/// prefix (`sha256-<hex>`) is `prefix`.
pub fn is_referrer_tag(tag: &str, prefix: &str) -> bool {
    tag.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || TAG_SUFFIXES.contains(&rest))
}

impl Copier<'_> {
    /// Copies the referrers of `subject` (already at the destination).
    pub(super) async fn copy_referrers(
        &self,
        src_repo: &RepositoryPath,
        dst_repo: &RepositoryPath,
        subject: &Digest,
        override_existing: bool,
        report: &mut CopyReport,
    ) -> Result<(), CopyError> {
        let mut queue = VecDeque::from([(subject.clone(), 0usize)]);
        let mut seen = HashSet::from([subject.clone()]);
        let mut source_tags: Option<Vec<Tag>> = None;
        while let Some((subject, depth)) = queue.pop_front() {
            if depth >= MAX_DEPTH {
                continue;
            }
            let mut found = Vec::new();
            match self.source.referrers(src_repo, &subject).await? {
                Some(descriptors) => {
                    for d in descriptors.into_iter().filter(|d| !seen.contains(&d.digest)) {
                        self.copy_referrer(src_repo, dst_repo, &subject, &d, report).await?;
                        found.push(d.digest);
                    }
                }
                None => {
                    if source_tags.is_none() {
                        source_tags = Some(self.source.tags(src_repo).await?);
                    }
                    let prefix = subject.tag_prefix();
                    let tags = source_tags.iter().flatten().filter(|t| is_referrer_tag(t.as_str(), &prefix));
                    for tag in tags {
                        let next = self.copy_referrer_tag(src_repo, dst_repo, tag, override_existing, report).await?;
                        found.extend(next.into_iter().filter(|d| !seen.contains(d)));
                    }
                }
            }
            for d in found {
                if seen.contains(&d) {
                    continue;
                }
                if seen.len() > MAX_REFERRERS {
                    tracing::warn!(subject = %subject, limit = MAX_REFERRERS, "too many referrers: the rest are not copied");
                    return Ok(());
                }
                seen.insert(d.clone());
                queue.push_back((d, depth + 1));
            }
        }
        Ok(())
    }

    /// One referrer found through the API: pushed by digest, and listed in
    /// the destination's fallback index when it has no referrers API.
    async fn copy_referrer(
        &self,
        src_repo: &RepositoryPath,
        dst_repo: &RepositoryPath,
        subject: &Digest,
        d: &Descriptor,
        report: &mut CopyReport,
    ) -> Result<(), CopyError> {
        let reference = d.digest.to_string();
        if self.destination.head_manifest(dst_repo, &reference).await?.as_ref() == Some(&d.digest) {
            return Ok(());
        }
        report.within_budget(&d.digest, d.size)?;
        let m = self.source.get_manifest(src_repo, &reference, Some(&d.digest)).await?;
        report.read_manifest(&d.digest, m.bytes.len() as u64)?;
        self.copy_below(src_repo, dst_repo, &m, report).await?;
        let pushed = self.destination.put_manifest(dst_repo, &reference, &m).await?;
        report.manifests_pushed += 1;
        report.referrers_copied += 1;
        tracing::info!(referrer = %d.digest, subject = %subject, artifact_type = ?artifact_type(&m), "referrer copied");
        if !pushed.subject_indexed {
            self.add_to_fallback_index(dst_repo, subject, &m, report).await?;
        }
        Ok(())
    }

    /// One referrer found by tag: copied under the same tag. Returns the
    /// digests whose referrers to look for next: its own, and for a
    /// fallback index (`sha256-<hex>`, no suffix) those of the referrers it
    /// lists (read from the source each time, so a referrer added to a
    /// subject that is already replicated is found).
    async fn copy_referrer_tag(
        &self,
        src_repo: &RepositoryPath,
        dst_repo: &RepositoryPath,
        tag: &Tag,
        override_existing: bool,
        report: &mut CopyReport,
    ) -> Result<Vec<Digest>, CopyError> {
        let Some(digest) = self.source.head_manifest(src_repo, tag.as_str()).await? else { return Ok(Vec::new()) };
        let present = match self.destination.head_manifest(dst_repo, tag.as_str()).await? {
            Some(d) if d == digest => true,
            Some(other) if !override_existing => {
                tracing::info!(tag = %tag, existing = %other, "referrer tag points elsewhere and override is off: left alone");
                return Ok(Vec::new());
            }
            _ => false,
        };
        let is_index_tag = !tag.as_str().contains('.');
        let mut next = vec![digest.clone()];
        if present && !is_index_tag {
            return Ok(next);
        }
        let m = self.source.get_manifest(src_repo, &digest.to_string(), Some(&digest)).await?;
        report.read_manifest(&digest, m.bytes.len() as u64)?;
        if let Ok(Contents::Index(listed)) = m.contents() {
            next.extend(listed.into_iter().map(|d| d.digest));
        }
        if !present {
            self.copy_below(src_repo, dst_repo, &m, report).await?;
            self.destination.put_manifest(dst_repo, tag.as_str(), &m).await?;
            report.manifests_pushed += 1;
            report.referrers_copied += 1;
            tracing::info!(tag = %tag, referrer = %digest, "referrer copied by tag");
        }
        Ok(next)
    }

    /// Adds `referrer` to the index tagged `sha256-<hex>` of `subject` at
    /// the destination (creating it), as OCI 1.1 asks of clients when the
    /// registry has no referrers API. Within this worker, updates of one
    /// subject's index are serialized; across workers the last writer wins
    /// and the next task for the subject repairs a lost entry.
    async fn add_to_fallback_index(
        &self,
        dst_repo: &RepositoryPath,
        subject: &Digest,
        referrer: &Manifest,
        report: &mut CopyReport,
    ) -> Result<(), CopyError> {
        let tag = subject.tag_prefix();
        let (_one_writer, _) = self.ledger.manifest_lock(subject).await;
        let mut index = match self.destination.head_manifest(dst_repo, &tag).await? {
            Some(d) => {
                let existing = self.destination.get_manifest(dst_repo, &tag, Some(&d)).await?;
                serde_json::from_slice::<serde_json::Value>(&existing.bytes)
                    .ok()
                    .filter(|v| v["manifests"].is_array())
                    .ok_or_else(|| RegistryError::Protocol {
                        registry: self.destination.name().to_owned(),
                        reason: format!(
                            "{dst_repo}:{tag} exists but is not an image index; referrers not listed there"
                        ),
                    })?
            }
            None => serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [] }),
        };
        let digest = referrer.digest.to_string();
        let entries = index["manifests"].as_array_mut().expect("checked above");
        if entries.iter().any(|e| e["digest"] == digest.as_str()) {
            return Ok(());
        }
        let mut entry = serde_json::json!({
            "mediaType": referrer.push_type(),
            "digest": digest,
            "size": referrer.bytes.len(),
        });
        if let Some(t) = artifact_type(referrer) {
            entry["artifactType"] = t.into();
        }
        if let Some(a) =
            serde_json::from_slice::<serde_json::Value>(&referrer.bytes).ok().map(|v| v["annotations"].clone())
        {
            if a.is_object() {
                entry["annotations"] = a;
            }
        }
        entries.push(entry);
        let bytes = bytes::Bytes::from(serde_json::to_vec(&index).expect("JSON value serializes"));
        let m = Manifest { digest: Digest::sha256_of(&bytes), media_type: OCI_INDEX.into(), bytes };
        self.destination.put_manifest(dst_repo, &tag, &m).await?;
        report.manifests_pushed += 1;
        Ok(())
    }
}

/// A referrer's `artifactType`, or its config's media type (OCI 1.1's rule
/// for descriptors in a referrers index).
fn artifact_type(m: &Manifest) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(&m.bytes).ok()?;
    v["artifactType"].as_str().or_else(|| v["config"]["mediaType"].as_str()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referrer_tags_are_the_schema_names_only() {
        let p = "sha256-abc";
        assert!(is_referrer_tag("sha256-abc", p));
        assert!(is_referrer_tag("sha256-abc.sig", p));
        assert!(is_referrer_tag("sha256-abc.att", p));
        assert!(is_referrer_tag("sha256-abc.sbom", p));
        assert!(!is_referrer_tag("sha256-abcd.sig", p), "another digest");
        assert!(!is_referrer_tag("sha256-abc.sig2", p));
        assert!(!is_referrer_tag("v1", p));
    }

    #[test]
    fn artifact_type_falls_back_to_the_config_media_type() {
        let m = |json: &str| Manifest {
            digest: Digest::sha256_of(json.as_bytes()),
            media_type: String::new(),
            bytes: bytes::Bytes::copy_from_slice(json.as_bytes()),
        };
        assert_eq!(
            artifact_type(&m(r#"{"artifactType":"application/spdx+json"}"#)).as_deref(),
            Some("application/spdx+json")
        );
        assert_eq!(
            artifact_type(&m(r#"{"config":{"mediaType":"application/vnd.dev.cosign.x"}}"#)).as_deref(),
            Some("application/vnd.dev.cosign.x")
        );
        assert_eq!(artifact_type(&m("{}")), None);
    }
}
