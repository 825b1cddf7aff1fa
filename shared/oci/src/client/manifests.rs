//! Manifests (HEAD, GET verified against their digest, PUT, DELETE) and
//! the OCI 1.1 referrers API.

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};

use super::super::manifest::{self, Manifest};
use super::{header_str, header_value, Answer, RegistryClient, RegistryError};
use crate::digest::Digest;
use crate::repository::RepositoryPath;

/// What a manifest push told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// The registry answered `OCI-Subject`: it lists the manifest among its
    /// subject's referrers itself (no fallback tag needed).
    pub subject_indexed: bool,
}

fn accept_manifests() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(ACCEPT, HeaderValue::from_static(manifest::ACCEPT));
    h
}

impl RegistryClient {
    /// The digest a tag or digest resolves to, `None` when absent.
    pub async fn head_manifest(&self, repo: &RepositoryPath, reference: &str) -> Result<Option<Digest>, RegistryError> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let resp = self.execute(Method::HEAD, url, &self.scope(repo), accept_manifests(), None).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = self.expect(resp, &[StatusCode::OK]).await?;
        match resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()) {
            Some(d) => d
                .parse()
                .map(Some)
                .map_err(|e| self.malformed(Answer::ManifestDigest, format!("bad Docker-Content-Digest: {e}"))),
            // Without the header only the bytes can tell.
            None => Ok(Some(self.get_manifest(repo, reference, None).await?.digest)),
        }
    }

    /// Fetches a manifest; when `expected` is given its bytes must hash to it.
    pub async fn get_manifest(
        &self,
        repo: &RepositoryPath,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<Manifest, RegistryError> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let resp = self.execute(Method::GET, url, &self.scope(repo), accept_manifests(), None).await?;
        let resp = self.expect(resp, &[StatusCode::OK]).await?;
        let media_type = header_str(resp.headers(), CONTENT_TYPE).unwrap_or_default().to_owned();
        let body = self.read_capped(resp, manifest::MAX_MANIFEST_BYTES, &format!("manifest {reference}")).await?;
        let actual = Digest::sha256_of(&body);
        if let Some(expected) = expected {
            let matches =
                if expected.algorithm() == actual.algorithm() { expected == &actual } else { expected.verifies(&body) };
            if !matches {
                return Err(RegistryError::DigestMismatch {
                    registry: self.name.clone(),
                    what: "manifest",
                    digest: expected.clone(),
                    actual,
                });
            }
            return Ok(Manifest { digest: expected.clone(), media_type, bytes: body.into() });
        }
        Ok(Manifest { digest: actual, media_type, bytes: body.into() })
    }

    /// Pushes manifest bytes unchanged under `reference` (a tag or its digest).
    /// The answer tells whether the registry indexed the manifest's
    /// `subject` (the `OCI-Subject` header of OCI 1.1).
    pub async fn put_manifest(
        &self,
        repo: &RepositoryPath,
        reference: &str,
        m: &Manifest,
    ) -> Result<Pushed, RegistryError> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, header_value(m.push_type()));
        let resp = self.execute(Method::PUT, url, &self.scope(repo), headers, Some(m.bytes.clone())).await?;
        let resp = self.expect(resp, &[StatusCode::CREATED, StatusCode::OK]).await?;
        if let Some(d) = header_str(resp.headers(), "docker-content-digest") {
            if d != m.digest.to_string() {
                return Err(self.malformed(
                    Answer::ManifestDigest,
                    format!("pushed manifest {} but the registry stored {d}", m.digest),
                ));
            }
        }
        Ok(Pushed { subject_indexed: resp.headers().contains_key("oci-subject") })
    }

    /// The referrers of `repo@digest` through the OCI 1.1 referrers API
    /// (following `Link` pages); `None` when the registry has no such API
    /// (404 — remembered, so later tasks ask the tag schema straight away).
    pub async fn referrers(
        &self,
        repo: &RepositoryPath,
        digest: &Digest,
    ) -> Result<Option<Vec<manifest::Descriptor>>, RegistryError> {
        if !self.asks_referrers() {
            return Ok(None);
        }
        let mut out = Vec::new();
        let mut next = Some(self.url(&format!("/v2/{repo}/referrers/{digest}")));
        let mut pages = 0;
        let (mut seen, mut total) = (std::collections::HashSet::new(), 0);
        while let Some(url) = next.take() {
            self.visit(&mut seen, &url)?;
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT, header_value(manifest::OCI_INDEX));
            let resp = self.execute(Method::GET, url.clone(), &self.scope(repo), headers, None).await?;
            if resp.status() == StatusCode::NOT_FOUND && pages == 0 {
                self.learnt.mark_referrers_api_absent();
                return Ok(None);
            }
            let resp = self.expect(resp, &[StatusCode::OK]).await?;
            next = self.next_page(&url, &resp)?;
            // Each page, and all pages together, within the manifest limit.
            let left = manifest::MAX_MANIFEST_BYTES.saturating_sub(total);
            let body = self.read_capped(resp, left, &format!("referrers of {digest}")).await?;
            total += body.len();
            #[derive(serde::Deserialize)]
            struct Index {
                #[serde(default)]
                manifests: Vec<manifest::Descriptor>,
            }
            let index: Index = serde_json::from_slice(&body).map_err(|e| {
                self.malformed(Answer::Referrers, format!("referrers of {digest}: not an image index: {e}"))
            })?;
            out.extend(index.manifests);
            pages += 1;
            if pages >= manifest::MAX_REFERRER_PAGES {
                return Err(
                    self.malformed(Answer::Referrers, format!("referrers of {digest}: more than {pages} pages"))
                );
            }
        }
        Ok(Some(out))
    }

    /// Deletes a manifest by digest. `Ok(false)` when it was not there.
    pub async fn delete_manifest(&self, repo: &RepositoryPath, digest: &Digest) -> Result<bool, RegistryError> {
        let url = self.url(&format!("/v2/{repo}/manifests/{digest}"));
        let resp = self.execute(Method::DELETE, url, &self.scope(repo), HeaderMap::new(), None).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        self.expect(resp, &[StatusCode::ACCEPTED, StatusCode::OK]).await?;
        Ok(true)
    }
}
