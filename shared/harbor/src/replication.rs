//! Harbor's own replication set-up as its API gives it
//! (`GET /api/v2.0/registries`, `GET /api/v2.0/replication/policies`): the
//! swagger models `Registry`, `ReplicationPolicy`, `ReplicationTrigger` and
//! `ReplicationFilter`. Every field is optional here: Harbor 2.8 to 2.15
//! differ (`single_active_replication` arrived in 2.14; `deletion` is the
//! deprecated twin of `replicate_deletion`; nulls stand for absent values),
//! and an import must read what an older or newer Harbor answers rather
//! than refuse it.

use serde::Deserialize;

/// A registry endpoint (Administration > Registries).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct HarborRegistry {
    /// 0 (or absent) is Harbor itself, the "Local" registry of a policy.
    #[serde(default)]
    pub id: Option<i64>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    /// `docker-registry`, `harbor`, `aws-ecr`, `docker-hub`, …
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub insecure: Option<bool>,
    #[serde(default)]
    pub credential: Option<HarborCredential>,
    /// A private CA's PEM (Harbor 2.15 and later).
    #[serde(default)]
    pub ca_certificate: Option<String>,
}

/// What Harbor tells of a stored credential: its type and access key
/// (a user name for `basic`), never the secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct HarborCredential {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub access_key: Option<String>,
}

/// A replication policy (Administration > Replications).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ReplicationPolicy {
    #[serde(default)]
    pub id: Option<i64>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Set to another registry: a pull-based policy.
    #[serde(default)]
    pub src_registry: Option<HarborRegistry>,
    /// Set to another registry: a push-based policy.
    #[serde(default)]
    pub dest_registry: Option<HarborRegistry>,
    #[serde(default)]
    pub dest_namespace: Option<String>,
    /// −1 (the default, "legacy"): the namespace replaces every leading
    /// component; 0 none; 1..=3 that many.
    #[serde(default)]
    pub dest_namespace_replace_count: Option<i64>,
    #[serde(default)]
    pub trigger: Option<Trigger>,
    #[serde(default)]
    pub filters: Option<Vec<Filter>>,
    #[serde(default)]
    pub replicate_deletion: Option<bool>,
    /// Deprecated by `replicate_deletion`; older clients still set it.
    #[serde(default)]
    pub deletion: Option<bool>,
    #[serde(default, rename = "override")]
    pub override_existing: Option<bool>,
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Bandwidth per task, Kbps; −1 or 0: unlimited.
    #[serde(default)]
    pub speed: Option<i64>,
    #[serde(default)]
    pub copy_by_chunk: Option<bool>,
    #[serde(default)]
    pub single_active_replication: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Trigger {
    /// `manual`, `scheduled` or `event_based`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub trigger_settings: Option<TriggerSettings>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TriggerSettings {
    /// Harbor's six-field cron: seconds first.
    #[serde(default)]
    pub cron: Option<String>,
}

/// One filter: `name`, `tag` and `resource` hold a string, `label` a list
/// of label names; `decoration` (`matches` / `excludes`) only on `tag` and
/// `label`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Filter {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub value: serde_json::Value,
    #[serde(default)]
    pub decoration: Option<String>,
}

impl HarborRegistry {
    /// Harbor itself: the side of a policy with no registry, or the
    /// "Local" registry (id 0).
    pub fn is_local(registry: &Option<HarborRegistry>) -> bool {
        registry.as_ref().is_none_or(|r| r.id.unwrap_or(0) == 0)
    }
}
