//! The reconcile function: a scheduled sweep that enqueues copy (and delete)
//! tasks for whatever the destinations lack, so no missed webhook leaves a
//! target stale. Under Lambda (EventBridge schedule) when
//! `AWS_LAMBDA_RUNTIME_API` is set; otherwise one pass and exit (cron, or
//! `relay reconcile`). The cursor of an unfinished pass is kept in the SSM
//! parameter `RELAY_RECONCILE_CURSOR_PARAMETER` when set. Under Lambda the
//! configuration's version is checked at every run (runs are hours apart)
//! and a changed one is read again, as the worker and webhook do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use lambda_runtime::{service_fn, LambdaEvent};
use relay::harbor_webhooks::{self, Change, PayloadFormat, Tally, WebhookPolicy, DEFAULT_POLICY_NAME};
use relay::metrics::{self, Unit};
use relay::queue::{Outgoing, TaskQueue};
use relay::reconcile::{CursorStore, Reconciler};
use relay::registry::retry::RetryPolicy;
use relay::reload::{Built, Reloading};
use relay::secrets::SecretSource;
use relay::worker::Worker;
use relay::{bootstrap, Config};

struct App {
    config: Arc<Config>,
    worker: Worker,
    queue: TaskQueue,
    cursor: Option<CursorStore>,
    /// Harbor's webhook policies to keep pointed at the relay before each
    /// pass (`RELAY_HARBOR_WEBHOOKS_ENDPOINT`, opt-in).
    webhooks: Option<WebhookPolicy>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    relay::telemetry::init_from_env();
    if bootstrap::under_lambda() {
        let reloading = Arc::new(
            bootstrap::initialised(async {
                let (location, build) = setup().await?;
                // Checked at every run: a run every few hours costs one
                // version read, and a new rule or registry is used at once.
                anyhow::Ok(Reloading::start(&location, Duration::ZERO, build).await?)
            })
            .await?,
        );
        let timeout = bootstrap::function_timeout(Duration::from_secs(300));
        lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
            let reloading = reloading.clone();
            async move {
                let app = reloading.current().await;
                let remaining = bootstrap::invocation_deadline(event.context.deadline, timeout)
                    .saturating_duration_since(Instant::now());
                // Keep a fifth of the time (at least 10 s) to enqueue and save the cursor.
                let budget = remaining.saturating_sub((remaining / 5).max(Duration::from_secs(10)));
                run(&app, Some(Instant::now() + budget))
                    .await
                    .map_err(|e| lambda_runtime::Error::from(format!("{e:#}")))
            }
        }))
        .await
        .map_err(|e| anyhow::anyhow!(e))
    } else {
        let (location, build) = setup().await?;
        let config = Arc::new(bootstrap::load_config(&location).await?);
        let app = build(config).await.map_err(|e| anyhow::anyhow!(e))?;
        let summary = run(&app, None).await?;
        println!("{summary}");
        Ok(())
    }
}

/// The configuration's location, and how the clients, the cursor store and
/// Harbor's webhook policy are built from a configuration, from the
/// environment.
async fn setup() -> anyhow::Result<(String, impl Fn(Arc<Config>) -> Built<App> + Send + Sync + 'static)> {
    let config_location = std::env::var("RELAY_CONFIG")
        .context("RELAY_CONFIG must name the configuration (a path, or ssm:<parameter>)")?;
    let queue_url = std::env::var("RELAY_QUEUE_URL").context("RELAY_QUEUE_URL must be the copy queue's URL")?;
    let (sqs, secrets_manager) = bootstrap::aws_clients().await;
    let secrets = SecretSource::from_process(Some(secrets_manager));
    let cursor_parameter = std::env::var("RELAY_RECONCILE_CURSOR_PARAMETER").ok().filter(|p| !p.is_empty());
    let ssm = match cursor_parameter {
        Some(_) => Some(aws_sdk_ssm::Client::new(&bootstrap::aws_config().await)),
        None => None,
    };
    let endpoint = match std::env::var("RELAY_HARBOR_WEBHOOKS_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => {
            Some(endpoint.parse::<url::Url>().context("RELAY_HARBOR_WEBHOOKS_ENDPOINT must be the webhook's URL")?)
        }
        _ => None,
    };
    let build = move |config: Arc<Config>| {
        let (sqs, secrets, queue_url, ssm, cursor_parameter, endpoint) =
            (sqs.clone(), secrets.clone(), queue_url.clone(), ssm.clone(), cursor_parameter.clone(), endpoint.clone());
        Box::pin(async move {
            let worker = bootstrap::worker(&config, &secrets, RetryPolicy::default()).await?;
            let cursor = match (ssm, cursor_parameter) {
                (Some(ssm), Some(parameter)) => Some(CursorStore { ssm, parameter }),
                _ => None,
            };
            let webhooks = match endpoint {
                Some(endpoint) => {
                    if worker.harbor.is_none() {
                        return Err("RELAY_HARBOR_WEBHOOKS_ENDPOINT is set, but the source is not read through Harbor's API (source.harbor_api is false, or the source did not answer as a Harbor)".into());
                    }
                    let auth = secrets.webhook_auth(&config.webhook).await?;
                    Some(WebhookPolicy::wanted(DEFAULT_POLICY_NAME, &endpoint, auth.newest(), PayloadFormat::Default))
                }
                None => None,
            };
            Ok(App { config, worker, queue: TaskQueue::new(sqs, queue_url), cursor, webhooks })
        }) as Built<App>
    };
    Ok((config_location, build))
}

async fn run(app: &App, stop_at: Option<Instant>) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let webhooks = keep_webhooks(app).await;
    let after = match &app.cursor {
        Some(c) => c.load().await?,
        None => None,
    };
    let reconciler = Reconciler::new(&app.config, &app.worker, 1000);
    let pass = reconciler.pass(after.as_deref(), stop_at).await?;
    let outgoing: Vec<_> = pass.tasks.iter().map(|task| Outgoing { task, delay: Duration::ZERO }).collect();
    app.queue.send(&outgoing).await?;
    pass.emit_metrics(outgoing.len(), started.elapsed());
    if let Some(c) = &app.cursor {
        c.save(pass.cursor.as_deref()).await?;
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
