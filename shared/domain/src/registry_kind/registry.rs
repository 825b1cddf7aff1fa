//! `kind: registry` (the default): any OCI distribution registry.
//! Credentials come from the configuration, the first push creates a
//! repository, and nothing is done the non-standard way.

use super::{KindError, RawKindFields};
use crate::host::Quirks;

/// Any distribution registry follows the spec.
pub(super) const QUIRKS: Quirks = Quirks::STANDARD;

/// No settings of its own: a field of another kind is refused by
/// [`RawKindFields::resolve`] before this is reached.
pub(super) fn resolve(_raw: RawKindFields) -> Result<(), KindError> {
    Ok(())
}
