//! The reconcile function: a scheduled sweep that enqueues copy (and delete)
//! tasks for whatever the destinations lack. Under Lambda (EventBridge
//! schedule) when `AWS_LAMBDA_RUNTIME_API` is set; otherwise one pass and
//! exit (cron, or `relay reconcile`): [`relay::runner::reconcile`].

#[tokio::main]
async fn main() -> Result<(), relay::runner::RunError> {
    relay::runner::run::<relay::runner::reconcile::ReconcileFunction>().await
}
