//! One module per command, each a `run` over what its arguments hold; the
//! shared pieces (the output form, planning, the configuration's fit) stay
//! in `main.rs`, which the modules see whole.

use super::*;

pub(crate) mod check;
pub(crate) mod config_push;
pub(crate) mod dlq;
pub(crate) mod explain;
pub(crate) mod harbor;
pub(crate) mod harbor_import;
pub(crate) mod history;
pub(crate) mod reconcile;
pub(crate) mod replicate;
pub(crate) mod status;
