//! The OCI distribution side, without AWS or Harbor: a thin client per
//! registry (`client`: transport, authentication, listing, manifests,
//! uploads, what a registry turned out to need), the streams a copy is made
//! of (`tee`, `verify`, `pace`, `throttle`, `chunks`), and the records a
//! copy keeps (`ledger`, `resume`). The copy engine that drives them lives
//! above, in the crate `relay` (`registry::copy`).

// The domain's types, where this crate's modules have always found them.
pub(crate) use relay_domain::{digest, repository};

pub mod auth;
pub mod chunks;
pub mod client;
pub mod ledger;
pub mod manifest;
pub mod pace;
pub mod resume;
pub mod retry;
pub mod tee;
pub mod throttle;
pub mod tls;
pub mod verify;

pub use auth::Credentials;
pub use client::{ClientOptions, Pushed, RegistryClient, RegistryError, Role, UploadStart};
