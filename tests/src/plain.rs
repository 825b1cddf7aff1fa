//! A deliberately plain registry client for fixtures: monolithic uploads,
//! Basic auth, no retries. Independent of the relay's own client.

use anyhow::{bail, Context};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

#[derive(Clone)]
pub struct PlainRegistry {
    pub base: String,
    http: reqwest::Client,
    basic: Option<(String, String)>,
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl PlainRegistry {
    pub fn new(base: &str, basic: Option<(String, String)>) -> Self {
        Self::with_http(base, basic, reqwest::Client::new())
    }

    /// With a client of the caller's (e.g. one that trusts a test CA).
    pub fn with_http(base: &str, basic: Option<(String, String)>, http: reqwest::Client) -> Self {
        PlainRegistry { base: base.trim_end_matches('/').to_owned(), http, basic }
    }

    fn req(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, url);
        match &self.basic {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    /// Uploads a blob (POST + one PUT); returns its digest.
    pub async fn put_blob(&self, repo: &str, bytes: bytes::Bytes) -> anyhow::Result<String> {
        let digest = sha256(&bytes);
        self.put_blob_body(repo, &digest, bytes.into()).await?;
        Ok(digest)
    }

    /// Uploads a blob of a known digest from any body, e.g. a stream of
    /// another registry's [`PlainRegistry::blob_body`] (POST + one PUT).
    pub async fn put_blob_body(&self, repo: &str, digest: &str, body: reqwest::Body) -> anyhow::Result<()> {
        let resp = self.req(reqwest::Method::POST, &format!("{}/v2/{repo}/blobs/uploads/", self.base)).send().await?;
        if resp.status() != StatusCode::ACCEPTED {
            bail!("POST upload: {}", resp.status());
        }
        let loc = resp.headers().get("location").context("no Location")?.to_str()?.to_owned();
        let mut url = reqwest::Url::parse(&self.base)?.join(&loc)?;
        url.query_pairs_mut().append_pair("digest", digest);
        let resp = self.req(reqwest::Method::PUT, url.as_str()).body(body).send().await?;
        if resp.status() != StatusCode::CREATED {
            bail!("PUT blob: {} {}", resp.status(), resp.text().await.unwrap_or_default());
        }
        Ok(())
    }

    /// Links a blob of `from` into `repo` (cross-repository mount).
    pub async fn mount_blob(&self, repo: &str, digest: &str, from: &str) -> anyhow::Result<()> {
        let url = format!("{}/v2/{repo}/blobs/uploads/?mount={digest}&from={from}", self.base);
        let resp = self.req(reqwest::Method::POST, &url).send().await?;
        if resp.status() != StatusCode::CREATED {
            bail!("mount {digest} from {from}: {}", resp.status());
        }
        Ok(())
    }

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> anyhow::Result<String> {
        let resp = self
            .req(reqwest::Method::PUT, &format!("{}/v2/{repo}/manifests/{reference}", self.base))
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await?;
        if resp.status() != StatusCode::CREATED {
            bail!("PUT manifest {reference}: {} {}", resp.status(), resp.text().await.unwrap_or_default());
        }
        Ok(sha256(bytes))
    }

    /// The manifest's media type and bytes, `None` on 404.
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> anyhow::Result<Option<(String, Vec<u8>)>> {
        let resp = self
            .req(reqwest::Method::GET, &format!("{}/v2/{repo}/manifests/{reference}", self.base))
            .header("accept", ACCEPT)
            .send()
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if resp.status() != StatusCode::OK {
            bail!("GET manifest {reference}: {}", resp.status());
        }
        let mt = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        Ok(Some((mt, resp.bytes().await?.to_vec())))
    }

    /// The digest of the manifest `reference` resolves to (hashed from the
    /// bytes served), `None` on 404.
    pub async fn digest_at(&self, repo: &str, reference: &str) -> anyhow::Result<Option<String>> {
        Ok(self.get_manifest(repo, reference).await?.map(|(_, bytes)| sha256(&bytes)))
    }

    pub async fn blob_exists(&self, repo: &str, digest: &str) -> anyhow::Result<bool> {
        let resp = self.req(reqwest::Method::HEAD, &format!("{}/v2/{repo}/blobs/{digest}", self.base)).send().await?;
        Ok(resp.status() == StatusCode::OK)
    }

    pub async fn get_blob(&self, repo: &str, digest: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let resp = self.req(reqwest::Method::GET, &format!("{}/v2/{repo}/blobs/{digest}", self.base)).send().await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if resp.status() != StatusCode::OK {
            bail!("GET blob {digest}: {}", resp.status());
        }
        Ok(Some(resp.bytes().await?.to_vec()))
    }

    /// A blob's bytes as a body that streams them as they arrive.
    pub async fn blob_body(&self, repo: &str, digest: &str) -> anyhow::Result<reqwest::Body> {
        let resp = self.req(reqwest::Method::GET, &format!("{}/v2/{repo}/blobs/{digest}", self.base)).send().await?;
        if resp.status() != StatusCode::OK {
            bail!("GET blob {digest}: {}", resp.status());
        }
        Ok(reqwest::Body::wrap_stream(resp.bytes_stream()))
    }

    pub async fn delete_manifest(&self, repo: &str, digest: &str) -> anyhow::Result<StatusCode> {
        Ok(self
            .req(reqwest::Method::DELETE, &format!("{}/v2/{repo}/manifests/{digest}", self.base))
            .send()
            .await?
            .status())
    }

    /// Every manifest and blob digest reachable from `reference`, each with
    /// the digest computed from the bytes this registry returns.
    pub async fn tree(&self, repo: &str, reference: &str) -> anyhow::Result<Tree> {
        let mut tree = Tree::default();
        let mut pending = vec![reference.to_owned()];
        while let Some(r) = pending.pop() {
            let (mt, bytes) =
                self.get_manifest(repo, &r).await?.with_context(|| format!("{repo}:{r} not found at {}", self.base))?;
            let digest = sha256(&bytes);
            let v: serde_json::Value = serde_json::from_slice(&bytes)?;
            if let Some(children) = v["manifests"].as_array() {
                for c in children {
                    pending.push(c["digest"].as_str().context("child digest")?.to_owned());
                }
            }
            let blobs = std::iter::once(&v["config"]).chain(v["layers"].as_array().into_iter().flatten());
            for b in blobs.filter(|b| b.is_object()) {
                let d = b["digest"].as_str().context("blob digest")?.to_owned();
                if tree.blobs.contains_key(&d) {
                    continue;
                }
                let bytes =
                    self.get_blob(repo, &d).await?.with_context(|| format!("blob {d} missing at {}", self.base))?;
                tree.bytes += bytes.len() as u64;
                tree.blobs.insert(d, sha256(&bytes));
            }
            tree.manifests.insert(r.clone(), (mt, digest));
        }
        Ok(tree)
    }
}

/// What a registry holds under one reference: manifests by the reference
/// they were reached through (→ media type, digest of bytes) and blobs by
/// their descriptor digest (→ digest of bytes).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tree {
    pub manifests: std::collections::BTreeMap<String, (String, String)>,
    pub blobs: std::collections::BTreeMap<String, String>,
    pub bytes: u64,
}

impl Tree {
    /// Manifests reached by digest must hash to that digest, and blobs too.
    pub fn self_consistent(&self) -> bool {
        self.manifests.iter().all(|(r, (_, d))| !r.starts_with("sha256:") || r == d)
            && self.blobs.iter().all(|(k, v)| k == v)
    }
}
