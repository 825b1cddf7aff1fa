//! `relay`: the operator's CLI. Thin over `relay::ops`; one module per
//! command under `commands/`.
//!
//!   relay check --config F [--offline]          test the source and every destination
//!   relay replicate --config F [--dry-run] SEL  enqueue copy tasks for what the rules match
//!   relay reconcile --config F [--dry-run]      one reconcile pass (drift repair)
//!   relay dlq --list | --redrive                show / re-queue dead-lettered tasks
//!   relay status                                copy queue and DLQ depth
//!   relay harbor webhooks --endpoint URL        keep Harbor's webhook policies pointed at the relay
//!   relay harbor import --harbor URL            a configuration from Harbor's replication policies
//!   relay explain --config F REPO:TAG           did a push arrive: each rule's verdict, each destination
//!   relay history [filters] [FILE | --stack S]  per event: each destination's outcome, from the logs
//!
//! Queue URLs come from --queue-url / RELAY_QUEUE_URL (the DLQ from the
//! queue's redrive policy, or --dlq-url / RELAY_DLQ_URL); AWS settings from
//! the standard environment.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use relay::bootstrap;
use relay::ops::{self, Selection};
use relay::queue::TaskQueue;
use relay::registry::retry::RetryPolicy;
use relay::secrets::SecretSource;

mod commands;
mod logs;

#[derive(Parser)]
#[command(
    name = "relay",
    version,
    help_expected = true,
    about = "Operate harbor-relay: check, replicate by hand, reconcile, history, Harbor webhooks, dead letters, status"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How results are printed: `table` for people, `json` for programs.
    #[arg(long, global = true, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Subcommand)]
enum Command {
    /// Check what the functions will need: the configuration, the secrets it names, the connection
    /// to every registry (GET /v2/), Harbor's API (with harbor_api), the push right at each
    /// destination (an upload started and cancelled). Exit 0: all ok; 1: a check failed;
    /// 2: the configuration cannot be read or is invalid.
    Check {
        /// The configuration: a file path, or `ssm:<parameter>` as the functions read it.
        #[arg(long, env = "RELAY_CONFIG")]
        config: String,
        /// The configuration alone: read and validated, no secret read, no registry asked.
        #[arg(long)]
        offline: bool,
    },
    /// Harbor's manual trigger: list the source and enqueue copy tasks for what the rules match.
    Replicate {
        #[command(flatten)]
        target: Planning,
        /// `project/repo` or a glob such as `project/**`, optionally `:tag` or `:` a tag glob
        /// (`library/nginx:1.*`); Harbor's glob semantics. Exits 1 when it selects nothing.
        selection: String,
    },
    /// One reconcile pass now: enqueue what the destinations lack (drift repair, backfill).
    Reconcile {
        #[command(flatten)]
        target: Planning,
    },
    /// Show (--list) or re-queue (--redrive) the tasks in the dead-letter queue.
    Dlq {
        /// List the dead-lettered tasks with their last error, consuming nothing.
        #[arg(long, conflicts_with = "redrive", required_unless_present = "redrive")]
        list: bool,
        /// Move the dead-lettered tasks back to the copy queue.
        #[arg(long)]
        redrive: bool,
        /// The copy queue's URL.
        #[arg(long, env = "RELAY_QUEUE_URL")]
        queue_url: String,
        /// The dead-letter queue's URL (default: from the copy queue's redrive policy).
        #[arg(long, env = "RELAY_DLQ_URL")]
        dlq_url: Option<String>,
    },
    /// Validate a configuration file and store it in the SSM parameter the
    /// functions read (`ConfigParameterName`), as a SecureString. An invalid
    /// file, or one larger than the tier holds, is refused before AWS is
    /// called and the parameter keeps what it had. Comments are kept when
    /// they fit: a file too large only with them is stored without them.
    ConfigPush {
        /// The YAML file.
        file: std::path::PathBuf,
        /// The SSM parameter the functions read (the template's `ConfigParameterName`).
        #[arg(long, default_value = "/harbor-relay/config")]
        parameter: String,
        /// The largest SSM parameter tier to use: `standard` holds 4096 bytes (no charge),
        /// `advanced` 8192 (charged per parameter and month; used only past 4096 bytes).
        #[arg(long, value_enum, default_value = "standard")]
        tier: Tier,
    },
    /// Copy queue depth, in-flight tasks, dead-letter queue depth.
    Status {
        /// The copy queue's URL.
        #[arg(long, env = "RELAY_QUEUE_URL")]
        queue_url: String,
        /// The dead-letter queue's URL (default: from the copy queue's redrive policy).
        #[arg(long, env = "RELAY_DLQ_URL")]
        dlq_url: Option<String>,
    },
    /// Harbor's execution list: per event, when it arrived, the artifact and tags, and each
    /// destination's outcome, duration, bytes and error, read from the functions' log lines.
    History(commands::history::HistoryArgs),
    /// Did my push arrive? Every rule's verdict on the artifact (the filter that decided, with
    /// its labels and type from Harbor's API) and, where the rules replicate it, whether each
    /// destination holds the same digest, another, or nothing. Exit 0 when every destination
    /// holds the source's digest.
    Explain {
        /// The configuration: a file path, or `ssm:<parameter>` as the functions read it.
        #[arg(long, env = "RELAY_CONFIG")]
        config: String,
        /// `<repository>:<tag>` or `<repository>@<digest>`, as in the source.
        artifact: String,
    },
    /// Harbor itself, through its API (the source's credentials).
    Harbor {
        #[command(subcommand)]
        command: HarborCommand,
    },
}

#[derive(Subcommand)]
enum HarborCommand {
    /// In every project a rule can replicate from, create or update the webhook policy that sends
    /// pushes and deletions to the relay; other policies are left alone. Idempotent.
    Webhooks {
        /// The configuration: a file path, or `ssm:<parameter>` as the functions read it.
        #[arg(long, env = "RELAY_CONFIG")]
        config: String,
        /// The webhook's URL (the stack's `WebhookUrl` output).
        #[arg(long, env = "RELAY_WEBHOOK_URL")]
        endpoint: url::Url,
        /// The name of the policy the relay manages in each project.
        #[arg(long, default_value = relay::harbor_webhooks::DEFAULT_POLICY_NAME)]
        name: String,
        /// Harbor's payload format: Default or CloudEvents (the webhook reads both).
        #[arg(long, default_value = "Default")]
        payload_format: relay::harbor_webhooks::PayloadFormat,
        /// Say what would be created or updated, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Take the relay out instead: in every project, delete the webhook policies whose only
        /// target is --endpoint, and take --endpoint out of those that also send elsewhere.
        /// Policies sending elsewhere only are left alone.
        #[arg(long)]
        remove: bool,
    },
    /// Write a relay configuration from Harbor's own replication set-up: each push-based
    /// replication policy becomes a rule, each registry endpoint it uses a destination; what
    /// cannot be carried over (pull-based policies, other endpoint types, filters the relay has
    /// not) is reported, never dropped silently. `--output json` prints the whole report.
    Import(commands::harbor_import::ImportArgs),
}

/// The SSM parameter tiers `relay config-push` may store into.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum Tier {
    Standard,
    Advanced,
}

impl Tier {
    /// The most a parameter's value holds in this tier, in bytes.
    fn limit(self) -> usize {
        match self {
            Tier::Standard => bootstrap::SSM_STANDARD_MAX_BYTES,
            Tier::Advanced => SSM_ADVANCED_MAX_BYTES,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Tier::Standard => "Standard",
            Tier::Advanced => "Advanced",
        }
    }
}

/// An Advanced SSM parameter's value holds 8 KB, the most SSM stores.
const SSM_ADVANCED_MAX_BYTES: usize = 8192;

/// How a command prints its result.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

impl Output {
    /// Prints `text` (a table, lines for people) or `json`.
    fn print(self, text: impl FnOnce() -> String, json: serde_json::Value) {
        match self {
            Output::Table => print!("{}", text()),
            Output::Json => println!("{}", serde_json::to_string_pretty(&json).unwrap_or_default()),
        }
    }
}

/// What the commands that plan tasks share.
#[derive(clap::Args)]
struct Planning {
    /// The configuration: a file path, or `ssm:<parameter>` as the functions read it.
    #[arg(long, env = "RELAY_CONFIG")]
    config: String,
    /// The copy queue's URL (needed unless --dry-run).
    #[arg(long, env = "RELAY_QUEUE_URL")]
    queue_url: Option<String>,
    /// Print the tasks instead of enqueueing them.
    #[arg(long)]
    dry_run: bool,
}

impl Planning {
    /// Prints the tasks (table output) and, unless this is a dry run,
    /// enqueues them; the tasks as JSON.
    async fn deliver(
        &self,
        sqs: aws_sdk_sqs::Client,
        tasks: &[relay::Task],
        output: Output,
    ) -> anyhow::Result<serde_json::Value> {
        for t in tasks.iter().filter(|_| output == Output::Table) {
            let tags: Vec<_> = t.destination.tags.iter().map(|t| t.as_str()).collect();
            println!(
                "{} {:?}  {}@{} -> {}/{}:{}  ({})",
                if self.dry_run { "would" } else { "will" },
                t.action,
                t.source.repository,
                t.source.digest,
                t.destination.registry,
                t.destination.repository,
                tags.join(","),
                t.rules.join(",")
            );
        }
        if !self.dry_run && !tasks.is_empty() {
            let url = self
                .queue_url
                .as_deref()
                .context("--queue-url or RELAY_QUEUE_URL is needed to enqueue (or use --dry-run)")?;
            TaskQueue::new(sqs, url).send_now(tasks).await?;
        }
        Ok(serde_json::to_value(tasks)?)
    }

    fn verb(&self) -> &'static str {
        if self.dry_run {
            "planned (dry run)"
        } else {
            "enqueued"
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let (sqs, secrets_manager) = bootstrap::aws_clients().await;
    let secrets = SecretSource::from_process(Some(secrets_manager));
    let output = cli.output;
    match cli.command {
        Command::Check { config, offline } => commands::check::run(&secrets, output, config, offline).await,
        Command::ConfigPush { file, parameter, tier } => {
            commands::config_push::run(output, file, parameter, tier).await
        }
        Command::Replicate { target, selection } => {
            commands::replicate::run(sqs, &secrets, output, target, selection).await
        }
        Command::Harbor { command: HarborCommand::Webhooks { config, endpoint, remove: true, dry_run, .. } } => {
            commands::harbor::remove(&secrets, output, config, endpoint, dry_run).await
        }
        Command::Harbor {
            command: HarborCommand::Webhooks { config, endpoint, name, payload_format, dry_run, .. },
        } => commands::harbor::run(&secrets, output, config, endpoint, name, payload_format, dry_run).await,
        Command::Harbor { command: HarborCommand::Import(args) } => commands::harbor_import::run(output, args).await,
        Command::Explain { config, artifact } => commands::explain::run(&secrets, output, config, artifact).await,
        Command::History(args) => commands::history::run(output, args).await,
        Command::Reconcile { target } => commands::reconcile::run(sqs, &secrets, output, target).await,
        Command::Dlq { list, redrive: _, queue_url, dlq_url } => {
            commands::dlq::run(sqs, output, list, queue_url, dlq_url).await
        }
        Command::Status { queue_url, dlq_url } => commands::status::run(sqs, output, queue_url, dlq_url).await,
    }
}

/// Runs `work`, showing `progress` on stderr while it runs when stderr is
/// a terminal (redrawn in place, the last state left on its line);
/// nothing otherwise, so pipes and logs get only the result.
async fn showing<T>(progress: &relay::progress::Progress, work: impl std::future::Future<Output = T>) -> T {
    use std::io::{IsTerminal, Write};
    if !std::io::stderr().is_terminal() {
        return work.await;
    }
    let draw = |end: &str| {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{}{end}", progress.line());
        let _ = err.flush();
    };
    let mut work = std::pin::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let out = loop {
        tokio::select! {
            out = &mut work => break out,
            _ = tick.tick() => draw(""),
        }
    };
    draw("\n");
    out
}

/// What `relay config-push` stores, given the tier's limit.
#[derive(Debug, PartialEq)]
enum Fit {
    /// The file as it is.
    AsIs,
    /// The file without its comments (only they made it too large).
    Stripped(String),
    /// Too large even without comments: why, with the sizes and the limit.
    TooLarge(String),
}

/// Whether `text` fits an SSM parameter of `tier`, keeping its comments
/// when they fit. A file that does not parse is left to `push_config`
/// (it names the field); one without its comments is used only when it
/// reads as exactly the same configuration.
fn fit_config(text: &str, tier: Tier) -> Fit {
    let limit = tier.limit();
    if text.len() <= limit {
        return Fit::AsIs;
    }
    let Ok(config) = relay::Config::parse(text) else { return Fit::AsIs };
    let stripped = strip_yaml_comments(text);
    let same = relay::Config::parse(&stripped).is_ok_and(|c| format!("{c:?}") == format!("{config:?}"));
    if same && stripped.len() <= limit {
        return Fit::Stripped(stripped);
    }
    let without = if same { format!(" ({} without comments)", stripped.len()) } else { String::new() };
    let what_next = match tier {
        Tier::Standard => format!(
            "use --tier advanced (up to {SSM_ADVANCED_MAX_BYTES} bytes, charged per parameter and month), or fewer rules"
        ),
        Tier::Advanced => "that is the most SSM stores: use fewer rules (one rule's name filter can cover several \
             projects or repositories with a glob)"
            .to_owned(),
    };
    Fit::TooLarge(format!(
        "{} bytes{without}, over the {limit} bytes an SSM parameter of the {} tier holds: {what_next} \
         (README, \"The configuration's size\")",
        text.len(),
        tier.name()
    ))
}

/// `text` without its YAML comments, blank lines and trailing spaces; block
/// scalars (`|`, `>`) are kept as they are. A `#` starts a comment at the
/// start of a line or after a space, outside quotes (YAML's rule).
fn strip_yaml_comments(text: &str) -> String {
    let mut out = String::new();
    // The indentation of a block scalar's parent line, while in one.
    let mut block: Option<usize> = None;
    // Inside a quoted scalar that continues on the next line.
    let mut quote: Option<char> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(parent) = block {
            if line.trim().is_empty() || indent > parent {
                out.push_str(line);
                out.push('\n');
                continue;
            }
            block = None;
        }
        let mut kept = String::new();
        let mut previous: Option<char> = None;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match quote {
                Some('"') if c == '\\' => {
                    kept.push(c);
                    if let Some(n) = chars.next() {
                        kept.push(n);
                    }
                    previous = Some('a');
                    continue;
                }
                Some('\'') if c == '\'' && chars.peek() == Some(&'\'') => {
                    kept.push(c);
                    kept.push(chars.next().unwrap_or('\''));
                    previous = Some('a');
                    continue;
                }
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '#' && previous.is_none_or(char::is_whitespace) => break,
                None if (c == '"' || c == '\'')
                    && kept
                        .trim_end()
                        .chars()
                        .last()
                        .is_none_or(|p| matches!(p, ':' | '-' | '[' | '{' | ',' | '?')) =>
                {
                    quote = Some(c)
                }
                None => {}
            }
            kept.push(c);
            previous = Some(c);
        }
        let kept = if quote.is_some() { kept } else { kept.trim_end().to_owned() };
        if kept.trim().is_empty() && quote.is_none() {
            continue;
        }
        if quote.is_none() && is_block_scalar_header(&kept) {
            block = Some(indent);
        }
        out.push_str(&kept);
        out.push('\n');
    }
    out
}

/// Whether a line (comments removed) ends in a block scalar's indicator:
/// `key: |`, `- >-`, `key: |2+`.
fn is_block_scalar_header(line: &str) -> bool {
    let last = line.trim_end().rsplit(char::is_whitespace).next().unwrap_or("");
    let mut chars = last.chars();
    matches!(chars.next(), Some('|' | '>')) && chars.all(|c| c == '+' || c == '-' || c.is_ascii_digit())
}

/// The configuration without its comments, in a file `push_config` reads;
/// removed when dropped.
struct TempConfig(std::path::PathBuf);

impl TempConfig {
    fn write(text: &str) -> anyhow::Result<TempConfig> {
        let path = std::env::temp_dir().join(format!("relay-config-{}-{:x}.yaml", std::process::id(), rand_suffix()));
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(TempConfig(path))
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A suffix that differs between calls of one process.
fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// `help_expected`: clap refuses an argument or subcommand without help text.
    #[test]
    fn every_command_and_flag_has_help() {
        Cli::command().debug_assert();
    }

    /// Comments go; what is not a comment stays: a `#` inside a scalar,
    /// quotes, block scalars.
    #[test]
    fn yaml_comments_are_stripped_and_nothing_else() {
        let text = "# header\n\nsource:   # the Harbor\n  url: https://h.example.com/#frag # trailing\n  \
                    name: \"a # b\"   \n  other: 'it''s # here' # gone\n  plain: robot#1\n  pem: |\n    line # kept\n\n    \
                    more\n  after: x # gone\n  list: [a, \"b # c\"] # gone\n";
        assert_eq!(
            super::strip_yaml_comments(text),
            "source:\n  url: https://h.example.com/#frag\n  name: \"a # b\"\n  other: 'it''s # here'\n  \
             plain: robot#1\n  pem: |\n    line # kept\n\n    more\n  after: x\n  list: [a, \"b # c\"]\n"
        );
    }

    fn config(rules: usize, comment: usize) -> String {
        let mut text = String::from(
            "source: { url: https://harbor.example.com }\nwebhook: { auth_secret_id: a }\nregistries:\n  - name: r\n    url: https://r.example.com\nrules:\n",
        );
        for i in 0..rules {
            text +=
                &format!("  # {}\n  - name: rule-{i:03}\n    destination: {{ registry: r }}\n", "c".repeat(comment));
        }
        text
    }

    #[test]
    fn a_configuration_fits_its_tier_with_its_comments_when_it_can() {
        use super::{fit_config, Fit, Tier};
        let small = config(3, 10);
        assert_eq!(fit_config(&small, Tier::Standard), Fit::AsIs);
        // Over 4096 bytes with its comments, under without them.
        let commented = config(40, 80);
        assert!(commented.len() > 4096, "{}", commented.len());
        relay::Config::parse(&commented).expect("valid");
        let Fit::Stripped(stripped) = fit_config(&commented, Tier::Standard) else { panic!("not stripped") };
        assert!(stripped.len() <= 4096 && !stripped.contains('#'), "{}", stripped.len());
        assert_eq!(fit_config(&commented, Tier::Advanced), Fit::AsIs);
        // Too large either way: the sizes and the limit are named.
        let large = config(120, 0);
        let Fit::TooLarge(why) = fit_config(&large, Tier::Standard) else { panic!("not refused") };
        assert!(why.contains(&format!("{} bytes", large.len())) && why.contains("4096 bytes"), "{why}");
        assert!(why.contains("--tier advanced"), "{why}");
        let Fit::TooLarge(why) = fit_config(&config(200, 0), Tier::Advanced) else { panic!("not refused") };
        assert!(why.contains("8192 bytes") && why.contains("fewer rules"), "{why}");
    }
}
