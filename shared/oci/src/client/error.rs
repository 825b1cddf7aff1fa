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
    },
    #[error("{registry}: authentication failed ({status}) for {path}")]
    Denied { registry: String, path: String, status: StatusCode },
    /// A streamed request met a 401: its token expired mid-copy. The token
    /// is forgotten, so trying the whole operation again re-authenticates.
    #[error("{registry}: token expired during {path}")]
    Reauthenticate { registry: String, path: String },
    #[error("{registry}: token request failed: {reason}")]
    Token { registry: String, reason: String },
    #[error("{registry}: {what} {digest} has digest {actual} (refusing to copy it)")]
    DigestMismatch { registry: String, what: &'static str, digest: Digest, actual: Digest },
    #[error("{registry}: {reference} is larger than {limit} bytes")]
    TooLarge { registry: String, reference: String, limit: usize },
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
            | RegistryError::DigestMismatch { registry, .. }
            | RegistryError::TooLarge { registry, .. }
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
