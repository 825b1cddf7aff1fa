//! The webhook function: Harbor → rules → tasks on the copy queue.
//! Under Lambda when `AWS_LAMBDA_RUNTIME_API` is set, otherwise an HTTP
//! server on `RELAY_LISTEN` (default 127.0.0.1:8080). Same handler either way.

use std::sync::Arc;

use anyhow::Context;
use lambda_http::{service_fn, Body, Request, Response};
use relay::reload::{Reloading, CHECK_EVERY};
use relay::webhook::{Incoming, Webhook, WebhookOptions};
use relay::{bootstrap, queue::TaskQueue, secrets::SecretSource};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    relay::telemetry::init_from_env();
    if bootstrap::under_lambda() {
        // Under Lambda the configuration is read again when its parameter
        // changes: a new rule needs no redeploy.
        let reloading = bootstrap::initialised(async {
            let (location, build) = setup().await?;
            anyhow::Ok(Arc::new(Reloading::start(&location, CHECK_EVERY, build).await?))
        })
        .await?;
        lambda_http::run(service_fn(move |req| {
            let reloading = reloading.clone();
            async move { lambda(reloading.current().await, req).await }
        }))
        .await
        .map_err(|e| anyhow::anyhow!(e))
    } else {
        let (location, build) = setup().await?;
        let config = Arc::new(bootstrap::load_config(&location).await?);
        let webhook = Arc::new(build(config).await.map_err(|e| anyhow::anyhow!(e))?);
        let addr = std::env::var("RELAY_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
        let listener =
            tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(listen = %listener.local_addr()?, "webhook listening");
        relay::server::serve(listener, webhook, bootstrap::shutdown_signal()).await?;
        Ok(())
    }
}

/// The configuration's location and how a webhook is built from a
/// configuration, from the environment.
async fn setup(
) -> anyhow::Result<(String, impl Fn(Arc<relay::Config>) -> relay::reload::Built<Webhook> + Send + Sync + 'static)> {
    let location = std::env::var("RELAY_CONFIG")
        .context("RELAY_CONFIG must name the configuration file (a path, or ssm:<parameter>)")?;
    let queue_url = std::env::var("RELAY_QUEUE_URL").context("RELAY_QUEUE_URL must be the copy queue's URL")?;
    let options = WebhookOptions::from_env()?;
    let (sqs, secrets_manager) = bootstrap::aws_clients().await;
    let secrets = SecretSource::from_process(Some(secrets_manager));
    let build = move |config: Arc<relay::Config>| {
        let (secrets, queue) = (secrets.clone(), TaskQueue::new(sqs.clone(), queue_url.clone()));
        Box::pin(async move { Ok(bootstrap::webhook(config, &secrets, queue, options).await?) })
            as relay::reload::Built<Webhook>
    };
    Ok((location, build))
}

async fn lambda(webhook: Arc<Webhook>, req: Request) -> Result<Response<Body>, lambda_http::Error> {
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
