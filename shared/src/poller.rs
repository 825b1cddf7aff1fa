//! The worker's standalone mode: long-poll SQS like the Lambda event source
//! mapping does, hand each batch to the same [`Worker::handle_batch`],
//! settle the failures the same way ([`Settler`]) and delete the messages
//! that succeeded or were settled for good (dead-lettered, re-enqueued);
//! the rest reappear after their backoff.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::aws_error::AwsError;
use crate::queue::TaskQueue;
use crate::settle::Settler;
use crate::sqs::{self, Receive};
use crate::worker::{Message, Worker};

/// How the standalone worker runs its batches.
#[derive(Debug, Clone, Copy, Default)]
pub struct PollOptions {
    /// Each batch gets this long, as a Lambda invocation gets its timeout
    /// (`RELAY_WORKER_RUN_SECONDS`): a task still copying at the end is
    /// continued in a fresh message. `None`: no deadline.
    pub run_for: Option<Duration>,
    /// The queue's visibility timeout, renewed for a batch's messages while
    /// the batch runs ([`poll`] reads it from the queue when unset; `None`
    /// in [`run_batch`]: not renewed).
    pub visibility: Option<Duration>,
}

/// Used when the queue's visibility timeout cannot be read: SQS's default.
const DEFAULT_VISIBILITY: Duration = Duration::from_secs(30);

/// Polls until `shutdown` completes; the batches in progress are finished
/// first. Failures are settled by `settler` (without one: redelivered after
/// the queue's visibility timeout).
///
/// The next receive is in flight while batches run, for as many messages as
/// the worker has free task slots (`task_concurrency`). A slot is free again
/// as soon as its task ends, whatever its batch neighbours still do: a slow
/// task never keeps the queue's next messages waiting behind it, and the
/// worker never holds more messages than it can start (their visibility
/// timeout runs from the receive). While a batch runs, its messages'
/// visibility is renewed, so a copy longer than the queue's visibility
/// timeout is not delivered again while it runs.
pub async fn poll(
    queue: &TaskQueue,
    worker: &Worker,
    settler: Option<&Settler>,
    options: &PollOptions,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let visibility = match options.visibility {
        Some(v) => v,
        None => queue_visibility(queue).await,
    };
    let options = PollOptions { visibility: Some(visibility), ..*options };
    let slots = Arc::new(Semaphore::new(worker.settings.task_concurrency.max(1)));
    let mut batches = FuturesUnordered::new();
    let mut receiving = None;
    let mut failures = 0u32;
    loop {
        if receiving.is_none() {
            let backoff = (failures > 0).then(|| Duration::from_millis(250 << failures.min(6)));
            receiving = Some(Box::pin(receive_into(slots.clone(), queue, backoff)));
        }
        tokio::select! {
            _ = &mut shutdown => break,
            (mut held, out) = async { receiving.as_mut().expect("set above").await } => {
                receiving = None;
                match out {
                    Ok(messages) => {
                        failures = 0;
                        if !messages.is_empty() {
                            held.truncate(messages.len());
                            batches.push(run_batch_in(queue, worker, settler, &options, messages, held));
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, "receive failed; backing off");
                    }
                }
            }
            Some(_) = batches.next(), if !batches.is_empty() => {}
        }
    }
    while batches.next().await.is_some() {}
}

/// Waits for a free task slot, takes every free one (up to SQS's 10 a
/// receive), and receives at most that many messages. The slots not filled
/// are given back when the caller drops them.
async fn receive_into(
    slots: Arc<Semaphore>,
    queue: &TaskQueue,
    backoff: Option<Duration>,
) -> (Vec<OwnedSemaphorePermit>, Result<Vec<Message>, AwsError>) {
    let mut held = vec![slots.clone().acquire_owned().await.expect("the slots are never closed")];
    while held.len() < 10 {
        match slots.clone().try_acquire_owned() {
            Ok(slot) => held.push(slot),
            Err(_) => break,
        }
    }
    let out = receive(queue, held.len() as i32, backoff).await;
    (held, out)
}

/// The queue's visibility timeout, or SQS's default when it cannot be read
/// (renewing more often than needed costs a request, too seldom a
/// redelivery).
async fn queue_visibility(queue: &TaskQueue) -> Duration {
    let read = queue.sqs().attributes(queue.url(), &[QueueAttributeName::VisibilityTimeout]).await;
    let seconds = match read {
        Ok(attributes) => attributes.get(&QueueAttributeName::VisibilityTimeout).and_then(|v| v.parse().ok()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the queue's visibility timeout");
            None
        }
    };
    seconds.map_or(DEFAULT_VISIBILITY, Duration::from_secs)
}

/// One long poll for up to `wanted` messages, after `backoff` if the last
/// receive failed.
pub async fn receive(queue: &TaskQueue, wanted: i32, backoff: Option<Duration>) -> Result<Vec<Message>, AwsError> {
    if let Some(wait) = backoff {
        tokio::time::sleep(wait).await;
    }
    let how = Receive {
        max: wanted,
        wait_seconds: Some(5),
        visibility_seconds: None,
        attributes: &Message::ATTRIBUTES,
        receive_count: true,
    };
    let received = queue.sqs().receive(queue.url(), how).await?;
    Ok(received
        .iter()
        .filter_map(|m| {
            let message = Message {
                id: m.message_id()?.to_owned(),
                body: m.body().unwrap_or_default().to_owned(),
                receive_count: sqs::receive_count(m).and_then(|c| c.parse().ok()).unwrap_or(0),
                receipt: Some(m.receipt_handle()?.to_owned()),
                ..Default::default()
            };
            Some(message.with_attributes(|name| sqs::attribute(m, name)))
        })
        .collect())
}

/// Runs one received batch, settles its failures and deletes the messages
/// that are done.
pub async fn run_batch(
    queue: &TaskQueue,
    worker: &Worker,
    settler: Option<&Settler>,
    options: &PollOptions,
    messages: Vec<Message>,
) {
    run_batch_in(queue, worker, settler, options, messages, Vec::new()).await
}

/// [`run_batch`] in the poller's task slots, one per message (in order):
/// each is freed when its message's task ends.
async fn run_batch_in(
    queue: &TaskQueue,
    worker: &Worker,
    settler: Option<&Settler>,
    options: &PollOptions,
    messages: Vec<Message>,
    slots: Vec<OwnedSemaphorePermit>,
) {
    let receipts: Vec<(String, String)> =
        messages.iter().filter_map(|m| Some((m.id.clone(), m.receipt.clone()?))).collect();
    let slots: Mutex<HashMap<String, OwnedSemaphorePermit>> =
        Mutex::new(messages.iter().map(|m| m.id.clone()).zip(slots).collect());
    // Succeeded while the batch runs, and not deleted yet.
    let succeeded = Mutex::new(Vec::new());
    let ended = |m: &Message, ok: bool| {
        drop(slots.lock().expect("slots lock").remove(&m.id));
        if ok {
            succeeded.lock().expect("succeeded lock").push(m.id.clone());
        }
    };
    let mut deleted = HashSet::new();
    let deadline = options.run_for.map(|d| Instant::now() + d);
    let handled = worker.handle_batch_telling(messages, deadline, &ended);
    let failures = match options.visibility {
        Some(visibility) => {
            let held = Held { receipts: &receipts, succeeded: &succeeded, deleted: &mut deleted };
            kept_invisible(queue, held, visibility, handled).await
        }
        None => handled.await,
    };
    let failed = match settler {
        Some(s) => s.settle(failures).await,
        // A bundle member's failure keeps its bundle for redelivery.
        None => failures.iter().map(|f| f.message.delivered_as().to_owned()).collect(),
    };
    let done: Vec<_> = receipts.iter().filter(|(id, _)| !failed.contains(id) && !deleted.contains(id)).collect();
    delete(queue, &done).await;
}

/// Deletes `done` (message id, receipt); returns the ids SQS deleted. The
/// tasks are idempotent: a message left after a failed delete costs HEADs
/// when it comes back.
async fn delete(queue: &TaskQueue, done: &[&(String, String)]) -> HashSet<String> {
    if done.is_empty() {
        return HashSet::new();
    }
    let receipts: Vec<&str> = done.iter().map(|(_, receipt)| receipt.as_str()).collect();
    match queue.sqs().delete_batch(queue.url(), &receipts).await {
        Ok((deleted, refused)) => {
            if !refused.is_empty() {
                let reasons: Vec<_> = refused.iter().map(|(_, code, _)| code.as_str()).collect();
                tracing::warn!(?reasons, "delete of some finished messages failed");
            }
            deleted.into_iter().filter_map(|i| done.get(i)).map(|(id, _)| id.clone()).collect()
        }
        Err(e) => {
            tracing::warn!(error = %e, "delete of finished messages failed");
            HashSet::new()
        }
    }
}

/// A running batch's messages, as [`kept_invisible`] keeps them.
struct Held<'a> {
    /// (message id, receipt) of each.
    receipts: &'a [(String, String)],
    /// Ids of the messages whose task succeeded and that are not deleted yet.
    succeeded: &'a Mutex<Vec<String>>,
    /// Ids deleted while the batch ran.
    deleted: &'a mut HashSet<String>,
}

/// Runs `batch` while, every third of `visibility`, deleting the messages
/// whose task has succeeded and renewing the others' visibility: SQS would
/// deliver a message again once its visibility timeout passed, though its
/// copy still runs (a large image on a slow link), and a finished message
/// held until its batch's slowest task ends would show as in flight and be
/// run again if the worker died meanwhile. Failed messages are renewed too:
/// they are settled when the batch ends.
async fn kept_invisible<F: Future>(queue: &TaskQueue, held: Held<'_>, visibility: Duration, batch: F) -> F::Output {
    let every = (visibility / 3).max(Duration::from_secs(1));
    let Held { receipts, succeeded, deleted } = held;
    let renew = async {
        loop {
            tokio::time::sleep(every).await;
            let ids = std::mem::take(&mut *succeeded.lock().expect("succeeded lock"));
            let done: Vec<_> = receipts.iter().filter(|(id, _)| ids.contains(id)).collect();
            deleted.extend(delete(queue, &done).await);
            let running: Vec<_> = receipts.iter().filter(|(id, _)| !deleted.contains(id)).collect();
            if running.is_empty() {
                continue;
            }
            let receipts: Vec<&str> = running.iter().map(|(_, receipt)| receipt.as_str()).collect();
            let sent = queue.sqs().change_visibility_batch(queue.url(), &receipts, visibility.as_secs() as i32).await;
            match sent {
                Ok(refused) if refused.is_empty() => {
                    tracing::debug!(messages = running.len(), "visibility renewed while the batch runs")
                }
                Ok(refused) => {
                    let reasons: Vec<_> = refused.iter().map(|(_, code, _)| code.as_str()).collect();
                    tracing::warn!(?reasons, "cannot renew the visibility of some of the batch's messages; they may be delivered again while they run")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the batch's visibility; its messages may be delivered again while they run")
                }
            }
        }
    };
    tokio::select! {
        out = batch => out,
        never = renew => never,
    }
}
