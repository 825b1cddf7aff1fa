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

use lambda_runtime::{service_fn, LambdaEvent};
use relay::harbor_webhooks::{self, Change, PayloadFormat, Tally, WebhookPolicy, DEFAULT_POLICY_NAME};
use relay::metrics::{self, Unit};
use relay::queue::{Outgoing, TaskQueue};
use relay::reconcile::{CursorStore, Reconciler};
use relay::registry::retry::RetryPolicy;
use relay::reload::{Built, Reloading};
use relay::secrets::SecretSource;
use relay::settings::{Environment, Settings};
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
    let env = Environment::of_process();
    relay::telemetry::init(env.log_filter().as_deref());
    if let Some(api) = env.lambda_runtime_api() {
        let (settings, reloading) = bootstrap::initialised(Some(api), async {
            let (settings, aws, build) = setup(&env).await?;
            // Checked at every run: a run every few hours costs one
            // version read, and a new rule or registry is used at once.
            let reloading = Arc::new(Reloading::start(&aws.sdk, &settings.config, Duration::ZERO, build).await?);
            anyhow::Ok((settings, reloading))
        })
        .await?;
        let timeout = settings.function_timeout_or(Duration::from_secs(300));
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
        let (settings, aws, build) = setup(&env).await?;
        let app = Reloading::start(&aws.sdk, &settings.config, Duration::MAX, build).await?.current().await;
        let summary = run(&app, None).await?;
        println!("{summary}");
        Ok(())
    }
}

/// The settings, the AWS clients, and how the clients, the cursor store
/// and Harbor's webhook policy are built from a configuration.
async fn setup(
    env: &Environment,
) -> anyhow::Result<(Settings, bootstrap::Aws, impl Fn(Arc<Config>) -> Built<App> + Send + Sync + 'static)> {
    let settings = Settings::parse(env)?;
    let queue_url = settings.queue_url()?.to_owned();
    let aws = bootstrap::Aws::new(bootstrap::aws_config().await, &settings);
    let secrets = SecretSource::new(Some(aws.secrets_manager.clone()), env.lookup());
    let cursor_parameter = settings.reconcile_cursor_parameter.clone();
    let ssm = cursor_parameter.as_ref().map(|_| aws.ssm());
    let endpoint = settings.harbor_webhooks_endpoint.clone();
    let shared = aws.clone();
    let build = move |config: Arc<Config>| {
        let (aws, secrets, queue_url, ssm, cursor_parameter, endpoint) = (
            shared.clone(),
            secrets.clone(),
            queue_url.clone(),
            ssm.clone(),
            cursor_parameter.clone(),
            endpoint.clone(),
        );
        Box::pin(async move {
            let worker = bootstrap::worker_with(&config, &secrets, RetryPolicy::default(), &aws).await?;
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
            Ok(App { config, worker, queue: TaskQueue::new(aws.sqs.clone(), queue_url), cursor, webhooks })
        }) as Built<App>
    };
    Ok((settings, aws, build))
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
