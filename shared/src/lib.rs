//! harbor-relay's application: Harbor events → replication rules → tasks on
//! a queue → registry copies, wired from the crates below it (domain, OCI,
//! AWS, copy engine, Harbor). The function binaries are thin edges over
//! this crate; see ARCHITECTURE.md for the map.

// The lower crates' modules, where the relay has always found them
// (`crate::config`, `relay::settle`, `relay::registry::client`).
pub use relay_aws::{
    aws_error, dead_letter, ecr, message, metrics, parking, queue, secrets, settle, sqs, telemetry, written,
};
pub use relay_domain::{bundle, config, digest, doublestar, event, plan, registry_kind, repository, rules, task};
pub use relay_harbor::{
    compare as harbor_compare, harbor_api, harbor_webhooks, import as harbor_import, project_policies,
    replication as harbor_replication,
};
pub use relay_oci::tls;

pub mod bootstrap;
pub mod config_store;
pub mod destination;
pub mod explain;
pub mod feeders;
pub mod health;
pub mod history;
pub mod ops;
pub mod poller;
pub mod progress;
pub mod reconcile;
pub mod registry;
pub mod reload;
pub mod runner;
pub mod sdk;
pub mod server;
pub mod settings;
pub mod webhook;
pub mod worker;

pub use config::Config;
pub use digest::Digest;
pub use repository::{RepositoryPath, Tag};
pub use task::Task;
