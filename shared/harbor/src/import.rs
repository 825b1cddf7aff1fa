//! `relay harbor import`: Harbor's registry endpoints and replication
//! policies turned into a relay configuration, and a report of every
//! choice. Pure: the caller reads Harbor's API ([`crate::replication`]) and
//! writes the result.
//!
//! A policy is written as a rule only when the rule replicates what
//! Harbor's would: a filter the relay cannot express, a pull-based policy
//! or a destination kind the relay has not is reported and left out, never
//! written without the part that does not fit (a rule without one of its
//! filters replicates more than Harbor did). Harbor never returns stored
//! secrets, so every credential becomes a Secrets Manager reference and
//! the report lists the secrets to create.

use serde::Serialize;
use url::Url;

use crate::replication::{Filter, HarborRegistry, ReplicationPolicy};

mod cron;
mod render;

pub use cron::{eventbridge_cron, CronError};

/// What the import needs besides Harbor's answers.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The Harbor the policies were read from: the relay's source.
    pub harbor: Url,
    /// The account of ECR endpoints that Harbor names by their API host
    /// (`api.ecr.<region>.amazonaws.com`), which does not say it.
    pub ecr_account: Option<String>,
    /// Prefix of the secret names written (`<prefix>/source-robot`, …).
    pub secret_prefix: String,
}

impl ImportOptions {
    pub fn new(harbor: Url) -> ImportOptions {
        ImportOptions { harbor, ecr_account: None, secret_prefix: "harbor-relay".into() }
    }
}

/// The configuration's text and the report behind it.
#[derive(Debug, Clone, Serialize)]
pub struct Imported {
    pub harbor: String,
    /// Commented YAML, ready for `relay check` once the secrets exist.
    pub configuration: String,
    pub policies: Vec<PolicyOutcome>,
    pub registries: Vec<RegistryOutcome>,
    /// Secrets Manager secrets the configuration names, to create first.
    pub secrets: Vec<SecretToCreate>,
    /// The template's `ReconcileSchedule` that keeps a scheduled policy's
    /// sweep, when one was imported.
    pub reconcile_schedule: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyOutcome {
    pub id: i64,
    pub name: String,
    /// `manual`, `scheduled` or `event_based`.
    pub trigger: String,
    /// Whether Harbor runs it (its own `enabled`).
    pub harbor_enabled: bool,
    /// The rule written, `None` when the policy was not imported.
    pub rule: Option<String>,
    /// Why it was not imported, or what differs in the relay.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegistryOutcome {
    pub id: i64,
    pub name: String,
    /// Harbor's endpoint type.
    pub harbor_type: String,
    /// The `registries[]` entry written, `None` when not imported.
    pub registry: Option<String>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecretToCreate {
    pub secret_id: String,
    /// What the secret's value holds.
    pub value: String,
    /// Who reads it, and the template parameter that lets them.
    pub purpose: String,
}

/// Why a policy or an endpoint is not imported: the report's first note.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotImported {
    #[error("pull-based (Harbor pulls from {0:?}): the relay replicates from this Harbor only")]
    PullBased(String),
    #[error("no destination registry")]
    NoDestination,
    #[error("its destination registry {id} was not imported: {why}")]
    DestinationLeftOut { id: i64, why: String },
    #[error("the policy has no name")]
    Unnamed,
    #[error("two {0:?} filters: the relay holds one of each")]
    TwoFilters(String),
    #[error("filter {kind:?} has decoration {decoration:?} (matches or excludes)")]
    Decoration { kind: String, decoration: String },
    #[error("filter {kind:?} holds {value} instead of {wanted}")]
    FilterValue { kind: String, value: String, wanted: &'static str },
    #[error("resource filter {0:?} (the relay knows image and artifact)")]
    Resource(String),
    #[error("filter type {0:?} is not one the relay knows (name, tag, label, resource)")]
    FilterType(String),
    #[error("dest_namespace_replace_count {0}: the relay flattens -1 (all), 0, 1, 2 or 3 levels")]
    Flatten(i64),
    #[error("speed {speed} Kbps is above the relay's limit of {max} Kbps")]
    Speed { speed: i64, max: u64 },
    #[error("its URL {0:?} is not an http(s) URL")]
    Url(String),
    #[error("Harbor names this ECR endpoint by its API host ({0}), which does not say the account: run the import again with --ecr-account <12 digits>")]
    EcrApiHost(String),
    #[error("endpoint type {0:?} is not a destination kind of the relay (docker-registry, harbor, aws-ecr)")]
    EndpointType(String),
}

/// A `registries[]` entry about to be written.
struct RegistryDraft {
    harbor_id: i64,
    harbor_name: String,
    harbor_type: String,
    name: String,
    lines: Vec<String>,
}

/// Turns Harbor's set-up into a configuration and its report.
pub fn import(registries: &[HarborRegistry], policies: &[ReplicationPolicy], options: &ImportOptions) -> Imported {
    let mut secrets = vec![
        SecretToCreate {
            secret_id: format!("{}/source-robot", options.secret_prefix),
            value: r#"{"username": "robot$…", "password": "…"} of a robot account that may pull, list artifacts and read labels"#.into(),
            purpose: "the source Harbor's credentials (SourceSecretArns)".into(),
        },
        SecretToCreate {
            secret_id: format!("{}/webhook-auth", options.secret_prefix),
            value: "the Authorization value Harbor's webhook sends, 16 characters or more (e.g. \"Bearer <random>\")".into(),
            purpose: "the webhook's accepted Authorization values (WebhookSecretArns)".into(),
        },
    ];
    let mut registry_outcomes = Vec::new();
    let mut drafts: Vec<RegistryDraft> = Vec::new();
    for r in registries {
        let (outcome, draft) = registry(r, options, &drafts, &mut secrets);
        registry_outcomes.push(outcome);
        drafts.extend(draft);
    }
    let mut policy_outcomes = Vec::new();
    let mut rules = Vec::new();
    let mut schedules = Vec::new();
    for p in policies {
        let (outcome, rule, schedule) = policy(p, &drafts, &registry_outcomes);
        policy_outcomes.push(outcome);
        rules.extend(rule);
        schedules.extend(schedule);
    }
    schedules.sort();
    schedules.dedup();
    let reconcile_schedule = schedules.first().cloned();
    if schedules.len() > 1 {
        for o in policy_outcomes.iter_mut().filter(|o| o.trigger == "scheduled") {
            o.notes.push(format!(
                "Harbor's policies run on {} schedules; the relay has one reconcile schedule ({}): choose it when deploying",
                schedules.len(),
                schedules[0]
            ));
        }
    }
    let mut imported = Imported {
        harbor: options.harbor.to_string(),
        configuration: String::new(),
        policies: policy_outcomes,
        registries: registry_outcomes,
        secrets,
        reconcile_schedule,
    };
    imported.configuration = render::render(&imported, options, &drafts, &rules);
    imported
}

/// One endpoint: a `registries[]` entry of the matching kind, or why not.
fn registry(
    r: &HarborRegistry,
    options: &ImportOptions,
    taken: &[RegistryDraft],
    secrets: &mut Vec<SecretToCreate>,
) -> (RegistryOutcome, Option<RegistryDraft>) {
    let id = r.id.unwrap_or(0);
    let harbor_name = r.name.clone().unwrap_or_default();
    let harbor_type = r.kind.clone().unwrap_or_default();
    let mut outcome = RegistryOutcome {
        id,
        name: harbor_name.clone(),
        harbor_type: harbor_type.clone(),
        registry: None,
        notes: vec![],
    };
    let name = registry_name(&harbor_name, id, taken);
    let mut lines = vec![format!("name: {}", q(&name))];
    match kind_lines(r, &name, options, secrets, &mut outcome.notes) {
        Ok(kind) => lines.extend(kind),
        Err(why) => {
            outcome.notes.push(why.to_string());
            return (outcome, None);
        }
    }
    if r.insecure == Some(true) {
        lines.push("insecure: true".into());
        outcome.notes.push("Harbor does not verify its certificate: neither will the relay (insecure: true)".into());
    }
    if r.ca_certificate.as_deref().is_some_and(|pem| !pem.trim().is_empty()) {
        let secret_id = format!("{}/{}-ca", options.secret_prefix, slug(&name));
        secrets.push(SecretToCreate {
            secret_id: secret_id.clone(),
            value: "the PEM bundle of the CA certificate set on Harbor's endpoint".into(),
            purpose: format!("registry {name}'s private CA (SecretArns)"),
        });
        lines.push(format!("ca_secret_id: {}", q(&secret_id)));
    }
    outcome.registry = Some(name.clone());
    (outcome, Some(RegistryDraft { harbor_id: id, harbor_name, harbor_type, name, lines }))
}

/// The `url`, `kind` and credential lines of the relay's registry `name`
/// for Harbor's endpoint, by its type; or why the type has no match.
fn kind_lines(
    r: &HarborRegistry,
    name: &str,
    options: &ImportOptions,
    secrets: &mut Vec<SecretToCreate>,
    notes: &mut Vec<String>,
) -> Result<Vec<String>, NotImported> {
    let url = match r.url.as_deref().map(Url::parse) {
        Some(Ok(u)) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
        _ => return Err(NotImported::Url(r.url.clone().unwrap_or_default())),
    };
    let mut lines = Vec::new();
    match r.kind.as_deref().unwrap_or_default() {
        kind @ ("docker-registry" | "harbor") => {
            lines.push(format!("url: {}", q(url.as_str().trim_end_matches('/'))));
            if kind == "harbor" {
                lines.push("kind: harbor".into());
                // Harbor's replication creates a missing project at the destination.
                lines.push("create_projects: true".into());
            }
            let user = r.credential.as_ref().and_then(|c| c.access_key.clone()).unwrap_or_default();
            if !user.is_empty() {
                let secret_id = format!("{}/{}", options.secret_prefix, slug(name));
                secrets.push(SecretToCreate {
                    secret_id: secret_id.clone(),
                    value: format!(
                        r#"{{"username": {}, "password": "…"}} (Harbor keeps the password and never returns it)"#,
                        q(&user)
                    ),
                    purpose: format!("registry {name}'s credentials (SecretArns)"),
                });
                lines.push(format!("credentials: {{ secret_id: {} }}", q(&secret_id)));
            }
        }
        "aws-ecr" => {
            let Some((account, region)) = ecr_account_region(&url, options.ecr_account.as_deref()) else {
                return Err(NotImported::EcrApiHost(url.host_str().unwrap_or_default().to_owned()));
            };
            lines.push(format!("url: {}", q(&format!("https://{account}.dkr.ecr.{region}.amazonaws.com"))));
            lines.push("kind: ecr".into());
            notes.push(
                "ECR is reached with the worker's IAM role, not Harbor's access key: deploy with EnableEcr=true (another account: role_arn and EcrAssumeRoleArns)"
                    .into(),
            );
        }
        other => return Err(NotImported::EndpointType(other.to_owned())),
    }
    Ok(lines)
}

/// One policy: a rule, or why not; and the reconcile schedule a scheduled
/// policy asks for.
fn policy(
    p: &ReplicationPolicy,
    drafts: &[RegistryDraft],
    registries: &[RegistryOutcome],
) -> (PolicyOutcome, Option<Vec<String>>, Option<String>) {
    let trigger = p.trigger.as_ref().and_then(|t| t.kind.clone()).unwrap_or_else(|| "manual".into());
    let mut outcome = PolicyOutcome {
        id: p.id.unwrap_or(0),
        name: p.name.clone().unwrap_or_default(),
        trigger: trigger.clone(),
        harbor_enabled: p.enabled.unwrap_or(true),
        rule: None,
        notes: vec![],
    };
    let rule = match rule_of(p, drafts, registries) {
        Ok(rule) => rule,
        Err(why) => {
            outcome.notes.push(why.to_string());
            return (outcome, None, None);
        }
    };
    let (enabled, schedule) = trigger_notes(p, &trigger, &mut outcome.notes);
    if p.copy_by_chunk == Some(true) {
        outcome.notes.push(
            "copy_by_chunk: the relay sends whole blobs and switches a registry to chunks by itself when it refuses one as too large (413)"
                .into(),
        );
    }
    if p.single_active_replication == Some(true) {
        outcome.notes.push(
            "single_active_replication: the relay has no executions to overlap; each push's tasks are idempotent per digest and destination"
                .into(),
        );
    }
    let header = format!(
        "# Harbor policy {} {:?}: push-based, {trigger}; destination registry {} {:?}",
        outcome.id, outcome.name, rule.destination.harbor_id, rule.destination.harbor_name
    );
    let lines = std::iter::once(header).chain(rule.lines(&outcome.name, enabled)).collect();
    outcome.rule = Some(outcome.name.clone());
    (outcome, Some(lines), schedule)
}

/// What a policy carries over into a rule, its trigger aside.
struct RuleDraft<'a> {
    destination: &'a RegistryDraft,
    filters: Vec<String>,
    namespace: String,
    flatten: i64,
    override_existing: bool,
    deletion: bool,
    bandwidth_kbps: i64,
}

impl RuleDraft<'_> {
    fn lines(&self, name: &str, enabled: bool) -> Vec<String> {
        let mut lines = vec![format!("- name: {}", q(name)), format!("  enabled: {enabled}")];
        if !self.filters.is_empty() {
            lines.push("  filters:".into());
            lines.extend(self.filters.iter().map(|f| format!("    {f}")));
        }
        lines.push(format!(
            "  destination: {{ registry: {}, namespace: {}, flatten: {} }}",
            q(&self.destination.name),
            q(&self.namespace),
            self.flatten
        ));
        lines.push(format!("  override: {}", self.override_existing));
        lines.push(format!("  deletion: {}", self.deletion));
        lines.push(format!("  bandwidth_kbps: {}", self.bandwidth_kbps));
        lines
    }
}

/// The rule a push-based policy becomes, or why it cannot become one.
fn rule_of<'a>(
    p: &ReplicationPolicy,
    drafts: &'a [RegistryDraft],
    registries: &[RegistryOutcome],
) -> Result<RuleDraft<'a>, NotImported> {
    if !HarborRegistry::is_local(&p.src_registry) {
        let from = p.src_registry.as_ref().and_then(|r| r.name.clone()).unwrap_or_default();
        return Err(NotImported::PullBased(from));
    }
    if HarborRegistry::is_local(&p.dest_registry) {
        return Err(NotImported::NoDestination);
    }
    let dest_id = p.dest_registry.as_ref().and_then(|r| r.id).unwrap_or(0);
    let Some(destination) = drafts.iter().find(|d| d.harbor_id == dest_id) else {
        let why = registries
            .iter()
            .find(|r| r.id == dest_id)
            .and_then(|r| r.notes.first().cloned())
            .unwrap_or_else(|| "Harbor did not list it".into());
        return Err(NotImported::DestinationLeftOut { id: dest_id, why });
    };
    if p.name.as_deref().unwrap_or_default().is_empty() {
        return Err(NotImported::Unnamed);
    }
    let filters = filter_lines(p.filters.as_deref().unwrap_or_default())?;
    let flatten = p.dest_namespace_replace_count.unwrap_or(-1);
    if !(-1..=3).contains(&flatten) {
        return Err(NotImported::Flatten(flatten));
    }
    let max = relay_domain::task::MAX_BANDWIDTH_KBPS;
    let bandwidth_kbps = match p.speed.unwrap_or(-1) {
        s if s <= 0 => -1,
        s if s as u64 > max => return Err(NotImported::Speed { speed: s, max }),
        s => s,
    };
    Ok(RuleDraft {
        destination,
        filters,
        namespace: p.dest_namespace.clone().unwrap_or_default(),
        flatten,
        override_existing: p.override_existing.unwrap_or(true),
        deletion: p.replicate_deletion.or(p.deletion).unwrap_or(false),
        bandwidth_kbps,
    })
}

/// How the policy's trigger carries over: whether the rule is written
/// enabled, and the reconcile schedule a scheduled one asks for; `notes`
/// says why.
fn trigger_notes(p: &ReplicationPolicy, trigger: &str, notes: &mut Vec<String>) -> (bool, Option<String>) {
    let enabled = p.enabled.unwrap_or(true);
    match trigger {
        "event_based" => (enabled, None),
        "scheduled" => {
            let cron = p.trigger.as_ref().and_then(|t| t.trigger_settings.as_ref()).and_then(|s| s.cron.clone());
            let shown = cron.clone().unwrap_or_default();
            match cron.as_deref().map(eventbridge_cron) {
                Some(Ok(c)) => {
                    notes.push(format!(
                        "Harbor ran it on the schedule {shown:?}: the relay replicates each push at once, and the reconcile function sweeps on ReconcileSchedule ({c}) for what a push missed"
                    ));
                    (enabled, Some(c))
                }
                Some(Err(why)) => {
                    notes.push(format!(
                        "Harbor ran it on the schedule {shown:?}, which EventBridge cannot express ({why}): the relay replicates each push, choose a ReconcileSchedule for the sweep"
                    ));
                    (enabled, None)
                }
                None => {
                    notes.push("scheduled without a cron: the relay replicates each push; reconcile sweeps on ReconcileSchedule".into());
                    (enabled, None)
                }
            }
        }
        _ => {
            if enabled {
                notes.push(
                    "Harbor ran it by hand: written disabled, since an enabled rule replicates every push; enable it to replicate on push, or run `relay replicate` with a configuration where it is enabled"
                        .into(),
                );
            }
            (false, None)
        }
    }
}

/// The relay's `filters` lines for Harbor's filters, or why they cannot be
/// written: an unknown filter type, a value of the wrong shape, or two
/// filters of one type (the relay holds one of each).
fn filter_lines(filters: &[Filter]) -> Result<Vec<String>, NotImported> {
    let mut lines = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for f in filters {
        let kind = f.kind.clone().unwrap_or_default();
        if !seen.insert(kind.clone()) {
            return Err(NotImported::TwoFilters(kind));
        }
        let decoration = match f.decoration.as_deref().unwrap_or("") {
            "" | "matches" => "matches",
            "excludes" => "excludes",
            other => return Err(NotImported::Decoration { kind, decoration: other.to_owned() }),
        };
        let wrong = |wanted| NotImported::FilterValue { kind: kind.clone(), value: f.value.to_string(), wanted };
        let text = || f.value.as_str().map(str::to_owned).ok_or_else(|| wrong("a string"));
        match kind.as_str() {
            "name" => {
                let v = text()?;
                if !v.is_empty() {
                    lines.push(format!("name: {}", q(&v)));
                }
            }
            "tag" => lines.push(format!("tag: {{ pattern: {}, decoration: {decoration} }}", q(&text()?))),
            "resource" => match text()?.as_str() {
                "" => {}
                v @ ("image" | "artifact") => lines.push(format!("resource: {v}")),
                other => return Err(NotImported::Resource(other.to_owned())),
            },
            "label" => {
                let values = f
                    .value
                    .as_array()
                    .and_then(|a| a.iter().map(|v| v.as_str().map(q)).collect::<Option<Vec<_>>>())
                    .ok_or_else(|| wrong("a list of label names"))?;
                if !values.is_empty() {
                    lines.push(format!("label: {{ values: [{}], decoration: {decoration} }}", values.join(", ")));
                }
            }
            other => return Err(NotImported::FilterType(other.to_owned())),
        }
    }
    Ok(lines)
}

/// ECR's account and region from Harbor's endpoint URL: the registry host
/// (`<account>.dkr.ecr.<region>.amazonaws.com`) says both; the API host
/// (`api.ecr.<region>.amazonaws.com`) the region only.
fn ecr_account_region(url: &Url, account: Option<&str>) -> Option<(String, String)> {
    let host = url.host_str()?;
    let parts: Vec<&str> = host.split('.').collect();
    match parts[..] {
        [acct, "dkr", ecr, region, "amazonaws", "com"] if ecr.starts_with("ecr") => {
            Some((acct.to_owned(), region.to_owned()))
        }
        ["api", ecr, region, "amazonaws", "com"] if ecr.starts_with("ecr") => {
            let acct = account.filter(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()))?;
            Some((acct.to_owned(), region.to_owned()))
        }
        _ => None,
    }
}

/// The relay's name for a Harbor endpoint: its Harbor name, made unique
/// and never `source` (the relay's name for the source).
fn registry_name(harbor_name: &str, id: i64, taken: &[RegistryDraft]) -> String {
    let base = if harbor_name.trim().is_empty() { format!("registry-{id}") } else { harbor_name.trim().to_owned() };
    let base = if base == "source" { format!("source-{id}") } else { base };
    if taken.iter().any(|d| d.name == base) {
        format!("{base}-{id}")
    } else {
        base
    }
}

/// A name usable in a Secrets Manager secret name.
fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c.to_ascii_lowercase() } else { '-' })
        .collect();
    s.trim_matches('-').to_owned()
}

/// A YAML scalar: JSON's double-quoted string is one, with every escape
/// YAML reads the same way.
fn q(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn harbor() -> ImportOptions {
        ImportOptions::new("https://harbor.example.com".parse().unwrap())
    }

    fn registries(json: serde_json::Value) -> Vec<HarborRegistry> {
        serde_json::from_value(json).unwrap()
    }

    fn policies(json: serde_json::Value) -> Vec<ReplicationPolicy> {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_filter_the_relay_cannot_hold_keeps_the_policy_out() {
        let regs = registries(
            serde_json::json!([{ "id": 1, "name": "c1", "type": "docker-registry", "url": "https://c1.example.com" }]),
        );
        for (filters, why) in [
            (
                serde_json::json!([{ "type": "name", "value": "a/**" }, { "type": "name", "value": "b/**" }]),
                "two \"name\" filters",
            ),
            (serde_json::json!([{ "type": "tag", "value": ["x"] }]), "instead of a string"),
            (serde_json::json!([{ "type": "label", "value": "prod" }]), "list of label names"),
            (serde_json::json!([{ "type": "resource", "value": "chart" }]), "resource filter \"chart\""),
            (serde_json::json!([{ "type": "size", "value": "10" }]), "filter type \"size\""),
            (
                serde_json::json!([{ "type": "tag", "value": "v*", "decoration": "sometimes" }]),
                "decoration \"sometimes\"",
            ),
        ] {
            let p = policies(
                serde_json::json!([{ "id": 9, "name": "p", "dest_registry": { "id": 1 }, "trigger": { "type": "event_based" }, "filters": filters }]),
            );
            let out = import(&regs, &p, &harbor());
            assert_eq!(out.policies[0].rule, None, "{filters}");
            assert!(out.policies[0].notes[0].contains(why), "{:?} lacks {why}", out.policies[0].notes);
            assert!(!out.configuration.contains("- name: \"p\""), "{}", out.configuration);
            relay_domain::config::Config::parse(&out.configuration).unwrap();
        }
    }
    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/harbor/api");

    fn fixture(version: &str, name: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(format!("{FIXTURES}/{version}/{name}.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Every key of `value` (a `model` of Harbor's swagger at `version`)
    /// and of the models inside it is one the swagger names.
    fn keys_are_the_swaggers(models: &serde_json::Value, model: &str, value: &serde_json::Value) {
        let Some(object) = value.as_object() else { return };
        let known: Vec<&str> = models[model].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
        for (key, inner) in object {
            assert!(known.contains(&key.as_str()), "{model} has no property {key:?} (swagger: {known:?})");
            let nested = match (model, key.as_str()) {
                ("Registry", "credential") => "RegistryCredential",
                ("ReplicationPolicy", "src_registry" | "dest_registry") => "Registry",
                ("ReplicationPolicy", "trigger") => "ReplicationTrigger",
                ("ReplicationTrigger", "trigger_settings") => "ReplicationTriggerSettings",
                ("ReplicationPolicy", "filters") => {
                    inner
                        .as_array()
                        .unwrap()
                        .iter()
                        .for_each(|f| keys_are_the_swaggers(models, "ReplicationFilter", f));
                    continue;
                }
                _ => continue,
            };
            keys_are_the_swaggers(models, nested, inner);
        }
    }

    #[test]
    fn every_harbor_version_s_policies_import_as_harbor_would_replicate() {
        let swagger: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURES}/swagger-models.json")).unwrap()).unwrap();
        for version in ["2.8", "2.15"] {
            let (regs, pols) = (fixture(version, "registries"), fixture(version, "replication-policies"));
            let models = &swagger["models"][version];
            regs.as_array().unwrap().iter().for_each(|r| keys_are_the_swaggers(models, "Registry", r));
            pols.as_array().unwrap().iter().for_each(|p| keys_are_the_swaggers(models, "ReplicationPolicy", p));

            let out = import(&registries(regs), &policies(pols), &harbor());
            let config = relay_domain::config::Config::parse(&out.configuration)
                .unwrap_or_else(|e| panic!("Harbor {version}: {e}\n{}", out.configuration));
            let rule =
                |name: &str| config.rules.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no rule {name}"));
            let imported: Vec<_> = out.policies.iter().filter_map(|p| p.rule.clone()).collect();
            assert_eq!(imported, ["to-cluster1", "prod-to-dr", "nightly-ecr", "by-hand"], "Harbor {version}");

            // Filters, as Harbor's: the name glob and the tag filter.
            let r = rule("to-cluster1");
            assert!(r.enabled && r.override_existing && !r.deletion);
            assert_eq!(r.destination.registry, "cluster1");
            let tag = |t: &str| t.parse::<crate::repository::Tag>().unwrap();
            assert!(r.matches(&"library/nginx".parse().unwrap(), Some(&tag("v1")), ""), "{r:?}");
            assert!(!r.matches(&"library/nginx".parse().unwrap(), Some(&tag("latest")), ""), "{r:?}");
            assert!(!r.matches(&"other/nginx".parse().unwrap(), Some(&tag("v1")), ""), "{r:?}");
            // Labels excluded, resource, namespace flattened all the way, deletion, no override, speed.
            let r = rule("prod-to-dr");
            assert!(r.deletion && !r.override_existing, "{r:?}");
            assert_eq!(r.bandwidth_kbps, Some(2048));
            assert_eq!(r.destination.flatten, crate::rules::Flatten::All);
            assert_eq!(r.destination.namespace.as_deref(), Some("mirror"));
            assert!(out.configuration.contains(r#"label: { values: ["wip", "broken"], decoration: excludes }"#));
            assert!(out.configuration.contains("resource: image"));
            // A scheduled policy keeps its sweep as the reconcile schedule.
            assert_eq!(rule("nightly-ecr").destination.flatten, crate::rules::Flatten::Levels(0));
            assert_eq!(out.reconcile_schedule.as_deref(), Some("cron(30 2 ? * 2-6 *)"));
            // A manual one is written, disabled.
            assert!(!rule("by-hand").enabled);

            // Endpoints: each supported kind, secrets to create, the rest reported.
            let c1 = config.registry("cluster1").unwrap();
            assert_eq!(c1.url.as_str(), "https://cluster1.example.com/");
            let dr = config.registry("dr-harbor").unwrap();
            assert!(dr.insecure && dr.kind.name() == "harbor", "{dr:?}");
            assert_eq!(config.registry("prod-ecr").unwrap().kind.name(), "ecr");
            assert!(config.registry("ecr-by-api").is_none() && config.registry("docker hub").is_none());
            let secrets: Vec<_> = out.secrets.iter().map(|s| s.secret_id.as_str()).collect();
            assert!(
                secrets.contains(&"harbor-relay/cluster1") && secrets.contains(&"harbor-relay/dr-harbor"),
                "{secrets:?}"
            );
            assert!(!secrets.iter().any(|s| s.contains("ecr")), "ECR takes the IAM role, not a secret: {secrets:?}");
            assert!(out.secrets.iter().any(|s| s.value.contains("robot$dr")), "the access key is the user name");
            let why = |id: i64| out.policies.iter().find(|p| p.id == id).unwrap().notes[0].clone();
            assert!(why(5).contains("pull-based"), "{}", why(5));
            assert!(why(6).contains("docker-hub"), "{}", why(6));
            assert!(why(7).contains("--ecr-account"), "{}", why(7));
            for id in [5, 6, 7] {
                assert!(out.configuration.contains(&format!("#   policy {id} ")), "policy {id} unreported");
            }
            let notes = out.policies.iter().find(|p| p.id == 2).unwrap().notes.join(" ");
            assert!(notes.contains("copy_by_chunk"), "{notes}");
            if version == "2.15" {
                assert!(out.policies[0].notes.iter().any(|n| n.contains("single_active_replication")));
                assert!(secrets.contains(&"harbor-relay/cluster1-ca"), "{secrets:?}");
                assert!(matches!(c1.ca, Some(relay_domain::registry_kind::CaSource::Secret(_))));
            }
        }
    }

    #[test]
    fn an_ecr_endpoint_named_by_its_api_host_takes_the_account_given() {
        let regs = registries(
            serde_json::json!([{ "id": 4, "name": "e", "type": "aws-ecr", "url": "https://api.ecr.us-east-1.amazonaws.com" }]),
        );
        let pols = policies(
            serde_json::json!([{ "id": 1, "name": "p", "dest_registry": { "id": 4 }, "trigger": { "type": "event_based" } }]),
        );
        let options = ImportOptions { ecr_account: Some("210987654321".into()), ..harbor() };
        let out = import(&regs, &pols, &options);
        let config = relay_domain::config::Config::parse(&out.configuration).unwrap();
        assert_eq!(config.registry("e").unwrap().url.host_str(), Some("210987654321.dkr.ecr.us-east-1.amazonaws.com"));
        assert_eq!(config.rules.len(), 1);
    }
}
