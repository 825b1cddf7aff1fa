//! The copy queue (SQS): tasks go in with `SendMessageBatch`, ten at a time,
//! and failed entries are retried before the caller is told.

pub use aws_sdk_sqs::Client as SqsClient;
use std::time::Duration;

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

use crate::task::Task;

/// A task and how long SQS should hold it before delivery.
pub struct Outgoing<'a> {
    pub task: &'a Task,
    pub delay: Duration,
}

#[derive(Clone)]
pub struct TaskQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} tasks could not be enqueued: {reason}")]
pub struct EnqueueError {
    pub failed: usize,
    pub total: usize,
    pub reason: String,
}

/// SQS accepts at most ten entries per batch.
const BATCH: usize = 10;
/// Tries for entries SQS reports as failed.
const ATTEMPTS: u32 = 3;

impl TaskQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        TaskQueue { client, url: url.into() }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn client(&self) -> &aws_sdk_sqs::Client {
        &self.client
    }

    /// Enqueues every task or returns an error naming how many were not.
    /// Tasks already accepted stay enqueued; a retry by Harbor may enqueue
    /// them again, which the idempotent worker absorbs.
    pub async fn send(&self, tasks: &[Outgoing<'_>]) -> Result<(), EnqueueError> {
        let total = tasks.len();
        for group in tasks.chunks(BATCH) {
            let mut pending: Vec<usize> = (0..group.len()).collect();
            let mut reason = String::new();
            for attempt in 0..ATTEMPTS {
                if pending.is_empty() {
                    break;
                }
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                let entries = pending
                    .iter()
                    .map(|&i| {
                        SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .message_body(group[i].task.encode())
                            .delay_seconds(group[i].delay.as_secs().min(900) as i32)
                            .build()
                            .expect("id and body are set")
                    })
                    .collect::<Vec<_>>();
                match self.client.send_message_batch().queue_url(&self.url).set_entries(Some(entries)).send().await {
                    Ok(out) => {
                        pending = out.failed().iter().filter_map(|f| f.id().parse().ok()).collect();
                        if let Some(f) = out.failed().first() {
                            reason = format!("{}: {}", f.code(), f.message().unwrap_or_default());
                        }
                    }
                    Err(e) => reason = aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(),
                }
            }
            if !pending.is_empty() {
                return Err(EnqueueError { failed: pending.len(), total, reason });
            }
        }
        Ok(())
    }
}
