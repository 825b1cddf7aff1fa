//! An AWS API call that failed, as one typed error for the calls whose
//! callers report rather than react (the operator commands, the queue's
//! redrive policy, the reconcile cursor): which call, on what, and the
//! SDK's own account of why (its error chain, which names the service's
//! error code).

/// A failed AWS call, or an answer it could not use.
#[derive(Debug, thiserror::Error)]
#[error("{call} on {resource}: {reason}")]
pub struct AwsError {
    /// The API action, e.g. `GetQueueAttributes`.
    pub call: &'static str,
    /// The queue URL, parameter name or bucket it was about.
    pub resource: String,
    pub reason: String,
}

impl AwsError {
    /// The SDK's error for `call` on `resource`.
    pub fn sdk(call: &'static str, resource: impl Into<String>, e: &dyn std::error::Error) -> Self {
        AwsError { call, resource: resource.into(), reason: aws_sdk_sqs::error::DisplayErrorContext(e).to_string() }
    }

    /// An answer of `call` that does not say what it must.
    pub fn answer(call: &'static str, resource: impl Into<String>, reason: impl Into<String>) -> Self {
        AwsError { call, resource: resource.into(), reason: reason.into() }
    }
}
