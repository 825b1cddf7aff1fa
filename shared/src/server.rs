//! The webhook's standalone HTTP server: the same [`Webhook::handle`] the
//! Lambda runs, behind axum on a listener the caller binds.

use std::future::Future;
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use tokio::net::TcpListener;

use crate::webhook::{Incoming, Reply, Webhook, MAX_BODY_BYTES};

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    webhook: Arc<Webhook>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().fallback(handle).with_state(webhook);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn handle(State(webhook): State<Arc<Webhook>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let header = |name| parts.headers.get(name).and_then(|v: &http::HeaderValue| v.to_str().ok()).map(str::to_owned);
    // Read one byte past the limit so an oversized body is told apart.
    let body = match to_bytes(body, MAX_BODY_BYTES + 1).await {
        Ok(b) => b,
        Err(_) => bytes::Bytes::from(vec![0u8; MAX_BODY_BYTES + 1]),
    };
    let incoming = Incoming {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        content_type: header(CONTENT_TYPE),
        authorization: header(AUTHORIZATION),
        body,
    };
    into_response(webhook.handle(incoming).await)
}

fn into_response(reply: Reply) -> Response {
    (reply.status, [(CONTENT_TYPE, "application/json")], Body::from(reply.body.to_string())).into_response()
}
