//! Harbor webhook payloads (Default and CloudEvents formats) parsed into one
//! typed [`HarborEvent`]. See DESIGN §3 and `../shared/harbor-payloads/`.

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::repository::{RepositoryPath, Tag};

/// The two payload formats a Harbor webhook policy can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json`
    Default,
    /// `application/cloudevents+json` (structured mode, Harbor ≥ 2.8)
    CloudEvents,
}

/// What happened, reduced to what replication cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    Push,
    Delete,
    /// Pulls, scans, quota, replication… acknowledged and ignored.
    Other(String),
}

/// One Harbor event.
#[derive(Debug, Clone)]
pub struct HarborEvent {
    pub kind: EventKind,
    pub format: Format,
    /// Unix seconds of `occur_at` / `time`.
    pub occurred_at: i64,
    pub operator: String,
    /// Stable across Harbor's retries of the same delivery.
    pub dedup_key: String,
    /// Present for push and delete events.
    pub artifact: Option<Artifact>,
}

/// The artifact an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub repository: RepositoryPath,
    pub digest: Digest,
    /// `None` for a push by digest (Harbor then puts the digest in `tag`).
    pub tag: Option<Tag>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    /// The body is not JSON or lacks a field; the reason names the field.
    #[error("{0}")]
    Malformed(String),
    /// The artifact lives on another host than the configured source.
    #[error("resource_url host {found:?} is not the configured source {expected:?}")]
    ForeignHost { found: String, expected: String },
}

#[derive(Deserialize)]
struct DefaultPayload {
    #[serde(rename = "type")]
    kind: String,
    occur_at: i64,
    #[serde(default)]
    operator: String,
    event_data: Option<EventData>,
}

#[derive(Deserialize)]
struct CloudEventPayload {
    specversion: String,
    id: String,
    #[serde(rename = "type")]
    kind: String,
    time: Option<String>,
    #[serde(default)]
    operator: String,
    data: Option<EventData>,
}

#[derive(Deserialize)]
struct EventData {
    resources: Option<Vec<Resource>>,
    repository: Option<RepositoryData>,
}

#[derive(Deserialize)]
struct Resource {
    digest: String,
    #[serde(default)]
    tag: String,
    resource_url: String,
}

#[derive(Deserialize)]
struct RepositoryData {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    repo_full_name: Option<String>,
}

fn malformed(reason: impl Into<String>) -> EventError {
    EventError::Malformed(reason.into())
}

/// Strips serde's " at line 1 column 42" and keeps the field it names.
fn json_reason(e: serde_json::Error) -> EventError {
    malformed(format!("invalid payload: {e}"))
}

impl HarborEvent {
    /// Parses a body in `format`. `source_host` is `host[:port]` of the
    /// configured Harbor: an artifact elsewhere is refused (no SSRF).
    pub fn parse(format: Format, body: &[u8], source_host: &str) -> Result<HarborEvent, EventError> {
        match format {
            Format::Default => {
                let p: DefaultPayload = serde_json::from_slice(body).map_err(json_reason)?;
                let kind = match p.kind.as_str() {
                    "PUSH_ARTIFACT" => EventKind::Push,
                    "DELETE_ARTIFACT" => EventKind::Delete,
                    other if !other.is_empty() => EventKind::Other(other.to_owned()),
                    _ => return Err(malformed("field `type` is empty")),
                };
                let artifact = artifact_of(&kind, p.event_data, "event_data", source_host)?;
                let dedup_key = default_dedup_key(&p.kind, p.occur_at, &p.operator, artifact.as_ref());
                Ok(HarborEvent { kind, format, occurred_at: p.occur_at, operator: p.operator, dedup_key, artifact })
            }
            Format::CloudEvents => {
                let p: CloudEventPayload = serde_json::from_slice(body).map_err(json_reason)?;
                if p.specversion != "1.0" {
                    return Err(malformed("field `specversion` must be \"1.0\""));
                }
                if p.id.is_empty() {
                    return Err(malformed("field `id` is empty"));
                }
                let kind = match p.kind.as_str() {
                    "harbor.artifact.pushed" => EventKind::Push,
                    "harbor.artifact.deleted" => EventKind::Delete,
                    other if !other.is_empty() => EventKind::Other(other.to_owned()),
                    _ => return Err(malformed("field `type` is empty")),
                };
                let occurred_at = match p.time.as_deref() {
                    None => 0,
                    Some(t) => rfc3339_seconds(t).ok_or_else(|| malformed("field `time` is not an RFC 3339 time"))?,
                };
                let artifact = artifact_of(&kind, p.data, "data", source_host)?;
                Ok(HarborEvent {
                    kind,
                    format,
                    occurred_at,
                    operator: p.operator,
                    dedup_key: format!("ce-{}", short_hash(p.id.as_bytes())),
                    artifact,
                })
            }
        }
    }
}

fn artifact_of(
    kind: &EventKind,
    data: Option<EventData>,
    data_field: &str,
    source_host: &str,
) -> Result<Option<Artifact>, EventError> {
    if matches!(kind, EventKind::Other(_)) {
        return Ok(None);
    }
    let data = data.ok_or_else(|| malformed(format!("field `{data_field}` is missing")))?;
    let resources = data.resources.ok_or_else(|| malformed(format!("field `{data_field}.resources` is missing")))?;
    let [resource] = <[Resource; 1]>::try_from(resources).map_err(|r| {
        malformed(format!("field `{data_field}.resources` must hold exactly one resource, found {}", r.len()))
    })?;
    let repo_data = data.repository.ok_or_else(|| malformed(format!("field `{data_field}.repository` is missing")))?;

    let digest: Digest =
        resource.digest.parse().map_err(|e| malformed(format!("field `{data_field}.resources[0].digest`: {e}")))?;

    // resource_url is `host/repo:tag` or `host/repo@digest`, without scheme.
    let url = resource.resource_url.as_str();
    let (host, path) = url
        .split_once('/')
        .ok_or_else(|| malformed(format!("field `{data_field}.resources[0].resource_url` has no repository")))?;
    if !host.eq_ignore_ascii_case(source_host) {
        return Err(EventError::ForeignHost {
            found: host.chars().take(100).collect(),
            expected: source_host.to_owned(),
        });
    }
    let repo_part = match path.split_once('@') {
        Some((repo, d)) => {
            if d != digest.to_string() {
                return Err(malformed(format!(
                    "field `{data_field}.resources[0].resource_url` names another digest than `digest`"
                )));
            }
            repo
        }
        None => match path.rsplit_once(':') {
            // `host/repo:tag`: the tag must be the resource's own tag.
            Some((repo, tag)) if tag == resource.tag => repo,
            Some(_) => {
                return Err(malformed(format!(
                    "field `{data_field}.resources[0].resource_url` names another tag than `tag`"
                )))
            }
            None => path,
        },
    };
    let repository: RepositoryPath =
        repo_part.parse().map_err(|e| malformed(format!("field `{data_field}.resources[0].resource_url`: {e}")))?;

    // Harbor splits the path at the first '/': namespace = project.
    let full =
        repo_data.repo_full_name.clone().unwrap_or_else(|| format!("{}/{}", repo_data.namespace, repo_data.name));
    if full != repository.as_str() || (!repo_data.namespace.is_empty() && repo_data.namespace != repository.project()) {
        return Err(malformed(format!(
            "field `{data_field}.repository` ({full}) does not match resource_url ({repository})"
        )));
    }

    let tag = if resource.tag.is_empty() || resource.tag == digest.to_string() {
        None
    } else {
        Some(resource.tag.parse().map_err(|e| malformed(format!("field `{data_field}.resources[0].tag`: {e}")))?)
    };
    Ok(Some(Artifact { repository, digest, tag }))
}

/// Default-format events carry no id. Harbor's retries resend the same
/// bytes, so a hash of the identifying fields is stable across them.
fn default_dedup_key(kind: &str, occur_at: i64, operator: &str, artifact: Option<&Artifact>) -> String {
    let mut s = format!("{kind}\n{occur_at}\n{operator}\n");
    if let Some(a) = artifact {
        s.push_str(&format!("{}\n{}\n{}", a.repository, a.digest, a.tag.as_ref().map(Tag::as_str).unwrap_or("")));
    }
    format!("df-{}", short_hash(s.as_bytes()))
}

fn short_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..12])
}

/// CloudEvents `time` is RFC 3339; returns unix seconds.
fn rfc3339_seconds(t: &str) -> Option<i64> {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok().map(|t| t.unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/../../tests/fixtures/harbor/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn default_push_by_digest() {
        let e = HarborEvent::parse(Format::Default, &fixture("push_artifact.default.json"), "localhost").unwrap();
        assert_eq!(e.kind, EventKind::Push);
        assert_eq!(e.occurred_at, 1680501893);
        assert_eq!(e.operator, "harbor-jobservice");
        let a = e.artifact.unwrap();
        assert_eq!(a.repository.as_str(), "harbor/alpine");
        assert_eq!(a.tag, None);
        assert_eq!(a.digest.to_string(), "sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4");
        assert!(e.dedup_key.starts_with("df-"));
    }

    #[test]
    fn cloudevents_push_and_same_artifact() {
        let ce =
            HarborEvent::parse(Format::CloudEvents, &fixture("push_artifact.cloudevents.json"), "localhost").unwrap();
        let df = HarborEvent::parse(Format::Default, &fixture("push_artifact.default.json"), "localhost").unwrap();
        assert_eq!(ce.kind, EventKind::Push);
        assert_eq!(ce.artifact, df.artifact);
        assert_eq!(ce.occurred_at, 1680501886);
        assert!(ce.dedup_key.starts_with("ce-"));
    }

    #[test]
    fn tagged_delete_and_ignored_pull() {
        let e = HarborEvent::parse(Format::Default, &fixture("delete_artifact.default.json"), "localhost").unwrap();
        assert_eq!(e.kind, EventKind::Delete);
        assert_eq!(e.artifact.unwrap().tag.unwrap().as_str(), "3.8");
        let p = HarborEvent::parse(Format::Default, &fixture("pull_artifact.default.wire.json"), "x").unwrap();
        assert!(matches!(p.kind, EventKind::Other(ref t) if t == "PULL_ARTIFACT"));
        assert!(p.artifact.is_none());
    }

    #[test]
    fn dedup_key_is_stable_and_distinguishes() {
        let body = fixture("push_artifact.default.json");
        let a = HarborEvent::parse(Format::Default, &body, "localhost").unwrap();
        let b = HarborEvent::parse(Format::Default, &body, "localhost").unwrap();
        assert_eq!(a.dedup_key, b.dedup_key);
        let other = String::from_utf8(body).unwrap().replace("1680501893,\n  \"operator", "1680501894,\n  \"operator");
        let c = HarborEvent::parse(Format::Default, other.as_bytes(), "localhost").unwrap();
        assert_ne!(a.dedup_key, c.dedup_key);
    }

    #[test]
    fn bad_input_names_the_problem() {
        let push = String::from_utf8(fixture("push_artifact.default.json")).unwrap();
        let cases = [
            ("{}".to_owned(), "type"),
            ("not json".to_owned(), "invalid payload"),
            (push.replace("\"resources\"", "\"resourcez\""), "event_data.resources"),
            (push.replace("sha256:954b", "sha256:XX4b"), "digest"),
            (push.replace("\"harbor/alpine\"", "\"harbor/other\""), "event_data.repository"),
            (push.replace("localhost/harbor/alpine@", "localhost/harbor/../alpine@"), "resource_url"),
        ];
        for (body, needle) in cases {
            let err = HarborEvent::parse(Format::Default, body.as_bytes(), "localhost").unwrap_err();
            assert!(err.to_string().contains(needle), "{err} should mention {needle}");
        }
    }

    #[test]
    fn foreign_host_is_refused() {
        let body = fixture("push_artifact.default.json");
        for host in ["harbor.example", "local", "localhost:80"] {
            let err = HarborEvent::parse(Format::Default, &body, host).unwrap_err();
            assert!(matches!(err, EventError::ForeignHost { .. }), "{host}");
        }
    }
}
