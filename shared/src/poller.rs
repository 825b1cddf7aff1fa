//! The worker's standalone mode: long-poll SQS like the Lambda event source
//! mapping does, hand each batch to the same [`Worker::handle_batch`],
//! settle the failures the same way ([`Settler`]) and delete the messages
//! that succeeded or were settled for good (dead-lettered, re-enqueued);
//! the rest reappear after their backoff.

use std::future::Future;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};

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

/// Polls until `shutdown` completes; a batch in progress is finished first.
/// Failures are settled by `settler` (without one: redelivered after the
/// queue's visibility timeout).
pub async fn poll(
    queue: &TaskQueue,
    worker: &Worker,
    settler: Option<&Settler>,
    options: &PollOptions,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut failures = 0u32;
    loop {
        let receive = queue
            .client()
            .receive_message()
            .queue_url(queue.url())
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names(PARKED)
            .message_attribute_names(CONTINUATIONS)
            .wait_time_seconds(5)
            .send();
        let out = tokio::select! {
            _ = &mut shutdown => return,
            out = receive => out,
        };
        let out = match out {
            Ok(out) => {
                failures = 0;
                out
            }
            Err(e) => {
                failures = (failures + 1).min(6);
                let wait = Duration::from_millis(250 << failures);
                tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), wait_ms = wait.as_millis() as u64, "receive failed; backing off");
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        let mut receipts = std::collections::HashMap::new();
        let messages: Vec<Message> = out
            .messages()
            .iter()
            .filter_map(|m| {
                let id = m.message_id()?.to_owned();
                receipts.insert(id.clone(), m.receipt_handle()?.to_owned());
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
                    id,
                    body: m.body().unwrap_or_default().to_owned(),
                    receive_count,
                    receipt: m.receipt_handle().map(str::to_owned),
                    parked: counter(PARKED),
                    continuations: counter(CONTINUATIONS),
                })
            })
            .collect();
        if messages.is_empty() {
            continue;
        }
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
        if done.is_empty() {
            continue;
        }
        if let Err(e) =
            queue.client().delete_message_batch().queue_url(queue.url()).set_entries(Some(done)).send().await
        {
            // The tasks are idempotent: a redelivery after this costs HEADs only.
            tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "delete of finished messages failed");
        }
    }
}
