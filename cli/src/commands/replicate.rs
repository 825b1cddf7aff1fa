//! `relay replicate`: what the rules make of a selection at the source, planned and enqueued (or shown).

use super::*;

pub(crate) async fn run(
    sqs: aws_sdk_sqs::Client,
    secrets: &SecretSource,
    output: Output,
    target: Planning,
    selection: String,
) -> anyhow::Result<ExitCode> {
    let config = bootstrap::load_config(&target.config).await?;
    let selection = Selection::parse(&selection)?;
    let source = bootstrap::source_client(&config, secrets, RetryPolicy::default()).await?;
    let harbor = bootstrap::harbor_api(&config, secrets).await?;
    let progress = relay::progress::Progress::default();
    let planning = ops::plan_backfill(&config, &source, harbor.as_ref(), &selection, Some(&progress));
    let backfill = match showing(&progress, planning).await {
        Ok(b) => b,
        Err(e @ (ops::BackfillError::NothingSelected { .. } | ops::BackfillError::NoRuleMatches { .. })) => {
            eprintln!("nothing to replicate: {e}");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    let tasks = target.deliver(sqs, &backfill.tasks, output).await?;
    let text = || {
        format!(
            "{} repositories, {} artifacts selected; {} tasks {}\n",
            backfill.repositories,
            backfill.artifacts,
            backfill.tasks.len(),
            target.verb()
        )
    };
    let json = serde_json::json!({
        "repositories": backfill.repositories, "artifacts": backfill.artifacts,
        "enqueued": !target.dry_run, "tasks": tasks,
    });
    output.print(text, json);
    Ok(ExitCode::SUCCESS)
}
