//! A registry's host description: everything that differs from one
//! registry to the next is data here, not an `if` in the client.
//!
//! The description is [`crate::config::Registry`] (name, endpoint, TLS
//! settings, where the credentials come from, the kind with its settings)
//! and, read from its kind, the [`Quirks`]: what the registry does not do
//! the standard way. What a registry's answers teach at run time (a 413
//! that asks for chunks, a referrers API that is absent, mounts refused)
//! is not configuration: the registry client keeps it beside the client
//! (relay-oci's `learnt`), keyed by the registry's name and endpoint, so a
//! configuration reload that rebuilds the clients does not forget it.
//!
//! Recipes:
//! - a new kind is its own file under `registry_kind/` (its settings, how
//!   its fields are read, its [`Quirks`]: a `KindSpec` named `SPEC`) and
//!   one line in the `kinds!` list of `registry_kind.rs`; its own fields,
//!   if any, are also read by `RawKindFields` (serde refuses unknown
//!   fields only from one flat struct). A kind that differs only in its
//!   quirks needs nothing more. One that acts before a push (creates
//!   repositories, fetches its own tokens) adds that as one arm of the
//!   application's `destination::KindRuntime` and one of
//!   `bootstrap::destination_client`.
//! - a refused tag is not a quirk: an immutable tag is told by the answer
//!   itself (ECR's `TAG_INVALID` "… immutable", Harbor's 412
//!   `PRECONDITION` "… configured as immutable"), recognised from any
//!   registry because a proxy or a Harbor in front of another may give
//!   either (relay-oci's `RegistryError::is_immutable_tag` and
//!   `is_refused_as_immutable`).
//! - a new quirk is one field of [`Quirks`] (documented with the answer
//!   that reveals it), its value in each kind's defaults, and the one place
//!   in the registry client that reads it. When the quirk can also be
//!   learnt from an answer, the learnt flag goes in relay-oci's `learnt`,
//!   beside the others, and is read in that same place.

/// What a registry does not do the standard way, as its kind says. Every
/// field is `true` for a registry that follows the distribution spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quirks {
    /// A 413 to a whole blob may switch its uploads to chunks (`PATCH`).
    /// ECR mishandles chunked uploads through the distribution API: whole
    /// blobs only, whatever it answers. Read by the client's
    /// `shrink_chunks`.
    pub chunked_uploads: bool,
    /// A blob another repository of the registry holds is asked to be
    /// mounted (`POST …/blobs/uploads/?mount=…&from=…`) instead of sent.
    /// A registry that refuses mounts answers 400 or 405 (or a 202
    /// session, which is used); the first refusal is learnt as well. Read
    /// by the client's `start_upload`.
    pub cross_repo_mounts: bool,
    /// A mount from the repository itself tells whether the repository
    /// holds the blob: 201 when it does, else an upload session (202). The
    /// distribution registry and Harbor answer so, and a blob nobody knows
    /// is then checked by its upload's own `POST` instead of a `HEAD`
    /// first. ECR declines (202) the mount of a blob no manifest refers to
    /// and mounts nothing unless the account enables it: a 202 there says
    /// nothing, so its blobs get the `HEAD`. Read by the client's
    /// `check_in_place`.
    pub mount_answers_presence: bool,
    /// Referrers (signatures, SBOMs) are asked through the OCI 1.1
    /// referrers API (`GET /v2/<name>/referrers/<digest>`) before the tag
    /// schema (`sha256-<hex>` tags). A registry without the API answers
    /// 404; the first one is learnt. Read by the client's `asks_referrers`.
    pub referrers_api: bool,
}

impl Quirks {
    /// A registry that follows the distribution spec.
    pub const STANDARD: Quirks =
        Quirks { chunked_uploads: true, cross_repo_mounts: true, referrers_api: true, mount_answers_presence: true };
}

impl Default for Quirks {
    fn default() -> Self {
        Quirks::STANDARD
    }
}
