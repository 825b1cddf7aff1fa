//! Tasks on the copy queue: small, versioned JSON documents that say what to
//! do and never carry a credential or a URL (the worker resolves registry
//! names through its own configuration, so a task cannot point it anywhere
//! else).

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::repository::{RepositoryPath, Tag};

/// The task schema version this build writes and accepts.
pub const TASK_VERSION: u32 = 1;

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
    /// Kilobits per second; absent = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_kbps: Option<u64>,
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
    #[error("task version {0} is not supported (this worker reads version {TASK_VERSION})")]
    UnknownVersion(u64),
    #[error("task does not match schema version {TASK_VERSION}: {0}")]
    Schema(String),
}

impl Task {
    /// Decodes a queue message body. Unknown versions are refused, not
    /// guessed: they go to the DLQ where an operator sees them.
    pub fn decode(body: &str) -> Result<Task, TaskError> {
        let value: serde_json::Value = serde_json::from_str(body).map_err(|e| TaskError::Json(e.to_string()))?;
        let version = value.get("version").and_then(serde_json::Value::as_u64).ok_or(TaskError::MissingVersion)?;
        if version != u64::from(TASK_VERSION) {
            return Err(TaskError::UnknownVersion(version));
        }
        serde_json::from_value(value).map_err(|e| TaskError::Schema(e.to_string()))
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a task always serializes")
    }
}

#[cfg(test)]
mod tests {
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
            options: CopyOptions { override_existing: true, bandwidth_kbps: None },
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
        v["version"] = 2.into();
        assert!(matches!(Task::decode(&v.to_string()), Err(TaskError::UnknownVersion(2))));
        v["version"] = 1.into();
        v["source"]["repository"] = "../etc".into();
        assert!(matches!(Task::decode(&v.to_string()), Err(TaskError::Schema(_))));
        assert!(matches!(Task::decode("{}"), Err(TaskError::MissingVersion)));
        assert!(matches!(Task::decode("nope"), Err(TaskError::Json(_))));
    }
}
