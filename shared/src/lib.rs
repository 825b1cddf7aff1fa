//! harbor-relay's domain: Harbor events → replication rules → tasks on a
//! queue → registry copies. The function binaries are thin edges over this
//! crate; see ARCHITECTURE.md for the map.

// The domain crate's modules, where the rest of the relay has always
// found them (`crate::config`, `relay::task`).
pub use relay_domain::{config, digest, doublestar, event, plan, registry_kind, repository, rules, task};
pub use relay_oci::tls;

pub mod aws_error;
pub mod bootstrap;
pub mod dead_letter;
pub mod destination;
pub mod ecr;
pub mod feeders;
pub mod harbor_api;
pub mod harbor_webhooks;
pub mod health;
pub mod history;
pub mod message;
pub mod metrics;
pub mod ops;
pub mod parking;
pub mod poller;
pub mod progress;
pub mod queue;
pub mod reconcile;
pub mod registry;
pub mod reload;
pub mod secrets;
pub mod server;
pub mod settle;
pub mod telemetry;
pub mod webhook;
pub mod worker;
pub mod written;

pub use config::Config;
pub use digest::Digest;
pub use repository::{RepositoryPath, Tag};
pub use task::Task;
