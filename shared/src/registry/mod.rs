//! The OCI distribution side: a thin client per registry and the copy engine
//! built on it.

pub mod auth;
mod blobs;
pub mod chunks;
pub mod client;
pub mod copy;
pub mod delete;
pub mod ledger;
pub mod manifest;
pub mod pace;
pub mod referrers;
pub mod resume;
pub mod retry;
pub mod tee;
pub mod throttle;
pub mod verify;

pub use auth::Credentials;
pub use client::{ClientOptions, Pushed, RegistryClient, RegistryError, Role, UploadStart};
pub use copy::{Copier, CopyError, CopyReport, Outcome};
