//! The copy engine, on the registry client of the crate `relay-oci` (whose
//! modules are re-exported here, where they have always been).

pub use relay_oci::{auth, chunks, client, ledger, manifest, pace, resume, retry, tee, throttle, verify};

mod blobs;
pub mod copy;
pub mod delete;
pub mod referrers;

pub use auth::Credentials;
pub use client::{ClientOptions, Pushed, RegistryClient, RegistryError, Role, UploadStart};
pub use copy::{Copier, CopyError, CopyReport, Outcome};
