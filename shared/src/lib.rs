//! harbor-relay's domain: Harbor events → replication rules → tasks on a
//! queue → registry copies. The function binaries are thin edges over this
//! crate; see ARCHITECTURE.md for the map.

pub mod aws_error;
pub mod bootstrap;
pub mod config;
pub mod dead_letter;
pub mod destination;
pub mod digest;
pub mod doublestar;
pub mod ecr;
pub mod event;
pub mod feeders;
pub mod harbor_api;
pub mod harbor_webhooks;
pub mod health;
pub mod history;
pub mod message;
pub mod metrics;
pub mod ops;
pub mod parking;
pub mod plan;
pub mod poller;
pub mod progress;
pub mod queue;
pub mod reconcile;
pub mod registry;
pub mod registry_kind;
pub mod reload;
pub mod repository;
pub mod rules;
pub mod secrets;
pub mod server;
pub mod settle;
pub mod task;
pub mod telemetry;
pub mod tls;
pub mod webhook;
pub mod worker;
pub mod written;

pub use config::Config;
pub use digest::Digest;
pub use repository::{RepositoryPath, Tag};
pub use task::Task;
