//! The relay's AWS side, under the domain and the registry client and above
//! nothing else: the copy queue and its messages (`queue`, `message`), how
//! a failed task is settled (`settle`: backoff, the dead-letter queue in
//! `dead_letter`, the parking lot in `parking`), credentials from Secrets
//! Manager and ECR (`secrets`, `ecr`), the record of written tags in S3
//! (`written`), CloudWatch's metrics and logs (`metrics`, `telemetry`), and
//! the SDK's HTTP client (`sdk_http`).
//! No Harbor here, and no worker: those live in the crate `relay`.

// The lower crates' modules, where this crate's modules have always found
// them.
pub(crate) use relay_domain::{bundle, config, digest, registry_kind, repository, task};
pub(crate) use relay_oci as registry;

pub mod aws_error;
pub mod dead_letter;
pub mod ecr;
pub mod message;
pub mod metrics;
pub mod parking;
pub mod queue;
pub mod sdk_http;
pub mod secrets;
pub mod settle;
pub mod sqs;
pub mod telemetry;
pub mod written;
