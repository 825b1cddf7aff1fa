//! Tasks on the copy queue: small, versioned JSON documents that say what to
//! do and never carry a credential or a URL (the worker resolves registry
//! names through its own configuration, so a task cannot point it anywhere
//! else).

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::repository::{RepositoryPath, Tag};

/// The task schema version this build writes. It also reads version 1
/// (docs/deploy.md, "Upgrading": workers first, then the writers).
///
/// v2 added `options.refresh_referrers`; a v1 task meant it when its
/// event's operator was reconcile's, which is how v1 is still read.
pub const TASK_VERSION: u32 = 2;

/// The oldest task version this build still reads.
pub const OLDEST_TASK_VERSION: u32 = 1;

/// Harbor's "speed" tops out far below this (100 Gbit/s); anything above
/// is a typo or a hostile task, refused before it can reach the throttle.
pub const MAX_BANDWIDTH_KBPS: u64 = 100_000_000;

/// The operator of the events a reconcile pass synthesizes, carried by its
/// tasks (rules can exclude it, logs show it). Its copy tasks ask the
/// worker to refresh referrers (`options.refresh_referrers`): a pass plans
/// a task for a tag in sync only when an accessory is missing at the
/// destination. A version 1 task said so by this operator alone.
pub const RECONCILE_OPERATOR: &str = "relay-reconcile";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub version: u32,
    /// Unique per task; the correlation id in logs from webhook to worker.
    pub id: String,
    pub action: Action,
    pub source: SourceArtifact,
    pub destination: DestinationArtifact,
    /// Names of the rules that produced this task (several when merged).
    pub rules: Vec<String>,
    pub options: CopyOptions,
    pub event: EventRef,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Copy,
    Delete,
}

/// The artifact at the source (always the configured Harbor).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceArtifact {
    pub repository: RepositoryPath,
    pub digest: Digest,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

/// Where it goes: a registry *name* from the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationArtifact {
    pub registry: String,
    pub repository: RepositoryPath,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyOptions {
    /// Overwrite destination tags that point at another digest.
    #[serde(rename = "override")]
    pub override_existing: bool,
    /// Kilobits per second, 1..=[`MAX_BANDWIDTH_KBPS`]; absent = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_kbps: Option<u64>,
    /// List the artifact's referrers again even when the artifact is
    /// already at the destination (reconcile saw an accessory missing
    /// there). A webhook's duplicate event leaves it off and stays HEAD-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refresh_referrers: bool,
}

/// The event a task came from, for dedup, latency and tracing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRef {
    pub key: String,
    /// Unix seconds when Harbor saw the push.
    pub occurred_at: i64,
    pub operator: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("task is not valid JSON: {0}")]
    Json(String),
    #[error("task has no numeric `version`")]
    MissingVersion,
    #[error("task version {0} is not supported (this worker reads versions {OLDEST_TASK_VERSION} to {TASK_VERSION})")]
    UnknownVersion(u64),
    #[error("task does not match its schema version: {0}")]
    Schema(String),
    #[error("bundle of tasks is not valid: {0}")]
    Bundle(String),
    #[error("task option `bandwidth_kbps` is {0}: it must be 1..={MAX_BANDWIDTH_KBPS} or absent (unlimited)")]
    Bandwidth(u64),
}

impl Task {
    /// Decodes a queue message body. Unknown versions are refused, not
    /// guessed: they go to the DLQ where an operator sees them.
    pub fn decode(body: &str) -> Result<Task, TaskError> {
        let value: serde_json::Value = serde_json::from_str(body).map_err(|e| TaskError::Json(e.to_string()))?;
        let version = value.get("version").and_then(serde_json::Value::as_u64).ok_or(TaskError::MissingVersion)?;
        if !(u64::from(OLDEST_TASK_VERSION)..=u64::from(TASK_VERSION)).contains(&version) {
            return Err(TaskError::UnknownVersion(version));
        }
        if version == 1 && value.get("options").and_then(|o| o.get("refresh_referrers")).is_some() {
            return Err(TaskError::Schema("`options.refresh_referrers` is a version 2 field".into()));
        }
        let mut task: Task = serde_json::from_value(value).map_err(|e| TaskError::Schema(e.to_string()))?;
        if version == 1 {
            task.options.refresh_referrers = task.event.operator == RECONCILE_OPERATOR;
        }
        match task.options.bandwidth_kbps {
            Some(k) if k == 0 || k > MAX_BANDWIDTH_KBPS => Err(TaskError::Bandwidth(k)),
            _ => Ok(task),
        }
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a task always serializes")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Task {
        Task {
            version: TASK_VERSION,
            id: "t-1".into(),
            action: Action::Copy,
            source: SourceArtifact {
                repository: "library/alpine".parse().unwrap(),
                digest: Digest::sha256_of(b"x"),
                tags: vec!["latest".parse().unwrap()],
            },
            destination: DestinationArtifact {
                registry: "r1".into(),
                repository: "alpine".parse().unwrap(),
                tags: vec!["latest".parse().unwrap()],
            },
            rules: vec!["rule".into()],
            options: CopyOptions { override_existing: true, bandwidth_kbps: None, refresh_referrers: false },
            event: EventRef { key: "df-1".into(), occurred_at: 1, operator: "admin".into() },
        }
    }

    #[test]
    fn round_trips() {
        let t = sample();
        assert_eq!(Task::decode(&t.encode()).unwrap(), t);
    }

    #[test]
    fn refuses_unknown_versions_and_bad_fields() {
        let mut v: serde_json::Value = serde_json::from_str(&sample().encode()).unwrap();
        v["version"] = 3.into();
        assert!(matches!(Task::decode(&v.to_string()), Err(TaskError::UnknownVersion(3))));
        v["version"] = 0.into();
        assert!(matches!(Task::decode(&v.to_string()), Err(TaskError::UnknownVersion(0))));
        v["version"] = 2.into();
        v["source"]["repository"] = "../etc".into();
        assert!(matches!(Task::decode(&v.to_string()), Err(TaskError::Schema(_))));
        assert!(matches!(Task::decode("{}"), Err(TaskError::MissingVersion)));
        assert!(matches!(Task::decode("nope"), Err(TaskError::Json(_))));
    }

    #[test]
    fn refuses_bandwidths_the_throttle_cannot_honour() {
        for (kbps, ok) in
            [(0, false), (1, true), (MAX_BANDWIDTH_KBPS, true), (MAX_BANDWIDTH_KBPS + 1, false), (u64::MAX, false)]
        {
            let mut t = sample();
            t.options.bandwidth_kbps = Some(kbps);
            let got = Task::decode(&t.encode());
            assert_eq!(got.is_ok(), ok, "{kbps}: {got:?}");
        }
        let mut v: serde_json::Value = serde_json::from_str(&sample().encode()).unwrap();
        v["options"]["bandwidth_kbps"] = (-5).into();
        assert!(matches!(Task::decode(&v.to_string()), Err(TaskError::Schema(_))));
    }

    #[test]
    fn version_1_is_read_and_its_reconcile_operator_means_refresh_referrers() {
        let mut v: serde_json::Value = serde_json::from_str(&sample().encode()).unwrap();
        v["version"] = 1.into();
        assert!(!Task::decode(&v.to_string()).unwrap().options.refresh_referrers);
        v["event"]["operator"] = RECONCILE_OPERATOR.into();
        assert!(Task::decode(&v.to_string()).unwrap().options.refresh_referrers);
        v["options"]["refresh_referrers"] = true.into();
        assert!(matches!(Task::decode(&v.to_string()), Err(TaskError::Schema(_))), "not a v1 field");
        v["version"] = 2.into();
        v["event"]["operator"] = "admin".into();
        let t = Task::decode(&v.to_string()).unwrap();
        assert!(t.options.refresh_referrers, "v2 says it in its own field");
        assert!(t.encode().contains("\"refresh_referrers\":true"));
    }
}
