//! The copy engine: what a task moves from the source to a destination and
//! in which order, over the registry client of `relay-oci`. No AWS, no
//! Harbor: the worker in `relay` runs it.
//!
//! A copy resolves what is due (`copy`: the HEADs, the root), reads the
//! children the destination lacks (`walk`), plans without I/O (`plan`:
//! blobs, children first, the root, its tags), then walks the plan: blobs
//! as the ledger decides, skipped, mounted or streamed (`blobs`, one
//! attempt in `upload`, resumable chunks in `resumable`, the source's read
//! in `source`), manifests, tags, then referrers (`referrers`). A delete
//! is a type of its own (`delete`). What a task did is its report
//! (`report`).

// The lower crates' modules, where the engine's modules have always found
// them (it was `relay::registry`, beside the client).
pub(crate) use relay_domain::{digest, repository, task};
pub(crate) use relay_oci::{
    chunks, client, ledger, manifest, pace, resume, retry, tee, throttle, verify, RegistryError,
};

pub mod copy;
pub mod delete;
mod plan;
mod report;

pub use copy::{referrers, Copier, CopyError, CopyReport, Outcome};
pub use delete::Deleter;
