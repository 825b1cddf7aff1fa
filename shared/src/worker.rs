//! The worker's batch handling, shared by the Lambda (SQS event source) and
//! the standalone long-poll loop: decode each message, run its task, report
//! which messages failed so only those are redelivered.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures_util::{stream, FutureExt, StreamExt};
use tracing::Instrument;

use crate::config::WorkerSettings;
use crate::feeders::{feeders, SourceListing};
use crate::harbor_api::HarborApi;
use crate::health::{Gate, Health};
use crate::message::Disposition;
use crate::metrics::{self, Slices, Unit, UNKNOWN};
use crate::parking::ParkingLot;
use crate::registry::pace;
use crate::registry::resume::{self, OpenUpload, RunRecord};
use crate::registry::retry::RetryPolicy;
use crate::registry::tee::{Fanout, Member};
use crate::registry::throttle::Throttle;
use crate::registry::{Copier, CopyError, CopyReport, Deleter, Outcome, RegistryClient, RegistryError};
use crate::repository::Tag;
use crate::rules::Rule;
use crate::secrets::CredentialReloader;
// Where the crates' users have always found them.
pub use crate::message::{Failure, FailureCause, Message};

mod admission;
mod bundles;
mod failure;
mod fanouts;
mod probe;

use crate::task::{Action, Task, TaskError};
use crate::written::Written;
pub use failure::TaskFailure;
use fanouts::fanouts;

/// Catalog entries per request when a delete lists the source.
const LISTING_PAGE: usize = 1000;

/// Requests in flight are cut when a third of the deadline margin is left
/// (5 s of the default 15 s): no blob starts in the first two thirds, and
/// the last third is for reporting the batch — settling its messages
/// (a `SendMessage` or a visibility change each) and answering the Runtime
/// API — before Lambda's kill.
const CUT_SHARE_OF_MARGIN: u32 = 3;

/// How one message's task failed: the reason, how to settle it, and what
/// its metrics count under.
#[derive(Debug, Clone)]
pub struct Failed {
    pub error: String,
    pub cause: FailureCause,
    pub disposition: Disposition,
    pub slices: Slices,
    /// Uploads a cut run leaves open, for its continuation.
    pub uploads: Vec<OpenUpload>,
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
    /// Re-reads credentials a registry denies (rotated secrets).
    pub credentials: CredentialReloader,
    /// `worker.stream_concurrency` permits: blobs read from the source at
    /// once by every task of this process.
    pub streams: Arc<tokio::sync::Semaphore>,
    /// The source's breaker: a Harbor down for maintenance parks its tasks
    /// as an unavailable destination does.
    pub source_health: Health,
    /// Where tasks of an unavailable registry wait, and what brings them
    /// back (`RELAY_PARKING_QUEUE_URL`); without it they are parked in the
    /// copy queue with growing delays.
    pub parking: Option<Arc<ParkingLot>>,
    /// The record of the destination tags this relay wrote, which tells
    /// reconcile what a missed delete left behind (`RELAY_RECORD_BUCKET`).
    pub written: Option<Arc<Written>>,
}

/// Running totals of what the worker did.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Batches handled: what shares a source read or a fan-out is decided
    /// within a batch, so a test that needs its tasks together checks that
    /// they came in one.
    pub batches: AtomicU64,
    pub tasks_succeeded: AtomicU64,
    pub tasks_failed: AtomicU64,
    /// Parked (destination unavailable) or continued (deadline) tasks.
    pub tasks_deferred: AtomicU64,
    /// Bytes sent to destinations.
    pub bytes: AtomicU64,
    /// Bytes read from the source (once for destinations sharing a read).
    pub source_bytes: AtomicU64,
    pub blobs_copied: AtomicU64,
    pub blobs_mounted: AtomicU64,
    pub blobs_skipped: AtomicU64,
}

impl WorkerStats {
    fn add(&self, r: &CopyReport) {
        self.tasks_succeeded.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(r.bytes, Ordering::Relaxed);
        self.source_bytes.fetch_add(r.source_bytes, Ordering::Relaxed);
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
        if task.action != Action::Copy || task.source.tags.is_empty() {
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

/// Runs `run` for every message, `concurrency` units at a time (the
/// messages of a unit start together), and returns the failures; `ended`
/// hears of each message as soon as its run ends (and whether it
/// succeeded). A panic inside one message's run becomes that message's
/// failure: its batch neighbours finish and are reported as they ended, so
/// a bug that one task trips costs that task alone, not a redelivery of the
/// batch (the release profile unwinds for this, see Cargo.toml).
async fn each_isolated<T, F, Fut>(
    units: Vec<Vec<(Message, T)>>,
    concurrency: usize,
    run: F,
    ended: &(dyn Fn(&Message, bool) + Sync),
) -> Vec<Failure>
where
    F: Fn(Message, T) -> Fut,
    Fut: std::future::Future<Output = Result<(), Failed>>,
{
    let run = &run;
    stream::iter(units)
        .map(|unit| futures_util::future::join_all(unit.into_iter().map(|(m, with)| isolated(m, with, run, ended))))
        .buffer_unordered(concurrency.max(1))
        .flat_map(stream::iter)
        .filter_map(|failed| async move { failed })
        .collect()
        .await
}

/// One message of [`each_isolated`]: its failure, a panic included.
async fn isolated<T, F, Fut>(m: Message, with: T, run: &F, ended: &(dyn Fn(&Message, bool) + Sync)) -> Option<Failure>
where
    F: Fn(Message, T) -> Fut,
    Fut: std::future::Future<Output = Result<(), Failed>>,
{
    let result = AssertUnwindSafe(run(m.clone(), with)).catch_unwind().await;
    ended(&m, matches!(result, Ok(Ok(()))));
    let Failed { error, cause, disposition, slices, uploads } = match result {
        Ok(Ok(())) => return None,
        Ok(Err(failed)) => failed,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            tracing::error!(message_id = %m.id, outcome = "failed", panic = %what, "task panicked; its batch neighbours go on");
            metrics::emit(&[("Function", "worker"), ("Outcome", "failed")], &[("Tasks", 1.0, Unit::Count)]);
            let error = format!("task panicked: {what}");
            let disposition = Disposition::Retry { retry_after: None };
            let cause = FailureCause::Panic;
            Failed { error, cause, disposition, slices: Slices::default(), uploads: Vec::new() }
        }
    };
    Some(Failure { message: Message { uploads, ..m }, error, cause, disposition, slices })
}

pub use crate::destination::Destination;

impl Worker {
    /// Runs a batch; returns the messages that failed, with their errors.
    /// `deadline` is when the invocation ends (Lambda); `None` standalone.
    /// Copy tasks of the same artifact into different destinations share
    /// each blob's source read ([`Fanout`]).
    pub async fn handle_batch(&self, messages: Vec<Message>, deadline: Option<Instant>) -> Vec<Failure> {
        self.handle_batch_telling(messages, deadline, &|_, _| {}).await
    }

    /// [`Worker::handle_batch`], calling `ended` with each message as soon
    /// as its task ends (and whether it succeeded), while its neighbours may
    /// still run: the standalone poller gives its slot to the next message
    /// at once, and deletes it if it succeeded.
    pub async fn handle_batch_telling(
        &self,
        messages: Vec<Message>,
        deadline: Option<Instant>,
        ended: &(dyn Fn(&Message, bool) + Sync),
    ) -> Vec<Failure> {
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        let (batch, bundles) = bundles::split(messages);
        let (units, fanouts) = fanouts(batch);
        let run = |m: Message, task| {
            let fanout = fanouts.get(&m.id).cloned();
            async move {
                match &m.probe {
                    Some(probe) => self.handle_probe(probe, deadline).await,
                    None => self.handle_message(&m, task, deadline, fanout).await,
                }
            }
        };
        let ended = |m: &Message, ok: bool| bundles.ended(m, ok, ended);
        each_isolated(units, self.settings.task_concurrency, run, &ended).await
    }

    /// Runs one message (in `fanout`'s group when it has one); logs its
    /// outcome. `Err` holds the failure reason and how to settle the message.
    async fn handle_message(
        &self,
        m: &Message,
        task: Result<Task, TaskError>,
        deadline: Option<Instant>,
        fanout: Option<Arc<Fanout>>,
    ) -> Result<(), Failed> {
        let member = fanout.map(|f| f.join());
        let task = match task {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(message_id = %m.id, outcome = "rejected", error = %e, "message is not a task this worker understands");
                metrics::emit(&[("Function", "worker"), ("Outcome", "rejected")], &[("Tasks", 1.0, Unit::Count)]);
                let failure = TaskFailure::Decode(e);
                let slices = Slices::default();
                let (error, cause, disposition) = (failure.to_string(), failure.cause(), failure.disposition());
                return Err(Failed { error, cause, disposition, slices, uploads: Vec::new() });
            }
        };
        let span = tracing::info_span!(
            "task",
            task_id = %task.id,
            event_key = %task.event.key,
            rule = %task.rules.join(","),
            source = %format!("{}@{}", task.source.repository, task.source.digest),
            destination = %format!("{}/{}", task.destination.registry, task.destination.repository),
            tags = %task.destination.tags.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(","),
            digest = %task.source.digest,
        );
        let slices = self.slices(&task);
        let started = Instant::now();
        let run = async {
            self.allowed(&task)?;
            self.run_cut(&task, deadline, member.as_ref(), m.parked_on.as_deref(), m.uploads.clone()).await
        };
        match run.instrument(span.clone()).await {
            Ok(r) => {
                self.done(&task, &r, &span, &slices, started);
                Ok(())
            }
            Err(e) => Err(self.failed(e, &span, slices, started)),
        }
    }

    /// A task that succeeded: its stats, its log line, its metrics.
    fn done(&self, task: &Task, r: &CopyReport, span: &tracing::Span, slices: &Slices, started: Instant) {
        self.stats.add(r);
        let _e = span.enter();
        let latency_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|now| (now.as_millis() as i64 - task.event.occurred_at * 1000).max(0))
            .unwrap_or(0);
        tracing::info!(
            outcome = r.outcome.expect("set on success").as_str(),
            bytes = r.bytes,
            source_bytes = r.source_bytes,
            blobs_copied = r.blobs_copied,
            blobs_mounted = r.blobs_mounted,
            blobs_skipped = r.blobs_skipped,
            manifests_pushed = r.manifests_pushed,
            tags_skipped = r.tags_skipped.len(),
            held_by = r.held_by.as_ref().map(|h| h.as_str()),
            foreign_tags = ?r.foreign_tags.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
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
        metrics::emit_sliced(&[("Function", "worker"), ("Outcome", outcome)], slices, &values);
    }

    /// A task that failed: its stats, its log line, its metrics, and how its
    /// message is settled.
    fn failed(&self, e: TaskFailure, span: &tracing::Span, slices: Slices, started: Instant) -> Failed {
        let (disposition, cause) = (e.disposition(), e.cause());
        let _e = span.enter();
        let duration_ms = started.elapsed().as_millis() as u64;
        let (outcome, settled) = match disposition {
            Disposition::Park { .. } => ("parked", None),
            Disposition::Continue => ("continued", None),
            Disposition::Permanent => ("failed", Some("dead_letter")),
            Disposition::Retry { .. } => ("failed", Some("retry")),
        };
        match settled {
            Some(settled) => {
                self.stats.tasks_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(outcome, settled, cause = cause.as_str(), error = %e, bytes = 0u64, duration_ms, "task failed");
            }
            None => {
                self.stats.tasks_deferred.fetch_add(1, Ordering::Relaxed);
                tracing::info!(outcome, cause = cause.as_str(), reason = %e, duration_ms, "task deferred");
            }
        }
        metrics::emit_sliced(&[("Function", "worker"), ("Outcome", outcome)], &slices, &[("Tasks", 1.0, Unit::Count)]);
        let uploads = match e {
            TaskFailure::Cut { ref uploads, .. } => uploads.clone(),
            _ => Vec::new(),
        };
        Failed { error: e.to_string(), cause, disposition, slices, uploads }
    }

    /// What `task`'s metrics count under: its destination and its first
    /// rule, as far as the configuration names them.
    pub fn slices(&self, task: &Task) -> Slices {
        let registry = &task.destination.registry;
        let known_rule = task.rules.iter().find(|name| self.rules.iter().any(|r| &r.name == *name));
        Slices {
            registry: if self.destinations.contains_key(registry) { registry.clone() } else { UNKNOWN.into() },
            rule: known_rule.cloned().unwrap_or_else(|| UNKNOWN.into()),
        }
    }

    /// Runs a decoded task.
    pub async fn run(&self, task: &Task) -> Result<CopyReport, TaskFailure> {
        self.run_until(task, None).await
    }

    /// Runs a decoded task, starting no blob after `deadline` minus the
    /// configured margin.
    pub async fn run_until(&self, task: &Task, deadline: Option<Instant>) -> Result<CopyReport, TaskFailure> {
        self.run_cut(task, deadline, None, None, Vec::new()).await
    }

    /// [`Worker::run_in`], cut at the invocation's hard stop: Lambda kills
    /// the process at its deadline without a signal, so every request still
    /// in flight is dropped (a whole-blob upload left for the registry to
    /// expire; a resumable one handed on, see [`resume`]) while there is
    /// time to report the batch. The cut keeps what was
    /// placed: blobs copied before it are skipped by the next run.
    async fn run_cut(
        &self,
        task: &Task,
        deadline: Option<Instant>,
        member: Option<&Member>,
        released_for: Option<&str>,
        given: Vec<OpenUpload>,
    ) -> Result<CopyReport, TaskFailure> {
        let Some(deadline) = deadline else { return self.run_in(task, None, member, released_for).await };
        let hard_stop = deadline - self.settings.margin_before(deadline) / CUT_SHARE_OF_MARGIN;
        let record = Arc::new(RunRecord::resuming(given));
        let run = resume::recording(record.clone(), self.run_in(task, Some(deadline), member, released_for));
        match tokio::time::timeout_at(hard_stop.into(), run).await {
            Ok(result) => result,
            Err(_) => {
                // An upload that took bytes is progress too: the next run
                // goes on with it.
                let uploads = record.open_uploads();
                Err(TaskFailure::Cut { progressed: record.placed_any() || !uploads.is_empty(), uploads })
            }
        }
    }

    /// [`Worker::run_until`], sharing source reads with the other tasks of
    /// `member`'s group. `released_for`: the registry a probe found
    /// answering again, when that released the task from the parking lot.
    async fn run_in(
        &self,
        task: &Task,
        deadline: Option<Instant>,
        member: Option<&Member>,
        released_for: Option<&str>,
    ) -> Result<CopyReport, TaskFailure> {
        let with_all_tags = self.all_tags(task).await;
        let task = with_all_tags.as_ref().unwrap_or(task);
        let destination = self
            .destinations
            .get(&task.destination.registry)
            .ok_or_else(|| TaskFailure::UnknownRegistry(task.destination.registry.clone()))?;
        self.credentials.refresh_if_due(&self.source).await;
        self.credentials.refresh_if_due(&destination.client).await;
        // Health per registry, the source's included: either side down
        // parks the task.
        let sides = [(&*self.source, &self.source_health), (&destination.client, &destination.health)];
        for (client, health) in sides {
            let released = released_for == Some(client.name());
            match health.gate() {
                Gate::Closed => {}
                // A probe elsewhere found it answering: ask it, rather than
                // park again on a breaker this process has not seen close.
                Gate::Open if released => Self::still_answers(client, health).await?,
                Gate::Open => return Err(TaskFailure::Parked(client.name().to_owned())),
                Gate::Probe => Self::still_answers(client, health).await?,
            }
        }
        let mut result = self.copy_to(task, destination, deadline, member).await;
        if let Err(TaskFailure::Copy(CopyError::Registry(RegistryError::Denied { registry, .. }))) = &result {
            // The secret may have been rotated since it was read: read it
            // again once, then try again; a second denial is final.
            let client = if registry == self.source.name() { &*self.source } else { &destination.client };
            if self.credentials.reread(client).await? {
                result = self.copy_to(task, destination, deadline, member).await;
            }
        }
        match &result {
            Err(TaskFailure::Copy(CopyError::Registry(e))) if e.is_unavailable() => {
                // The registry's failure, or this artifact's? The registry
                // itself says: one that answers `GET /v2/` is up, and the
                // task is retried (then dead-lettered) like any failure, so
                // one bad artifact never parks, nor opens the breaker.
                if let Some((client, health)) = sides.into_iter().find(|(c, _)| c.name() == e.registry()) {
                    Self::still_answers(client, health).await?;
                }
            }
            Err(_) => {}
            Ok(report) => {
                self.source_health.record_success();
                destination.health.record_success();
                self.keep_record(task, report).await;
            }
        }
        result
    }

    /// Keeps the record of written tags ([`Written`]) in step with what
    /// `task` did: the tags it points at the digest (pushed now or already
    /// there: the rules map them, so they are the relay's), none it left
    /// pointing elsewhere, and forgets the tags it deleted. A failure only
    /// keeps tags: reconcile deletes no tag the record lacks.
    async fn keep_record(&self, task: &Task, report: &CopyReport) {
        let Some(written) = &self.written else { return };
        let (registry, repository) = (&task.destination.registry, &task.destination.repository);
        let kept = match report.outcome {
            Some(Outcome::Copied | Outcome::AlreadyPresent) => {
                let tags: Vec<Tag> =
                    task.destination.tags.iter().filter(|t| !report.tags_skipped.contains(t)).cloned().collect();
                written.note(registry, repository, &tags, &task.source.digest).await
            }
            Some(Outcome::Deleted | Outcome::NotPresent) => {
                written.forget(registry, repository, &task.destination.tags).await
            }
            _ => Ok(()),
        };
        if let Err(e) = kept {
            tracing::warn!(error = %e, "cannot keep the record of written tags: reconcile keeps these tags");
            metrics::emit(&[("Function", "worker")], &[("RecordFailures", 1.0, Unit::Count)]);
        }
    }

    /// When no new blob (or release) starts: `deadline` minus the margin.
    fn stop_at(&self, deadline: Option<Instant>) -> Option<Instant> {
        deadline.map(|d| d - self.settings.margin_before(d))
    }

    async fn copy_to(
        &self,
        task: &Task,
        destination: &Destination,
        deadline: Option<Instant>,
        member: Option<&Member>,
    ) -> Result<CopyReport, TaskFailure> {
        let stop_at = self.stop_at(deadline);
        pace::within(stop_at, async {
            match task.action {
                Action::Copy => {
                    destination.prepare(&task.destination.repository).await?;
                    Ok(self.copier(task, destination, stop_at, member).copy(task).await?)
                }
                Action::Delete => {
                    let listing =
                        SourceListing { source: &self.source, harbor: self.harbor.as_ref(), page_size: LISTING_PAGE };
                    let (registry, repository) = (&task.destination.registry, &task.destination.repository);
                    let feeders = feeders(&self.rules, listing, registry, repository).await?;
                    let deleter = Deleter { source: &self.source, destination: &destination.client };
                    Ok(deleter.delete(task, &feeders).await?)
                }
            }
        })
        .await
    }

    /// The copy engine for `task` into `destination`: this worker's clients
    /// and ledger, the task's bandwidth and deadline.
    fn copier<'a>(
        &'a self,
        task: &Task,
        destination: &'a Destination,
        stop_at: Option<Instant>,
        member: Option<&'a Member>,
    ) -> Copier<'a> {
        Copier {
            source: &self.source,
            destination: &destination.client,
            blob_concurrency: member
                .map_or(self.settings.blob_concurrency, |m| m.blobs_at_once(self.settings.blob_concurrency)),
            retry: self.retry,
            ledger: &destination.ledger,
            throttle: task.options.bandwidth_kbps.map(|k| Arc::new(Throttle::from_kbps(k))),
            stop_at,
            referrers: self.settings.referrers,
            min_throughput: self.settings.min_throughput(),
            fanout: member,
            streams: self.streams.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn message(id: &str) -> Message {
        Message { id: id.into(), receive_count: 1, ..Default::default() }
    }

    #[tokio::test]
    async fn a_panicking_task_fails_alone() {
        let finished = AtomicUsize::new(0);
        let batch = ["a", "boom", "b", "bad"].map(|id| vec![(message(id), ())]).into();
        let ended = std::sync::Mutex::new(Vec::new());
        let tell = |m: &Message, ok: bool| ended.lock().unwrap().push((m.id.clone(), ok));
        let failures = each_isolated(
            batch,
            2,
            |m, ()| {
                let finished = &finished;
                async move {
                    tokio::task::yield_now().await;
                    match m.id.as_str() {
                        "boom" => panic!("index out of bounds in task {}", m.id),
                        "bad" => Err(Failed {
                            uploads: Vec::new(),
                            error: "an ordinary failure".to_owned(),
                            cause: FailureCause::Manifest,
                            disposition: Disposition::Permanent,
                            slices: Slices::default(),
                        }),
                        _ => {
                            finished.fetch_add(1, Ordering::Relaxed);
                            Ok(())
                        }
                    }
                }
            },
            &tell,
        )
        .await;
        let mut failed: Vec<_> = failures.iter().map(|f| (f.message.id.as_str(), f.error.as_str())).collect();
        failed.sort();
        assert_eq!(
            failed,
            vec![("bad", "an ordinary failure"), ("boom", "task panicked: index out of bounds in task boom")]
        );
        assert_eq!(finished.load(Ordering::Relaxed), 2, "the neighbours ran to the end");
        let mut ended = ended.into_inner().unwrap();
        ended.sort();
        let told = [("a", true), ("b", true), ("bad", false), ("boom", false)].map(|(id, ok)| (id.to_owned(), ok));
        assert_eq!(ended, told, "each message's end is told with its success, a panicked one's too");
    }

    /// A fan-out group's member that starts late reads alone: the members
    /// of a unit start together, one slot or not.
    #[tokio::test]
    async fn a_units_messages_start_together_in_one_slot() {
        let together = tokio::sync::Barrier::new(3);
        let units = vec![vec![(message("alone"), ())], ["a", "b", "c"].map(|id| (message(id), ())).into()];
        let run = |m: Message, ()| {
            let together = &together;
            async move {
                if m.id != "alone" {
                    together.wait().await;
                }
                Ok(())
            }
        };
        let all = each_isolated(units, 1, run, &|_, _| {});
        let failures = tokio::time::timeout(std::time::Duration::from_secs(5), all).await.expect("a, b and c met");
        assert!(failures.is_empty());
    }
}
