//! The reconcile function: a scheduled sweep that enqueues copy (and delete)
//! tasks for whatever the destinations lack, so no missed webhook leaves a
//! target stale. Under Lambda (EventBridge schedule) when
//! `AWS_LAMBDA_RUNTIME_API` is set; otherwise one pass and exit (cron, or
//! `relay reconcile`). The cursor of an unfinished pass is kept in the SSM
//! parameter `RELAY_RECONCILE_CURSOR_PARAMETER` when set.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use lambda_runtime::{service_fn, LambdaEvent};
use relay::harbor_webhooks::{self, Change, PayloadFormat, Tally, WebhookPolicy, DEFAULT_POLICY_NAME};
use relay::metrics::{self, Unit};
use relay::queue::{Outgoing, TaskQueue};
use relay::reconcile::{CursorStore, Reconciler};
use relay::registry::retry::RetryPolicy;
use relay::secrets::SecretSource;
use relay::worker::Worker;
use relay::{bootstrap, Config};

struct App {
    config: Config,
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
        let app = Arc::new(bootstrap::initialised(setup()).await?);
        let timeout = bootstrap::function_timeout(Duration::from_secs(300));
        lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
            let app = app.clone();
            async move {
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
        let summary = run(&setup().await?, None).await?;
        println!("{summary}");
        Ok(())
    }
}

/// The configuration, clients and cursor store, from the environment.
async fn setup() -> anyhow::Result<App> {
    let config_location = std::env::var("RELAY_CONFIG")
        .context("RELAY_CONFIG must name the configuration (a path, or ssm:<parameter>)")?;
    let config = bootstrap::load_config(&config_location).await?;
    let queue_url = std::env::var("RELAY_QUEUE_URL").context("RELAY_QUEUE_URL must be the copy queue's URL")?;
    let (sqs, secrets_manager) = bootstrap::aws_clients().await;
    let secrets = SecretSource::from_process(Some(secrets_manager));
    let worker = bootstrap::worker(&config, &secrets, RetryPolicy::default()).await?;
    let cursor = match std::env::var("RELAY_RECONCILE_CURSOR_PARAMETER") {
        Ok(parameter) if !parameter.is_empty() => {
            Some(CursorStore { ssm: aws_sdk_ssm::Client::new(&bootstrap::aws_config().await), parameter })
        }
        _ => None,
    };
    let webhooks = match std::env::var("RELAY_HARBOR_WEBHOOKS_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => {
            let endpoint: url::Url =
                endpoint.parse().context("RELAY_HARBOR_WEBHOOKS_ENDPOINT must be the webhook's URL")?;
            anyhow::ensure!(
                worker.harbor.is_some(),
                "RELAY_HARBOR_WEBHOOKS_ENDPOINT is set, but the source is not read through Harbor's API (source.harbor_api is false, or the source did not answer as a Harbor)"
            );
            let auth = secrets.webhook_auth(&config.webhook).await?;
            Some(WebhookPolicy::wanted(DEFAULT_POLICY_NAME, &endpoint, auth.newest(), PayloadFormat::Default))
        }
        _ => None,
    };
    Ok(App { config, worker, queue: TaskQueue::new(sqs, queue_url), cursor, webhooks })
}

async fn run(app: &App, stop_at: Option<Instant>) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let webhooks = keep_webhooks(app).await;
    let after = match &app.cursor {
        Some(c) => c.load().await.map_err(anyhow::Error::msg)?,
        None => None,
    };
    let reconciler = Reconciler::new(&app.config, &app.worker, 1000);
    let pass = reconciler.pass(after.as_deref(), stop_at).await?;
    let outgoing: Vec<_> = pass.tasks.iter().map(|task| Outgoing { task, delay: Duration::ZERO }).collect();
    app.queue.send(&outgoing).await?;
    pass.emit_metrics(outgoing.len(), started.elapsed());
    if let Some(c) = &app.cursor {
        c.save(pass.cursor.as_deref()).await.map_err(anyhow::Error::msg)?;
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
