//! Which source repositories feed a destination repository.
//!
//! Rules are a function from source to destination, and not an injective
//! one: two rules with the same namespace and flattening (or one rule with
//! `flatten: 1` over `dev/**` and `prod/**`) map `dev/app` and `prod/app`
//! onto the same `mirror/app`. Whatever is deleted at `mirror/app` must be
//! absent from every one of them, or one source's delete removes what
//! another still holds (and reconcile re-copies it on the next pass, for
//! ever). The worker asks this module before a delete; reconcile asks it
//! before it plans one, so both reach the same verdict.
//!
//! The inverse is computed, not configured: for each enabled rule that
//! sends to the registry, the candidate sources are either derived exactly
//! (no namespace, or `flatten: 0`) or listed — through Harbor's API when it
//! is on, else the catalog restricted to the rule's literal prefix — and
//! kept when the rule maps them forward onto the destination repository.

use crate::harbor_api::{HarborApi, HarborApiError};
use crate::registry::{RegistryClient, RegistryError};
use crate::repository::RepositoryPath;
use crate::rules::{Flatten, Rule};

/// A listing of the source failed; nothing may be decided on half a list.
#[derive(Debug, thiserror::Error)]
pub enum ListingError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Harbor(#[from] HarborApiError),
}

/// How the source's repositories are listed: Harbor's REST API when
/// `source.harbor_api` is on (the catalog needs a system administrator in
/// Harbor), else `/v2/_catalog`.
#[derive(Clone, Copy)]
pub struct SourceListing<'a> {
    pub source: &'a RegistryClient,
    pub harbor: Option<&'a HarborApi>,
    /// Entries per catalog request (`n=`).
    pub page_size: usize,
}

impl SourceListing<'_> {
    /// The source's repositories whose names start with one of `prefixes`
    /// (every repository when `None`), sorted, without duplicates.
    pub async fn repositories(&self, prefixes: Option<&[String]>) -> Result<Vec<RepositoryPath>, ListingError> {
        let mut all = match (self.harbor, prefixes) {
            (Some(api), prefixes) => harbor_repositories(api, prefixes).await?,
            (None, Some(prefixes)) => {
                let mut all = Vec::new();
                for p in prefixes {
                    all.extend(self.source.catalog_with_prefix(p, self.page_size).await?);
                }
                all
            }
            (None, None) => self.source.catalog_paged(self.page_size).await?,
        };
        if let Some(prefixes) = prefixes {
            all.retain(|r| prefixes.iter().any(|p| r.as_str().starts_with(p.as_str())));
        }
        all.sort();
        all.dedup();
        Ok(all)
    }
}

/// The literal prefixes of `rules`' name filters (`proj/` of `proj/**`),
/// shortest first and none covered by another, when every rule has one:
/// only those stretches of the source need listing. `None` when some rule
/// could match any repository.
pub fn literal_prefixes<'r>(rules: impl IntoIterator<Item = &'r Rule>) -> Option<Vec<String>> {
    let mut prefixes = Vec::new();
    for rule in rules {
        let literal = rule.name_filter.as_ref()?.literal_prefix();
        if literal.is_empty() {
            return None;
        }
        prefixes.push(literal.to_owned());
    }
    prefixes.sort();
    let mut kept: Vec<String> = Vec::new();
    for p in prefixes {
        if !kept.iter().any(|k| p.starts_with(k.as_str())) {
            kept.push(p);
        }
    }
    Some(kept)
}

/// Every source repository that an enabled rule maps onto
/// `registry`/`destination`, sorted. Lists the source only for rules whose
/// flattening dropped components, and only their literal prefixes.
pub async fn feeders(
    rules: &[Rule],
    listing: SourceListing<'_>,
    registry: &str,
    destination: &RepositoryPath,
) -> Result<Vec<RepositoryPath>, ListingError> {
    let needs_listing: Vec<&Rule> =
        sending(rules, registry).filter(|r| matches!(exact_source(r, destination), Inverse::NeedsListing)).collect();
    let candidates = if needs_listing.is_empty() {
        Vec::new()
    } else {
        listing.repositories(literal_prefixes(needs_listing).as_deref()).await?
    };
    Ok(feeders_among(rules, registry, destination, &candidates))
}

/// [`feeders`] when the source's repositories are already listed
/// (`candidates` must cover every rule's literal prefix).
pub fn feeders_among(
    rules: &[Rule],
    registry: &str,
    destination: &RepositoryPath,
    candidates: &[RepositoryPath],
) -> Vec<RepositoryPath> {
    let maps_here = |rule: &Rule, source: &RepositoryPath| {
        rule.selects(source) && rule.map_repository(source).is_ok_and(|d| &d == destination)
    };
    let mut found = Vec::new();
    for rule in sending(rules, registry) {
        match exact_source(rule, destination) {
            Inverse::Exact(Some(source)) if maps_here(rule, &source) => found.push(source),
            Inverse::Exact(_) => {}
            Inverse::NeedsListing => found.extend(candidates.iter().filter(|s| maps_here(rule, s)).cloned()),
        }
    }
    found.sort();
    found.dedup();
    found
}

fn sending<'r>(rules: &'r [Rule], registry: &'r str) -> impl Iterator<Item = &'r Rule> {
    rules.iter().filter(move |r| r.enabled && r.destination.registry == registry)
}

/// What can be said about a rule's sources without listing.
enum Inverse {
    /// Only this repository (or none) can map there.
    Exact(Option<RepositoryPath>),
    /// Flattening dropped components: the candidates must be listed.
    NeedsListing,
}

fn exact_source(rule: &Rule, destination: &RepositoryPath) -> Inverse {
    match (&rule.destination.namespace, rule.destination.flatten) {
        (None, _) => Inverse::Exact(Some(destination.clone())),
        (Some(ns), Flatten::Levels(0)) => Inverse::Exact(
            destination
                .as_str()
                .strip_prefix(ns.as_str())
                .and_then(|r| r.strip_prefix('/'))
                .and_then(|r| r.parse().ok()),
        ),
        (Some(_), _) => Inverse::NeedsListing,
    }
}

/// Repositories from Harbor's API: the projects the literal prefixes can
/// reach (all when `None`), then their repositories.
async fn harbor_repositories(
    api: &HarborApi,
    prefixes: Option<&[String]>,
) -> Result<Vec<RepositoryPath>, HarborApiError> {
    let reachable = |project: &str| {
        prefixes.is_none_or(|ps| {
            ps.iter().any(|p| match p.split_once('/') {
                Some((exact, _)) => project == exact,
                None => project.starts_with(p.as_str()),
            })
        })
    };
    let mut all = Vec::new();
    for project in api.projects().await?.into_iter().filter(|p| reachable(p)) {
        all.extend(api.repositories(&project).await?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> Vec<Rule> {
        let doc = format!("source: {{ url: 'http://127.0.0.1:1' }}\nwebhook: {{ auth_values_env: A }}\nregistries:\n  - {{ name: r, url: 'http://127.0.0.1:2' }}\n  - {{ name: s, url: 'http://127.0.0.1:3' }}\nrules:\n{yaml}");
        crate::Config::parse(&doc).unwrap().rules
    }

    fn repo(s: &str) -> RepositoryPath {
        s.parse().unwrap()
    }

    #[test]
    fn the_inverse_is_exact_without_flattening() {
        let r = rules("  - { name: a, filters: { name: 'dev/**' }, destination: { registry: r, namespace: mirror, flatten: 0 } }\n  - { name: b, destination: { registry: r } }\n");
        assert!(
            matches!(exact_source(&r[0], &repo("mirror/dev/app")), Inverse::Exact(Some(s)) if s == repo("dev/app"))
        );
        assert!(matches!(exact_source(&r[0], &repo("other/dev/app")), Inverse::Exact(None)));
        assert!(matches!(exact_source(&r[1], &repo("x/y")), Inverse::Exact(Some(s)) if s == repo("x/y")));
    }

    #[test]
    fn colliding_mappings_are_found_from_the_destination() {
        let r = rules("  - { name: dev, filters: { name: 'dev/**' }, destination: { registry: r, namespace: mirror } }\n  - { name: prod, filters: { name: 'prod/**' }, destination: { registry: r, namespace: mirror } }\n  - { name: off, enabled: false, filters: { name: 'old/**' }, destination: { registry: r, namespace: mirror } }\n  - { name: elsewhere, destination: { registry: s, namespace: mirror } }\n");
        let listed = ["dev/app", "dev/tool", "old/app", "prod/app", "qa/app"].map(repo);
        let got = feeders_among(&r, "r", &repo("mirror/app"), &listed);
        assert_eq!(got, vec![repo("dev/app"), repo("prod/app")], "enabled rules to this registry only");
        assert!(feeders_among(&r, "r", &repo("mirror/none"), &listed).is_empty());
    }

    #[test]
    fn prefixes_cover_every_rule_or_none() {
        let r = rules("  - { name: a, filters: { name: 'dev/**' }, destination: { registry: r } }\n  - { name: b, filters: { name: 'dev/team/*' }, destination: { registry: r } }\n  - { name: c, filters: { name: 'prod-{a,b}/**' }, destination: { registry: r } }\n");
        assert_eq!(literal_prefixes(&r), Some(vec!["dev/".to_owned(), "prod-".to_owned()]));
        let r = rules("  - { name: a, filters: { name: '**/app' }, destination: { registry: r } }\n");
        assert_eq!(literal_prefixes(&r), None);
    }
}
