//! The worker's standalone mode: long-poll SQS like the Lambda event source
//! mapping does, hand each batch to the same [`Worker::handle_batch`], and
//! delete only the messages that succeeded or were dead-lettered with their
//! error on their last attempt (the rest reappear after their visibility
//! timeout).

use std::future::Future;
use std::time::Duration;

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};

use crate::dead_letter::DeadLetters;
use crate::queue::TaskQueue;
use crate::worker::{Message, Worker};

/// Polls until `shutdown` completes; a batch in progress is finished first.
/// With `dead_letters`, failures on their last attempt go to the DLQ with
/// their error.
pub async fn poll(
    queue: &TaskQueue,
    worker: &Worker,
    dead_letters: Option<&DeadLetters>,
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
                Some(Message { id, body: m.body().unwrap_or_default().to_owned(), receive_count })
            })
            .collect();
        if messages.is_empty() {
            continue;
        }
        let failures = worker.handle_batch(messages, None).await;
        let failed = crate::dead_letter::settle(dead_letters, failures).await;
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
