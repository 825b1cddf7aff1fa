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
use crate::harbor_api::HarborApi;
use crate::metrics::{self, Unit};
use crate::plan::{needs_labels, plan, Plan};
use crate::queue::{Outgoing, TaskQueue};
use crate::secrets::{AuthValues, WebhookAuth};
use crate::task::Task;

/// Largest body accepted; Harbor's events are a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A request, reduced to what the webhook reads.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub method: Method,
    pub path: String,
    pub content_type: Option<String>,
    pub authorization: Option<String>,
    pub body: Bytes,
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
            Rejection::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::MediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Rejection::BadRequest(_) => StatusCode::BAD_REQUEST,
            Rejection::ForeignSource(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

/// The webhook with everything it needs, built once per cold start.
pub struct Webhook {
    config: Arc<Config>,
    auth: WebhookAuth,
    queue: TaskQueue,
    /// Delay for pushes by digest, so that the index task of a multi-arch
    /// push usually runs first and the per-child tasks find nothing to do.
    untagged_delay: Duration,
    /// Harbor's REST API, for label filters (`source.harbor_api`).
    harbor: Option<HarborApi>,
}

impl Webhook {
    pub fn new(
        config: Arc<Config>,
        auth: WebhookAuth,
        queue: TaskQueue,
        untagged_delay: Duration,
        harbor: Option<HarborApi>,
    ) -> Self {
        Webhook { config, auth, queue, untagged_delay, harbor }
    }

    /// Handles one request end to end, with one EMF line per request.
    pub async fn handle(&self, req: Incoming) -> Reply {
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
        if req.path == "/healthz" && req.method == Method::GET {
            return Reply { status: StatusCode::OK, body: json!({"status": "ok"}) };
        }
        let auth = self.auth.current().await;
        let event = match self.accept(&req, &auth) {
            Ok(e) => e,
            Err(r) => {
                tracing::warn!(status = r.status().as_u16(), reason = %r, "webhook request refused");
                return Reply { status: r.status(), body: json!({"error": r.to_string()}) };
            }
        };
        let labels = match self.labels(&event).await {
            Ok(l) => l,
            Err(reason) => {
                tracing::error!(event_key = %event.dedup_key, %reason, "cannot evaluate label filters; answering 503 so Harbor retries");
                return Reply {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    body: json!({"error": "cannot read the artifact's labels from Harbor, retry later", "event_key": event.dedup_key}),
                };
            }
        };
        let plan = self.plan(&event, labels.as_deref());
        self.enqueue(event, plan.tasks).await
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
    pub fn plan(&self, event: &HarborEvent, labels: Option<&[String]>) -> Plan {
        let plan = plan(&self.config, event, labels, &mut || uuid::Uuid::new_v4().to_string());
        for (rule, why) in &plan.skipped {
            tracing::warn!(event_key = %event.dedup_key, rule = %rule, reason = %why, "rule matched but cannot map the repository");
        }
        plan
    }

    /// The artifact's labels, read from Harbor only when a label filter
    /// could decide the outcome.
    async fn labels(&self, event: &HarborEvent) -> Result<Option<Vec<String>>, String> {
        let (Some(artifact), true) = (&event.artifact, needs_labels(&self.config, event)) else {
            return Ok(None);
        };
        let api = self.harbor.as_ref().ok_or("source.harbor_api is off")?;
        match api.artifact(&artifact.repository, &artifact.digest).await {
            Ok(info) => Ok(Some(info.labels)),
            // A deleted artifact is gone from the API: it has no labels.
            Err(crate::harbor_api::HarborApiError::NotFound(_)) => Ok(Some(Vec::new())),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn enqueue(&self, event: HarborEvent, tasks: Vec<Task>) -> Reply {
        let artifact = event.artifact.as_ref();
        if tasks.is_empty() {
            let reason = match &event.kind {
                EventKind::Other(t) => format!("event type {t} is not replicated"),
                _ => "no enabled rule matches".to_owned(),
            };
            tracing::info!(event_key = %event.dedup_key, repository = ?artifact.map(|a| a.repository.as_str()), %reason, "nothing to enqueue");
            return Reply {
                status: StatusCode::OK,
                body: json!({"event_key": event.dedup_key, "tasks": [], "reason": reason}),
            };
        }
        let delay = match artifact {
            Some(a) if a.tag.is_none() => self.untagged_delay,
            _ => Duration::ZERO,
        };
        let outgoing: Vec<_> = tasks.iter().map(|task| Outgoing { task, delay }).collect();
        if let Err(e) = self.queue.send(&outgoing).await {
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
                digest = %t.source.digest, action = ?t.action, delay_s = delay.as_secs(), "task enqueued"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_ignore_parameters_and_case() {
        assert_eq!(media_type(Some("Application/JSON; charset=utf-8")), "application/json");
        assert_eq!(media_type(None), "");
    }
}
