//! `kind: registry` (the default): any OCI distribution registry.
//! Credentials come from the configuration, the first push creates a
//! repository, and nothing is done the non-standard way.

use super::{KindSpec, RegistryKind};
use crate::host::Quirks;

pub(super) const SPEC: KindSpec = KindSpec {
    name: "registry",
    // Any distribution registry follows the spec.
    quirks: Quirks::STANDARD,
    // No settings of its own: a field of another kind is refused by
    // `RawKindFields::resolve` before `resolve` is reached.
    fields: &[],
    resolve: |_, _| Ok(RegistryKind::Registry),
};
