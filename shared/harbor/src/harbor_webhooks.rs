//! Harbor's webhook policies kept in place. Harbor's webhooks belong to a
//! project, so every project a rule can replicate from — including one
//! created later — needs a policy pointing at the relay. `relay harbor
//! webhooks` (and, opt-in, each reconcile pass) creates or updates one
//! policy per such project, identified by its name, and leaves every
//! other policy alone.

use serde::{Deserialize, Serialize};

use crate::doublestar;
use crate::harbor_api::{HarborApi, HarborApiError, Project};
use crate::rules::Rule;

/// Harbor's `WebhookPolicy` (API v2.0), the fields the relay writes and
/// compares; what Harbor adds (creator, times) is read and not sent back.
/// No `Debug`: a target holds the webhook's `Authorization` value.
#[derive(Clone, Serialize, Deserialize)]
pub struct WebhookPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<i64>,
    #[serde(default)]
    pub targets: Vec<WebhookTarget>,
    #[serde(default)]
    pub event_types: Vec<String>,
    #[serde(default)]
    pub enabled: bool,
}

/// Harbor's `WebhookTargetObject`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookTarget {
    #[serde(rename = "type")]
    pub kind: String,
    pub address: String,
    #[serde(default)]
    pub auth_header: String,
    #[serde(default)]
    pub skip_cert_verify: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_format: Option<String>,
}

/// Harbor's payload formats for an `http` target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFormat {
    Default,
    CloudEvents,
}

/// A payload format Harbor does not know.
#[derive(Debug, thiserror::Error)]
#[error("payload format {0:?}: Harbor knows Default and CloudEvents")]
pub struct UnknownFormat(pub String);

impl std::str::FromStr for PayloadFormat {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> Result<Self, UnknownFormat> {
        match s {
            "Default" => Ok(PayloadFormat::Default),
            "CloudEvents" => Ok(PayloadFormat::CloudEvents),
            other => Err(UnknownFormat(other.to_owned())),
        }
    }
}

impl PayloadFormat {
    fn as_str(self) -> &'static str {
        match self {
            PayloadFormat::Default => "Default",
            PayloadFormat::CloudEvents => "CloudEvents",
        }
    }
}

/// The events the relay acts on.
pub const EVENT_TYPES: [&str; 2] = ["PUSH_ARTIFACT", "DELETE_ARTIFACT"];

/// The name of the policy the relay manages unless told otherwise.
pub const DEFAULT_POLICY_NAME: &str = "harbor-relay";

impl WebhookPolicy {
    /// The policy the relay wants in every covered project.
    pub fn wanted(name: &str, endpoint: &url::Url, auth_header: &str, format: PayloadFormat) -> WebhookPolicy {
        WebhookPolicy {
            id: None,
            name: name.to_owned(),
            description: "Sends pushes and deletions to harbor-relay; kept by `relay harbor webhooks`.".into(),
            project_id: None,
            targets: vec![WebhookTarget {
                kind: "http".into(),
                address: endpoint.to_string(),
                auth_header: auth_header.to_owned(),
                skip_cert_verify: false,
                payload_format: Some(format.as_str().to_owned()),
            }],
            event_types: EVENT_TYPES.iter().map(|e| (*e).to_owned()).collect(),
            enabled: true,
        }
    }

    /// Whether `self` (found in Harbor) already does what `wanted` says.
    fn fulfils(&self, wanted: &WebhookPolicy) -> bool {
        let mut have = self.event_types.clone();
        let mut want = wanted.event_types.clone();
        have.sort();
        want.sort();
        self.enabled == wanted.enabled && have == want && self.targets == wanted.targets
    }
}

/// What `relay harbor webhooks --remove` did (or, in a dry run, would
/// do) to one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Its only target was the relay: the policy is gone.
    Deleted,
    /// It also sends elsewhere: only the relay's target was taken out.
    TargetRemoved,
}

impl Removal {
    pub fn as_str(self) -> &'static str {
        match self {
            Removal::Deleted => "deleted",
            Removal::TargetRemoved => "target removed",
        }
    }
}

/// What was done (or, in a dry run, would be done) in one project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Unchanged,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Unchanged => "unchanged",
        }
    }
}

/// How many covered projects each change touched.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
}

impl Tally {
    pub fn of(kept: &[(Project, Change)]) -> Tally {
        let count = |c| kept.iter().filter(|(_, change)| *change == c).count();
        Tally { created: count(Change::Created), updated: count(Change::Updated), unchanged: count(Change::Unchanged) }
    }
}

/// Whether an enabled rule's name filter can select a repository of
/// `project` (a rule without one selects every project).
pub fn covers(rules: &[Rule], project: &str) -> bool {
    rules.iter().filter(|r| r.enabled).any(|r| match &r.name_filter {
        None => true,
        Some(p) => alternatives(p.as_str()).iter().any(|alt| first_component_admits(alt, project)),
    })
}

/// `pattern` with every `{…}` expanded (doublestar substitutes an
/// alternative textually, so `{a/b,c}/**` is `a/b/**` or `c/**`).
fn alternatives(pattern: &str) -> Vec<String> {
    let bytes = pattern.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'{' => {
                let Some((options, end)) = doublestar::split_alternatives(&pattern[i + 1..]) else {
                    return vec![pattern.to_owned()];
                };
                let (head, tail) = (&pattern[..i], &pattern[i + 1 + end..]);
                return options.iter().flat_map(|o| alternatives(&format!("{head}{o}{tail}"))).collect();
            }
            _ => i += 1,
        }
    }
    vec![pattern.to_owned()]
}

/// Whether a brace-free pattern can match a repository path (at least two
/// components) whose first component is `project`.
fn first_component_admits(pattern: &str, project: &str) -> bool {
    match doublestar::index_with_escaping(pattern, '/') {
        Some(slash) => {
            let first = &pattern[..slash];
            first == "**" || doublestar::matches(first, project).unwrap_or(false)
        }
        // One component: only `**` reaches a path with a `/` in it.
        None => pattern == "**",
    }
}

/// Creates or updates the policy named `wanted.name` in every project the
/// rules cover (nothing is written when `dry_run`); other policies and
/// other projects are left alone. In project-name order.
pub async fn keep(
    api: &HarborApi,
    rules: &[Rule],
    wanted: &WebhookPolicy,
    dry_run: bool,
) -> Result<Vec<(Project, Change)>, HarborApiError> {
    let mut projects = api.project_list().await?;
    projects.sort_by(|a, b| a.name.cmp(&b.name));
    let mut done = Vec::new();
    for project in projects.into_iter().filter(|p| covers(rules, &p.name)) {
        let policies: Vec<WebhookPolicy> = api.webhook_policies(&project).await?;
        let change = match policies.iter().find(|p| p.name == wanted.name) {
            Some(found) if found.fulfils(wanted) => Change::Unchanged,
            Some(found) => {
                if !dry_run {
                    let updated =
                        WebhookPolicy { id: found.id, project_id: Some(project.project_id), ..wanted.clone() };
                    api.save_webhook_policy(&project, updated.id, &updated).await?;
                }
                Change::Updated
            }
            None => {
                if !dry_run {
                    let created = WebhookPolicy { project_id: Some(project.project_id), ..wanted.clone() };
                    api.save_webhook_policy(&project, created.id, &created).await?;
                }
                Change::Created
            }
        };
        done.push((project, change));
    }
    Ok(done)
}

/// Takes the relay out of every project's webhook policies: a policy whose
/// only target is `endpoint` is deleted, one that also sends elsewhere
/// keeps its other targets. Policies not sending to `endpoint` are left
/// alone, whatever their name, and every project is looked at (one no rule
/// covers any more may still send to the relay). Nothing is written when
/// `dry_run`. In project-name order: (project, policy name, removal).
pub async fn remove(
    api: &HarborApi,
    endpoint: &url::Url,
    dry_run: bool,
) -> Result<Vec<(Project, String, Removal)>, HarborApiError> {
    let mut projects = api.project_list().await?;
    projects.sort_by(|a, b| a.name.cmp(&b.name));
    let mut done = Vec::new();
    for project in projects {
        let policies: Vec<WebhookPolicy> = api.webhook_policies(&project).await?;
        for policy in policies {
            let ours = |t: &WebhookTarget| same_endpoint(&t.address, endpoint);
            if !policy.targets.iter().any(ours) {
                continue;
            }
            let Some(id) = policy.id else { continue };
            let others: Vec<WebhookTarget> = policy.targets.iter().filter(|t| !ours(t)).cloned().collect();
            let removal = if others.is_empty() { Removal::Deleted } else { Removal::TargetRemoved };
            if !dry_run {
                match removal {
                    Removal::Deleted => api.delete_webhook_policy(&project, id).await?,
                    Removal::TargetRemoved => {
                        let kept =
                            WebhookPolicy { targets: others, project_id: Some(project.project_id), ..policy.clone() };
                        api.save_webhook_policy(&project, Some(id), &kept).await?
                    }
                }
            }
            done.push((project.clone(), policy.name.clone(), removal));
        }
    }
    Ok(done)
}

/// Whether a target's `address` is `endpoint` (a trailing slash aside).
fn same_endpoint(address: &str, endpoint: &url::Url) -> bool {
    address.trim_end_matches('/') == endpoint.as_str().trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn rules(filters: &[&str]) -> Vec<Rule> {
        let mut yaml = String::from(
            "source: { url: 'http://h' }\nwebhook: { auth_values_env: X }\nregistries: [{ name: r, url: 'http://d' }]\nrules:\n",
        );
        for (i, f) in filters.iter().enumerate() {
            yaml.push_str(&format!(
                "  - {{ name: r{i}, filters: {{ name: '{f}' }}, destination: {{ registry: r }} }}\n"
            ));
        }
        Config::parse(&yaml).unwrap().rules
    }

    #[test]
    fn a_project_is_covered_when_some_rule_can_select_a_repository_in_it() {
        let table: &[(&str, &str, bool)] = &[
            ("library/**", "library", true),
            ("library/**", "libraryx", false),
            ("library/*", "library", true),
            ("lib*/**", "library", true),
            ("lib*/**", "other", false),
            ("**", "anything", true),
            ("**/nginx", "anything", true),
            ("{library,goharbor}/**", "goharbor", true),
            ("{library,goharbor}/**", "other", false),
            ("{a/b,c/**}", "a", true),
            ("{a/b,c/**}", "c", true),
            ("{a/b,c/**}", "b", false),
            ("[!n]ginx/**", "nginx", true),
            ("[^n]ginx/**", "nginx", false),
            // One component never names a repository (they have two or more).
            ("library", "library", false),
            ("*", "library", false),
        ];
        for &(filter, project, expected) in table {
            assert_eq!(covers(&rules(&[filter]), project), expected, "{filter} over {project}");
        }
        assert!(covers(&rules(&[""]), "any"), "no name filter: every project");
        assert!(covers(&rules(&["a/**", "b/**"]), "b"));
    }
}
