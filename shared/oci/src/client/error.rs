//! What can go wrong talking to a registry, and how the worker reads it.

use std::time::Duration;

use reqwest::{Method, StatusCode};

use super::super::retry::is_retryable;
use crate::digest::Digest;

/// Errors talking to a registry. Messages carry the registry name, method
/// and path — never a credential or token.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{registry}: {method} {path}: connection failed: {reason}")]
    Transport { registry: String, method: Method, path: String, reason: String },
    /// The registry's certificate did not verify: no retry changes that,
    /// and it says nothing about whether the registry is up.
    #[error("{registry}: TLS: {reason} (a registry behind a private CA needs ca_file or ca_secret_id)")]
    Certificate { registry: String, reason: String },
    #[error("{registry}: {path}: HTTP {status}{detail}")]
    Status {
        registry: String,
        path: String,
        status: StatusCode,
        detail: String,
        /// The registry's `Retry-After`, for the task's backoff.
        retry_after: Option<Duration>,
        /// The errors its body named (the distribution spec's error body),
        /// read once: the worker classifies on these, not on `detail`.
        errors: Vec<OciError>,
    },
    #[error("{registry}: authentication failed ({status}) for {path}")]
    Denied { registry: String, path: String, status: StatusCode },
    /// A streamed request met a 401: its token expired mid-copy. The token
    /// is forgotten, so trying the whole operation again re-authenticates.
    #[error("{registry}: token expired during {path}")]
    Reauthenticate { registry: String, path: String },
    #[error("{registry}: token request failed: {reason}")]
    Token { registry: String, reason: String },
    /// The registry's challenge names a token service the credentials may
    /// not go to (plain http elsewhere than the registry, not listed in
    /// `token_realms`): no retry changes that.
    #[error("{registry}: token realm {realm} refused: a realm must be https or this registry's own origin (list it in token_realms to trust it)")]
    UntrustedRealm { registry: String, realm: String },
    #[error("{registry}: {what} {digest} has digest {actual} (refusing to copy it)")]
    DigestMismatch { registry: String, what: &'static str, digest: Digest, actual: Digest },
    #[error("{registry}: {reference} is larger than {limit} bytes")]
    TooLarge { registry: String, reference: String, limit: usize },
    /// An answer of the registry the client cannot use, by what it was
    /// ([`Answer`]): the registry answers the same next time.
    #[error("{registry}: {reason}")]
    Malformed { registry: String, answer: Answer, reason: String },
    /// Another answer that breaks the protocol, found by the copy engine
    /// (a blob's range, a tag that should hold an index).
    #[error("{registry}: {reason}")]
    Protocol { registry: String, reason: String },
    /// A redirect the client will not follow (from https to http, to a
    /// loopback or link-local address the configuration does not name, one
    /// too many): the registry's answer, which no retry changes.
    #[error("{registry}: {path}: redirect refused {reason}")]
    Redirect { registry: String, path: String, reason: String },
}

impl RegistryError {
    /// The HTTP status, when the registry answered one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            RegistryError::Status { status, .. } | RegistryError::Denied { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The registry the error is about (its configured name, or `source`).
    pub fn registry(&self) -> &str {
        match self {
            RegistryError::Transport { registry, .. }
            | RegistryError::Certificate { registry, .. }
            | RegistryError::Status { registry, .. }
            | RegistryError::Denied { registry, .. }
            | RegistryError::Reauthenticate { registry, .. }
            | RegistryError::Token { registry, .. }
            | RegistryError::UntrustedRealm { registry, .. }
            | RegistryError::DigestMismatch { registry, .. }
            | RegistryError::TooLarge { registry, .. }
            | RegistryError::Malformed { registry, .. }
            | RegistryError::Protocol { registry, .. }
            | RegistryError::Redirect { registry, .. } => registry,
        }
    }

    /// The registry is not there to talk to: no connection, or a server
    /// error (a maintenance window, a registry restarting). Throttling
    /// (429) is not unavailability: it says when to come back.
    pub fn is_unavailable(&self) -> bool {
        match self {
            RegistryError::Transport { .. } => true,
            RegistryError::Status { status, .. } => status.is_server_error(),
            _ => false,
        }
    }

    /// How long the registry asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RegistryError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The errors the registry's answer named (empty when it named none).
    pub fn oci_errors(&self) -> &[OciError] {
        match self {
            RegistryError::Status { errors, .. } => errors,
            _ => &[],
        }
    }

    /// The registry refused to move an immutable tag: ECR answers a
    /// manifest `PUT` onto a tag of an `IMMUTABLE` repository that points
    /// elsewhere with 400 `TAG_INVALID` "… cannot be overwritten because
    /// the repository is immutable" (`TAG_INVALID` alone also names a
    /// malformed tag).
    pub fn is_immutable_tag(&self) -> bool {
        self.status() == Some(StatusCode::BAD_REQUEST)
            && self.oci_errors().iter().any(|e| e.code == OciErrorCode::TagInvalid && e.message.contains("immutable"))
    }

    /// A Harbor refused to move or delete a tag its project's immutable
    /// tag rules cover: its immutable middleware answers 412 with the
    /// `PRECONDITION` code and "… configured as immutable." — or, through a
    /// proxy that changed the status, the body alone says so. Waiting
    /// changes nothing until someone changes the rule.
    pub fn is_refused_as_immutable(&self) -> bool {
        let errors = self.oci_errors();
        let precondition = self.status() == Some(StatusCode::PRECONDITION_FAILED)
            && errors.iter().any(|e| e.code == OciErrorCode::Other("PRECONDITION".into()));
        precondition || errors.iter().any(|e| e.message.contains("configured as immutable"))
    }

    /// Worth trying the whole operation again later.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Transport { .. } | RegistryError::Token { .. } | RegistryError::Reauthenticate { .. } => {
                true
            }
            RegistryError::Status { status, .. } => is_retryable(*status),
            _ => false,
        }
    }
}

/// What a malformed answer was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// An upload session's `Location`: none, unreadable, or on another host.
    UploadLocation,
    /// A manifest's `Docker-Content-Digest`: unreadable, or not the digest
    /// pushed.
    ManifestDigest,
    /// A catalog or tag listing: not JSON, a `Link` elsewhere or in a loop,
    /// too many pages.
    Listing,
    /// The referrers API's answer: not an image index, too many pages.
    Referrers,
}

/// One error of a registry's error body (`{"errors":[{"code":…,"message":…}]}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciError {
    pub code: OciErrorCode,
    pub message: String,
}

/// The error codes of the distribution spec the relay tells apart; the
/// others are kept as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OciErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    /// Docker's code for a tag refused (ECR: an immutable tag).
    TagInvalid,
    Unauthorized,
    Denied,
    /// The registry does not do what was asked (a mount, a chunk).
    Unsupported,
    TooManyRequests,
    Other(String),
}

impl OciErrorCode {
    fn parse(code: &str) -> OciErrorCode {
        match code {
            "BLOB_UNKNOWN" => OciErrorCode::BlobUnknown,
            "BLOB_UPLOAD_INVALID" => OciErrorCode::BlobUploadInvalid,
            "BLOB_UPLOAD_UNKNOWN" => OciErrorCode::BlobUploadUnknown,
            "DIGEST_INVALID" => OciErrorCode::DigestInvalid,
            "MANIFEST_BLOB_UNKNOWN" => OciErrorCode::ManifestBlobUnknown,
            "MANIFEST_INVALID" => OciErrorCode::ManifestInvalid,
            "MANIFEST_UNKNOWN" => OciErrorCode::ManifestUnknown,
            "NAME_INVALID" => OciErrorCode::NameInvalid,
            "NAME_UNKNOWN" => OciErrorCode::NameUnknown,
            "SIZE_INVALID" => OciErrorCode::SizeInvalid,
            "TAG_INVALID" => OciErrorCode::TagInvalid,
            "UNAUTHORIZED" => OciErrorCode::Unauthorized,
            "DENIED" => OciErrorCode::Denied,
            "UNSUPPORTED" => OciErrorCode::Unsupported,
            "TOOMANYREQUESTS" => OciErrorCode::TooManyRequests,
            other => OciErrorCode::Other(other.to_owned()),
        }
    }
}

/// The errors of a registry's error body; none when it is not one (empty,
/// HTML from a proxy, cut short).
pub(super) fn oci_errors(body: &str) -> Vec<OciError> {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: String,
        #[serde(default)]
        message: String,
    }
    let Ok(body) = serde_json::from_str::<Body>(body) else { return Vec::new() };
    body.errors.into_iter().map(|e| OciError { code: OciErrorCode::parse(&e.code), message: e.message }).collect()
}

/// Whether a transport failure is a certificate that did not verify
/// (rustls says "invalid peer certificate").
pub(super) fn is_certificate(e: &reqwest::Error) -> bool {
    redact(e).contains("invalid peer certificate")
}

/// A reqwest error's text without its URL (which may carry a query with
/// upload-session state) — the kind of failure is what matters.
pub(super) fn redact(e: &reqwest::Error) -> String {
    let mut s = String::from(if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() {
        "body interrupted"
    } else if e.is_decode() {
        "cannot decode response"
    } else if e.is_redirect() {
        "redirect refused"
    } else {
        "request failed"
    });
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, body: &str) -> RegistryError {
        RegistryError::Status {
            registry: "r".into(),
            path: "/v2/x/manifests/v1".into(),
            status: StatusCode::from_u16(status).unwrap(),
            detail: format!(": {body}"),
            retry_after: None,
            errors: oci_errors(body),
        }
    }

    /// (status, body, an immutable tag): the code is read from the body,
    /// not found in its text; a malformed tag is `TAG_INVALID` too.
    #[test]
    fn a_harbor_immutable_rule_is_told_by_its_412_and_code() {
        let harbor = r#"{"errors":[{"code":"PRECONDITION","message":"Failed to process request due to 'app:v1' configured as immutable."}]}"#;
        let refused = status;
        assert!(refused(412, harbor).is_refused_as_immutable());
        assert!(!refused(412, r#"{"errors":[{"code":"OTHER","message":"a precondition"}]}"#).is_refused_as_immutable());
        assert!(refused(400, harbor).is_refused_as_immutable(), "the body that says so");
        assert!(!refused(400, r#"{"errors":[{"code":"PRECONDITION","message":"other"}]}"#).is_refused_as_immutable());
        assert!(!refused(412, harbor).is_immutable_tag(), "ECR's answer is another, and is kept, not failed");
    }

    #[test]
    fn an_immutable_tag_is_told_by_its_code() {
        let ecr = r#"{"errors":[{"code":"TAG_INVALID","message":"The image tag 'v1' already exists in the 'x' repository and cannot be overwritten because the repository is immutable."}]}"#;
        for (code, body, immutable) in [
            (400, ecr, true),
            (409, ecr, false),
            (400, r#"{"errors":[{"code":"TAG_INVALID","message":"invalid tag"}]}"#, false),
            (400, r#"{"errors":[{"code":"MANIFEST_INVALID","message":"TAG_INVALID: immutable"}]}"#, false),
            (400, "TAG_INVALID immutable (not JSON)", false),
            (400, "", false),
        ] {
            assert_eq!(status(code, body).is_immutable_tag(), immutable, "{code} {body}");
        }
    }

    #[test]
    fn error_bodies_are_read_into_codes() {
        let e = status(405, r#"{"errors":[{"code":"UNSUPPORTED","message":"mount"},{"code":"X_OWN","detail":{}}]}"#);
        let codes: Vec<_> = e.oci_errors().iter().map(|e| e.code.clone()).collect();
        assert_eq!(codes, [OciErrorCode::Unsupported, OciErrorCode::Other("X_OWN".into())]);
        assert!(status(502, "<html>bad gateway</html>").oci_errors().is_empty());
    }
}
