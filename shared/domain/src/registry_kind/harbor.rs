//! `kind: harbor`: another Harbor, whose projects the relay may create
//! through Harbor's API before the first push into them.

use super::{KindError, KindSpec, RawKindFields, RegistryKind};
use crate::host::Quirks;

pub(super) const SPEC: KindSpec = KindSpec {
    name: "harbor",
    // Harbor is a distribution registry: nothing non-standard.
    quirks: Quirks::STANDARD,
    fields: &["create_projects", "storage_limit"],
    resolve: |raw, at| resolve(raw, at.field).map(RegistryKind::Harbor),
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HarborSettings {
    /// Create a missing project (private) through Harbor's API before the
    /// first push into it.
    pub create_projects: bool,
    /// Storage quota of created projects, bytes; `None`: Harbor's default.
    pub storage_limit: Option<i64>,
}

fn resolve(raw: RawKindFields, field: &str) -> Result<HarborSettings, KindError> {
    if raw.storage_limit.is_some_and(|l| l < -1 || l == 0) {
        return Err(KindError::invalid(format!("{field}.storage_limit"), "bytes, at least 1 (or -1 for unlimited)"));
    }
    Ok(HarborSettings { create_projects: raw.create_projects.unwrap_or(false), storage_limit: raw.storage_limit })
}
