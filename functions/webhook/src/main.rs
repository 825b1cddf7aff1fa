//! The webhook function: Harbor → rules → tasks on the copy queue.
//! Under Lambda when `AWS_LAMBDA_RUNTIME_API` is set, otherwise an HTTP
//! server on `RELAY_LISTEN` (default 127.0.0.1:8080). Same handler either way.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lambda_http::{service_fn, Body, Request, Response};
use relay::reload::{Reloading, CHECK_EVERY};
use relay::settings::{Environment, Settings};
use relay::webhook::{Incoming, Webhook};
use relay::{bootstrap, queue::TaskQueue, secrets::SecretSource};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Environment::of_process();
    relay::telemetry::init(env.log_filter().as_deref());
    if let Some(api) = env.lambda_runtime_api() {
        // Under Lambda the configuration is read again when its parameter
        // changes: a new rule needs no redeploy.
        let reloading = bootstrap::initialised(Some(api), async {
            let (settings, aws, build) = setup(&env).await?;
            anyhow::Ok(Arc::new(Reloading::start(&aws.sdk, &settings.config, CHECK_EVERY, build).await?))
        })
        .await?;
        lambda_http::run(service_fn(move |req| {
            let reloading = reloading.clone();
            async move { lambda(reloading.current().await, req).await }
        }))
        .await
        .map_err(|e| anyhow::anyhow!(e))
    } else {
        let (settings, aws, build) = setup(&env).await?;
        let webhook = Reloading::start(&aws.sdk, &settings.config, Duration::MAX, build).await?.current().await;
        let addr = &settings.listen;
        let listener =
            tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(listen = %listener.local_addr()?, "webhook listening");
        relay::server::serve(listener, webhook, bootstrap::shutdown_signal()).await?;
        Ok(())
    }
}

/// The settings, the AWS clients, and how a webhook is built from a
/// configuration.
async fn setup(
    env: &Environment,
) -> anyhow::Result<(
    Settings,
    bootstrap::Aws,
    impl Fn(Arc<relay::Config>) -> relay::reload::Built<Webhook> + Send + Sync + 'static,
)> {
    let settings = Settings::parse(env)?;
    let queue_url = settings.queue_url()?.to_owned();
    let options = settings.webhook;
    let aws = bootstrap::Aws::new(bootstrap::aws_config().await, &settings);
    let secrets = SecretSource::new(Some(aws.secrets_manager.clone()), env.lookup());
    let sqs = aws.sqs.clone();
    let build = move |config: Arc<relay::Config>| {
        let (secrets, queue) = (secrets.clone(), TaskQueue::new(sqs.clone(), queue_url.clone()));
        Box::pin(async move { Ok(bootstrap::webhook(config, &secrets, queue, options).await?) })
            as relay::reload::Built<Webhook>
    };
    Ok((settings, aws, build))
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
