//! The worker function: copy tasks from SQS → registries. Under Lambda
//! (SQS event source, partial batch responses) when `AWS_LAMBDA_RUNTIME_API`
//! is set, otherwise a long-poll loop on `RELAY_QUEUE_URL`. Same handler.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::{service_fn, LambdaEvent};
use relay::dead_letter::DeadLetters;
use relay::parking::ParkingLot;
use relay::poller::PollOptions;
use relay::registry::retry::RetryPolicy;
use relay::reload::{Reloading, CHECK_EVERY};
use relay::settings::{Environment, Settings};
use relay::settle::{Settler, Timing};
use relay::worker::{Message, Worker};
use relay::{bootstrap, queue::TaskQueue, secrets::SecretSource};

fn main() -> anyhow::Result<()> {
    relay::bootstrap::runtime()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let env = Environment::of_process();
    relay::telemetry::init(env.log_filter().as_deref());
    if let Some(api) = env.lambda_runtime_api() {
        // Under Lambda the configuration is read again when its parameter
        // changes: a new registry or rule needs no redeploy.
        let (settings, reloading) = bootstrap::initialised(Some(api), async {
            let (settings, aws, build) = setup(&env).await?;
            let reloading = Arc::new(Reloading::start(&aws.sdk, &settings.config, CHECK_EVERY, build).await?);
            anyhow::Ok((settings, reloading))
        })
        .await?;
        let timeout = settings.function_timeout_or(Duration::from_secs(300));
        lambda_runtime::run(service_fn(move |event| batch(reloading.clone(), timeout, event)))
            .await
            .map_err(|e| anyhow::anyhow!(e))
    } else {
        let (settings, aws, build) = setup(&env).await?;
        let queue_url = settings.queue_url()?.to_owned();
        let pipeline = Reloading::start(&aws.sdk, &settings.config, Duration::MAX, build).await?.current().await;
        tracing::info!(queue = %queue_url, "worker polling");
        let queue = TaskQueue::new(aws.sqs.clone(), queue_url);
        // A deadline per batch, as under Lambda (optional).
        let options = PollOptions { run_for: settings.worker_run_for, ..Default::default() };
        relay::poller::poll(&queue, &pipeline.worker, Some(&pipeline.settler), &options, bootstrap::shutdown_signal())
            .await;
        Ok(())
    }
}

/// The settings, the AWS clients, and how the worker and its settler are
/// built from a configuration.
async fn setup(
    env: &Environment,
) -> anyhow::Result<(
    Settings,
    bootstrap::Aws,
    impl Fn(Arc<relay::Config>) -> relay::reload::Built<Pipeline> + Send + Sync + 'static,
)> {
    let settings = Settings::parse(env)?;
    let aws = bootstrap::Aws::new(bootstrap::aws_config().await, &settings);
    let secrets = SecretSource::new(Some(aws.secrets_manager.clone()), env.lookup());
    let queue_url = settings.queue_url.clone();
    // Failures on their last attempt are dead-lettered with their error
    // (the queue's redrive policy says when; RELAY_DLQ_URL spares a lookup).
    let dlq_url = settings.dlq_url.clone();
    // Tasks of an unavailable registry wait here until a probe finds it
    // answering again (the template's parking queue).
    let parking_url = settings.parking_queue_url.clone();
    // The worker and how its failures are settled (backoff, dead letter at
    // once, parked or continued in a fresh message), from one configuration.
    let shared = aws.clone();
    let build = move |config: Arc<relay::Config>| {
        let (aws, secrets, queue_url, dlq_url, parking_url) =
            (shared.clone(), secrets.clone(), queue_url.clone(), dlq_url.clone(), parking_url.clone());
        Box::pin(async move {
            let sqs = aws.sqs.clone();
            let mut worker = bootstrap::worker_with(&config, &secrets, RetryPolicy::default(), &aws).await?;
            let dead_letters = match &queue_url {
                Some(q) => DeadLetters::discover(&sqs, q, dlq_url.as_deref()).await,
                None => None,
            };
            let parking = match (&parking_url, &queue_url) {
                (Some(p), Some(q)) => Some(Arc::new(ParkingLot::new(
                    sqs.clone(),
                    p.clone(),
                    q.clone(),
                    dead_letters.clone(),
                    &config.worker,
                ))),
                _ => None,
            };
            worker.parking = parking.clone();
            let worker = Arc::new(worker);
            let timing = Timing::from_settings(&config.worker);
            let settler = Arc::new(Settler::new(sqs, queue_url, dead_letters, timing).with_parking(parking));
            Ok(Pipeline { worker, settler })
        }) as relay::reload::Built<Pipeline>
    };
    Ok((settings, aws, build))
}

/// What one configuration builds: the worker and its settler.
struct Pipeline {
    worker: Arc<Worker>,
    settler: Arc<Settler>,
}

/// One SQS batch; failed messages are reported so only they come back.
async fn batch(
    reloading: Arc<Reloading<Pipeline>>,
    timeout: Duration,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, lambda_runtime::Error> {
    let deadline = Some(bootstrap::invocation_deadline(event.context.deadline, timeout));
    let messages = event
        .payload
        .records
        .into_iter()
        .map(|r| {
            let message = Message {
                receive_count: r.attributes.get("ApproximateReceiveCount").and_then(|c| c.parse().ok()).unwrap_or(0),
                receipt: r.receipt_handle.clone(),
                id: r.message_id.clone().unwrap_or_default(),
                body: r.body.clone().unwrap_or_default(),
                ..Default::default()
            };
            message.with_attributes(|name| r.message_attributes.get(name)?.string_value.as_deref())
        })
        .collect();
    let messages: Vec<Message> = messages;
    // A task for a registry the current worker does not know, or from a
    // rule it does not have: the configuration is asked for at once (a
    // registry or rule just added, which the webhook may have read first).
    let pipeline = reloading
        .current_unless(|p| !p.worker.knows_registries_of(&messages) || !p.worker.rules_produce_all_of(&messages))
        .await;
    let failures = pipeline.worker.handle_batch(messages, deadline).await;
    let failed = pipeline.settler.settle(failures).await;
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failed
        .into_iter()
        .map(|id| {
            let mut f = BatchItemFailure::default();
            f.item_identifier = id;
            f
        })
        .collect();
    Ok(response)
}
