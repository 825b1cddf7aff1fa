//! The webhook's request handling, independent of how the request arrived
//! (Lambda Function URL / API Gateway, or the standalone HTTP server): both
//! edges convert to [`Incoming`] and back from [`Reply`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;

use crate::config::Config;
use crate::event::{EventError, EventKind, Format, HarborEvent};
use crate::harbor_api::{HarborApi, HarborApiError};
use crate::metrics::{self, Unit};
use crate::plan::{needs_facts, plan, Plan, RuleVerdict};
use crate::queue::{Outgoing, TaskQueue};
use crate::rules::ArtifactFacts;
use crate::secrets::{AuthValues, WebhookAuth};
use crate::task::Task;

/// Largest body accepted; Harbor's events are a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A request, reduced to what the webhook reads.
#[derive(Clone)]
pub struct Incoming {
    pub method: Method,
    pub path: String,
    pub content_type: Option<String>,
    pub authorization: Option<String>,
    pub body: Bytes,
}

/// Never shows the `Authorization` value (a request may be logged or end
/// in a panic message): only whether there was one.
impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("content_type", &self.content_type)
            .field("authorization", &self.authorization.as_ref().map(|_| "<redacted>"))
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// The answer: a status and a small JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

/// Why a request was refused, mapped one-to-one to a status code.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("method not allowed")]
    Method,
    #[error("not found")]
    NotFound,
    #[error("unauthorized")]
    Unauthorized,
    /// The accepted values could not be confirmed for too long: refusing is
    /// safer than accepting a value that may have been revoked.
    #[error("cannot confirm the accepted Authorization values, retry later")]
    AuthUnavailable,
    #[error("body larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("unsupported content type {0:?}: use application/json or application/cloudevents+json")]
    MediaType(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    ForeignSource(String),
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::Method => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::NotFound => StatusCode::NOT_FOUND,
            Rejection::Unauthorized => StatusCode::UNAUTHORIZED,
            Rejection::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::MediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Rejection::BadRequest(_) => StatusCode::BAD_REQUEST,
            Rejection::ForeignSource(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

/// The webhook's timings, set by the environment of either edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookOptions {
    /// Delay for pushes by digest, so that the index task of a multi-arch
    /// push usually runs first and the per-child tasks find nothing to do.
    pub untagged_delay: Duration,
    /// Time from a request's arrival by which SQS must have taken its tasks,
    /// or the answer is 503. Harbor gives up on a delivery after 3 s and
    /// retries it; an answer that comes later is lost, so an unreachable
    /// queue must be reported within that time rather than retried for
    /// longer. Counted from arrival so that a slow label lookup (Harbor's
    /// API) and the enqueue together stay inside it.
    pub enqueue_timeout: Duration,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        WebhookOptions { untagged_delay: Duration::from_secs(30), enqueue_timeout: Duration::from_secs(2) }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{name} must be {expected}, not {value:?}")]
pub struct OptionError {
    pub name: &'static str,
    pub expected: &'static str,
    pub value: String,
}

impl WebhookOptions {
    /// `RELAY_UNTAGGED_DELAY_SECONDS` (0–900, the SQS limit) and
    /// `RELAY_ENQUEUE_TIMEOUT_MS` (100–30000) as `get` gives them (the
    /// function's [`Settings`](crate::settings::Settings)); unset means the
    /// default.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, OptionError> {
        let number = |name: &'static str, range: std::ops::RangeInclusive<u64>, expected: &'static str| {
            get(name)
                .map(|value| {
                    value.trim().parse::<u64>().ok().filter(|n| range.contains(n)).ok_or(OptionError {
                        name,
                        expected,
                        value,
                    })
                })
                .transpose()
        };
        let defaults = WebhookOptions::default();
        Ok(WebhookOptions {
            untagged_delay: number("RELAY_UNTAGGED_DELAY_SECONDS", 0..=900, "whole seconds from 0 to 900")?
                .map_or(defaults.untagged_delay, Duration::from_secs),
            enqueue_timeout: number("RELAY_ENQUEUE_TIMEOUT_MS", 100..=30_000, "milliseconds from 100 to 30000")?
                .map_or(defaults.enqueue_timeout, Duration::from_millis),
        })
    }
}

/// The webhook with everything it needs, built once per cold start.
pub struct Webhook {
    config: Arc<Config>,
    auth: WebhookAuth,
    queue: TaskQueue,
    options: WebhookOptions,
    /// Harbor's REST API, for label filters (`source.harbor_api`).
    harbor: Option<HarborApi>,
}

impl Webhook {
    pub fn new(
        config: Arc<Config>,
        auth: WebhookAuth,
        queue: TaskQueue,
        options: WebhookOptions,
        harbor: Option<HarborApi>,
    ) -> Self {
        Webhook { config, auth, queue, options, harbor }
    }

    /// Handles one request end to end, with one EMF line per request.
    pub async fn handle(&self, req: Incoming) -> Reply {
        // Its `Debug` redacts the Authorization header (the logs test reads
        // this line at debug level).
        tracing::debug!(request = ?req, "webhook request");
        let reply = self.respond(req).await;
        let tasks = reply.body["tasks"].as_array().map_or(0, Vec::len);
        let class = match reply.status.as_u16() {
            200..=299 => "2xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        metrics::emit(
            &[("Function", "webhook"), ("Status", class)],
            &[
                ("Requests", 1.0, Unit::Count),
                ("TasksEnqueued", if class == "2xx" { tasks as f64 } else { 0.0 }, Unit::Count),
            ],
        );
        reply
    }

    async fn respond(&self, req: Incoming) -> Reply {
        let deadline = tokio::time::Instant::now() + self.options.enqueue_timeout;
        if req.path == "/healthz" && req.method == Method::GET {
            return Reply { status: StatusCode::OK, body: json!({"status": "ok"}) };
        }
        let event = match self.auth.current() {
            Ok(auth) => self.accept(&req, &auth),
            Err(e) => {
                tracing::error!(error = %e, "Secrets Manager unreachable for too long; refusing every request");
                Err(Rejection::AuthUnavailable)
            }
        };
        let event = match event {
            Ok(e) => e,
            Err(r) => {
                tracing::warn!(status = r.status().as_u16(), reason = %r, "webhook request refused");
                return Reply { status: r.status(), body: json!({"error": r.to_string()}) };
            }
        };
        let facts = match self.facts(&event).await {
            Ok(f) => f,
            Err(reason) => {
                tracing::error!(event_key = %event.dedup_key, %reason, "cannot evaluate label or resource filters; answering 503 so Harbor retries");
                return Reply {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    body: json!({"error": "cannot read the artifact's labels and type from Harbor, retry later", "event_key": event.dedup_key}),
                };
            }
        };
        let plan = self.plan(&event, facts.as_ref());
        if plan.tasks.is_empty() {
            return unanswered(&event, &plan.verdicts);
        }
        self.enqueue(event, plan.tasks, deadline).await
    }

    /// Authentication, limits and parsing: everything before the rules.
    /// Pure CPU; benchmarked with [`Webhook::plan`].
    pub fn accept(&self, req: &Incoming, auth: &AuthValues) -> Result<HarborEvent, Rejection> {
        if req.path != "/" {
            return Err(Rejection::NotFound);
        }
        if req.method != Method::POST {
            return Err(Rejection::Method);
        }
        if !auth.accepts(req.authorization.as_deref()) {
            return Err(Rejection::Unauthorized);
        }
        if req.body.len() > MAX_BODY_BYTES {
            return Err(Rejection::TooLarge);
        }
        let format = match media_type(req.content_type.as_deref()).as_str() {
            "application/json" => Format::Default,
            "application/cloudevents+json" => Format::CloudEvents,
            other => return Err(Rejection::MediaType(other.chars().take(100).collect())),
        };
        HarborEvent::parse(format, &req.body, &self.config.source.host).map_err(|e| match e {
            EventError::Malformed(m) => Rejection::BadRequest(m),
            e @ EventError::ForeignHost { .. } => Rejection::ForeignSource(e.to_string()),
        })
    }

    /// The rules applied to an accepted event. Pure CPU.
    pub fn plan(&self, event: &HarborEvent, facts: Option<&ArtifactFacts>) -> Plan {
        let plan = plan(&self.config, event, facts, &mut || uuid::Uuid::new_v4().to_string());
        for (rule, why) in &plan.skipped {
            tracing::warn!(event_key = %event.dedup_key, rule = %rule, reason = %why, "rule matched but cannot map the repository");
        }
        plan
    }

    /// The artifact's labels and type, read from Harbor only when a label
    /// or resource filter could decide the outcome.
    async fn facts(&self, event: &HarborEvent) -> Result<Option<ArtifactFacts>, HarborApiError> {
        let (Some(artifact), true) = (&event.artifact, needs_facts(&self.config, event)) else {
            return Ok(None);
        };
        let api = self.harbor.as_ref().ok_or(HarborApiError::Off)?;
        match api.artifact(&artifact.repository, &artifact.digest).await {
            Ok(info) => Ok(Some(info.facts)),
            // A deleted artifact is gone from the API: no labels, type unknown.
            Err(HarborApiError::NotFound(_)) => Ok(Some(ArtifactFacts::default())),
            Err(e) => Err(e),
        }
    }

    async fn enqueue(&self, event: HarborEvent, tasks: Vec<Task>, deadline: tokio::time::Instant) -> Reply {
        let artifact = event.artifact.as_ref();
        let delay = match artifact {
            Some(a) if a.tag.is_none() => self.options.untagged_delay,
            _ => Duration::ZERO,
        };
        let outgoing: Vec<_> = tasks.iter().map(|task| Outgoing { task, delay }).collect();
        let sent = match tokio::time::timeout_at(deadline, self.queue.send(&outgoing)).await {
            Ok(sent) => sent.map_err(|e| e.to_string()),
            // Entries already accepted stay queued; Harbor's retry enqueues
            // them again and the idempotent worker absorbs the duplicates.
            Err(_) => Err(format!(
                "the queue did not take the tasks within {:?} of the request",
                self.options.enqueue_timeout
            )),
        };
        if let Err(e) = sent {
            tracing::error!(event_key = %event.dedup_key, error = %e, "enqueue failed; answering 503 so Harbor retries");
            return Reply {
                status: StatusCode::SERVICE_UNAVAILABLE,
                body: json!({"error": "queue unavailable, retry later", "event_key": event.dedup_key}),
            };
        }
        for t in &tasks {
            tracing::info!(
                task_id = %t.id, event_key = %event.dedup_key, rule = %t.rules.join(","),
                source = %format!("{}@{}", t.source.repository, t.source.digest),
                destination = %format!("{}/{}", t.destination.registry, t.destination.repository),
                digest = %t.source.digest, tags = %t.destination.tags.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(","),
                action = ?t.action, delay_s = delay.as_secs(), "task enqueued"
            );
        }
        let listed: Vec<_> = tasks
            .iter()
            .map(|t| {
                json!({
                    "id": t.id,
                    "action": t.action,
                    "registry": t.destination.registry,
                    "repository": t.destination.repository,
                    "tags": t.destination.tags,
                })
            })
            .collect();
        Reply { status: StatusCode::ACCEPTED, body: json!({"event_key": event.dedup_key, "tasks": listed}) }
    }
}

/// `type/subtype` in lowercase, without parameters.
fn media_type(content_type: Option<&str>) -> String {
    content_type.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// The answer to an accepted event that yields no task: why, rule by
/// rule (`rule`, `verdict`, `filter`, `reason`), in the reply Harbor logs,
/// in one log line `relay history --all` reads (with the artifact and its
/// tag, as a task's lines carry them), and in `EventsWithoutTask` by
/// `Reason`, a bounded word: `event_type` (not a push or a delete),
/// `no_rules`, `disabled`, `deletion`, `unmappable` or `filters`.
fn unanswered(event: &HarborEvent, verdicts: &[RuleVerdict]) -> Reply {
    let artifact = event.artifact.as_ref();
    let filters: Vec<&str> = verdicts.iter().filter_map(|v| v.refusal.as_ref()).map(|r| r.filter).collect();
    let (reason, word) = match &event.kind {
        EventKind::Other(t) => (format!("event type {t} is not replicated"), "event_type"),
        _ if verdicts.is_empty() => ("no enabled rule matches".to_owned(), "no_rules"),
        _ if filters.contains(&"destination.flatten") => ("no enabled rule matches".to_owned(), "unmappable"),
        _ if filters.iter().all(|f| *f == "enabled") => ("no enabled rule matches".to_owned(), "disabled"),
        _ if filters.iter().all(|f| *f == "enabled" || *f == "deletion") => {
            ("no enabled rule replicates deletions".to_owned(), "deletion")
        }
        _ => ("no enabled rule matches".to_owned(), "filters"),
    };
    let source = artifact.map(|a| format!("{}@{}", a.repository, a.digest)).unwrap_or_default();
    let tags = artifact.and_then(|a| a.tag.as_ref()).map(|t| t.to_string()).unwrap_or_default();
    let listed = serde_json::to_value(verdicts).unwrap_or_default();
    tracing::info!(
        event_key = %event.dedup_key, %source, %tags, %reason, cause = word, verdicts = %listed,
        "nothing to enqueue"
    );
    metrics::emit(&[("Function", "webhook"), ("Reason", word)], &[("EventsWithoutTask", 1.0, Unit::Count)]);
    Reply {
        status: StatusCode::OK,
        body: json!({"event_key": event.dedup_key, "tasks": [], "reason": reason, "verdicts": listed}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_never_shows_its_authorization_in_debug() {
        let req = Incoming {
            method: Method::POST,
            path: "/".into(),
            content_type: Some("application/json".into()),
            authorization: Some("Bearer do-not-print-me-0123".into()),
            body: Bytes::from_static(b"{}"),
        };
        let shown = format!("{req:?}");
        assert!(!shown.contains("do-not-print-me"), "{shown}");
        assert!(shown.contains("<redacted>") && shown.contains("body_bytes: 2"), "{shown}");
    }

    #[test]
    fn media_types_ignore_parameters_and_case() {
        assert_eq!(media_type(Some("Application/JSON; charset=utf-8")), "application/json");
        assert_eq!(media_type(None), "");
    }

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn options_come_from_the_environment_with_bounds() {
        assert_eq!(WebhookOptions::from_lookup(env(&[])), Ok(WebhookOptions::default()));
        let set = WebhookOptions::from_lookup(env(&[
            ("RELAY_UNTAGGED_DELAY_SECONDS", "0"),
            ("RELAY_ENQUEUE_TIMEOUT_MS", "750"),
        ]))
        .unwrap();
        assert_eq!(set.untagged_delay, Duration::ZERO);
        assert_eq!(set.enqueue_timeout, Duration::from_millis(750));
        for (name, bad) in [
            ("RELAY_UNTAGGED_DELAY_SECONDS", "901"),
            ("RELAY_UNTAGGED_DELAY_SECONDS", "30s"),
            ("RELAY_ENQUEUE_TIMEOUT_MS", "5"),
            ("RELAY_ENQUEUE_TIMEOUT_MS", "-1"),
        ] {
            let err = WebhookOptions::from_lookup(env(&[(name, bad)])).unwrap_err();
            assert_eq!((err.name, err.value.as_str()), (name, bad));
            assert!(err.to_string().starts_with(name), "{err}");
        }
    }
}
