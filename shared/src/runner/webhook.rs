//! The webhook function: Harbor → rules → tasks on the copy queue. Under
//! Lambda (a Function URL's HTTP events) or as an HTTP server on
//! `RELAY_LISTEN`; the same [`Webhook::handle`] either way.

use std::sync::Arc;
use std::time::Duration;

use lambda_http::{service_fn, Body, Request, Response};

use super::{Edges, Function, RunError};
use crate::config::Config;
use crate::queue::TaskQueue;
use crate::reload::{Built, Reloading, CHECK_EVERY};
use crate::settings::SettingsError;
use crate::webhook::{Incoming, Webhook, WebhookOptions};

pub struct WebhookFunction {
    edges: Edges,
    queue_url: String,
    options: WebhookOptions,
}

impl Function for WebhookFunction {
    type App = Webhook;

    /// A new rule needs no redeploy: the parameter's version is asked for
    /// every minute.
    const CHECK_EVERY: Duration = CHECK_EVERY;

    fn new(edges: Edges) -> Result<Self, SettingsError> {
        let queue_url = edges.settings.queue_url()?.to_owned();
        let options = edges.settings.webhook()?;
        Ok(WebhookFunction { edges, queue_url, options })
    }

    fn build(self: &Arc<Self>, config: Arc<Config>) -> Built<Webhook> {
        let function = self.clone();
        Box::pin(async move {
            let e = &function.edges;
            let queue = TaskQueue::new(e.aws.sqs.clone(), function.queue_url.clone());
            Ok(crate::bootstrap::webhook(config, &e.secrets, queue, function.options).await?)
        })
    }

    async fn lambda(self: Arc<Self>, apps: Arc<Reloading<Webhook>>) -> Result<(), RunError> {
        lambda_http::run(service_fn(move |req| {
            let apps = apps.clone();
            async move { handle(apps.current().await, req).await }
        }))
        .await
        .map_err(RunError::Lambda)
    }

    async fn standalone(self: Arc<Self>, app: Arc<Webhook>) -> Result<(), RunError> {
        let address = &self.edges.settings.listen;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| RunError::Listen { address: address.clone(), source })?;
        let local = listener.local_addr().map_err(RunError::Serve)?;
        tracing::info!(listen = %local, "webhook listening");
        crate::server::serve(listener, app, crate::bootstrap::shutdown_signal()).await.map_err(RunError::Serve)
    }
}

/// One HTTP event from the Function URL.
async fn handle(webhook: Arc<Webhook>, req: Request) -> Result<Response<Body>, lambda_http::Error> {
    let (parts, body) = req.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = match body {
        Body::Empty => Default::default(),
        Body::Text(t) => t.into_bytes().into(),
        Body::Binary(b) => b.into(),
        _ => Default::default(),
    };
    let reply = webhook
        .handle(Incoming {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            content_type: header("content-type"),
            authorization: header("authorization"),
            body,
        })
        .await;
    Ok(Response::builder()
        .status(reply.status)
        .header("content-type", "application/json")
        .body(Body::Text(reply.body.to_string()))?)
}
