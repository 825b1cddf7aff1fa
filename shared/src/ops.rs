//! Operator operations behind the `relay` CLI: test connections (Harbor's
//! "Test connection"), plan a manual replication (Harbor's manual trigger),
//! inspect and redrive the dead-letter queue, queue status.

use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName as Attr;

use crate::aws_error::AwsError;
use crate::config::{Config, CredentialsRef};
use crate::event::{Artifact, EventKind, Format, HarborEvent};
use crate::feeders::{ListingError, SourceListing};
use crate::harbor_api::HarborApi;
use crate::plan::plan;
use crate::progress::Progress;
use crate::registry::retry::RetryPolicy;
use crate::registry::{RegistryClient, RegistryError};
use crate::registry_kind::CaSource;
use crate::repository::{RepositoryPath, Tag};
use crate::rules::Pattern;
use crate::secrets::SecretSource;
use crate::sqs::{self, Outgoing, Receive, Sqs};
use crate::task::{Task, TaskError};

/// One line of `relay check`: what was checked, and how it went (`Ok`
/// may carry a remark).
#[derive(Debug)]
pub struct CheckLine {
    pub name: String,
    pub what: String,
    pub result: Result<String, CheckFailed>,
    /// What works now and will refuse or undo the relay's work later.
    pub warnings: Vec<String>,
}

impl CheckLine {
    fn new(name: &str, what: impl Into<String>, result: Result<String, CheckFailed>) -> CheckLine {
        CheckLine { name: name.to_owned(), what: what.into(), result, warnings: Vec::new() }
    }
}

/// Why a check of `relay check` failed: the error of the part it tried.
#[derive(Debug, thiserror::Error)]
pub enum CheckFailed {
    #[error(transparent)]
    Startup(#[from] crate::bootstrap::StartupError),
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Harbor(#[from] crate::harbor_api::HarborApiError),
    #[error("the account sees no project: give it access to the projects to replicate")]
    NoProject,
}

/// Everything the functions will need, checked with the configured
/// credentials: each secret they read (credentials, CA bundles, the
/// webhook's values: with the AWS credentials in use, so a missing
/// `secretsmanager:GetSecretValue` right shows here, naming the secret;
/// the configuration itself was read to get here), `GET /v2/` at the source and every destination (Harbor's
/// "Test connection"), Harbor's API and what the account sees there when
/// `harbor_api` is on, and the right to push at each destination a rule
/// uses (an upload is started in a probe repository and cancelled, so
/// nothing is written). Errors name registries and statuses, never a
/// secret.
pub async fn check(config: &Config, secrets: &SecretSource) -> Vec<CheckLine> {
    let retry = RetryPolicy { attempts: 2, ..RetryPolicy::default() };
    let mut lines = Vec::new();
    let auth = secrets.webhook_auth(&config.webhook).await;
    lines.push(CheckLine::new(
        "webhook",
        "accepted Authorization values",
        auth.map(|a| format!("{} readable", a.len())).map_err(CheckFailed::from),
    ));
    let sources = std::iter::once(("source", &config.source.credentials, &config.source.ca))
        .chain(config.registries.iter().map(|r| (r.name.as_str(), &r.credentials, &r.ca)));
    for (name, credentials, ca) in sources {
        lines.extend(secret_lines(name, credentials.as_ref(), ca.as_ref(), secrets).await);
    }
    let source = crate::bootstrap::source_client(config, secrets, retry).await;
    lines.push(connect("source", &config.source.api_url, source).await.0);
    if config.source.harbor_api != crate::config::HarborApiUse::Off {
        let result = match crate::bootstrap::harbor_api(config, secrets).await {
            Ok(Some(api)) => match api.project_list().await {
                Ok(p) if p.is_empty() => Err(CheckFailed::NoProject),
                Ok(p) => Ok(format!("{} projects visible", p.len())),
                Err(e) => Err(e.into()),
            },
            // Detected: not a Harbor, and no rule needs its API.
            Ok(None) => Ok("not a Harbor (no /api/v2.0/ping): listed through the registry API".into()),
            Err(e) => Err(e.into()),
        };
        lines.push(CheckLine::new("source", "Harbor API", result));
    }
    for r in &config.registries {
        // Built as the worker builds it: an ECR destination gets its token.
        let built = crate::bootstrap::destination_client(r, secrets, retry, config.worker.min_throughput(), None).await;
        let (client, harbor) = match built {
            Ok((c, crate::destination::KindRuntime::Harbor { api, .. }, _)) => (Ok(c), Some(api)),
            Ok((c, _, _)) => (Ok(c), None),
            Err(e) => (Err(e), None),
        };
        let (line, connected) = connect(&r.name, &r.url, client).await;
        lines.push(line);
        if let (Some(client), Some(repo)) = (connected, probe_repository(config, &r.name)) {
            lines.push(CheckLine::new(&r.name, format!("push to {repo}"), push_right(&client, &repo).await));
        }
        if let Some(api) = harbor {
            lines.extend(harbor_project_lines(config, &r.name, &api).await);
        }
    }
    lines
}

/// For a Harbor destination, each project the rules write into: its
/// immutable tag rules and tag retention, as warnings where they will
/// refuse or undo what the relay writes.
async fn harbor_project_lines(config: &Config, registry: &str, api: &HarborApi) -> Vec<CheckLine> {
    use crate::project_policies::{warnings, RelayUse};
    let rules: Vec<_> = config.rules.iter().filter(|r| r.enabled && r.destination.registry == registry).collect();
    let mut projects: std::collections::BTreeMap<String, RelayUse> = Default::default();
    let mut uses = |project: &str, rule: &crate::rules::Rule| {
        let u = projects.entry(project.to_owned()).or_default();
        u.moves_tags |= rule.override_existing;
        u.deletes |= rule.deletion;
    };
    let unmapped: Vec<_> = rules.iter().filter(|r| r.destination.namespace.is_none()).map(|r| (*r).clone()).collect();
    for rule in &rules {
        if let Some(ns) = &rule.destination.namespace {
            uses(ns.split('/').next().unwrap_or(ns), rule);
        }
    }
    if !unmapped.is_empty() {
        // Without a namespace a source project lands in the same-named one.
        match api.project_list().await {
            Ok(list) => {
                for p in list.iter().filter(|p| crate::harbor_webhooks::covers(&unmapped, &p.name)) {
                    for rule in
                        unmapped.iter().filter(|r| crate::harbor_webhooks::covers(std::slice::from_ref(r), &p.name))
                    {
                        uses(&p.name, rule);
                    }
                }
            }
            Err(e) => return vec![CheckLine::new(registry, "list projects", Err(e.into()))],
        }
    }
    let mut lines = Vec::new();
    for (project, relay) in projects {
        let mut line =
            CheckLine::new(registry, format!("project {project}: immutable tags and retention"), Ok(String::new()));
        match warnings(api, &project, relay).await {
            Ok(w) => line.warnings = w,
            Err(e) => line.result = Err(e.into()),
        }
        lines.push(line);
    }
    lines
}

/// One line per secret a registry's client is built from, said by where it
/// lives (`secret <id>`, `$VAR`, a file), never by its value.
async fn secret_lines(
    name: &str,
    credentials: Option<&CredentialsRef>,
    ca: Option<&CaSource>,
    secrets: &SecretSource,
) -> Vec<CheckLine> {
    let mut lines = Vec::new();
    if let Some(c) = credentials {
        let what = match c {
            CredentialsRef::Env { password_env, .. } => format!("read credentials from ${password_env}"),
            CredentialsRef::Secret { secret_id } => format!("read credentials from secret {secret_id}"),
        };
        let read = secrets.credentials(c).await.map(|_| String::new()).map_err(CheckFailed::from);
        lines.push(CheckLine::new(name, what, read));
    }
    if let Some(ca) = ca {
        let what = match ca {
            CaSource::File(path) => format!("read CA bundle {}", path.display()),
            CaSource::Secret(id) => format!("read CA bundle from secret {id}"),
        };
        let read = secrets.ca_bundle(ca).await.map(|_| String::new()).map_err(CheckFailed::from);
        lines.push(CheckLine::new(name, what, read));
    }
    lines
}

/// `GET /v2/` with the client as built; the client back when it answered.
async fn connect(
    name: &str,
    url: &url::Url,
    client: Result<RegistryClient, crate::bootstrap::StartupError>,
) -> (CheckLine, Option<RegistryClient>) {
    let what = format!("connect {url}");
    match client {
        Ok(c) => match c.ping().await {
            Ok(()) => (CheckLine::new(name, what, Ok(String::new())), Some(c)),
            Err(e) => (CheckLine::new(name, what, Err(e.into())), None),
        },
        Err(e) => (CheckLine::new(name, what, Err(e.into())), None),
    }
}

/// Where the push right is probed at `registry`: under the first rule
/// sending there, its namespace or the project its name filter names,
/// `harbor-relay-check`; `None` when no enabled rule sends there.
fn probe_repository(config: &Config, registry: &str) -> Option<RepositoryPath> {
    let rule = config.rules.iter().find(|r| r.enabled && r.destination.registry == registry)?;
    let prefix = match (&rule.destination.namespace, &rule.name_filter) {
        (Some(ns), _) => ns.clone(),
        (None, Some(p)) => p.literal_prefix().split('/').next().unwrap_or_default().to_owned(),
        (None, None) => String::new(),
    };
    let path = if prefix.is_empty() { PROBE.to_owned() } else { format!("{prefix}/{PROBE}") };
    path.parse().ok().or_else(|| PROBE.parse().ok())
}

const PROBE: &str = "harbor-relay-check";

/// Starts an upload in `repo` and cancels it at once.
async fn push_right(client: &RegistryClient, repo: &RepositoryPath) -> Result<String, CheckFailed> {
    match client.start_upload(repo, None).await {
        Ok(crate::registry::UploadStart::Session { url, .. }) => {
            client.cancel_upload(repo, url).await;
            Ok("upload started and cancelled".into())
        }
        Ok(crate::registry::UploadStart::Mounted) => Ok(String::new()),
        // ECR and Harbor refuse a repository or project that is not there
        // yet; the worker prepares it before the first copy.
        Err(e) if e.status() == Some(http::StatusCode::NOT_FOUND) => {
            Ok("cannot tell: the repository does not exist yet (prepared on the first copy)".into())
        }
        Err(e) => Err(e.into()),
    }
}

/// What `relay replicate` was asked for: a repository or a glob over
/// repositories (`project/**`), and optionally `:` a tag or a tag glob
/// (`library/nginx:1.*`). Globs are Harbor's (see [`crate::doublestar`]).
#[derive(Debug, Clone)]
pub struct Selection {
    pub repositories: Select<RepositoryPath>,
    pub tags: Option<Select<Tag>>,
}

/// One name, or a glob over names.
#[derive(Debug, Clone)]
pub enum Select<T> {
    One(T),
    Glob(Pattern),
}

impl<T: AsRef<str>> Select<T> {
    fn admits(&self, name: &str) -> bool {
        match self {
            Select::One(one) => one.as_ref() == name,
            Select::Glob(p) => p.is_match(name),
        }
    }
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', '{', '\\'])
}

/// A selection that does not parse: the part, and why.
#[derive(Debug, thiserror::Error)]
#[error("{part}: {reason}")]
pub struct SelectionError {
    pub part: String,
    pub reason: String,
}

impl Selection {
    pub fn parse(s: &str) -> Result<Selection, SelectionError> {
        let bad = |part: &str, reason: &dyn std::fmt::Display| SelectionError {
            part: part.to_owned(),
            reason: reason.to_string(),
        };
        // Repository paths hold no `:`, so the last one starts the tag.
        let (repo, tag) = match s.rsplit_once(':') {
            Some((r, t)) => (r, Some(t)),
            None => (s, None),
        };
        let repositories = match is_glob(repo) {
            true => Select::Glob(Pattern::new(repo).map_err(|e| bad(repo, &e))?),
            false => Select::One(repo.parse().map_err(|e: crate::repository::NameError| bad(repo, &e))?),
        };
        let tags = match tag {
            None => None,
            Some(t) if is_glob(t) => Some(Select::Glob(Pattern::new(t).map_err(|e| bad(t, &e))?)),
            Some(t) => Some(Select::One(t.parse::<Tag>().map_err(|e| bad(t, &e))?)),
        };
        Ok(Selection { repositories, tags })
    }
}

/// What a backfill found and planned.
#[derive(Debug, Default)]
pub struct Backfill {
    /// Repositories the selection matched.
    pub repositories: usize,
    /// Artifacts (a tag, or an untagged artifact) the selection matched.
    pub artifacts: usize,
    pub tasks: Vec<Task>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(transparent)]
    Listing(#[from] ListingError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("the selection matched nothing at the source ({repositories} repositories, no tag)")]
    NothingSelected { repositories: usize },
    #[error("no enabled rule replicates the {artifacts} artifacts selected (name, tag or label filters)")]
    NoRuleMatches { artifacts: usize },
}

/// Lists the source for `selection` — through Harbor's API when `harbor` is
/// given (project, repository and artifact listings: a pull robot may use
/// them, `_catalog` needs a system administrator), else the registry API —
/// and plans copy tasks for every artifact the rules replicate, as if
/// Harbor had sent a push for each. With Harbor's API the artifacts'
/// labels and types are known, so label and resource rules apply as in the
/// webhook (without it the configuration refuses such rules). A
/// selection that matches nothing, or that no rule replicates, is an
/// error.
pub async fn plan_backfill(
    config: &Config,
    source: &RegistryClient,
    harbor: Option<&HarborApi>,
    selection: &Selection,
    progress: Option<&Progress>,
) -> Result<Backfill, BackfillError> {
    let repositories = match &selection.repositories {
        Select::One(repository) => vec![repository.clone()],
        Select::Glob(p) => {
            let listing = SourceListing { source, harbor, page_size: LISTING_PAGE };
            let prefix = [p.literal_prefix().to_owned()];
            let prefixes = (!prefix[0].is_empty()).then_some(&prefix[..]);
            listing.repositories(prefixes).await?.into_iter().filter(|r| p.is_match(r.as_str())).collect()
        }
    };
    let mut backfill = Backfill { repositories: repositories.len(), ..Backfill::default() };
    if let Some(p) = progress {
        p.selected(repositories.len());
    }
    for repository in repositories {
        // (tag, digest, facts) of each selected artifact.
        let mut selected = Vec::new();
        match harbor {
            Some(api) => {
                for a in api.artifacts(&repository).await.map_err(ListingError::from)? {
                    let untagged = a.tags.is_empty().then_some(None);
                    for tag in a.tags.iter().cloned().map(Some).chain(untagged) {
                        let admitted = match (&selection.tags, &tag) {
                            (None, _) => true,
                            (Some(s), Some(t)) => s.admits(t.as_str()),
                            (Some(s), None) => s.admits(""),
                        };
                        if admitted {
                            selected.push((tag, a.digest.clone(), Some(a.facts.clone())));
                        }
                    }
                }
            }
            None => {
                let tags = match &selection.tags {
                    Some(Select::One(t)) => vec![t.clone()],
                    Some(s) => source.tags(&repository).await?.into_iter().filter(|t| s.admits(t.as_str())).collect(),
                    None => source.tags(&repository).await?,
                };
                for tag in tags {
                    if let Some(digest) = source.head_manifest(&repository, tag.as_str()).await? {
                        selected.push((Some(tag), digest, None));
                    }
                }
            }
        }
        let (artifacts, tasks_before) = (selected.len(), backfill.tasks.len());
        for (tag, digest, facts) in selected {
            backfill.artifacts += 1;
            let event = HarborEvent {
                kind: EventKind::Push,
                format: Format::Default,
                occurred_at: now(),
                operator: "relay-cli".into(),
                dedup_key: format!("manual-{}", uuid::Uuid::new_v4()),
                artifact: Some(Artifact { repository: repository.clone(), digest, tag }),
            };
            let planned = plan(config, &event, facts.as_ref(), &mut || uuid::Uuid::new_v4().to_string());
            backfill.tasks.extend(planned.tasks);
        }
        if let Some(p) = progress {
            p.walked(artifacts, backfill.tasks.len() - tasks_before);
        }
    }
    if backfill.artifacts == 0 {
        return Err(BackfillError::NothingSelected { repositories: backfill.repositories });
    }
    if backfill.tasks.is_empty() {
        return Err(BackfillError::NoRuleMatches { artifacts: backfill.artifacts });
    }
    Ok(backfill)
}

/// Entries per listing request.
const LISTING_PAGE: usize = 1000;

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Depths of a queue.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Depth {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
}

pub async fn depth(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<Depth, AwsError> {
    let names = [
        Attr::ApproximateNumberOfMessages,
        Attr::ApproximateNumberOfMessagesNotVisible,
        Attr::ApproximateNumberOfMessagesDelayed,
    ];
    let attrs = Sqs::new(sqs.clone()).attributes(url, &names).await?;
    let get = |a: Attr| attrs.get(&a).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(Depth {
        visible: get(Attr::ApproximateNumberOfMessages),
        in_flight: get(Attr::ApproximateNumberOfMessagesNotVisible),
        delayed: get(Attr::ApproximateNumberOfMessagesDelayed),
    })
}

/// The DLQ of `queue_url`, from its redrive policy.
pub async fn dead_letter_queue(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Result<Option<String>, AwsError> {
    Ok(crate::dead_letter::redrive_policy(sqs, queue_url, None).await?.map(|p| p.dlq_url))
}

/// A message sitting in the DLQ.
#[derive(Debug)]
pub struct DeadLetter {
    pub message_id: String,
    pub receive_count: u64,
    /// The decoded task, or why it does not decode: one, or a bundle's
    /// (SQS's redrive moves a bundle whole; the worker dead-letters each
    /// task alone).
    pub tasks: Vec<Result<Task, TaskError>>,
    /// The error of the last attempt, when the worker dead-lettered it
    /// (SQS's own redrive carries none).
    pub last_error: Option<String>,
}

/// Lists up to `max` DLQ messages without consuming them (they are made
/// visible again right away).
pub async fn list_dead_letters(sqs: &aws_sdk_sqs::Client, dlq: &str, max: usize) -> Result<Vec<DeadLetter>, AwsError> {
    let sqs = Sqs::new(sqs.clone());
    let mut out = Vec::new();
    let mut receipts = Vec::new();
    while out.len() < max {
        let how = Receive {
            max: 10,
            visibility_seconds: Some(30),
            receive_count: true,
            attributes: &[crate::dead_letter::LAST_ERROR, crate::dead_letter::ATTEMPTS],
            wait_seconds: None,
        };
        let batch = sqs.receive(dlq, how).await?;
        if batch.is_empty() {
            break;
        }
        for m in &batch {
            let attribute = |name: &str| sqs::attribute(m, name).map(str::to_owned);
            // Attempts at the copy queue when the worker dead-lettered it,
            // else SQS's count (which includes this listing's receives).
            let count = attribute(crate::dead_letter::ATTEMPTS)
                .or_else(|| sqs::receive_count(m).map(str::to_owned))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            out.push(DeadLetter {
                message_id: m.message_id().unwrap_or_default().to_owned(),
                receive_count: count,
                tasks: crate::bundle::tasks_in(m.body().unwrap_or_default()),
                last_error: attribute(crate::dead_letter::LAST_ERROR),
            });
            receipts.extend(m.receipt_handle().map(str::to_owned));
        }
    }
    for r in receipts {
        let _ = sqs.change_visibility(dlq, &r, 0).await;
    }
    Ok(out)
}

/// Moves every DLQ message back to the copy queue. Returns how many.
pub async fn redrive(sqs: &aws_sdk_sqs::Client, dlq: &str, queue: &str) -> Result<usize, AwsError> {
    let sqs = Sqs::new(sqs.clone());
    let mut moved = 0;
    loop {
        let how = Receive { max: 10, visibility_seconds: Some(60), wait_seconds: Some(0), ..Default::default() };
        let batch = sqs.receive(dlq, how).await?;
        if batch.is_empty() {
            return Ok(moved);
        }
        for m in &batch {
            sqs.send(queue, Outgoing::new(m.body().unwrap_or_default())).await?;
            // Deleted only once re-sent: at worst a message is in both queues.
            if let Some(r) = m.receipt_handle() {
                let _ = sqs.delete(dlq, r).await;
            }
            moved += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
