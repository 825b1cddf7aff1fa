//! The copy queue (SQS): tasks go in with `SendMessageBatch`, ten at a time,
//! and failed entries are retried before the caller is told.

pub use aws_sdk_sqs::Client as SqsClient;
use std::time::Duration;

use crate::bundle;
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

/// One queue message: a task's body or a bundle's, and how many tasks it
/// holds.
struct Body {
    body: String,
    delay: Duration,
    tasks: usize,
}

/// The messages for `tasks`, in their order: the copy tasks of one
/// artifact with one delay in bundles of up to [`bundle::MAX_BUNDLE`]
/// (and [`bundle::MAX_BUNDLE_BYTES`]), every other task alone.
fn messages(tasks: &[Outgoing<'_>]) -> Vec<Body> {
    let mut groups: Vec<Vec<&Outgoing<'_>>> = Vec::new();
    // The group still open for each artifact and delay (a reconcile pass
    // enqueues thousands of tasks: no scan of every group per task).
    let mut open: std::collections::HashMap<_, usize> = std::collections::HashMap::new();
    for t in tasks {
        if !bundle::bundles(t.task) {
            groups.push(vec![t]);
            continue;
        }
        let key = (&t.task.source.repository, &t.task.source.digest, t.delay);
        match open.get(&key) {
            Some(&g) if groups[g].len() < bundle::MAX_BUNDLE => groups[g].push(t),
            _ => {
                open.insert(key, groups.len());
                groups.push(vec![t]);
            }
        }
    }
    let mut bodies = Vec::new();
    for group in groups {
        let delay = group[0].delay;
        if let [one] = group[..] {
            bodies.push(Body { body: one.task.encode(), delay, tasks: 1 });
            continue;
        }
        let members: Vec<&Task> = group.iter().map(|o| o.task).collect();
        let body = bundle::encode(&members);
        if body.len() <= bundle::MAX_BUNDLE_BYTES {
            bodies.push(Body { body, delay, tasks: members.len() });
        } else {
            // Tasks with that many tags go one by one.
            bodies.extend(members.iter().map(|t| Body { body: t.encode(), delay, tasks: 1 }));
        }
    }
    bodies
}

/// `messages` in `SendMessageBatch` groups, in order: at most [`BATCH`]
/// entries and [`BATCH_BYTES`] of bodies each (a bundle may be most of
/// that alone; SQS refuses a larger batch whole).
fn batches(messages: &[Body]) -> Vec<&[Body]> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, m) in messages.iter().enumerate() {
        if i > start && (i - start == BATCH || bytes + m.body.len() > BATCH_BYTES) {
            groups.push(&messages[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += m.body.len();
    }
    if start < messages.len() {
        groups.push(&messages[start..]);
    }
    groups
}

/// What SQS takes in one `SendMessageBatch`, all bodies together (with
/// room for the attributes, which the copy queue's messages do not carry
/// when first sent).
const BATCH_BYTES: usize = 250 * 1024;

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

    /// [`TaskQueue::send`] for tasks delivered at once.
    pub async fn send_now(&self, tasks: &[Task]) -> Result<(), EnqueueError> {
        let now: Vec<Outgoing> = tasks.iter().map(|task| Outgoing { task, delay: Duration::ZERO }).collect();
        self.send(&now).await
    }

    /// Enqueues every task or returns an error naming how many were not.
    /// Tasks already accepted stay enqueued; a retry by Harbor may enqueue
    /// them again, which the idempotent worker absorbs. The copy tasks of
    /// one artifact (one per destination) go in one message, a bundle
    /// ([`crate::bundle`]), so they reach one invocation and the artifact
    /// is read once for all of them.
    pub async fn send(&self, tasks: &[Outgoing<'_>]) -> Result<(), EnqueueError> {
        let total = tasks.len();
        let messages = messages(tasks);
        for group in batches(&messages) {
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
                        sqs::Outgoing::new(group[i].body.clone())
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
                let failed = pending.iter().map(|&i| group[i].tasks).sum();
                return Err(EnqueueError { failed, total, reason });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Action, CopyOptions, DestinationArtifact, EventRef, SourceArtifact, TASK_VERSION};

    fn task(digest: &[u8], registry: &str, action: Action) -> Task {
        Task {
            version: TASK_VERSION,
            id: format!("{registry}-{action:?}"),
            action,
            source: SourceArtifact {
                repository: "library/app".parse().unwrap(),
                digest: crate::digest::Digest::sha256_of(digest),
                tags: vec!["v1".parse().unwrap()],
            },
            destination: DestinationArtifact {
                registry: registry.into(),
                repository: "app".parse().unwrap(),
                tags: vec!["v1".parse().unwrap()],
            },
            rules: vec!["r".into()],
            options: CopyOptions { override_existing: true, bandwidth_kbps: None, refresh_referrers: false },
            event: EventRef { key: "e".into(), occurred_at: 1, operator: "admin".into() },
        }
    }

    #[test]
    fn the_copies_of_one_artifact_share_a_message_and_nothing_else_does() {
        let mut tasks: Vec<Task> = ["a", "b", "c"].map(|r| task(b"one", r, Action::Copy)).into();
        tasks.push(task(b"two", "a", Action::Copy));
        tasks.push(task(b"one", "d", Action::Delete));
        tasks.push(task(b"one", "e", Action::Delete));
        tasks.extend((0..12).map(|i| task(b"three", &format!("r{i}"), Action::Copy)));
        let mut outgoing: Vec<Outgoing> = tasks.iter().map(|task| Outgoing { task, delay: Duration::ZERO }).collect();
        let late = task(b"one", "f", Action::Copy);
        outgoing.push(Outgoing { task: &late, delay: Duration::from_secs(5) });
        let bodies = messages(&outgoing);
        let held: Vec<Vec<String>> = bodies
            .iter()
            .map(|b| bundle::tasks_in(&b.body).into_iter().map(|t| t.unwrap().destination.registry).collect::<Vec<_>>())
            .collect();
        let r = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let ten: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
        assert_eq!(
            held,
            vec![r(&["a", "b", "c"]), r(&["a"]), r(&["d"]), r(&["e"]), ten, r(&["r10", "r11"]), r(&["f"])],
            "one bundle per artifact and delay, at most {} tasks; deletes alone",
            bundle::MAX_BUNDLE
        );
        assert_eq!(bodies.iter().map(|b| b.tasks).sum::<usize>(), outgoing.len(), "every task is sent");
        assert!(bundle::split(&bodies[1].body).is_none(), "a lone task is sent as a task");
        assert_eq!(bodies[6].delay, Duration::from_secs(5));
    }

    #[test]
    fn batches_hold_ten_messages_and_fit_what_sqs_takes() {
        let body = |len: usize| Body { body: "x".repeat(len), delay: Duration::ZERO, tasks: 1 };
        let sizes = |messages: &[Body]| -> Vec<usize> { batches(messages).iter().map(|b| b.len()).collect() };
        let small: Vec<Body> = (0..23).map(|_| body(100)).collect();
        assert_eq!(sizes(&small), [10, 10, 3]);
        // Bundles near their cap go one or two at a time, never refused whole.
        let big: Vec<Body> =
            [bundle::MAX_BUNDLE_BYTES, 40_000, 40_000, bundle::MAX_BUNDLE_BYTES, 10].into_iter().map(body).collect();
        assert_eq!(sizes(&big), [2, 3]);
        for b in batches(&big) {
            assert!(b.iter().map(|m| m.body.len()).sum::<usize>() <= BATCH_BYTES);
        }
        assert!(batches(&[]).is_empty());
    }
}
