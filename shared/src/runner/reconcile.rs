//! The reconcile function: a scheduled sweep that enqueues copy (and
//! delete) tasks for whatever the destinations lack, so no missed webhook
//! leaves a target stale. Under Lambda (an EventBridge schedule) or one
//! pass and exit (cron, or `relay reconcile`). The cursor of an unfinished
//! pass is kept in the SSM parameter `RELAY_RECONCILE_CURSOR_PARAMETER`
//! when set. Under Lambda the configuration's version is checked at every
//! run (runs are hours apart) and a changed one is read again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lambda_runtime::{service_fn, LambdaEvent};

use super::{Edges, Function, RunError};
use crate::bootstrap;
use crate::config::Config;
use crate::harbor_webhooks::{self, Change, PayloadFormat, Tally, WebhookPolicy, DEFAULT_POLICY_NAME};
use crate::metrics::{self, Unit};
use crate::queue::TaskQueue;
use crate::reconcile::{CursorStore, Reconciler};
use crate::registry::retry::RetryPolicy;
use crate::reload::{Built, Reloading};
use crate::settings::SettingsError;
use crate::worker::Worker;

/// A Lambda invocation's timeout when the template does not say.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

pub struct ReconcileFunction {
    edges: Edges,
    queue_url: String,
    /// Harbor's webhook policies are kept pointed here when set.
    endpoint: Option<url::Url>,
}

/// What one configuration builds.
pub struct App {
    config: Arc<Config>,
    worker: Worker,
    queue: TaskQueue,
    cursor: Option<CursorStore>,
    /// Harbor's webhook policies to keep pointed at the relay before each
    /// pass (`RELAY_HARBOR_WEBHOOKS_ENDPOINT`, opt-in).
    webhooks: Option<WebhookPolicy>,
}

impl Function for ReconcileFunction {
    type App = App;

    /// Checked at every run: a run every few hours costs one version read,
    /// and a new rule or registry is used at once.
    const CHECK_EVERY: Duration = Duration::ZERO;

    fn new(edges: Edges) -> Result<Self, SettingsError> {
        let queue_url = edges.settings.queue_url()?.to_owned();
        let endpoint = edges.settings.harbor_webhooks_endpoint()?.cloned();
        Ok(ReconcileFunction { edges, queue_url, endpoint })
    }

    /// The clients, the cursor store and Harbor's webhook policy, from one
    /// configuration.
    fn build(self: &Arc<Self>, config: Arc<Config>) -> Built<App> {
        let function = self.clone();
        Box::pin(async move {
            let Edges { settings, aws, secrets } = &function.edges;
            let worker = bootstrap::worker_with(&config, secrets, RetryPolicy::default(), aws).await?;
            let cursor =
                settings.reconcile_cursor_parameter.clone().map(|parameter| CursorStore { ssm: aws.ssm(), parameter });
            let webhooks = match &function.endpoint {
                Some(endpoint) => {
                    if worker.harbor.is_none() {
                        return Err("RELAY_HARBOR_WEBHOOKS_ENDPOINT is set, but the source is not read through Harbor's API (source.harbor_api is false, or the source did not answer as a Harbor)".into());
                    }
                    let auth = secrets.webhook_auth(&config.webhook).await?;
                    Some(WebhookPolicy::wanted(DEFAULT_POLICY_NAME, endpoint, auth.newest(), PayloadFormat::Default))
                }
                None => None,
            };
            let queue = TaskQueue::new(aws.sqs.clone(), function.queue_url.clone());
            Ok(App { config, worker, queue, cursor, webhooks })
        })
    }

    async fn lambda(self: Arc<Self>, apps: Arc<Reloading<App>>) -> Result<(), RunError> {
        let timeout = self.edges.settings.function_timeout_or(DEFAULT_TIMEOUT);
        lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
            let apps = apps.clone();
            async move {
                let app = apps.current().await;
                let remaining = bootstrap::invocation_deadline(event.context.deadline, timeout)
                    .saturating_duration_since(Instant::now());
                // Keep a fifth of the time (at least 10 s) to enqueue and save the cursor.
                let budget = remaining.saturating_sub((remaining / 5).max(Duration::from_secs(10)));
                pass(&app, Some(Instant::now() + budget)).await.map_err(|e| lambda_runtime::Error::from(e.to_string()))
            }
        }))
        .await
        .map_err(RunError::Lambda)
    }

    async fn standalone(self: Arc<Self>, app: Arc<App>) -> Result<(), RunError> {
        let summary = pass(&app, None).await?;
        println!("{summary}");
        Ok(())
    }
}

/// One pass: what the destinations lack is enqueued, and the cursor saved.
async fn pass(app: &App, stop_at: Option<Instant>) -> Result<serde_json::Value, RunError> {
    let failed = |e: &dyn std::error::Error| RunError::Failed(chain(e));
    let started = Instant::now();
    let webhooks = keep_webhooks(app).await;
    let after = match &app.cursor {
        Some(c) => c.load().await.map_err(|e| failed(&e))?,
        None => None,
    };
    let reconciler = Reconciler::new(&app.config, &app.worker, 1000);
    let pass = reconciler.pass(after.as_deref(), stop_at).await.map_err(|e| failed(&e))?;
    app.queue.send_now(&pass.tasks).await.map_err(|e| failed(&e))?;
    pass.emit_metrics(pass.tasks.len(), started.elapsed());
    if let Some(c) = &app.cursor {
        c.save(pass.cursor.as_deref()).await.map_err(|e| failed(&e))?;
    }
    let summary = serde_json::json!({
        "repositories": pass.repositories,
        "tags_checked": pass.tags_checked,
        "in_sync": pass.in_sync,
        "tasks_enqueued": pass.tasks.len(),
        "resumed_after": after,
        "cursor": pass.cursor,
        "webhook_policies": webhooks,
    });
    tracing::info!(repositories = pass.repositories, tags_checked = pass.tags_checked, in_sync = pass.in_sync, tasks_enqueued = pass.tasks.len(), cursor = ?pass.cursor, "reconcile pass done");
    Ok(summary)
}

/// An error and its sources, `: `-joined, as the log and the Runtime API
/// show it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        // A transparent wrapper repeats its source's text.
        if !text.ends_with(&inner_text) {
            text = format!("{text}: {inner_text}");
        }
        source = inner.source();
    }
    text
}

/// Keeps Harbor's webhook policies in place when asked to; a failure is
/// logged and counted, and the pass goes on (it repairs what a missing
/// webhook did not send).
async fn keep_webhooks(app: &App) -> serde_json::Value {
    let (Some(wanted), Some(api)) = (&app.webhooks, &app.worker.harbor) else { return serde_json::Value::Null };
    match harbor_webhooks::keep(api, &app.config.rules, wanted, false).await {
        Ok(kept) => {
            for (project, change) in kept.iter().filter(|(_, c)| *c != Change::Unchanged) {
                tracing::info!(project = %project.name, change = change.as_str(), "Harbor webhook policy kept in place");
            }
            let tally = Tally::of(&kept);
            metrics::emit(
                &[("Function", "reconcile")],
                &[
                    ("WebhookPoliciesCreated", tally.created as f64, Unit::Count),
                    ("WebhookPoliciesUpdated", tally.updated as f64, Unit::Count),
                ],
            );
            serde_json::to_value(tally).unwrap_or_default()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot keep Harbor's webhook policies in place");
            metrics::emit(&[("Function", "reconcile")], &[("WebhookPolicyFailures", 1.0, Unit::Count)]);
            serde_json::json!({ "error": e.to_string() })
        }
    }
}
