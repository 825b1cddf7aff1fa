//! The relay's domain, without I/O: digests and repository names, Harbor's
//! events, replication rules with Harbor's globs, the tasks they plan, and
//! the configuration that holds them. Everything above — the registry
//! client, the copy engine, Harbor's API, AWS, the functions — builds on
//! these types and none of them reaches back up: the compiler keeps it so.

pub mod bundle;
pub mod config;
pub mod digest;
pub mod doublestar;
pub mod event;
pub mod host;
pub mod plan;
pub mod registry_kind;
pub mod repository;
pub mod rules;
pub mod task;
pub mod throughput;

pub use config::Config;
pub use digest::Digest;
pub use repository::{RepositoryPath, Tag};
pub use task::Task;
