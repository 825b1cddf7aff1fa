//! `relay history`: per event, each destination's outcome, read from the functions' logs.

use super::*;

/// What `relay history` is asked for.
#[derive(clap::Args)]
pub(crate) struct HistoryArgs {
    /// Log lines: the functions' JSON lines, or CloudWatch Logs' FilterLogEvents answers
    /// (`aws logs filter-log-events --log-group-name /aws/lambda/<stack>-worker ...`); `-` or
    /// nothing: stdin.
    #[arg(conflicts_with_all = ["stack", "log_group"])]
    pub file: Option<std::path::PathBuf>,
    /// Read CloudWatch Logs: the log groups of this stack's webhook and worker
    /// (`/aws/lambda/<stack>-webhook`, `/aws/lambda/<stack>-worker`).
    #[arg(long)]
    pub stack: Option<String>,
    /// Read CloudWatch Logs: this log group (repeatable; with --stack, in addition).
    #[arg(long)]
    pub log_group: Vec<String>,
    /// Only tasks of this rule.
    #[arg(long)]
    pub rule: Option<String>,
    /// Only this destination registry (a `registries[].name`).
    #[arg(long)]
    pub destination: Option<String>,
    /// Only this source repository, or a glob over them (`library/**`).
    #[arg(long)]
    pub repository: Option<String>,
    /// Only events carrying this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Only events that arrived in this last while (`30m`, `2h`, `1d`); reading CloudWatch
    /// Logs, also where the reading starts (default there: 1d).
    #[arg(long)]
    pub since: Option<humantime::Duration>,
    /// Only destinations whose task failed, for good or for now.
    #[arg(long)]
    pub failed: bool,
    /// Also the events that yielded no task, each with why (rule by rule: the filter that
    /// decided).
    #[arg(long)]
    pub all: bool,
}

pub(crate) async fn run(output: Output, args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let HistoryArgs { file, stack, log_group, rule, destination, repository, tag, since, failed, all } = args;
    let mut groups = log_group;
    groups.extend(stack.as_deref().map(logs::stack_log_groups).into_iter().flatten());
    let lines = if !groups.is_empty() {
        let since = since.map_or(Duration::from_secs(86_400), Into::into);
        let start = time::OffsetDateTime::now_utc() - since;
        let client = aws_sdk_cloudwatchlogs::Client::new(&bootstrap::aws_config().await);
        logs::read(&client, &groups, (start.unix_timestamp_nanos() / 1_000_000) as i64).await?
    } else {
        let text = match file.as_deref() {
            Some(f) if f != std::path::Path::new("-") => {
                std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?
            }
            _ => std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?,
        };
        relay::history::parse_lines(&text)
    };
    let filter = relay::history::Filter {
        rule,
        destination,
        repository: repository
            .map(|r| relay::rules::Pattern::new(&r).map_err(|e| anyhow::anyhow!("--repository {r}: {e}")))
            .transpose()?,
        tag,
        since: since.map(|d| time::OffsetDateTime::now_utc() - *d),
        failed,
        all,
    };
    let shown: Vec<_> = relay::history::executions(lines).into_iter().filter_map(|e| filter.apply(e)).collect();
    output.print(|| relay::history::table(&shown), serde_json::to_value(&shown)?);
    Ok(ExitCode::SUCCESS)
}
