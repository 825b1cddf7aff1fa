//! A copy-queue message as the worker holds it: its task's body, its
//! delivery count and the relay's own message attributes (the counters,
//! the parking lot's, a continuation's uploads), and — when its task fails
//! — the failure and how it is to be settled. The worker produces these;
//! settling, the parking lot and the dead-letter queue consume them, so
//! they live below all four.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metrics::Slices;
use crate::registry::resume::OpenUpload;

/// The name errors, logs and parking give the source (no destination may
/// take it, see the configuration's check).
pub const SOURCE: &str = "source";

/// Message attribute: how many times the task was parked because its
/// destination was unavailable (the next park waits longer).
pub const PARKED: &str = "RelayParked";
/// Message attribute: how many continuations the task has had.
pub const CONTINUATIONS: &str = "RelayContinuations";

/// Message attribute: how many times the task was tried before this
/// message — a bundle member's retry goes on in a fresh message, whose own
/// receive count starts again. Not the dead letter's `RelayAttempts`
/// (all its tries): a redrive that keeps attributes starts afresh.
pub const TRIED_BEFORE: &str = "RelayTriedBefore";

/// Message attribute of a parked task: the registry it waits for (a
/// destination's name, or `source`).
pub const PARKED_ON: &str = "RelayParkedOn";
/// Message attribute of a parked task: when it was first parked (Unix
/// seconds), kept across parkings so the limit counts the whole wait.
pub const PARKED_SINCE: &str = "RelayParkedSince";
/// Message attribute of a probe: the registry it asks.
pub const PROBE: &str = "RelayProbe";
/// Message attribute of a probe: since when its registry has been
/// unavailable (Unix seconds).
pub const DOWN_SINCE: &str = "RelayDownSince";

/// What a probe message says: which registry, unavailable since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub registry: String,
    pub down_since: u64,
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// How a failed message is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Worth another attempt later: the message becomes visible again after
    /// a backoff that grows with its receive count (with jitter, never
    /// shorter than the registry's `Retry-After`, capped), and the attempt
    /// counts towards `maxReceiveCount`. On the last attempt: dead-lettered.
    Retry { retry_after: Option<Duration> },
    /// No retry can fix it (undecodable, unknown registry, a manifest or
    /// blob the source serves wrong): dead-lettered at once with the reason.
    Permanent,
    /// The invocation deadline stopped a task that made progress: a fresh
    /// message carries it on (the next run skips what was copied) and this
    /// one is deleted, so a long copy never runs out of receives.
    Continue,
    /// A registry is unavailable (a destination, or the `source`): the
    /// task waits in the parking lot until a probe finds it answering
    /// ([`crate::parking`]), or without one in a fresh message delayed by a
    /// time that grows with each parking; no attempt counted.
    Park { source: bool },
}

/// One queue message.
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub id: String,
    pub body: String,
    /// Attempts at its task, this delivery included: SQS's
    /// `ApproximateReceiveCount` plus those before this message
    /// ([`TRIED_BEFORE`]); 0 unknown.
    pub receive_count: u32,
    /// To change its visibility (the backoff); `None` where unknown.
    pub receipt: Option<String>,
    /// Times its task was parked before ([`PARKED`]).
    pub parked: u32,
    /// Continuations its task had before ([`CONTINUATIONS`]).
    pub continuations: u32,
    /// When its task was first parked ([`PARKED_SINCE`]).
    pub parked_since: Option<u64>,
    /// The registry it was parked for, when a probe's success released it
    /// ([`PARKED_ON`]).
    pub parked_on: Option<String>,
    /// Set on a probe message instead of a task ([`PROBE`]).
    pub probe: Option<Probe>,
    /// Set on a task that came in a bundle ([`crate::bundle`]): the
    /// bundle message's id. It has no receipt of its own, so its failure
    /// is settled by a fresh message holding it alone, and redelivering it
    /// means redelivering the bundle.
    pub bundle: Option<String>,
    /// Uploads an earlier run of its task left open
    /// ([`crate::registry::resume::UPLOADS`]); on a failure, those its
    /// continuation carries on.
    pub uploads: Vec<OpenUpload>,
}

impl Message {
    /// Reads the relay's own message attributes (the counters, the parking
    /// lot's) through `get`, which gives an attribute's string value: one
    /// reading for the Lambda event's records and the poller's receives.
    pub fn with_attributes<'a>(mut self, get: impl Fn(&str) -> Option<&'a str>) -> Message {
        let number = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok());
        let count = |name: &str| number(name).and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
        self.receive_count = self.receive_count.saturating_add(count(TRIED_BEFORE));
        self.parked = count(PARKED);
        self.continuations = count(CONTINUATIONS);
        self.parked_since = number(PARKED_SINCE);
        self.parked_on = get(PARKED_ON).map(str::to_owned);
        self.uploads =
            get(crate::registry::resume::UPLOADS).and_then(|json| serde_json::from_str(json).ok()).unwrap_or_default();
        self.probe = get(PROBE).map(|registry| Probe {
            registry: registry.to_owned(),
            down_since: number(DOWN_SINCE).unwrap_or_else(unix_now),
        });
        self
    }

    /// The names of the attributes [`Message::with_attributes`] reads.
    pub const ATTRIBUTES: [&'static str; 8] = [
        crate::registry::resume::UPLOADS,
        PARKED,
        CONTINUATIONS,
        TRIED_BEFORE,
        PARKED_SINCE,
        PARKED_ON,
        PROBE,
        DOWN_SINCE,
    ];

    /// The id SQS knows it by: its bundle's for a bundle member.
    pub fn delivered_as(&self) -> &str {
        self.bundle.as_deref().unwrap_or(&self.id)
    }
}

/// Why a task failed, by kind: built from the typed errors where the task
/// failed (never by reading their text), and carried with the failure to
/// settling, the dead-letter queue's attribute and the log, under a stable
/// name ([`FailureCause::as_str`]) that alarms and queries can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureCause {
    /// The message is not a task this worker understands.
    Undecodable,
    /// The task names a registry the configuration does not.
    UnknownRegistry,
    /// The rules in force do not allow the task.
    RefusedByRules,
    /// A registry is unavailable: the task waits for it.
    RegistryUnavailable,
    /// The source repositories feeding a delete could not be listed.
    SourceListing,
    /// Credentials could not be read again after a denial.
    Credentials,
    /// The destination's repository could not be made ready (ECR
    /// repository, Harbor project); `denied`: for want of a permission.
    Prepare { denied: bool },
    /// A manifest the relay does not copy (schema 1, unknown type, too
    /// many children, too deep, too many bytes).
    Manifest,
    /// The invocation's deadline came first.
    Deadline,
    /// The source could not be reached (connection failed).
    SourceUnreachable,
    /// A destination could not be reached (connection failed).
    DestinationUnreachable,
    /// A registry's certificate did not verify.
    Certificate,
    /// The source answered an HTTP error.
    SourceRefused { status: u16 },
    /// A destination answered an HTTP error.
    DestinationRefused { status: u16 },
    /// A destination refused to move an immutable tag.
    ImmutableTag,
    /// A registry denied the credentials, or its token service failed.
    Unauthorized,
    /// What a registry served does not match its digest.
    DigestMismatch,
    /// A manifest larger than the relay reads.
    ManifestTooLarge,
    /// A redirect the registry may not make.
    Redirect,
    /// A registry's answer broke the protocol.
    Protocol,
    /// Parked longer than the limit waiting for its registry.
    ParkedTooLong,
    /// The task panicked.
    Panic,
    /// A probe of the parking lot could not be carried out.
    Probe,
}

impl FailureCause {
    /// The cause's stable name, as the DLQ attribute and the log carry it.
    pub fn as_str(&self) -> &'static str {
        match self {
            FailureCause::Undecodable => "undecodable",
            FailureCause::UnknownRegistry => "unknown_registry",
            FailureCause::RefusedByRules => "refused_by_rules",
            FailureCause::RegistryUnavailable => "registry_unavailable",
            FailureCause::SourceListing => "source_listing",
            FailureCause::Credentials => "credentials",
            FailureCause::Prepare { denied: true } => "prepare_denied",
            FailureCause::Prepare { denied: false } => "prepare_failed",
            FailureCause::Manifest => "manifest_not_copied",
            FailureCause::Deadline => "deadline",
            FailureCause::SourceUnreachable => "source_unreachable",
            FailureCause::DestinationUnreachable => "destination_unreachable",
            FailureCause::Certificate => "certificate",
            FailureCause::SourceRefused { .. } => "source_refused",
            FailureCause::DestinationRefused { .. } => "destination_refused",
            FailureCause::ImmutableTag => "immutable_tag",
            FailureCause::Unauthorized => "unauthorized",
            FailureCause::DigestMismatch => "digest_mismatch",
            FailureCause::ManifestTooLarge => "manifest_too_large",
            FailureCause::Redirect => "redirect_refused",
            FailureCause::Protocol => "protocol",
            FailureCause::ParkedTooLong => "parked_too_long",
            FailureCause::Panic => "panic",
            FailureCause::Probe => "probe",
        }
    }
}

impl std::fmt::Display for FailureCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message whose task failed, with the reason (no secrets in it), its
/// cause and how it is to be settled.
#[derive(Debug, Clone)]
pub struct Failure {
    pub message: Message,
    pub error: String,
    pub cause: FailureCause,
    pub disposition: Disposition,
    /// What its metrics count under, final failures included.
    pub slices: Slices,
}

/// A `String` message attribute.
pub fn string_attribute(value: impl Into<String>) -> aws_sdk_sqs::types::MessageAttributeValue {
    aws_sdk_sqs::types::MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("type and value set")
}

/// A `Number` message attribute.
pub fn number_attribute(value: u64) -> aws_sdk_sqs::types::MessageAttributeValue {
    aws_sdk_sqs::types::MessageAttributeValue::builder()
        .data_type("Number")
        .string_value(value.to_string())
        .build()
        .expect("type and value set")
}
