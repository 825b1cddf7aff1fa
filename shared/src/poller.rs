//! The worker's standalone mode: long-poll SQS like the Lambda event source
//! mapping does, hand each batch to the same [`Worker::handle_batch`], and
//! delete only the messages that succeeded (the rest reappear after their
//! visibility timeout and, past the redrive count, go to the DLQ).

use std::future::Future;
use std::time::Duration;

use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;

use crate::queue::TaskQueue;
use crate::worker::{Message, Worker};

/// Polls until `shutdown` completes; a batch in progress is finished first.
pub async fn poll(queue: &TaskQueue, worker: &Worker, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut failures = 0u32;
    loop {
        let receive = queue
            .client()
            .receive_message()
            .queue_url(queue.url())
            .max_number_of_messages(10)
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
                Some(Message { id, body: m.body().unwrap_or_default().to_owned() })
            })
            .collect();
        if messages.is_empty() {
            continue;
        }
        let failed = worker.handle_batch(messages, None).await;
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
