//! Harbor's REST API v2.0, as the relay uses it: projects, repositories and
//! artifacts with their tags, labels, type and accessories (`harbor_api`),
//! with bounded bodies, retries and a robot secret read again after a
//! rotation; and the webhook policies the relay keeps in Harbor's projects
//! (`harbor_webhooks`); Harbor's own replication set-up (`replication`) and
//! its import as a relay configuration (`import`), held against an existing one
//! (`compare`); what a destination Harbor's project does to what the relay
//! writes (`project_policies`: immutable tags, retention). Over the domain, the registry client's transport
//! and the AWS side's secrets; nothing here runs a copy.

// The lower crates' modules, where this crate's modules have always found
// them.
pub(crate) use relay_aws::secrets;
pub(crate) use relay_domain::{config, digest, doublestar, repository, rules};
pub(crate) use relay_oci as registry;
pub(crate) use relay_oci::tls;

pub mod compare;
pub mod harbor_api;
pub mod harbor_webhooks;
pub mod import;
pub mod project_policies;
pub mod replication;
