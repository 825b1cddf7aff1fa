//! The worker function: copy tasks from SQS → registries. Under Lambda (the
//! SQS event source, partial batch responses) or as a long-poll loop on
//! `RELAY_QUEUE_URL`; the same [`Worker::handle_batch`] and [`Settler`]
//! either way.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::{service_fn, LambdaEvent};

use super::{Edges, Function, RunError};
use crate::bootstrap;
use crate::config::Config;
use crate::dead_letter::DeadLetters;
use crate::parking::ParkingLot;
use crate::poller::PollOptions;
use crate::queue::TaskQueue;
use crate::registry::retry::RetryPolicy;
use crate::reload::{Built, Reloading, CHECK_EVERY};
use crate::settings::SettingsError;
use crate::settle::{Settler, Timing};
use crate::worker::{Message, Worker};

/// A Lambda invocation's timeout when the template does not say.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

pub struct WorkerFunction {
    edges: Edges,
}

/// What one configuration builds: the worker and its settler.
pub struct Pipeline {
    pub worker: Arc<Worker>,
    pub settler: Arc<Settler>,
}

impl Function for WorkerFunction {
    type App = Pipeline;

    /// A new registry or rule needs no redeploy.
    const CHECK_EVERY: Duration = CHECK_EVERY;

    fn new(edges: Edges) -> Result<Self, SettingsError> {
        Ok(WorkerFunction { edges })
    }

    /// The worker and how its failures are settled (backoff, dead letter at
    /// once, parked or continued in a fresh message), from one
    /// configuration.
    fn build(self: &Arc<Self>, config: Arc<Config>) -> Built<Pipeline> {
        let function = self.clone();
        Box::pin(async move {
            let Edges { settings, aws, secrets } = &function.edges;
            let mut worker = bootstrap::worker_with(&config, secrets, RetryPolicy::default(), aws).await?;
            let queue_url = settings.queue_url.clone();
            // Failures on their last attempt are dead-lettered with their
            // error (the queue's redrive policy says when; RELAY_DLQ_URL
            // spares a lookup).
            let dead_letters = match &queue_url {
                Some(q) => DeadLetters::discover(&aws.sqs, q, settings.dlq_url.as_deref()).await,
                None => None,
            };
            // Tasks of an unavailable registry wait in the parking queue
            // until a probe finds it answering again.
            let parking = match (&settings.parking_queue_url, &queue_url) {
                (Some(p), Some(q)) => Some(Arc::new(ParkingLot::new(
                    aws.sqs.clone(),
                    p.clone(),
                    q.clone(),
                    dead_letters.clone(),
                    &config.worker,
                ))),
                _ => None,
            };
            worker.parking = parking.clone();
            let timing = Timing::from_settings(&config.worker);
            let settler = Settler::new(aws.sqs.clone(), queue_url, dead_letters, timing).with_parking(parking);
            Ok(Pipeline { worker: Arc::new(worker), settler: Arc::new(settler) })
        })
    }

    async fn lambda(self: Arc<Self>, apps: Arc<Reloading<Pipeline>>) -> Result<(), RunError> {
        let timeout = self.edges.settings.function_timeout_or(DEFAULT_TIMEOUT);
        lambda_runtime::run(service_fn(move |event| batch(apps.clone(), timeout, event)))
            .await
            .map_err(RunError::Lambda)
    }

    async fn standalone(self: Arc<Self>, pipeline: Arc<Pipeline>) -> Result<(), RunError> {
        let settings = &self.edges.settings;
        let queue_url = settings.queue_url()?.to_owned();
        tracing::info!(queue = %queue_url, "worker polling");
        let queue = TaskQueue::new(self.edges.aws.sqs.clone(), queue_url);
        // A deadline per batch, as under Lambda (optional).
        let options = PollOptions { run_for: settings.worker_run_for()?, ..Default::default() };
        let shutdown = bootstrap::shutdown_signal();
        crate::poller::poll(&queue, &pipeline.worker, Some(&pipeline.settler), &options, shutdown).await;
        Ok(())
    }
}

/// One SQS batch; failed messages are reported so only they come back.
async fn batch(
    apps: Arc<Reloading<Pipeline>>,
    timeout: Duration,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, lambda_runtime::Error> {
    let deadline = Some(bootstrap::invocation_deadline(event.context.deadline, timeout));
    let messages: Vec<Message> = event
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
    // A task for a registry the current worker does not know, or from a
    // rule it does not have: the configuration is asked for at once (a
    // registry or rule just added, which the webhook may have read first).
    let pipeline = apps
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
