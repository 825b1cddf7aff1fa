//! The webhook function: Harbor → rules → tasks on the copy queue.
//! Under Lambda when `AWS_LAMBDA_RUNTIME_API` is set, otherwise an HTTP
//! server on `RELAY_LISTEN` (default 127.0.0.1:8080). Same handler either
//! way: [`relay::runner::webhook`].

#[tokio::main]
async fn main() -> Result<(), relay::runner::RunError> {
    relay::runner::run::<relay::runner::webhook::WebhookFunction>().await
}
