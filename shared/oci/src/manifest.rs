//! Manifests as opaque bytes plus the few fields the copy needs. The bytes
//! are pushed exactly as received so digests never change.

use bytes::Bytes;
use serde::Deserialize;

use crate::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The `Accept` header for manifest requests: every type we can copy.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest we accept (distribution's own limit is 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Pages of one referrers listing we follow before calling it hostile.
pub const MAX_REFERRER_PAGES: usize = 100;

/// Children of one index we walk. A multi-platform image lists a few dozen
/// (each platform, and as many attestation manifests); a thousand is far
/// past any real index, and each child costs a HEAD at the destination and
/// a GET at the source, so a source that lists more is refused rather than
/// walked request by request.
pub const MAX_INDEX_CHILDREN: usize = 1000;

/// Levels of manifests below the one a walk starts from (the task's
/// artifact, or each referrer). An image index uses 1; an index of indexes
/// (nested platforms, a referrers index listing an index) 2 or 3; 4 leaves
/// room for that. Without a bound a chain of indexes would be walked
/// recursively as deep as the source makes it. (The chain of referrers of
/// referrers has its own bound, `referrers::MAX_DEPTH`.)
pub const MAX_INDEX_DEPTH: usize = 4;

/// Manifest bytes one task reads from the source, in all: the root, its
/// children (held in memory until they are pushed, children first) and
/// its referrers. Each manifest is at most [`MAX_MANIFEST_BYTES`]; the
/// largest real trees are a few MiB, and a worker runs ten tasks at once
/// (`task_concurrency`) in a 512 MB function by default, so 16 MiB each
/// keeps the worst case well inside it.
pub const MAX_TASK_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;

/// A content descriptor (`mediaType`, `digest`, `size`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub urls: Vec<String>,
}

/// A manifest fetched from a registry, verified against its digest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// What a manifest refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    /// An index or manifest list: child manifests.
    Index(Vec<Descriptor>),
    /// An image or artifact manifest: config + layers (blobs).
    Image { config: Descriptor, layers: Vec<Descriptor> },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest {0} uses Docker schema 1, which is deprecated and not copied; re-push it as schema 2 or OCI")]
    Schema1(Digest),
    #[error("manifest {digest} has unsupported media type {media_type:?}")]
    UnsupportedType { digest: Digest, media_type: String },
    #[error("manifest {digest} is not valid JSON for {media_type}: {reason}")]
    Invalid { digest: Digest, media_type: String, reason: String },
    #[error("index {digest} lists {children} manifests, more than the {limit} copied per index")]
    TooManyChildren { digest: Digest, children: usize, limit: usize },
    #[error("index {digest} nests manifests more than {limit} levels below the artifact copied; not copied")]
    TooDeep { digest: Digest, limit: usize },
    #[error("manifest {digest} takes the task's manifests past {limit} bytes in all; not copied")]
    TooManyBytes { digest: Digest, limit: u64 },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Shape {
    #[serde(default)]
    schema_version: u32,
    media_type: Option<String>,
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
}

impl Manifest {
    /// Interprets the bytes. The media type comes from the registry's
    /// `Content-Type`, falling back to the manifest's own `mediaType`.
    pub fn contents(&self) -> Result<Contents, ManifestError> {
        let invalid = |reason: String| ManifestError::Invalid {
            digest: self.digest.clone(),
            media_type: self.media_type.clone(),
            reason,
        };
        let shape: Shape = serde_json::from_slice(&self.bytes).map_err(|e| invalid(e.to_string()))?;
        let media_type = match self.media_type.as_str() {
            "" | "application/json" | "application/octet-stream" => shape.media_type.clone().unwrap_or_default(),
            t => t.to_owned(),
        };
        if shape.schema_version == 1 || media_type == DOCKER_SCHEMA1 || media_type == DOCKER_SCHEMA1_SIGNED {
            return Err(ManifestError::Schema1(self.digest.clone()));
        }
        match media_type.as_str() {
            OCI_INDEX | DOCKER_LIST => {
                Ok(Contents::Index(shape.manifests.ok_or_else(|| invalid("no `manifests`".into()))?))
            }
            OCI_MANIFEST | DOCKER_MANIFEST => Ok(Contents::Image {
                config: shape.config.ok_or_else(|| invalid("no `config`".into()))?,
                layers: shape.layers.unwrap_or_default(),
            }),
            // An OCI manifest without mediaType: guess from the shape, as the spec allows.
            "" if shape.manifests.is_some() => Ok(Contents::Index(shape.manifests.unwrap_or_default())),
            "" if shape.config.is_some() => {
                Ok(Contents::Image { config: shape.config.expect("checked"), layers: shape.layers.unwrap_or_default() })
            }
            other => Err(ManifestError::UnsupportedType { digest: self.digest.clone(), media_type: other.to_owned() }),
        }
    }

    /// The media type to send as `Content-Type` when pushing.
    pub fn push_type(&self) -> &str {
        if self.media_type.is_empty() {
            OCI_MANIFEST
        } else {
            &self.media_type
        }
    }
}

/// True for Docker's non-distributable ("foreign") layers, which Harbor does
/// not copy either: their bytes live at `urls`, not in the registry.
pub fn is_foreign(d: &Descriptor) -> bool {
    d.media_type == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        || d.media_type.starts_with("application/vnd.oci.image.layer.nondistributable")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(media_type: &str, json: &str) -> Manifest {
        Manifest {
            digest: Digest::sha256_of(json.as_bytes()),
            media_type: media_type.into(),
            bytes: Bytes::copy_from_slice(json.as_bytes()),
        }
    }

    const D: &str = "sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4";

    #[test]
    fn reads_index_and_image() {
        let idx = manifest(
            OCI_INDEX,
            &format!(
                r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":10}}]}}"#
            ),
        );
        assert!(matches!(idx.contents().unwrap(), Contents::Index(c) if c.len() == 1));
        let img = manifest(
            "",
            &format!(
                r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"digest":"{D}","size":1}},"layers":[{{"digest":"{D}","size":2}}]}}"#
            ),
        );
        assert!(matches!(img.contents().unwrap(), Contents::Image { layers, .. } if layers.len() == 1));
    }

    #[test]
    fn refuses_schema1_and_unknown() {
        let s1 = manifest(DOCKER_SCHEMA1_SIGNED, r#"{"schemaVersion":1,"fsLayers":[]}"#);
        assert!(matches!(s1.contents(), Err(ManifestError::Schema1(_))));
        let odd = manifest("text/plain", r#"{"schemaVersion":2}"#);
        assert!(matches!(odd.contents(), Err(ManifestError::UnsupportedType { .. })));
        let bad = manifest(OCI_INDEX, r#"{"schemaVersion":2,"manifests":[{"digest":"sha256:x","size":1}]}"#);
        assert!(matches!(bad.contents(), Err(ManifestError::Invalid { .. })));
    }
}
