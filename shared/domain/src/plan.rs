//! Fan-out: one Harbor event and the rules become the tasks to enqueue.
//! Pure and synchronous so it is tested (and benchmarked) without a queue.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::event::{EventKind, HarborEvent};
use crate::repository::RepositoryPath;
use crate::rules::{ArtifactFacts, MappingError, Refusal, Rule};
use crate::task::{Action, CopyOptions, DestinationArtifact, EventRef, SourceArtifact, Task, TASK_VERSION};

/// What an event turns into.
#[derive(Debug, Default)]
pub struct Plan {
    pub tasks: Vec<Task>,
    /// Rules that matched but could not map the repository, with why.
    pub skipped: Vec<(String, MappingError)>,
    /// Every rule's answer to the event, in the configuration's order: so
    /// a push that yields no task says why, rule by rule.
    pub verdicts: Vec<RuleVerdict>,
}

/// What one rule made of an event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleVerdict {
    pub rule: String,
    /// `replicates`, or `skipped` with the setting that decided.
    pub verdict: &'static str,
    #[serde(flatten)]
    pub refusal: Option<Refusal>,
}

impl RuleVerdict {
    fn new(rule: &Rule, refusal: Option<Refusal>) -> RuleVerdict {
        let verdict = if refusal.is_none() { "replicates" } else { "skipped" };
        RuleVerdict { rule: rule.name.clone(), verdict, refusal }
    }
}

/// True when a rule that would otherwise match has a label or resource
/// filter, so the artifact's labels and type must be read from Harbor
/// before planning.
pub fn needs_facts(config: &Config, event: &HarborEvent) -> bool {
    let Some(a) = &event.artifact else { return false };
    matches!(event.kind, EventKind::Push | EventKind::Delete)
        && config.rules.iter().any(|r| r.needs_facts() && r.matches(&a.repository, a.tag.as_ref(), &event.operator))
}

/// Builds one task per (artifact, destination registry, destination
/// repository). Rules that land on the same place merge into one task: the
/// copy happens once, and it overrides only if every merged rule allows it.
/// `facts` are what Harbor's API says of the artifact, when [`needs_facts`]
/// asked for them.
pub fn plan(
    config: &Config,
    event: &HarborEvent,
    facts: Option<&ArtifactFacts>,
    new_id: &mut dyn FnMut() -> String,
) -> Plan {
    let mut plan = Plan::default();
    let (Some(artifact), action) = (
        event.artifact.as_ref(),
        match event.kind {
            EventKind::Push => Action::Copy,
            EventKind::Delete => Action::Delete,
            EventKind::Other(_) => return plan,
        },
    ) else {
        return plan;
    };

    let mut merged: BTreeMap<(String, RepositoryPath), Task> = BTreeMap::new();
    for rule in &config.rules {
        let refusal = if action == Action::Delete && !rule.deletion {
            Some(Refusal::new("deletion", "the rule does not replicate deletions"))
        } else {
            rule.refusal(&artifact.repository, artifact.tag.as_ref(), &event.operator, facts)
        };
        if refusal.is_some() {
            plan.verdicts.push(RuleVerdict::new(rule, refusal));
            continue;
        }
        let repository = match rule.map_repository(&artifact.repository) {
            Ok(r) => r,
            Err(e) => {
                plan.verdicts.push(RuleVerdict::new(rule, Some(Refusal::new("destination.flatten", e.to_string()))));
                plan.skipped.push((rule.name.clone(), e));
                continue;
            }
        };
        plan.verdicts.push(RuleVerdict::new(rule, None));
        let key = (rule.destination.registry.clone(), repository.clone());
        let tags: Vec<_> = artifact.tag.iter().cloned().collect();
        let task = merged.entry(key).or_insert_with(|| Task {
            version: TASK_VERSION,
            id: new_id(),
            action,
            source: SourceArtifact {
                repository: artifact.repository.clone(),
                digest: artifact.digest.clone(),
                tags: tags.clone(),
            },
            destination: DestinationArtifact { registry: rule.destination.registry.clone(), repository, tags },
            rules: Vec::new(),
            options: CopyOptions { override_existing: true, bandwidth_kbps: None, refresh_referrers: false },
            event: EventRef {
                key: event.dedup_key.clone(),
                occurred_at: event.occurred_at,
                operator: event.operator.clone(),
            },
        });
        task.rules.push(rule.name.clone());
        task.options.override_existing &= rule.override_existing;
        task.options.bandwidth_kbps = match (task.options.bandwidth_kbps, rule.bandwidth_kbps) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    plan.tasks = merged.into_values().collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Format;

    const CONFIG: &str = r#"
source: { url: "http://localhost" }
webhook: { auth_values_env: A }
registries:
  - { name: r1, url: "http://127.0.0.1:1" }
  - { name: r2, url: "http://127.0.0.1:2" }
rules:
  - { name: all-r1, destination: { registry: r1 } }
  - { name: harbor-r1-again, filters: { name: "harbor/**" }, destination: { registry: r1 }, override: false, bandwidth_kbps: 800 }
  - { name: to-r2-flat, destination: { registry: r2, namespace: mirror, flatten: -1 }, deletion: true }
  - { name: other-project, filters: { name: "other/**" }, destination: { registry: r2 } }
  - { name: too-deep, destination: { registry: r2, namespace: deep, flatten: 3 } }
  - { name: off, enabled: false, destination: { registry: r2, namespace: off } }
"#;

    fn event(file: &str) -> HarborEvent {
        let body = std::fs::read(format!("{}/../../tests/fixtures/harbor/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let format = if file.contains("cloudevents") { Format::CloudEvents } else { Format::Default };
        HarborEvent::parse(format, &body, "localhost").unwrap()
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("t{n}")
        }
    }

    #[test]
    fn every_rule_says_why_it_does_or_does_not_replicate() {
        let config = Config::parse(CONFIG).unwrap();
        let plan = plan(&config, &event("push_artifact.default.json"), None, &mut ids());
        let got: Vec<_> =
            plan.verdicts.iter().map(|v| (v.rule.as_str(), v.refusal.as_ref().map(|r| r.filter))).collect();
        assert_eq!(
            got,
            [
                ("all-r1", None),
                ("harbor-r1-again", None),
                ("to-r2-flat", None),
                ("other-project", Some("filters.name")),
                ("too-deep", Some("destination.flatten")),
                ("off", Some("enabled")),
            ]
        );
        let why = plan.verdicts[3].refusal.as_ref().unwrap().reason.clone();
        assert_eq!(why, r#"harbor/alpine does not match "other/**""#);
        let deleted = super::plan(&config, &event("delete_artifact.default.json"), None, &mut ids());
        assert_eq!(deleted.verdicts[0].refusal.as_ref().map(|r| r.filter), Some("deletion"));
        let json = serde_json::to_value(&plan.verdicts[3]).unwrap();
        assert_eq!(json["filter"], "filters.name");
        assert_eq!(json["verdict"], "skipped");
    }

    #[test]
    fn push_fans_out_and_merges() {
        let config = Config::parse(CONFIG).unwrap();
        let plan = plan(&config, &event("push_artifact.default.json"), None, &mut ids());
        let got: Vec<_> = plan
            .tasks
            .iter()
            .map(|t| (t.destination.registry.as_str(), t.destination.repository.as_str(), t.rules.join("+")))
            .collect();
        assert_eq!(
            got,
            [
                ("r1", "harbor/alpine", "all-r1+harbor-r1-again".to_owned()),
                ("r2", "mirror/alpine", "to-r2-flat".to_owned())
            ]
        );
        let merged = &plan.tasks[0];
        assert!(!merged.options.override_existing, "one merged rule forbids override");
        assert_eq!(merged.options.bandwidth_kbps, Some(800));
        assert!(merged.source.tags.is_empty(), "push by digest carries no tag");
        assert_eq!(plan.skipped.len(), 1);
        assert_eq!(plan.skipped[0].0, "too-deep");
    }

    #[test]
    fn delete_only_for_deletion_rules() {
        let config = Config::parse(CONFIG).unwrap();
        let plan = plan(&config, &event("delete_artifact.default.json"), None, &mut ids());
        assert_eq!(plan.tasks.len(), 1);
        assert_eq!(plan.tasks[0].action, Action::Delete);
        assert_eq!(plan.tasks[0].destination.tags[0].as_str(), "3.8");
    }

    #[test]
    fn other_events_plan_nothing() {
        let config = Config::parse(CONFIG).unwrap();
        let body = std::fs::read(format!(
            "{}/../../tests/fixtures/harbor/pull_artifact.default.wire.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let e = HarborEvent::parse(Format::Default, &body, "harbor.dev").unwrap();
        assert!(plan(&config, &e, None, &mut ids()).tasks.is_empty());
    }
}
