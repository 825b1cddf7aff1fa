//! `relay harbor import --compare`: an existing relay configuration held
//! against Harbor's replication policies. Per policy: the rule that covers
//! it, or how the closest one differs, or that none does; and, since a
//! Harbor policy left enabled beside a relay rule into the same registry
//! replicates the same artifacts a second time, which of Harbor's to
//! disable after the move. Pure: over an [`Imported`] and both
//! configurations.

use serde::Serialize;

use crate::config::{host_port, Config};
use crate::import::Imported;
use crate::rules::Rule;

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub policies: Vec<PolicyComparison>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyComparison {
    pub id: i64,
    pub name: String,
    pub harbor_enabled: bool,
    /// `covered`, `differs`, `missing`, or `not_importable` (the import's
    /// report says why).
    pub verdict: &'static str,
    /// The relay rule held against it.
    pub rule: Option<String>,
    /// What differs, field by field (`field: Harbor's → the relay's`).
    pub differences: Vec<String>,
    /// Harbor's policy is enabled and so is a relay rule into the same
    /// registry: both replicate what they share.
    pub replicates_twice: bool,
}

/// Holds `existing` against the policies `imported` read from Harbor
/// (`harbor`: the imported configuration, as loaded).
pub fn compare(imported: &Imported, harbor: &Config, existing: &Config) -> Comparison {
    let mut policies = Vec::new();
    for p in &imported.policies {
        let mut c = PolicyComparison {
            id: p.id,
            name: p.name.clone(),
            harbor_enabled: false,
            verdict: "not_importable",
            rule: None,
            differences: vec![],
            replicates_twice: false,
        };
        let Some(theirs) = p.rule.as_ref().and_then(|name| harbor.rules.iter().find(|r| &r.name == name)) else {
            policies.push(c);
            continue;
        };
        // A manual policy was written disabled; Harbor's own flag is what
        // decides whether it runs there.
        c.harbor_enabled = p.harbor_enabled;
        let target = destination_host(harbor, theirs);
        let same_target = |r: &&Rule| destination_host(existing, r) == target;
        let ours = existing
            .rules
            .iter()
            .find(|r| r.name == theirs.name)
            .or_else(|| {
                existing.rules.iter().filter(same_target).find(|r| differences(harbor, theirs, existing, r).is_empty())
            })
            .or_else(|| {
                existing.rules.iter().filter(same_target).find(|r| {
                    r.name_filter.as_ref().map(|f| f.as_str()) == theirs.name_filter.as_ref().map(|f| f.as_str())
                })
            });
        match ours {
            None => c.verdict = "missing",
            Some(ours) => {
                c.rule = Some(ours.name.clone());
                c.differences = differences(harbor, theirs, existing, ours);
                c.verdict = if c.differences.is_empty() { "covered" } else { "differs" };
            }
        }
        c.replicates_twice = c.harbor_enabled
            && p.trigger != "manual"
            && existing.rules.iter().any(|r| r.enabled && destination_host(existing, r) == target);
        policies.push(c);
    }
    Comparison { policies }
}

/// `host[:port]` of the registry a rule replicates into.
fn destination_host(config: &Config, rule: &Rule) -> Option<String> {
    config.registry(&rule.destination.registry).map(|r| host_port(&r.url))
}

/// What `ours` does differently from `theirs`, as `field: Harbor's → the
/// relay's`.
fn differences(harbor: &Config, theirs: &Rule, existing: &Config, ours: &Rule) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |name: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{name}: {a} → {b}"));
        }
    };
    field("destination", fmt(destination_host(harbor, theirs)), fmt(destination_host(existing, ours)));
    field(
        "filters.name",
        fmt(theirs.name_filter.as_ref().map(|f| f.as_str())),
        fmt(ours.name_filter.as_ref().map(|f| f.as_str())),
    );
    let tag = |r: &Rule| r.tag_filter.as_ref().map(|t| format!("{} ({:?})", t.pattern.as_str(), t.decoration));
    field("filters.tag", fmt(tag(theirs)), fmt(tag(ours)));
    let label = |r: &Rule| r.label_filter.as_ref().map(|l| format!("{:?} ({:?})", l.labels, l.decoration));
    field("filters.label", fmt(label(theirs)), fmt(label(ours)));
    field(
        "filters.resource",
        fmt(theirs.resource_filter.map(|r| format!("{r:?}"))),
        fmt(ours.resource_filter.map(|r| format!("{r:?}"))),
    );
    field(
        "destination.namespace",
        fmt(theirs.destination.namespace.as_deref()),
        fmt(ours.destination.namespace.as_deref()),
    );
    // Without a namespace neither Harbor nor the relay flattens anything.
    if theirs.destination.namespace.is_some() || ours.destination.namespace.is_some() {
        let flatten = |r: &Rule| format!("{:?}", r.destination.flatten);
        field("destination.flatten", flatten(theirs), flatten(ours));
    }
    field("override", theirs.override_existing.to_string(), ours.override_existing.to_string());
    field("deletion", theirs.deletion.to_string(), ours.deletion.to_string());
    field("bandwidth_kbps", fmt(theirs.bandwidth_kbps), fmt(ours.bandwidth_kbps));
    out
}

fn fmt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "none".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::{import, ImportOptions};

    #[test]
    fn a_configuration_is_held_policy_by_policy_against_harbors() {
        let registries: Vec<crate::replication::HarborRegistry> = serde_json::from_value(serde_json::json!([
            { "id": 1, "name": "c1", "type": "docker-registry", "url": "https://c1.example.com", "credential": { "type": "basic", "access_key": "u" } },
            { "id": 2, "name": "c2", "type": "docker-registry", "url": "https://c2.example.com" },
            { "id": 3, "name": "hub", "type": "docker-hub", "url": "https://hub.docker.com" },
        ]))
        .unwrap();
        let event = serde_json::json!({ "type": "event_based" });
        let policies: Vec<crate::replication::ReplicationPolicy> = serde_json::from_value(serde_json::json!([
            { "id": 1, "name": "same", "enabled": true, "dest_registry": { "id": 1 }, "trigger": event, "filters": [{ "type": "name", "value": "lib/**" }] },
            { "id": 2, "name": "other-tags", "enabled": true, "dest_registry": { "id": 2 }, "trigger": event, "filters": [{ "type": "name", "value": "app/**" }, { "type": "tag", "value": "v*" }] },
            { "id": 3, "name": "nowhere", "enabled": false, "dest_registry": { "id": 2 }, "trigger": event, "filters": [{ "type": "name", "value": "x/**" }] },
            { "id": 4, "name": "to-hub", "enabled": true, "dest_registry": { "id": 3 }, "trigger": event },
        ]))
        .unwrap();
        let imported =
            import(&registries, &policies, &ImportOptions::new("https://harbor.example.com".parse().unwrap()));
        let harbor = Config::parse(&imported.configuration).unwrap();
        // The relay's: one rule as Harbor's under another name, one with a
        // different tag filter, none for policy 3, and a second registry
        // name for c2.
        let existing = Config::parse(
            "source: { url: https://harbor.example.com }\nwebhook: { auth_values_env: A }\nregistries:\n  - { name: east, url: https://c1.example.com }\n  - { name: west, url: https://c2.example.com/ }\nrules:\n  - { name: mine, filters: { name: lib/** }, destination: { registry: east } }\n  - { name: apps, filters: { name: app/**, tag: { pattern: \"release-*\" } }, destination: { registry: west }, deletion: true }\n",
        )
        .unwrap();
        let c = compare(&imported, &harbor, &existing);
        let by = |id: i64| c.policies.iter().find(|p| p.id == id).unwrap();
        assert_eq!((by(1).verdict, by(1).rule.as_deref()), ("covered", Some("mine")), "{:?}", by(1));
        assert!(by(1).replicates_twice);
        assert_eq!(by(2).verdict, "differs");
        assert_eq!(by(2).rule.as_deref(), Some("apps"));
        let d = by(2).differences.join("; ");
        assert!(
            d.contains("filters.tag: v* (Matches) → release-* (Matches)") && d.contains("deletion: false → true"),
            "{d}"
        );
        assert!(by(2).replicates_twice);
        // No rule for x/**; Harbor's policy 3 is disabled there, so it does not run twice.
        assert_eq!(by(3).verdict, "missing", "{:?}", by(3));
        assert!(!by(3).replicates_twice);
        assert_eq!(by(4).verdict, "not_importable");
        assert!(!by(4).replicates_twice);
    }
}
