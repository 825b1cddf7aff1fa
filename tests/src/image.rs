//! Generated test images: random layers, real OCI / Docker v2 manifests,
//! multi-arch indexes — pushed to a registry with the plain client.

use rand::RngCore;
use serde_json::json;

use crate::plain::PlainRegistry;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// OCI image index over `n` platform manifests.
    OciIndex {
        platforms: usize,
    },
    /// Docker manifest list over `n` platform manifests.
    DockerList {
        platforms: usize,
    },
    OciImage,
    DockerImage,
}

/// What was pushed: the root digest and everything under it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GeneratedImage {
    pub repository: String,
    pub tag: String,
    pub digest: String,
    pub media_type: String,
    pub children: Vec<String>,
    pub blobs: Vec<String>,
    pub blob_bytes: u64,
}

fn random(len: usize) -> bytes::Bytes {
    let mut v = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut v);
    v.into()
}

const PLATFORMS: [(&str, &str); 4] = [("amd64", ""), ("arm64", "v8"), ("arm", "v7"), ("s390x", "")];

/// Pushes a generated image with `layers` random layers of `layer_size`
/// bytes per platform (platforms share one base layer, as real images do).
pub async fn push(
    registry: &PlainRegistry,
    repository: &str,
    tag: &str,
    kind: ImageKind,
    layers: usize,
    layer_size: usize,
) -> anyhow::Result<GeneratedImage> {
    let (platforms, docker) = match kind {
        ImageKind::OciIndex { platforms } => (platforms, false),
        ImageKind::DockerList { platforms } => (platforms, true),
        ImageKind::OciImage => (1, false),
        ImageKind::DockerImage => (1, true),
    };
    let (manifest_type, layer_type, config_type) = if docker {
        (
            DOCKER_MANIFEST,
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.docker.container.image.v1+json",
        )
    } else {
        (OCI_MANIFEST, "application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.oci.image.config.v1+json")
    };
    let mut image = GeneratedImage {
        repository: repository.to_owned(),
        tag: tag.to_owned(),
        digest: String::new(),
        media_type: String::new(),
        children: vec![],
        blobs: vec![],
        blob_bytes: 0,
    };
    let base = random(layer_size);
    let base_digest = registry.put_blob(repository, base.clone()).await?;
    image.blobs.push(base_digest.clone());
    image.blob_bytes += base.len() as u64;

    let mut children = Vec::new();
    for (arch, variant) in PLATFORMS.iter().cycle().take(platforms) {
        let config = json!({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, "created": "2026-01-01T00:00:00Z", "salt": hex::encode(random(8))}).to_string();
        let config_digest = registry.put_blob(repository, config.clone().into_bytes().into()).await?;
        image.blobs.push(config_digest.clone());
        image.blob_bytes += config.len() as u64;
        let mut layer_descs = vec![json!({"mediaType": layer_type, "digest": base_digest, "size": base.len()})];
        for _ in 1..layers.max(1) {
            let l = random(layer_size);
            let d = registry.put_blob(repository, l.clone()).await?;
            image.blobs.push(d.clone());
            image.blob_bytes += l.len() as u64;
            layer_descs.push(json!({"mediaType": layer_type, "digest": d, "size": l.len()}));
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": config_digest, "size": config.len()},
            "layers": layer_descs,
        })
        .to_string();
        children.push((arch, variant, manifest));
    }

    if platforms == 1 && matches!(kind, ImageKind::OciImage | ImageKind::DockerImage) {
        let (_, _, m) = &children[0];
        image.digest = registry.put_manifest(repository, tag, manifest_type, m.as_bytes()).await?;
        image.media_type = manifest_type.to_owned();
        return Ok(image);
    }
    let mut descs = Vec::new();
    for (arch, variant, m) in &children {
        let d =
            registry.put_manifest(repository, &crate::plain::sha256(m.as_bytes()), manifest_type, m.as_bytes()).await?;
        image.children.push(d.clone());
        let mut platform = json!({"architecture": arch, "os": "linux"});
        if !variant.is_empty() {
            platform["variant"] = json!(variant);
        }
        descs.push(json!({"mediaType": manifest_type, "digest": d, "size": m.len(), "platform": platform}));
    }
    let index_type = if docker { DOCKER_LIST } else { OCI_INDEX };
    let index = json!({"schemaVersion": 2, "mediaType": index_type, "manifests": descs}).to_string();
    image.digest = registry.put_manifest(repository, tag, index_type, index.as_bytes()).await?;
    image.media_type = index_type.to_owned();
    Ok(image)
}

/// A Helm chart as `helm push` stores it (an OCI manifest with Helm's
/// config and one chart layer): an artifact Harbor types `CHART`, not
/// `IMAGE`. Returns its digest.
pub async fn push_chart(registry: &PlainRegistry, repository: &str, tag: &str) -> anyhow::Result<String> {
    let config = json!({"apiVersion": "v2", "name": repository.rsplit('/').next(), "version": tag}).to_string();
    let config_digest = registry.put_blob(repository, config.clone().into_bytes().into()).await?;
    let chart = random(2048);
    let chart_digest = registry.put_blob(repository, chart.clone()).await?;
    let manifest = json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip", "digest": chart_digest, "size": chart.len()}],
    })
    .to_string();
    registry.put_manifest(repository, tag, OCI_MANIFEST, manifest.as_bytes()).await
}

/// An OCI 1.1 artifact manifest pointing at `subject` (a signature, SBOM or
/// attestation): an empty config, one layer of `content`, `artifactType`
/// and the `subject` descriptor. Pushed by digest, or under `tag` (the
/// cosign tag schema). Returns the manifest's digest and its bytes.
pub async fn push_referrer(
    registry: &PlainRegistry,
    repository: &str,
    subject: &str,
    artifact_type: &str,
    content: &[u8],
    tag: Option<&str>,
) -> anyhow::Result<(String, Vec<u8>)> {
    let (subject_type, subject_bytes) = registry
        .get_manifest(repository, subject)
        .await?
        .ok_or_else(|| anyhow::anyhow!("subject {subject} not in {repository}"))?;
    let empty = registry.put_blob(repository, bytes::Bytes::from_static(b"{}")).await?;
    let layer = registry.put_blob(repository, bytes::Bytes::copy_from_slice(content)).await?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": { "mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2 },
        "layers": [{ "mediaType": artifact_type, "digest": layer, "size": content.len() }],
        "subject": { "mediaType": subject_type, "digest": subject, "size": subject_bytes.len() },
        "annotations": { "org.opencontainers.image.created": "2026-11-25T00:00:00Z" },
    });
    let bytes = serde_json::to_vec(&manifest)?;
    let digest = crate::plain::sha256(&bytes);
    registry.put_manifest(repository, tag.unwrap_or(&digest), OCI_MANIFEST, &bytes).await?;
    Ok((digest, bytes))
}

/// The OCI 1.1 fallback for registries without the referrers API: the
/// index tagged `sha256-<hex>` of `subject` listing `referrers` (digest,
/// bytes), as a client like oras maintains it. Returns its digest.
pub async fn push_fallback_index(
    registry: &PlainRegistry,
    repository: &str,
    subject: &str,
    referrers: &[(String, Vec<u8>)],
) -> anyhow::Result<String> {
    let manifests: Vec<_> = referrers
        .iter()
        .map(|(d, b)| {
            let v: serde_json::Value = serde_json::from_slice(b).unwrap_or_default();
            serde_json::json!({ "mediaType": OCI_MANIFEST, "digest": d, "size": b.len(), "artifactType": v["artifactType"] })
        })
        .collect();
    let index = serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
    let bytes = serde_json::to_vec(&index)?;
    registry.put_manifest(repository, &subject.replacen(':', "-", 1), OCI_INDEX, &bytes).await
}
