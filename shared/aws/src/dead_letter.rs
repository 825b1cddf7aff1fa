//! Dead-lettering with the reason attached. SQS's own redrive moves a
//! message to the DLQ after `maxReceiveCount` receives, but carries nothing
//! about why it failed, and the worker's logs may be long gone when an
//! operator looks. So on a message's last attempt (receive count ≥ the
//! queue's `maxReceiveCount`), or at once when no retry can fix it, the
//! worker sends it to the DLQ itself with the error as message attributes
//! and lets the original go; if that send
//! fails, the message is reported failed as usual and SQS's redrive still
//! moves it (without the reason). Nothing is lost either way; at worst a
//! message exists in both queues, and tasks are idempotent.

use std::collections::HashMap;

use aws_sdk_sqs::types::QueueAttributeName as Attr;

use crate::aws_error::AwsError;
use crate::message::{number_attribute, string_attribute, Failure};
use crate::sqs::{Outgoing, Sqs};

/// Message attribute holding the last error (text, no secrets: errors name
/// registries, paths and statuses only).
pub const LAST_ERROR: &str = "RelayLastError";
/// Message attribute holding how many times the task was tried.
pub const ATTEMPTS: &str = "RelayAttempts";
/// Message attribute holding the failure's cause by its stable name
/// ([`crate::message::FailureCause::as_str`]): what an operator or an
/// alarm sorts dead letters by, where the error's text varies.
pub const CAUSE: &str = "RelayFailureCause";
/// SQS caps a message's attributes with its body at 256 KiB; an error never
/// needs more than this.
const MAX_ERROR_CHARS: usize = 2048;

/// A queue's redrive policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedrivePolicy {
    pub dlq_url: String,
    pub max_receive_count: u32,
}

/// Reads `queue_url`'s redrive policy; `None` when it has none. The DLQ's
/// URL is `dlq_url` when given (the template passes it, sparing a
/// `GetQueueUrl` permission), otherwise resolved from the policy's ARN.
pub async fn redrive_policy(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    dlq_url: Option<&str>,
) -> Result<Option<RedrivePolicy>, AwsError> {
    const CALL: &str = "GetQueueAttributes";
    let sqs = Sqs::new(sqs.clone());
    let attributes = sqs.attributes(queue_url, &[Attr::RedrivePolicy]).await?;
    let Some(policy) = attributes.get(&Attr::RedrivePolicy).cloned() else { return Ok(None) };
    let bad = |reason: String| AwsError::answer(CALL, queue_url, reason);
    let v: serde_json::Value = serde_json::from_str(&policy).map_err(|e| bad(format!("redrive policy: {e}")))?;
    // SQS answers the count as a number; CloudFormation-made policies as a string.
    let max_receive_count = match &v["maxReceiveCount"] {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .and_then(|n| u32::try_from(n).ok())
    .ok_or_else(|| bad("redrive policy without a valid maxReceiveCount".into()))?;
    let dlq_url = match dlq_url {
        Some(u) => u.to_owned(),
        None => {
            let arn = v["deadLetterTargetArn"]
                .as_str()
                .ok_or_else(|| bad("redrive policy without deadLetterTargetArn".into()))?;
            let name = arn.rsplit(':').next().unwrap_or_default();
            sqs.queue_url(name).await?
        }
    };
    Ok(Some(RedrivePolicy { dlq_url, max_receive_count }))
}

/// Sends failed messages to the DLQ with their error: on their last
/// attempt, or at once when no retry can fix them ([`crate::settle`]).
#[derive(Clone)]
pub struct DeadLetters {
    sqs: Sqs,
    policy: RedrivePolicy,
}

impl DeadLetters {
    pub fn new(sqs: aws_sdk_sqs::Client, policy: RedrivePolicy) -> Self {
        DeadLetters { sqs: Sqs::new(sqs), policy }
    }

    /// Looks up `queue_url`'s redrive policy. Without one (or when it
    /// cannot be read) there is nothing to annotate: `None`, logged.
    pub async fn discover(sqs: &aws_sdk_sqs::Client, queue_url: &str, dlq_url: Option<&str>) -> Option<Self> {
        match redrive_policy(sqs, queue_url, dlq_url).await {
            Ok(Some(policy)) => Some(DeadLetters::new(sqs.clone(), policy)),
            Ok(None) => {
                tracing::info!(queue = %queue_url, "the queue has no redrive policy; failed tasks are retried until they expire");
                None
            }
            Err(e) => {
                tracing::warn!(queue = %queue_url, error = %e, "cannot read the queue's redrive policy; SQS dead-letters without the last error");
                None
            }
        }
    }

    /// Receives after which SQS's redrive would move a message.
    pub fn max_receive_count(&self) -> u32 {
        self.policy.max_receive_count
    }

    /// Dead-letters `failures` with their errors; returns the ids of the
    /// messages that did not reach the DLQ (to be reported failed, so
    /// SQS's redrive still moves them).
    pub async fn send_all(&self, failures: &[Failure]) -> Vec<String> {
        let mut not_sent = Vec::new();
        for chunk in failures.chunks(10) {
            not_sent.extend(self.send(chunk).await);
        }
        not_sent
    }

    /// One `SendMessageBatch`; returns the ids that did not reach the DLQ.
    async fn send(&self, failures: &[Failure]) -> Vec<String> {
        let entries = failures
            .iter()
            .map(|f| {
                let error: String = f.error.chars().take(MAX_ERROR_CHARS).collect();
                Outgoing::new(&f.message.body)
                    .attribute(LAST_ERROR, string_attribute(error))
                    .attribute(ATTEMPTS, number_attribute(f.message.receive_count.into()))
                    .attribute(CAUSE, string_attribute(f.cause.as_str()))
            })
            .collect();
        let all_ids = || failures.iter().map(|f| f.message.id.clone()).collect();
        let refused = match self.sqs.send_batch(&self.policy.dlq_url, entries).await {
            Ok(refused) => refused,
            Err(e) => {
                tracing::warn!(error = %e, "cannot dead-letter; SQS's redrive will move the messages");
                return all_ids();
            }
        };
        let failed: HashMap<usize, &str> = refused.iter().map(|(i, code, _)| (*i, code.as_str())).collect();
        failures
            .iter()
            .enumerate()
            .filter_map(|(i, f)| match failed.get(&i) {
                Some(code) => {
                    tracing::warn!(message_id = %f.message.id, code, "cannot dead-letter this message; SQS's redrive will move it");
                    Some(f.message.id.clone())
                }
                None => {
                    tracing::warn!(message_id = %f.message.id, attempts = f.message.receive_count, cause = f.cause.as_str(), error = %f.error, "task dead-lettered with its error");
                    None
                }
            })
            .collect()
    }
}
