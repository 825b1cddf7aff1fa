//! The copy engine (the crate `relay-copy`) on the registry client of the
//! crate `relay-oci`, both re-exported here, where they have always been.

pub use relay_copy::{copy, delete, referrers};
pub use relay_oci::{auth, chunks, client, ledger, manifest, pace, resume, retry, tee, throttle, verify};

pub use auth::Credentials;
pub use client::{ClientOptions, Pushed, RegistryClient, RegistryError, Role, UploadStart};
pub use copy::{Copier, CopyError, CopyReport, Outcome};
pub use delete::Deleter;
