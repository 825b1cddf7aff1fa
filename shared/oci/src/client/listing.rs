//! Paginated listings (`/v2/_catalog`, tags): `Link` pages on this
//! registry's origin only, each page and the page count bounded.

use reqwest::header::HeaderMap;
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::{header_str, Answer, RegistryClient, RegistryError};
use crate::repository::RepositoryPath;

/// A listing page larger than this is refused: a hostile or broken
/// registry must not hold a worker's memory.
const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Pages of one listing (catalog, tags, referrers): 10,000 pages of the
/// usual 1,000 entries is more than any registry here holds.
const MAX_PAGES: usize = 10_000;

impl RegistryClient {
    /// Repositories of `/v2/_catalog`, following `Link` pagination.
    pub async fn catalog(&self) -> Result<Vec<RepositoryPath>, RegistryError> {
        self.catalog_paged(1000).await
    }

    /// [`RegistryClient::catalog`] with `page` entries per request.
    pub async fn catalog_paged(&self, page: usize) -> Result<Vec<RepositoryPath>, RegistryError> {
        let mut out = Vec::new();
        self.paginate(&format!("/v2/_catalog?n={page}"), "registry:catalog:*", "repositories", |name| {
            if let Ok(r) = name.parse() {
                out.push(r);
            }
            true
        })
        .await?;
        Ok(out)
    }

    /// The repositories whose names start with `prefix`, listing only that
    /// stretch of the (lexically ordered) catalog: it starts just before
    /// the prefix (`last=`) and stops at the first name past it.
    pub async fn catalog_with_prefix(&self, prefix: &str, page: usize) -> Result<Vec<RepositoryPath>, RegistryError> {
        let mut url = self.base.join("/v2/_catalog").map_err(|e| self.malformed(Answer::Listing, e.to_string()))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("n", &page.to_string());
            let before: String = prefix.chars().take(prefix.chars().count().saturating_sub(1)).collect();
            if !before.is_empty() {
                q.append_pair("last", &before);
            }
        }
        let first = format!("{}?{}", url.path(), url.query().unwrap_or(""));
        let mut out = Vec::new();
        self.paginate(&first, "registry:catalog:*", "repositories", |name| {
            if name.starts_with(prefix) {
                if let Ok(r) = name.parse() {
                    out.push(r);
                }
                true
            } else {
                name < prefix
            }
        })
        .await?;
        Ok(out)
    }

    /// Tags of `repo` (`/v2/<repo>/tags/list`), following `Link` pagination.
    pub async fn tags(&self, repo: &RepositoryPath) -> Result<Vec<crate::repository::Tag>, RegistryError> {
        self.tags_paged(repo, 1000).await
    }

    /// [`RegistryClient::tags`] with `page` entries per request.
    pub async fn tags_paged(
        &self,
        repo: &RepositoryPath,
        page: usize,
    ) -> Result<Vec<crate::repository::Tag>, RegistryError> {
        let mut out = Vec::new();
        let first = format!("/v2/{repo}/tags/list?n={page}");
        self.paginate(&first, &self.scope(repo), "tags", |name| {
            if let Ok(t) = name.parse() {
                out.push(t);
            }
            true
        })
        .await?;
        Ok(out)
    }

    pub(super) async fn paginate(
        &self,
        first: &str,
        scope: &str,
        field: &str,
        mut each: impl FnMut(&str) -> bool,
    ) -> Result<(), RegistryError> {
        let mut next = Some(self.base.join(first).map_err(|e| self.malformed(Answer::Listing, e.to_string()))?);
        let mut seen = std::collections::HashSet::new();
        while let Some(url) = next.take() {
            self.visit(&mut seen, &url)?;
            let resp = self.execute(Method::GET, url.clone(), scope, HeaderMap::new(), None).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(());
            }
            let resp = self.expect(resp, &[StatusCode::OK]).await?;
            next = self.next_page(&url, &resp)?;
            let body = self.read_capped(resp, MAX_PAGE_BYTES, url.path()).await?;
            let body: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| self.malformed(Answer::Listing, format!("{}: listing is not JSON: {e}", url.path())))?;
            for name in body[field].as_array().into_iter().flatten().filter_map(|v| v.as_str()) {
                if !each(name) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Records a listing page; refuses a `Link` that loops back to a page
    /// already read, and listings longer than [`MAX_PAGES`].
    pub(super) fn visit(&self, seen: &mut std::collections::HashSet<Url>, url: &Url) -> Result<(), RegistryError> {
        if !seen.insert(url.clone()) {
            return Err(self.malformed(Answer::Listing, format!("listing loops: Link points back at {}", url.path())));
        }
        if seen.len() > MAX_PAGES {
            return Err(self.malformed(Answer::Listing, format!("listing longer than {MAX_PAGES} pages")));
        }
        Ok(())
    }

    /// The next page a listing answer points at (`Link: </v2/_catalog?last=x&n=1000>; rel="next"`),
    /// on this registry's origin only.
    pub(super) fn next_page(&self, url: &Url, resp: &Response) -> Result<Option<Url>, RegistryError> {
        let Some(link) = header_str(resp.headers(), "link") else { return Ok(None) };
        let target = link.split(';').next().unwrap_or("").trim().trim_start_matches('<').trim_end_matches('>');
        let joined = url.join(target).map_err(|e| self.malformed(Answer::Listing, format!("bad Link header: {e}")))?;
        if !self.same_origin(&joined) {
            return Err(self.malformed(Answer::Listing, "Link header points at another host".into()));
        }
        Ok(Some(joined))
    }
}
