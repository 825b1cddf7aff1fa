//! The copy engine: what a task moves from the source to a destination and
//! in which order — blobs skipped, mounted or streamed (`blobs`), manifests
//! and tags (`copy`), referrers (`referrers`) — and how a delete decides
//! (`delete`), over the registry client of `relay-oci`. No AWS, no Harbor:
//! the worker in `relay` runs it.

// The lower crates' modules, where the engine's modules have always found
// them (it was `relay::registry`, beside the client).
pub(crate) use relay_domain::{digest, repository, task};
pub(crate) use relay_oci::{
    chunks, client, ledger, manifest, pace, resume, retry, tee, throttle, verify, RegistryError,
};

mod blobs;
pub mod copy;
pub mod delete;
pub mod referrers;

pub use copy::{Copier, CopyError, CopyReport, Outcome};
