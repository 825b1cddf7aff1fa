//! The worker's batch handling, shared by the Lambda (SQS event source) and
//! the standalone long-poll loop: decode each message, run its task, report
//! which messages failed so only those are redelivered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{stream, StreamExt};
use tracing::Instrument;

use crate::config::WorkerSettings;
use crate::harbor_api::HarborApi;
use crate::metrics::{self, Unit};
use crate::registry::ledger::BlobLedger;
use crate::registry::retry::RetryPolicy;
use crate::registry::throttle::Throttle;
use crate::registry::{Copier, CopyError, CopyReport, RegistryClient};
use crate::rules::Rule;
use crate::task::{Task, TaskError};

/// One queue message.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: String,
    pub body: String,
    /// SQS's `ApproximateReceiveCount` (this delivery included); 0 unknown.
    pub receive_count: u32,
}

/// A message whose task failed, with the reason (no secrets in it).
#[derive(Debug, Clone)]
pub struct Failure {
    pub message: Message,
    pub error: String,
}

/// Clients built from the configuration; a task can only name these.
pub struct Worker {
    pub source: Arc<RegistryClient>,
    pub destinations: HashMap<String, Destination>,
    pub settings: WorkerSettings,
    pub retry: RetryPolicy,
    /// Totals since start, for metrics and benchmarks.
    pub stats: WorkerStats,
    /// Harbor's API when `source.harbor_api` is on: a push event carries
    /// only the first tag, the API knows them all.
    pub harbor: Option<HarborApi>,
    /// The rules, to filter those extra tags by the task's rules.
    pub rules: Vec<Rule>,
}

/// Running totals of what the worker did.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub tasks_succeeded: AtomicU64,
    pub tasks_failed: AtomicU64,
    pub bytes: AtomicU64,
    pub blobs_copied: AtomicU64,
    pub blobs_mounted: AtomicU64,
    pub blobs_skipped: AtomicU64,
}

impl WorkerStats {
    fn add(&self, r: &CopyReport) {
        self.tasks_succeeded.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(r.bytes, Ordering::Relaxed);
        self.blobs_copied.fetch_add(r.blobs_copied, Ordering::Relaxed);
        self.blobs_mounted.fetch_add(r.blobs_mounted, Ordering::Relaxed);
        self.blobs_skipped.fetch_add(r.blobs_skipped, Ordering::Relaxed);
    }
}

impl Worker {
    /// The task plus the artifact's other tags that Harbor knows and every
    /// rule of the task accepts; `None` when there is nothing to add. A
    /// failing API costs the extra tags (logged), never the copy.
    async fn all_tags(&self, task: &Task) -> Option<Task> {
        let api = self.harbor.as_ref()?;
        if task.action != crate::task::Action::Copy || task.source.tags.is_empty() {
            return None;
        }
        let info = match api.artifact(&task.source.repository, &task.source.digest).await {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the artifact's tags in Harbor; copying the event's tag only");
                return None;
            }
        };
        let rules: Vec<&Rule> = task.rules.iter().filter_map(|n| self.rules.iter().find(|r| &r.name == n)).collect();
        if rules.len() != task.rules.len() {
            return None;
        }
        let extra: Vec<_> = info
            .tags
            .into_iter()
            .filter(|t| !task.source.tags.contains(t))
            .filter(|t| rules.iter().all(|r| r.tag_filter.as_ref().is_none_or(|f| f.accepts(Some(t)))))
            .collect();
        if extra.is_empty() {
            return None;
        }
        let mut t = task.clone();
        t.source.tags.extend(extra.iter().cloned());
        t.destination.tags.extend(extra);
        Some(t)
    }
}

/// A destination registry: its client and what this worker knows of its blobs.
pub struct Destination {
    pub client: RegistryClient,
    pub ledger: BlobLedger,
}

#[derive(Debug, thiserror::Error)]
pub enum TaskFailure {
    #[error("undecodable task: {0}")]
    Decode(#[from] TaskError),
    #[error("task names registry {0:?}, which is not in this worker's configuration")]
    UnknownRegistry(String),
    #[error(transparent)]
    Copy(#[from] CopyError),
}

impl Worker {
    /// Runs a batch; returns the messages that failed, with their errors.
    /// `deadline` is when the invocation ends (Lambda); `None` standalone.
    pub async fn handle_batch(&self, messages: Vec<Message>, deadline: Option<Instant>) -> Vec<Failure> {
        stream::iter(messages)
            .map(|m| async move {
                let result = self.handle_message(&m, deadline).await;
                result.err().map(|error| Failure { message: m, error })
            })
            .buffer_unordered(self.settings.task_concurrency)
            .filter_map(|failed| async move { failed })
            .collect()
            .await
    }

    /// Runs one message; logs its outcome. `Err` holds the failure reason.
    pub async fn handle_message(&self, m: &Message, deadline: Option<Instant>) -> Result<(), String> {
        let task = match Task::decode(&m.body) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(message_id = %m.id, outcome = "rejected", error = %e, "message is not a task this worker understands");
                metrics::emit(&[("Function", "worker"), ("Outcome", "rejected")], &[("Tasks", 1.0, Unit::Count)]);
                return Err(TaskFailure::Decode(e).to_string());
            }
        };
        let span = tracing::info_span!(
            "task",
            task_id = %task.id,
            event_key = %task.event.key,
            rule = %task.rules.join(","),
            source = %format!("{}@{}", task.source.repository, task.source.digest),
            destination = %format!("{}/{}", task.destination.registry, task.destination.repository),
            digest = %task.source.digest,
        );
        let started = Instant::now();
        match self.run_until(&task, deadline).instrument(span.clone()).await {
            Ok(r) => {
                self.stats.add(&r);
                let _e = span.enter();
                let latency_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|now| (now.as_millis() as i64 - task.event.occurred_at * 1000).max(0))
                    .unwrap_or(0);
                tracing::info!(
                    outcome = r.outcome.expect("set on success").as_str(),
                    bytes = r.bytes,
                    blobs_copied = r.blobs_copied,
                    blobs_mounted = r.blobs_mounted,
                    blobs_skipped = r.blobs_skipped,
                    manifests_pushed = r.manifests_pushed,
                    tags_skipped = r.tags_skipped.len(),
                    duration_ms = started.elapsed().as_millis() as u64,
                    push_to_replicated_ms = latency_ms,
                    "task done"
                );
                let outcome = r.outcome.expect("set on success").as_str();
                let mut values = vec![
                    ("Tasks", 1.0, Unit::Count),
                    ("BytesCopied", r.bytes as f64, Unit::Bytes),
                    ("BlobsCopied", r.blobs_copied as f64, Unit::Count),
                    ("BlobsMounted", r.blobs_mounted as f64, Unit::Count),
                    ("BlobsSkipped", r.blobs_skipped as f64, Unit::Count),
                    ("Retries", r.retries as f64, Unit::Count),
                ];
                if outcome == "copied" && task.event.occurred_at > 0 {
                    values.push(("PushToReplicatedLatency", latency_ms as f64, Unit::Milliseconds));
                }
                metrics::emit(&[("Function", "worker"), ("Outcome", outcome)], &values);
                Ok(())
            }
            Err(e) => {
                self.stats.tasks_failed.fetch_add(1, Ordering::Relaxed);
                let _e = span.enter();
                let transient = matches!(&e, TaskFailure::Copy(c) if c.is_transient());
                tracing::error!(outcome = "failed", transient, error = %e, duration_ms = started.elapsed().as_millis() as u64, "task failed");
                metrics::emit(&[("Function", "worker"), ("Outcome", "failed")], &[("Tasks", 1.0, Unit::Count)]);
                Err(e.to_string())
            }
        }
    }

    /// Runs a decoded task.
    pub async fn run(&self, task: &Task) -> Result<CopyReport, TaskFailure> {
        self.run_until(task, None).await
    }

    /// Runs a decoded task, starting no blob after `deadline` minus the
    /// configured margin.
    pub async fn run_until(&self, task: &Task, deadline: Option<Instant>) -> Result<CopyReport, TaskFailure> {
        let with_all_tags = self.all_tags(task).await;
        let task = with_all_tags.as_ref().unwrap_or(task);
        let destination = self
            .destinations
            .get(&task.destination.registry)
            .ok_or_else(|| TaskFailure::UnknownRegistry(task.destination.registry.clone()))?;
        let copier = Copier {
            source: &self.source,
            destination: &destination.client,
            blob_concurrency: self.settings.blob_concurrency,
            retry: self.retry,
            ledger: &destination.ledger,
            throttle: task.options.bandwidth_kbps.map(|k| Arc::new(Throttle::from_kbps(k))),
            stop_at: deadline.map(|d| d - Duration::from_secs(self.settings.deadline_margin_seconds)),
            referrers: self.settings.referrers,
        };
        Ok(copier.run(task).await?)
    }
}
