//! `relay reconcile`: one reconcile pass, its tasks enqueued (or shown).

use super::*;

pub(crate) async fn run(
    sqs: aws_sdk_sqs::Client,
    secrets: &SecretSource,
    output: Output,
    target: Planning,
) -> anyhow::Result<ExitCode> {
    let config = bootstrap::load_config(&target.config).await?;
    let worker = bootstrap::worker(&config, secrets, RetryPolicy::default()).await?;
    let progress = relay::progress::Progress::default();
    let mut reconciler = relay::reconcile::Reconciler::new(&config, &worker, 1000);
    reconciler.progress = Some(&progress);
    let pass = showing(&progress, reconciler.pass(None, None)).await?;
    let tasks = target.deliver(sqs, &pass.tasks, output).await?;
    let text = || {
        format!(
            "{} repositories, {} tags checked, {} in sync, {} tasks {}\n",
            pass.repositories,
            pass.tags_checked,
            pass.in_sync,
            pass.tasks.len(),
            target.verb()
        )
    };
    let json = serde_json::json!({
        "repositories": pass.repositories, "tags_checked": pass.tags_checked, "in_sync": pass.in_sync,
        "enqueued": !target.dry_run, "tasks": tasks,
    });
    output.print(text, json);
    Ok(ExitCode::SUCCESS)
}
