//! What a destination Harbor's project does to what the relay writes
//! there: its immutable tag rules refuse to move (412) or delete a tag
//! they cover, and its tag retention policy deletes, on each run, what its
//! rules do not retain, replicated artifacts included. `relay check` reads
//! both (`GET /projects/{name}`, `/projects/{name}/immutabletagrules`,
//! `/retentions/{id}`) and warns before a push is refused.

use serde::Deserialize;

use crate::harbor_api::{HarborApi, HarborApiError};

/// Harbor's `ImmutableRule` and `RetentionRule`, the fields a warning
/// names.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PolicyRule {
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub tag_selectors: Vec<Selector>,
    #[serde(default)]
    pub scope_selectors: std::collections::BTreeMap<String, Vec<Selector>>,
}

/// Harbor's `ImmutableSelector` / `RetentionSelector`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Selector {
    #[serde(default)]
    pub decoration: String,
    #[serde(default)]
    pub pattern: String,
}

/// Harbor's `RetentionPolicy`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RetentionPolicy {
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
    #[serde(default)]
    pub trigger: Option<RetentionTrigger>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RetentionTrigger {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub settings: serde_json::Value,
}

/// What the relay does in a project, as the rules into it say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayUse {
    /// Some rule moves tags that point elsewhere (`override`).
    pub moves_tags: bool,
    /// Some rule replicates deletions.
    pub deletes: bool,
}

#[derive(Deserialize)]
struct ProjectDetail {
    #[serde(default)]
    metadata: std::collections::HashMap<String, String>,
}

impl PolicyRule {
    /// `repositories <decoration> <pattern>, tags <decoration> <pattern>`.
    fn describe(&self) -> String {
        let selectors = |s: &[Selector]| {
            s.iter().map(|s| format!("{} {:?}", s.decoration, s.pattern)).collect::<Vec<_>>().join(" and ")
        };
        let repositories = self.scope_selectors.get("repository").map(|s| selectors(s)).unwrap_or_default();
        format!("repositories {repositories}, tags {}", selectors(&self.tag_selectors))
    }
}

/// The warnings for `project` of a destination Harbor, or why they could
/// not be read.
pub async fn warnings(api: &HarborApi, project: &str, relay: RelayUse) -> Result<Vec<String>, HarborApiError> {
    let immutable: Vec<PolicyRule> = api.immutable_tag_rules(project).await?;
    let retention = match api.project_metadata::<ProjectDetail>(project).await? {
        Some(p) => match p.metadata.get("retention_id").and_then(|id| id.parse::<i64>().ok()) {
            Some(id) => api.retention_policy::<RetentionPolicy>(id).await?,
            None => None,
        },
        None => {
            return Ok(vec![format!(
                "project {project} does not exist yet (created on the first push when create_projects is on)"
            )])
        }
    };
    Ok(judge(project, relay, &immutable, retention.as_ref()))
}

/// The warnings, from what was read: pure, so each case is a table row.
pub fn judge(
    project: &str,
    relay: RelayUse,
    immutable: &[PolicyRule],
    retention: Option<&RetentionPolicy>,
) -> Vec<String> {
    let mut out = Vec::new();
    for rule in immutable.iter().filter(|r| !r.disabled) {
        let refuses = match (relay.moves_tags, relay.deletes) {
            (true, true) => "moving or deleting",
            (true, false) => "moving",
            (false, true) => "deleting",
            (false, false) => continue,
        };
        out.push(format!(
            "project {project}: immutable tag rule ({}) refuses {refuses} those tags (412): such a task fails for good and is dead-lettered",
            rule.describe()
        ));
    }
    if let Some(policy) = retention.filter(|p| p.rules.iter().any(|r| !r.disabled)) {
        let when = policy.trigger.as_ref().map_or_else(String::new, |t| {
            match t.settings.get("cron").and_then(|c| c.as_str()) {
                Some(cron) if !cron.is_empty() => format!(", {} {cron}", t.kind),
                _ => format!(", {}", t.kind),
            }
        });
        let retained: Vec<_> = policy.rules.iter().filter(|r| !r.disabled).map(PolicyRule::describe).collect();
        out.push(format!(
            "project {project}: tag retention{when} deletes what it does not retain ({}), replicated artifacts included; reconcile copies them again",
            retained.join("; ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(json: serde_json::Value) -> Vec<PolicyRule> {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn immutable_rules_warn_only_where_the_relay_moves_or_deletes_tags() {
        let immutable = rules(serde_json::json!([
            { "id": 1, "disabled": false, "action": "immutable", "template": "immutable_template",
              "tag_selectors": [{ "kind": "doublestar", "decoration": "matches", "pattern": "v*" }],
              "scope_selectors": { "repository": [{ "kind": "doublestar", "decoration": "repoMatches", "pattern": "**" }] } },
            { "id": 2, "disabled": true, "tag_selectors": [{ "decoration": "matches", "pattern": "**" }] },
        ]));
        let moves = RelayUse { moves_tags: true, deletes: false };
        let w = judge("prod", moves, &immutable, None);
        assert_eq!(w.len(), 1, "the disabled rule says nothing: {w:?}");
        assert!(
            w[0].contains(r#"repositories repoMatches "**", tags matches "v*""#) && w[0].contains("refuses moving"),
            "{w:?}"
        );
        assert!(
            judge("prod", RelayUse::default(), &immutable, None).is_empty(),
            "no override, no deletion: nothing refused"
        );
        let both = judge("prod", RelayUse { moves_tags: true, deletes: true }, &immutable, None);
        assert!(both[0].contains("moving or deleting"), "{both:?}");
    }

    #[test]
    fn a_retention_policy_with_rules_warns_one_without_does_not() {
        let policy: RetentionPolicy = serde_json::from_value(serde_json::json!({
            "id": 7, "algorithm": "or",
            "rules": [{ "disabled": false, "action": "retain", "template": "latestPushedK", "params": { "latestPushedK": 10 },
                        "tag_selectors": [{ "kind": "doublestar", "decoration": "matches", "pattern": "**" }],
                        "scope_selectors": { "repository": [{ "kind": "doublestar", "decoration": "repoMatches", "pattern": "**" }] } }],
            "trigger": { "kind": "Schedule", "settings": { "cron": "0 0 0 * * *" } },
            "scope": { "level": "project", "ref": 3 }
        }))
        .unwrap();
        let w = judge("prod", RelayUse::default(), &[], Some(&policy));
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("tag retention, Schedule 0 0 0 * * *"), "{w:?}");
        let empty = RetentionPolicy { rules: vec![], ..policy };
        assert!(judge("prod", RelayUse::default(), &[], Some(&empty)).is_empty());
    }
}
