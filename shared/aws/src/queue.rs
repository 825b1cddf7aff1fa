//! The copy queue (SQS): tasks go in with `SendMessageBatch`, ten at a time,
//! and failed entries are retried before the caller is told.

pub use aws_sdk_sqs::Client as SqsClient;
use std::time::Duration;

use crate::sqs::{self, Sqs};
use crate::task::Task;

/// A task and how long SQS should hold it before delivery.
pub struct Outgoing<'a> {
    pub task: &'a Task,
    pub delay: Duration,
}

#[derive(Clone)]
pub struct TaskQueue {
    sqs: Sqs,
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
        TaskQueue { sqs: Sqs::new(client), url: url.into() }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn sqs(&self) -> &Sqs {
        &self.sqs
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
                        sqs::Outgoing::new(group[i].task.encode())
                            .delay_seconds(group[i].delay.as_secs().min(900) as i32)
                    })
                    .collect();
                match self.sqs.send_batch(&self.url, entries).await {
                    Ok(refused) => {
                        // Ids are indexes into `pending`.
                        if let Some((_, code, message)) = refused.first() {
                            reason = format!("{code}: {message}");
                        }
                        pending = refused.iter().filter_map(|(i, ..)| pending.get(*i).copied()).collect();
                    }
                    Err(e) => reason = e.reason,
                }
            }
            if !pending.is_empty() {
                return Err(EnqueueError { failed: pending.len(), total, reason });
            }
        }
        Ok(())
    }
}
