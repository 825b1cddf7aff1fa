//! The parking lot: where the tasks of an unavailable registry wait, and
//! the probe that brings them back as soon as it answers again.
//!
//! Parking a task in the copy queue itself with a delay can only guess when
//! the registry returns: short delays redeliver every parked task every few
//! seconds for the whole outage, doubling ones (up to SQS's 15 minutes)
//! bring the work back minutes after the registry did. So a parked task
//! leaves the copy queue for a parking queue nothing consumes, and one
//! *probe* message per unavailable registry circulates on the copy queue
//! every [`ParkingLot::probe_every`]: the worker that receives it asks the
//! registry (`GET /v2/`); while it fails, the probe goes round again; when
//! it answers, the registry's parked tasks are moved back to the copy queue
//! at once. Parked work reaches a registry within one probe period of its
//! return, whatever the outage's length, at the cost of one probe message
//! per registry per period while it is down.
//!
//! Nothing parks forever: a task parked longer than [`ParkingLot::limit`]
//! is dead-lettered with that reason, when its registry returns or, while
//! it stays down, by the probe once the outage is older than the limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::dead_letter::DeadLetters;
use crate::metrics::{self, Slices, Unit};
// Where the crates' users have always found them.
use crate::message::{
    number_attribute, string_attribute, Disposition, Failure, FailureCause, Message, CONTINUATIONS, DOWN_SINCE, PARKED,
    PROBE,
};
pub use crate::message::{unix_now, Probe, PARKED_ON, PARKED_SINCE};
use crate::sqs::{self, Outgoing, Receive, Received, Sqs};

/// What became of a task handed to [`ParkingLot::park`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parked {
    /// In the parking queue; its message can be deleted.
    Waiting,
    /// Parked longer than the limit already: to be dead-lettered.
    TooLong,
    /// The parking queue did not take it: the message must be redelivered.
    Refused,
}

/// How a release went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// Tasks moved back to the copy queue.
    pub moved: usize,
    /// Tasks parked longer than the limit, dead-lettered.
    pub expired: usize,
    /// The deadline came before the parking queue was empty.
    pub unfinished: bool,
}

/// A probe due less than this after now may be taken before a task being
/// parked reaches the lot: that task sends its own.
const PROBE_SEND_MARGIN: Duration = Duration::from_secs(2);

/// The parking queue and the probes of one worker.
pub struct ParkingLot {
    sqs: Sqs,
    parking_url: String,
    queue_url: String,
    /// The probe's period: parked work waits at most this long after its
    /// registry's return (plus a receive).
    pub probe_every: Duration,
    /// How long a task may stay parked before it is dead-lettered.
    pub limit: Duration,
    /// Registries this process sent a probe for, and when that probe is
    /// due. A task is parked only with a probe still to come after it is
    /// in the lot: otherwise a probe releasing the registry just before
    /// the task arrives would leave it parked with none to come (several
    /// workers may each send one; every probe ends when the registry
    /// answers).
    probing: Mutex<HashMap<String, Instant>>,
    /// When this process last swept the lot for tasks past the limit: once
    /// an outage is older than the limit every failed probe would, reading
    /// every parked task each probe period; a twenty-fourth of the limit
    /// apart is soon enough.
    swept: Mutex<Option<Instant>>,
    /// Where tasks parked past the limit go, with their reason.
    dead_letters: Option<DeadLetters>,
}

impl ParkingLot {
    pub fn new(
        sqs: aws_sdk_sqs::Client,
        parking_url: String,
        queue_url: String,
        dead_letters: Option<DeadLetters>,
        settings: &crate::config::WorkerSettings,
    ) -> ParkingLot {
        ParkingLot {
            sqs: Sqs::new(sqs),
            parking_url,
            queue_url,
            probe_every: Duration::from_secs(settings.probe_seconds),
            limit: Duration::from_secs(settings.park_limit_seconds),
            probing: Mutex::new(HashMap::new()),
            swept: Mutex::new(None),
            dead_letters,
        }
    }

    /// Moves `m`'s task to the parking queue to wait for `registry`, and
    /// makes sure a probe asks that registry.
    pub async fn park(&self, m: &Message, registry: &str) -> Parked {
        let now = unix_now();
        let since = m.parked_since.unwrap_or(now);
        if Duration::from_secs(now.saturating_sub(since)) > self.limit {
            return Parked::TooLong;
        }
        // The probe first: a worker stopped between the two leaves the task
        // on the copy queue (redelivered), never parked without a probe.
        let pending = {
            let probing = self.probing.lock().unwrap_or_else(|p| p.into_inner());
            probing.get(registry).is_some_and(|due| *due > Instant::now() + PROBE_SEND_MARGIN)
        };
        if !pending {
            let probe = Probe { registry: registry.to_owned(), down_since: since };
            if !self.send_probe(&probe, self.probe_every).await {
                return Parked::Refused;
            }
        }
        let message = Outgoing::new(&m.body)
            .attribute(PARKED, number_attribute(u64::from(m.parked) + 1))
            .attribute(CONTINUATIONS, number_attribute(u64::from(m.continuations)))
            .attribute(PARKED_ON, string_attribute(registry))
            .attribute(PARKED_SINCE, number_attribute(since));
        let sent = self.sqs.send(&self.parking_url, message).await;
        if let Err(e) = sent {
            tracing::warn!(message_id = %m.id, error = %e, "cannot park the task; the message is redelivered instead");
            return Parked::Refused;
        }
        tracing::info!(message_id = %m.id, registry, parked_since = since, "task parked until its registry answers");
        Parked::Waiting
    }

    /// Puts `probe` on the copy queue, due after `delay`.
    async fn send_probe(&self, probe: &Probe, delay: Duration) -> bool {
        let body = serde_json::json!({ "probe": probe.registry }).to_string();
        let message = Outgoing::new(body)
            .delay_seconds(delay.as_secs().min(900) as i32)
            .attribute(PROBE, string_attribute(&probe.registry))
            .attribute(DOWN_SINCE, number_attribute(probe.down_since));
        let sent = self.sqs.send(&self.queue_url, message).await;
        match sent {
            Ok(_) => {
                let due = Instant::now() + delay;
                let mut probing = self.probing.lock().unwrap_or_else(|p| p.into_inner());
                let entry = probing.entry(probe.registry.clone()).or_insert(due);
                *entry = (*entry).max(due);
                true
            }
            Err(e) => {
                tracing::warn!(registry = %probe.registry, error = %e, "cannot send the registry's probe");
                false
            }
        }
    }

    /// The probe's registry did not answer: it goes round again, and the
    /// tasks parked longer than the limit are dead-lettered once the
    /// outage itself is that old. False when the probe could not be sent
    /// (then its message must be redelivered, so the round goes on).
    pub async fn still_down(&self, probe: &Probe) -> bool {
        let due = {
            let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
            let old = Duration::from_secs(unix_now().saturating_sub(probe.down_since)) > self.limit;
            let due = old && swept.is_none_or(|t| t.elapsed() >= (self.limit / 24).max(self.probe_every));
            if due {
                *swept = Some(Instant::now());
            }
            due
        };
        if due {
            // Only the expired ones leave; the rest is made visible again.
            let _ = self.sweep(None, None).await;
        }
        self.send_probe(probe, self.probe_every).await
    }

    /// `registry` answers again: its parked tasks go back to the copy
    /// queue (those parked longer than the limit to the DLQ), before
    /// `stop_at` when given. An unfinished release sends the probe again at
    /// once, so another run carries on.
    pub async fn release(&self, probe: &Probe, stop_at: Option<Instant>) -> Released {
        // This probe's entry goes; one sent later, still to come, stays.
        self.probing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|r, due| r != &probe.registry || *due > Instant::now());
        let released = self.sweep(Some(&probe.registry), stop_at).await;
        if released.unfinished {
            self.send_probe(probe, Duration::ZERO).await;
        }
        tracing::info!(
            registry = %probe.registry,
            moved = released.moved,
            expired = released.expired,
            unfinished = released.unfinished,
            "registry answers again: its parked tasks are back on the copy queue"
        );
        metrics::emit(
            &[("Function", "worker"), ("Registry", probe.registry.as_str())],
            &[("TasksReleased", released.moved as f64, Unit::Count)],
        );
        released
    }

    /// One walk through the parking queue: with a `registry` that answers
    /// again, every waiting task is moved back to the copy queue (none: no
    /// task), those parked
    /// longer than the limit are dead-lettered, and every other one is made
    /// visible again at the end (so a release of another registry running
    /// at the same time still finds it).
    async fn sweep(&self, registry: Option<&str>, stop_at: Option<Instant>) -> Released {
        let mut released = Released::default();
        let started = unix_now();
        let mut left: Vec<String> = Vec::new();
        loop {
            if stop_at.is_some_and(|t| Instant::now() >= t) {
                released.unfinished = true;
                break;
            }
            let receive = Receive {
                max: 10,
                attributes: &["All"],
                visibility_seconds: Some(60),
                // Short polls may miss messages that are there.
                wait_seconds: Some(1),
                receive_count: false,
            };
            let messages = match self.sqs.receive(&self.parking_url, receive).await {
                Ok(messages) => messages,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the parking queue");
                    released.unfinished = true;
                    break;
                }
            };
            if messages.is_empty() {
                break;
            }
            let (mut moving, mut expired) = (Vec::new(), Vec::new());
            for m in messages {
                let Some(receipt) = m.receipt_handle().map(str::to_owned) else { continue };
                let attribute = |name: &str| sqs::attribute(&m, name).map(str::to_owned);
                let since = attribute(PARKED_SINCE).and_then(|v| v.parse::<u64>().ok()).unwrap_or(started);
                let on = attribute(PARKED_ON).unwrap_or_default();
                if Duration::from_secs(started.saturating_sub(since)) > self.limit {
                    expired.push((m, receipt, on, since));
                } else if registry.is_some() {
                    // Every waiting task goes back, not only `registry`'s:
                    // sweeps running at once hide each other's messages,
                    // and a task left hidden by another registry's sweep
                    // could miss its own release. One still down parks
                    // again at once (its breaker is open), keeping its
                    // `PARKED_SINCE`.
                    moving.push((m, receipt));
                } else {
                    left.push(receipt);
                }
            }
            released.moved += self.move_back(&moving).await;
            released.expired += self.expire(&expired).await;
        }
        self.show_again(&left).await;
        released
    }

    /// Sends `messages` back to the copy queue with their attributes and
    /// deletes them from the parking queue; how many moved.
    async fn move_back(&self, messages: &[(Received, String)]) -> usize {
        if messages.is_empty() {
            return 0;
        }
        let entries = messages
            .iter()
            .map(|(m, _)| Outgoing {
                body: m.body().unwrap_or_default().to_owned(),
                attributes: m.message_attributes().cloned().unwrap_or_default(),
                ..Default::default()
            })
            .collect();
        let failed: Vec<usize> = match self.sqs.send_batch(&self.queue_url, entries).await {
            Ok(refused) => refused.into_iter().map(|(i, ..)| i).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot move parked tasks back; they stay parked");
                return 0;
            }
        };
        let done: Vec<&String> =
            messages.iter().enumerate().filter(|(i, _)| !failed.contains(i)).map(|(_, (_, receipt))| receipt).collect();
        self.delete(&done).await;
        done.len()
    }

    /// Dead-letters tasks parked longer than the limit, with that reason;
    /// how many went.
    async fn expire(&self, messages: &[(Received, String, String, u64)]) -> usize {
        let Some(dead_letters) = &self.dead_letters else {
            if !messages.is_empty() {
                tracing::warn!(
                    count = messages.len(),
                    "tasks parked past the limit, but no DLQ is known: they stay parked"
                );
            }
            return 0;
        };
        let failures: Vec<Failure> = messages
            .iter()
            .map(|(m, receipt, on, since)| Failure {
                message: Message {
                    id: m.message_id().unwrap_or_default().to_owned(),
                    body: m.body().unwrap_or_default().to_owned(),
                    receipt: Some(receipt.clone()),
                    ..Default::default()
                },
                error: format!(
                    "parked for more than {} s waiting for registry {on:?} (since {since}, Unix time)",
                    self.limit.as_secs()
                ),
                cause: FailureCause::ParkedTooLong,
                disposition: Disposition::Permanent,
                slices: Slices { registry: on.clone(), rule: metrics::UNKNOWN.into() },
            })
            .collect();
        let unsent = dead_letters.send_all(&failures).await;
        let sent: Vec<&String> = messages
            .iter()
            .filter(|(m, ..)| !unsent.iter().any(|u| Some(u.as_str()) == m.message_id()))
            .map(|(_, receipt, ..)| receipt)
            .collect();
        for f in failures.iter().filter(|f| !unsent.contains(&f.message.id)) {
            metrics::emit_sliced(&[("Function", "worker")], &f.slices, &[("FinalFailures", 1.0, Unit::Count)]);
        }
        self.delete(&sent).await;
        sent.len()
    }

    async fn delete(&self, receipts: &[&String]) {
        for chunk in receipts.chunks(10) {
            let chunk: Vec<&str> = chunk.iter().map(|r| r.as_str()).collect();
            if let Err(e) = self.sqs.delete_batch(&self.parking_url, &chunk).await {
                tracing::warn!(error = %e, "cannot delete moved tasks from the parking queue; they may run twice");
            }
        }
    }

    async fn show_again(&self, receipts: &[String]) {
        for chunk in receipts.chunks(10) {
            let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
            if let Err(e) = self.sqs.change_visibility_batch(&self.parking_url, &chunk, 0).await {
                tracing::warn!(error = %e, "cannot show parked tasks again; they are back within a minute");
            }
        }
    }
}
