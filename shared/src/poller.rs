//! The worker's standalone mode: long-poll SQS like the Lambda event source
//! mapping does, hand each batch to the same [`Worker::handle_batch`],
//! settle the failures the same way ([`Settler`]) and delete the messages
//! that succeeded or were settled for good (dead-lettered, re-enqueued);
//! the rest reappear after their backoff.

use std::future::Future;
use std::time::{Duration, Instant};

use aws_sdk_sqs::operation::receive_message::ReceiveMessageError;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;

use crate::queue::TaskQueue;
use crate::settle::{Settler, CONTINUATIONS, PARKED};
use crate::worker::{Message, Worker};

/// How the standalone worker runs its batches.
#[derive(Default)]
pub struct PollOptions {
    /// Each batch gets this long, as a Lambda invocation gets its timeout
    /// (`RELAY_WORKER_RUN_SECONDS`): a task still copying at the end is
    /// continued in a fresh message. `None`: no deadline.
    pub run_for: Option<Duration>,
}

/// Polls until `shutdown` completes; the batches in progress are finished
/// first. Failures are settled by `settler` (without one: redelivered after
/// the queue's visibility timeout).
///
/// The next receive is in flight while batches run, for as many messages as
/// the worker has free task slots (`task_concurrency`): a batch's slow task
/// never keeps the queue's next messages waiting behind it, and the worker
/// never holds more messages than it can start (their visibility timeout
/// runs from the receive).
pub async fn poll(
    queue: &TaskQueue,
    worker: &Worker,
    settler: Option<&Settler>,
    options: &PollOptions,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let capacity = worker.settings.task_concurrency.max(1);
    let mut batches = FuturesUnordered::new();
    let mut in_flight = 0usize;
    let mut receiving = None;
    let mut failures = 0u32;
    loop {
        if receiving.is_none() && in_flight < capacity {
            let wanted = (capacity - in_flight).min(10) as i32;
            let backoff = (failures > 0).then(|| Duration::from_millis(250 << failures.min(6)));
            receiving = Some(Box::pin(receive(queue, wanted, backoff)));
        }
        tokio::select! {
            _ = &mut shutdown => break,
            out = async { receiving.as_mut().expect("checked").await }, if receiving.is_some() => {
                receiving = None;
                match out {
                    Ok(messages) => {
                        failures = 0;
                        if !messages.is_empty() {
                            in_flight += messages.len();
                            batches.push(run_batch(queue, worker, settler, options, messages));
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "receive failed; backing off");
                    }
                }
            }
            Some(done) = batches.next(), if !batches.is_empty() => in_flight -= done,
        }
    }
    while batches.next().await.is_some() {}
}

/// One long poll for up to `wanted` messages, after `backoff` if the last
/// receive failed.
pub async fn receive(
    queue: &TaskQueue,
    wanted: i32,
    backoff: Option<Duration>,
) -> Result<Vec<Message>, aws_sdk_sqs::error::SdkError<ReceiveMessageError>> {
    if let Some(wait) = backoff {
        tokio::time::sleep(wait).await;
    }
    let out = queue
        .client()
        .receive_message()
        .queue_url(queue.url())
        .max_number_of_messages(wanted)
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .message_attribute_names(PARKED)
        .message_attribute_names(CONTINUATIONS)
        .wait_time_seconds(5)
        .send()
        .await?;
    Ok(out
        .messages()
        .iter()
        .filter_map(|m| {
            let receive_count = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let counter = |name: &str| {
                m.message_attributes()
                    .and_then(|a| a.get(name))
                    .and_then(|v| v.string_value())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            Some(Message {
                id: m.message_id()?.to_owned(),
                body: m.body().unwrap_or_default().to_owned(),
                receive_count,
                receipt: Some(m.receipt_handle()?.to_owned()),
                parked: counter(PARKED),
                continuations: counter(CONTINUATIONS),
            })
        })
        .collect())
}

/// Runs one received batch, settles its failures and deletes the messages
/// that are done; returns how many messages it held.
pub async fn run_batch(
    queue: &TaskQueue,
    worker: &Worker,
    settler: Option<&Settler>,
    options: &PollOptions,
    messages: Vec<Message>,
) -> usize {
    let held = messages.len();
    let receipts: Vec<(String, String)> =
        messages.iter().filter_map(|m| Some((m.id.clone(), m.receipt.clone()?))).collect();
    let deadline = options.run_for.map(|d| Instant::now() + d);
    let failures = worker.handle_batch(messages, deadline).await;
    let failed = match settler {
        Some(s) => s.settle(failures).await,
        None => failures.into_iter().map(|f| f.message.id).collect(),
    };
    let done: Vec<_> = receipts
        .into_iter()
        .filter(|(id, _)| !failed.contains(id))
        .enumerate()
        .map(|(i, (_, receipt))| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(receipt)
                .build()
                .expect("id and receipt are set")
        })
        .collect();
    if !done.is_empty() {
        if let Err(e) =
            queue.client().delete_message_batch().queue_url(queue.url()).set_entries(Some(done)).send().await
        {
            // The tasks are idempotent: a redelivery after this costs HEADs only.
            tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "delete of finished messages failed");
        }
    }
    held
}
