//! The worker function: copy tasks from SQS → registries. Under Lambda
//! (SQS event source, partial batch responses) when `AWS_LAMBDA_RUNTIME_API`
//! is set, otherwise a long-poll loop on `RELAY_QUEUE_URL`. Same handler:
//! [`relay::runner::worker`].

fn main() -> Result<(), relay::runner::RunError> {
    let runtime = relay::bootstrap::runtime().map_err(relay::runner::RunError::Serve)?;
    runtime.block_on(relay::runner::run::<relay::runner::worker::WorkerFunction>())
}
