//! How a task failed, by the type of its error: its cause (the stable
//! name the dead letter's attribute, the log and the metrics carry) and how
//! its message is settled (retry, park, continue, or the DLQ at once).

use crate::feeders::ListingError;
use crate::message::{Disposition, FailureCause, SOURCE};
use crate::registry::resume::OpenUpload;
use crate::registry::{CopyError, RegistryError};
use crate::secrets::SecretError;
use crate::task::TaskError;

/// The cause of a registry's error; which side it came from by the
/// client's name (the source's is [`SOURCE`]).
fn registry_cause(e: &RegistryError) -> FailureCause {
    let source = |registry: &str| registry == SOURCE;
    match e {
        RegistryError::Transport { registry, .. } if source(registry) => FailureCause::SourceUnreachable,
        RegistryError::Transport { .. } => FailureCause::DestinationUnreachable,
        RegistryError::Certificate { .. } => FailureCause::Certificate,
        e @ RegistryError::Status { .. } if e.is_immutable_tag() || e.is_refused_as_immutable() => {
            FailureCause::ImmutableTag
        }
        RegistryError::Status { registry, status, .. } if source(registry) => {
            FailureCause::SourceRefused { status: status.as_u16() }
        }
        RegistryError::Status { status, .. } => FailureCause::DestinationRefused { status: status.as_u16() },
        RegistryError::Denied { .. }
        | RegistryError::Reauthenticate { .. }
        | RegistryError::Token { .. }
        | RegistryError::UntrustedRealm { .. } => FailureCause::Unauthorized,
        RegistryError::DigestMismatch { .. } => FailureCause::DigestMismatch,
        RegistryError::TooLarge { .. } => FailureCause::ManifestTooLarge,
        RegistryError::Redirect { .. } => FailureCause::Redirect,
        RegistryError::Malformed { .. } | RegistryError::Protocol { .. } => FailureCause::Protocol,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TaskFailure {
    #[error("undecodable task: {0}")]
    Decode(#[from] TaskError),
    #[error("task names registry {0:?}, which is not in this worker's configuration")]
    UnknownRegistry(String),
    #[error(transparent)]
    Copy(#[from] CopyError),
    /// The source repositories feeding the destination could not be
    /// listed, so a delete cannot know it is safe: retried.
    #[error("cannot list the source repositories mapped onto the destination: {0}")]
    Listing(#[from] ListingError),
    #[error("registry {0} is unavailable; the task is parked until it answers")]
    Parked(String),
    /// Today's rules do not allow the task (a stale redrive, a task
    /// written by someone who can send to the queue): never carried out.
    #[error("refused by the rules in force: {0}")]
    Refused(String),
    /// The invocation's end came with requests still in flight: they were
    /// cut before Lambda's hard kill, which would have taken the whole
    /// batch with it (succeeded neighbours included). `progressed`: a blob
    /// was placed, or a resumable upload took bytes, before the cut, so a
    /// continuation is worth it; `uploads` are those it goes on with.
    #[error("cut at the invocation deadline's margin with requests in flight ({})", if *progressed { "blobs placed before the cut are kept" } else { "nothing placed yet" })]
    Cut { progressed: bool, uploads: Vec<OpenUpload> },
    /// Denied, and the credentials could not be read again.
    #[error("cannot read the credentials again after a denial: {0}")]
    Credentials(#[from] SecretError),
    /// The destination's kind could not make the repository ready (ECR
    /// repository, Harbor project): nothing was copied.
    #[error("cannot prepare the destination repository: {0}")]
    Prepare(#[from] crate::destination::PrepareError),
}

impl TaskFailure {
    /// The failure's cause, by the type of its error.
    pub fn cause(&self) -> FailureCause {
        match self {
            TaskFailure::Decode(_) => FailureCause::Undecodable,
            TaskFailure::UnknownRegistry(_) => FailureCause::UnknownRegistry,
            TaskFailure::Refused(_) => FailureCause::RefusedByRules,
            TaskFailure::Parked(_) => FailureCause::RegistryUnavailable,
            TaskFailure::Listing(_) => FailureCause::SourceListing,
            TaskFailure::Credentials(_) => FailureCause::Credentials,
            TaskFailure::Prepare(e) => FailureCause::Prepare { denied: e.is_denied() },
            TaskFailure::Cut { .. } | TaskFailure::Copy(CopyError::Deadline { .. }) => FailureCause::Deadline,
            TaskFailure::Copy(CopyError::Manifest(_)) => FailureCause::Manifest,
            TaskFailure::Copy(CopyError::Registry(e)) => registry_cause(e),
        }
    }

    /// How the message of a task that failed this way is settled.
    pub fn disposition(&self) -> Disposition {
        let retry = |retry_after| Disposition::Retry { retry_after };
        match self {
            TaskFailure::Decode(_) | TaskFailure::UnknownRegistry(_) | TaskFailure::Refused(_) => {
                Disposition::Permanent
            }
            TaskFailure::Parked(registry) => Disposition::Park { source: registry == SOURCE },
            TaskFailure::Listing(_) | TaskFailure::Credentials(_) => retry(None),
            TaskFailure::Prepare(e) if e.is_denied() => Disposition::Permanent,
            TaskFailure::Prepare(_) => retry(None),
            TaskFailure::Copy(CopyError::Manifest(_)) => Disposition::Permanent,
            TaskFailure::Copy(CopyError::Deadline { progressed: true, .. })
            | TaskFailure::Cut { progressed: true, .. } => Disposition::Continue,
            TaskFailure::Copy(CopyError::Deadline { progressed: false, .. })
            | TaskFailure::Cut { progressed: false, .. } => retry(None),
            TaskFailure::Copy(CopyError::Registry(e)) => match e {
                // What the source serves is wrong: another try reads the same.
                RegistryError::DigestMismatch { .. } | RegistryError::TooLarge { .. } => Disposition::Permanent,
                // A redirect the registry may not make: it answers the same next time.
                RegistryError::Redirect { .. } => Disposition::Permanent,
                // Denied after the credentials were read again (run_until
                // does that first): waiting changes nothing.
                RegistryError::Denied { .. } => Disposition::Permanent,
                // A Harbor's immutable tag rule refuses the same until changed.
                e if e.is_refused_as_immutable() => Disposition::Permanent,
                e => retry(e.retry_after()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each registry error's cause, from its type and fields, with the
    /// disposition it has always had beside it.
    #[test]
    fn a_failure_names_its_cause_by_the_type_of_its_error() {
        use crate::registry::client::{OciError, OciErrorCode};
        use reqwest::{Method, StatusCode};
        let status = |registry: &str, code: u16, errors: Vec<OciError>| {
            TaskFailure::Copy(CopyError::Registry(RegistryError::Status {
                registry: registry.into(),
                path: "/v2/x/manifests/v1".into(),
                status: StatusCode::from_u16(code).unwrap(),
                detail: String::new(),
                retry_after: None,
                errors,
            }))
        };
        let registry = |e: RegistryError| TaskFailure::Copy(CopyError::Registry(e));
        let transport = |registry: &str| RegistryError::Transport {
            registry: registry.into(),
            method: Method::GET,
            path: "/v2/".into(),
            reason: "connection refused".into(),
        };
        let immutable = vec![OciError {
            code: OciErrorCode::TagInvalid,
            message: "cannot be overwritten because the repository is immutable".into(),
        }];
        let retry = Disposition::Retry { retry_after: None };
        for (failure, cause, name, disposition) in [
            (registry(transport(SOURCE)), FailureCause::SourceUnreachable, "source_unreachable", retry),
            (registry(transport("cluster1")), FailureCause::DestinationUnreachable, "destination_unreachable", retry),
            (status(SOURCE, 404, vec![]), FailureCause::SourceRefused { status: 404 }, "source_refused", retry),
            (
                status("cluster1", 500, vec![]),
                FailureCause::DestinationRefused { status: 500 },
                "destination_refused",
                retry,
            ),
            (status("cluster1", 400, immutable), FailureCause::ImmutableTag, "immutable_tag", retry),
            // A Harbor's immutable tag rule: no retry moves the tag.
            (
                status(
                    "dr",
                    412,
                    vec![OciError {
                        code: OciErrorCode::Other("PRECONDITION".into()),
                        message: "Failed to process request due to 'app:v1' configured as immutable.".into(),
                    }],
                ),
                FailureCause::ImmutableTag,
                "immutable_tag",
                Disposition::Permanent,
            ),
            (
                registry(RegistryError::Denied {
                    registry: "cluster1".into(),
                    path: "/v2/".into(),
                    status: StatusCode::UNAUTHORIZED,
                }),
                FailureCause::Unauthorized,
                "unauthorized",
                Disposition::Permanent,
            ),
            (
                registry(RegistryError::TooLarge { registry: SOURCE.into(), reference: "v1".into(), limit: 4 }),
                FailureCause::ManifestTooLarge,
                "manifest_too_large",
                Disposition::Permanent,
            ),
            (
                TaskFailure::UnknownRegistry("gone".into()),
                FailureCause::UnknownRegistry,
                "unknown_registry",
                Disposition::Permanent,
            ),
            (
                TaskFailure::Parked("cluster1".into()),
                FailureCause::RegistryUnavailable,
                "registry_unavailable",
                Disposition::Park { source: false },
            ),
            (
                TaskFailure::Cut { progressed: true, uploads: Vec::new() },
                FailureCause::Deadline,
                "deadline",
                Disposition::Continue,
            ),
        ] {
            assert_eq!(failure.cause(), cause, "{failure}");
            assert_eq!(failure.cause().as_str(), name, "{failure}");
            assert_eq!(failure.disposition(), disposition, "{failure}");
        }
    }
}
