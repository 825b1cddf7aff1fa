//! Reconcile: make every destination converge to what the rules say it
//! should hold, for the changes Harbor sends no webhook about (tags added or
//! removed in the UI, GC, deliveries that failed three times).
//!
//! One pass lists the source — Harbor's REST API when `source.harbor_api` is
//! on (projects → repositories → artifacts with tags and labels, so label
//! filters apply and no source HEAD is needed), otherwise `/v2/_catalog` and
//! `/tags/list` with `Link` pagination, resolving each tag with HEAD (never
//! GET: Harbor counts GETs as pulls) — then HEADs the mapped destination
//! reference and plans copy tasks only for what is missing or different. Rules with `deletion: true` also get delete
//! tasks for destination tags the source no longer has: only tags the rule
//! maps, and only those the relay's record says it wrote ([`Written`]), so
//! a tag pushed straight to the destination stays; `prune: true` deletes
//! those too. Never a referrers fallback or signature tag whose subject
//! the destination holds. The tasks go through the same queue and worker as webhook events,
//! so a reconcile racing the webhook moves no duplicate bytes: the worker's
//! HEAD checks and blob ledger absorb it.
//!
//! Work is bounded per invocation: a pass stops before `stop_at` and returns
//! a cursor — the last repository finished (`repo`), or, inside a repository
//! with more tags than one run can check, the last entry checked
//! (`repo:tag`, `repo:@sha256:…` for an untagged artifact) — and the next
//! pass resumes after it, so every repository progresses run after run.
//! The cursor lives in an SSM parameter ([`CursorStore`]) — small, durable,
//! readable by an operator, and available where DynamoDB is not (LocalStack
//! here); the task stream cannot hold it because tasks are consumed.

use std::collections::HashMap;
use std::time::Instant;

use futures_util::StreamExt;

use crate::aws_error::AwsError;
use crate::config::Config;
use crate::digest::Digest;
use crate::event::{Artifact, EventKind, Format, HarborEvent};
use crate::feeders::{feeders_among, literal_prefixes, SourceListing};
use crate::harbor_api::HarborApi;
use crate::plan::plan;
use crate::progress::Progress;
use crate::registry::{RegistryClient, RegistryError};
use crate::repository::{RepositoryPath, Tag};
use crate::rules::ArtifactFacts;
use crate::task::{Action, Task};
use crate::worker::Destination;
use crate::written::Written;

/// A pass fails only when a listing does: nothing is planned from half a list.
pub use crate::feeders::ListingError as ReconcileError;

/// One thing the source holds: a tag (digest known when Harbor's API listed
/// it, else resolved by HEAD), or an untagged artifact (Harbor's API only).
#[derive(Debug, Clone)]
struct Listed {
    tag: Option<Tag>,
    digest: Option<Digest>,
    /// The artifact's labels and type when Harbor's API listed it.
    facts: Option<ArtifactFacts>,
    /// Its accessories' digests when Harbor's API listed it: a destination
    /// in sync on the tag but missing one gets a task (which copies them).
    accessories: Vec<Digest>,
}

impl Listed {
    /// Its place in a repository's walk, and in a cursor: the tag, or
    /// `@<digest>` for an untagged artifact (neither can hold the other).
    fn key(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(t), _) => t.as_str().to_owned(),
            (None, Some(d)) => format!("@{d}"),
            (None, None) => String::new(),
        }
    }
}

/// The operator of the events a pass synthesizes (defined with the task,
/// whose version 1 reads it; see [`crate::task::RECONCILE_OPERATOR`]).
pub use crate::task::RECONCILE_OPERATOR as OPERATOR;

/// Tags checked at the same time within a repository.
const TAGS_IN_FLIGHT: usize = 16;
/// Entries checked between two looks at the clock: a pass can stop inside
/// a repository after any stretch of this many.
const STRETCH: usize = 4 * TAGS_IN_FLIGHT;

/// A stored cursor: the repository to resume at, and whether it was
/// finished (resume after it) or stopped after one of its entries.
fn parse_cursor(cursor: Option<&str>) -> (Option<&str>, Option<&str>) {
    match cursor.map(|c| c.split_once(':')) {
        None => (None, None),
        Some(None) => (cursor, None),
        Some(Some((repo, entry))) => (Some(repo), Some(entry)),
    }
}

/// How one repository's walk ended.
enum Walked {
    Done,
    /// Out of time after this entry (its [`Listed::key`]).
    StoppedAfter(String),
}

/// What one pass found and planned.
#[derive(Debug, Default)]
pub struct Pass {
    pub repositories: u64,
    pub tags_checked: u64,
    pub in_sync: u64,
    pub tasks: Vec<Task>,
    /// Set when the pass stopped early: resume after this repository
    /// (`repo`) or after this entry of it (`repo:tag`).
    pub cursor: Option<String>,
}

impl Pass {
    /// One EMF line for a pass whose `enqueued` tasks went on the queue:
    /// repositories and tags scanned, drift found (tags missing, moved or
    /// to delete, each a task), tasks enqueued, duration, and whether it
    /// stopped early to resume later.
    pub fn emit_metrics(&self, enqueued: usize, duration: std::time::Duration) {
        use crate::metrics::{emit, Unit};
        emit(
            &[("Function", "reconcile")],
            &[
                ("Passes", 1.0, Unit::Count),
                ("RepositoriesScanned", self.repositories as f64, Unit::Count),
                ("TagsScanned", self.tags_checked as f64, Unit::Count),
                ("DriftFound", self.tasks.len() as f64, Unit::Count),
                ("TasksEnqueued", enqueued as f64, Unit::Count),
                ("PassDuration", duration.as_millis() as f64, Unit::Milliseconds),
                ("PassesUnfinished", if self.cursor.is_some() { 1.0 } else { 0.0 }, Unit::Count),
            ],
        );
    }
}

pub struct Reconciler<'a> {
    pub config: &'a Config,
    pub source: &'a RegistryClient,
    /// Lists the source through Harbor's REST API when set.
    pub harbor: Option<&'a HarborApi>,
    pub destinations: &'a std::collections::HashMap<String, Destination>,
    /// Entries per listing request (`n=`).
    pub page_size: usize,
    /// Moved as repositories are walked, when someone shows it.
    pub progress: Option<&'a Progress>,
    /// Reads a registry's credentials again (the TTL passed, or it
    /// refused them: a rotated secret), as the worker does.
    pub credentials: Option<&'a crate::secrets::CredentialReloader>,
    /// What the relay wrote: a tag it never wrote is not Harbor's to delete
    /// (see [`Written`]). Without it, only `prune` rules delete.
    pub written: Option<&'a Written>,
}

impl<'a> Reconciler<'a> {
    /// A reconciler over the worker's clients (source and destinations).
    pub fn new(config: &'a Config, worker: &'a crate::worker::Worker, page_size: usize) -> Self {
        Reconciler {
            config,
            source: &worker.source,
            harbor: worker.harbor.as_ref(),
            destinations: &worker.destinations,
            page_size,
            progress: None,
            credentials: Some(&worker.credentials),
            written: worker.written.as_deref(),
        }
    }

    /// [`Reconciler::pass_once`], with the credentials read again first
    /// when their TTL has passed, and once more when a registry refuses
    /// them during the pass (a secret rotated since; then the pass runs
    /// again, once). Harbor's API reads its own again ([`HarborApi`]).
    pub async fn pass(&self, cursor: Option<&str>, stop_at: Option<Instant>) -> Result<Pass, ReconcileError> {
        let clients = || std::iter::once(self.source).chain(self.destinations.values().map(|d| &d.client));
        if let Some(reloader) = self.credentials {
            for client in clients() {
                reloader.refresh_if_due(client).await;
            }
        }
        let result = self.pass_once(cursor, stop_at).await;
        let (Some(reloader), Err(ReconcileError::Registry(RegistryError::Denied { registry, .. }))) =
            (self.credentials, &result)
        else {
            return result;
        };
        let Some(client) = clients().find(|c| c.name() == registry) else { return result };
        match reloader.reread(client).await {
            Ok(true) => self.pass_once(cursor, stop_at).await,
            Ok(false) => result,
            Err(e) => {
                tracing::warn!(registry = client.name(), error = %e, "cannot read the credentials again after a denial");
                result
            }
        }
    }

    /// Plans one pass over the repositories after the cursor `cursor`
    /// (sorted by name; see [`Pass::cursor`]). Past `stop_at` it stops,
    /// but only after its first stretch of entries: every run progresses,
    /// however little time it was given.
    pub async fn pass_once(&self, cursor: Option<&str>, stop_at: Option<Instant>) -> Result<Pass, ReconcileError> {
        let mut pass = Pass::default();
        let (after, inside) = parse_cursor(cursor);
        if self.written.is_none() && self.config.rules.iter().any(|r| r.enabled && r.deletion && !r.prune) {
            tracing::warn!(
                "rules with `deletion` delete only tags the relay recorded writing, and there is no record ({} unset): this pass deletes none",
                crate::written::BUCKET_ENV
            );
        }
        let prefixes = literal_prefixes(self.config.rules.iter().filter(|r| r.enabled));
        let listed = self.listing().repositories(prefixes.as_deref()).await?;
        // Sorted and without duplicates already (the listing's promise).
        let repositories: Vec<RepositoryPath> = listed
            .iter()
            .filter(|r| self.config.rules.iter().any(|rule| rule.enabled && rule.selects(r)))
            .filter(|r| after.is_none_or(|a| r.as_str() > a || (inside.is_some() && r.as_str() == a)))
            .cloned()
            .collect();
        if let Some(p) = self.progress {
            p.selected(repositories.len());
        }
        let merge = |pass: &mut Pass| pass.tasks = merge_tags(std::mem::take(&mut pass.tasks));
        // Tags of the other repositories feeding a destination, listed once
        // per pass however many of their siblings ask.
        let mut feeder_tags = HashMap::new();
        let mut last_done: Option<String> = None;
        for repo in repositories {
            if last_done.is_some() && stop_at.is_some_and(|t| Instant::now() >= t) {
                pass.cursor = last_done;
                merge(&mut pass);
                return Ok(pass);
            }
            let (checked, planned) = (pass.tags_checked, pass.tasks.len());
            let resume = inside.filter(|_| after == Some(repo.as_str()));
            let walked = self.repository(&repo, resume, stop_at, &listed, &mut feeder_tags, &mut pass).await?;
            if let Walked::StoppedAfter(entry) = walked {
                pass.cursor = Some(format!("{repo}:{entry}"));
                merge(&mut pass);
                return Ok(pass);
            }
            pass.repositories += 1;
            if let Some(p) = self.progress {
                p.walked((pass.tags_checked - checked) as usize, pass.tasks.len() - planned);
            }
            last_done = Some(repo.to_string());
        }
        merge(&mut pass);
        Ok(pass)
    }

    fn listing(&self) -> SourceListing<'a> {
        SourceListing { source: self.source, harbor: self.harbor, page_size: self.page_size }
    }

    /// What the source holds in `repo`.
    async fn list(&self, repo: &RepositoryPath) -> Result<Vec<Listed>, ReconcileError> {
        let Some(api) = self.harbor else {
            let tags = self.source.tags_paged(repo, self.page_size).await?;
            return Ok(tags
                .into_iter()
                .map(|t| Listed { tag: Some(t), digest: None, facts: None, accessories: Vec::new() })
                .collect());
        };
        let mut listed = Vec::new();
        for a in api.artifacts(repo).await? {
            let entry = |tag| Listed {
                tag,
                digest: Some(a.digest.clone()),
                facts: Some(a.facts.clone()),
                accessories: a.accessories.clone(),
            };
            if a.tags.is_empty() {
                listed.push(entry(None));
            }
            listed.extend(a.tags.iter().map(|t| entry(Some(t.clone()))));
        }
        Ok(listed)
    }

    /// One source entry: `None` if it vanished, else how many of its
    /// destinations are in sync and the copy tasks for the others.
    async fn check(&self, repo: &RepositoryPath, entry: &Listed) -> Result<Option<(u64, Vec<Task>)>, RegistryError> {
        let digest = match (&entry.digest, &entry.tag) {
            (Some(d), _) => d.clone(),
            (None, Some(tag)) => match self.source.head_manifest(repo, tag.as_str()).await? {
                Some(d) => d,
                None => return Ok(None),
            },
            (None, None) => return Ok(None),
        };
        let event = synthetic(EventKind::Push, repo, digest.clone(), entry.tag.clone());
        let (mut in_sync, mut tasks) = (0, Vec::new());
        for mut task in plan(self.config, &event, entry.facts.as_ref(), &mut new_id).tasks {
            task.options.refresh_referrers = true;
            let Some(dst) = self.destinations.get(&task.destination.registry) else { continue };
            let reference = entry.tag.as_ref().map_or_else(|| digest.to_string(), |t| t.as_str().to_owned());
            let dst_repo = &task.destination.repository;
            match dst.client.head_manifest(dst_repo, &reference).await? {
                Some(d) if d == digest => {
                    if self.accessories_present(&dst.client, dst_repo, &entry.accessories).await? {
                        in_sync += 1;
                    } else {
                        tasks.push(task);
                    }
                }
                Some(_) if !task.options.override_existing => in_sync += 1,
                _ => tasks.push(task),
            }
        }
        Ok(Some((in_sync, tasks)))
    }

    /// Whether `repo` or another of `feeding` holds `digest` at the source
    /// (HEAD by digest, under whatever tag).
    async fn source_holds(
        &self,
        repo: &RepositoryPath,
        feeding: &[RepositoryPath],
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        for source in std::iter::once(repo).chain(feeding.iter().filter(|f| *f != repo)) {
            if self.source.head_manifest(source, &digest.to_string()).await?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether the relay's record says it pointed `tag` at `digest`; no
    /// record, or one it cannot read, keeps the tag.
    async fn relay_wrote(&self, registry: &str, repo: &RepositoryPath, tag: &Tag, digest: &Digest) -> bool {
        let Some(written) = self.written else { return false };
        match written.wrote(registry, repo, tag).await {
            Ok(recorded) => recorded.as_ref() == Some(digest),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the record of written tags: the tag is kept");
                false
            }
        }
    }

    /// Whether the destination holds every accessory (HEAD by digest);
    /// always true when the worker does not copy referrers.
    async fn accessories_present(
        &self,
        client: &RegistryClient,
        repo: &RepositoryPath,
        accessories: &[Digest],
    ) -> Result<bool, RegistryError> {
        if !self.config.worker.referrers {
            return Ok(true);
        }
        for a in accessories {
            if client.head_manifest(repo, &a.to_string()).await?.as_ref() != Some(a) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// `source_repositories` is the pass's listing of the source, from
    /// which the other repositories feeding a destination are found;
    /// `feeder_tags` caches their tags for the pass.
    /// Entries are checked in the order of their keys, after `resume`
    /// (the key a previous pass stopped after), a stretch at a time; past
    /// `stop_at` the walk stops after a stretch. Deletions are planned
    /// once every entry was checked, by the run that finishes the walk.
    async fn repository(
        &self,
        repo: &RepositoryPath,
        resume: Option<&str>,
        stop_at: Option<Instant>,
        source_repositories: &[RepositoryPath],
        feeder_tags: &mut HashMap<RepositoryPath, Vec<Tag>>,
        pass: &mut Pass,
    ) -> Result<Walked, ReconcileError> {
        let mut listed = self.list(repo).await?;
        listed.sort_by_cached_key(Listed::key);
        let start = resume.map_or(0, |r| listed.partition_point(|l| l.key().as_str() <= r));
        for stretch in listed[start..].chunks(STRETCH) {
            // Entries are independent: HEAD them a few at a time (order kept).
            let checked: Vec<_> = futures_util::stream::iter(stretch)
                .map(|entry| self.check(repo, entry))
                .buffered(TAGS_IN_FLIGHT)
                .collect::<Vec<_>>()
                .await;
            for result in checked {
                let Some((in_sync, tasks)) = result? else { continue };
                pass.tags_checked += 1;
                pass.in_sync += in_sync;
                pass.tasks.extend(tasks);
            }
            let last = stretch.last().map(Listed::key).unwrap_or_default();
            let more = listed.last().is_some_and(|l| l.key() != last);
            if more && stop_at.is_some_and(|t| Instant::now() >= t) {
                return Ok(Walked::StoppedAfter(last));
            }
        }
        let tags: Vec<Tag> = listed.into_iter().filter_map(|l| l.tag).collect();

        // Deletions, for rules that delete: destination tags of this
        // repository's mapped places that no source repository feeding that
        // place has (another rule, or the same rule's flattening, may map a
        // second source there: its tags are not this repository's to delete).
        for rule in self.config.rules.iter().filter(|r| r.enabled && r.deletion) {
            // Without the record it would delete nothing: spare the listing.
            if !rule.selects(repo) || (self.written.is_none() && !rule.prune) {
                continue;
            }
            let Ok(dst_repo) = rule.map_repository(repo) else { continue };
            let Some(dst) = self.destinations.get(&rule.destination.registry) else { continue };
            let mut held = tags.clone();
            let feeding = feeders_among(&self.config.rules, &rule.destination.registry, &dst_repo, source_repositories);
            for other in &feeding {
                if other == repo {
                    continue;
                }
                if !feeder_tags.contains_key(other) {
                    let listed = self.list(other).await?.into_iter().filter_map(|l| l.tag).collect();
                    feeder_tags.insert(other.clone(), listed);
                }
                held.extend(feeder_tags[other].iter().cloned());
            }
            for dst_tag in dst.client.tags_paged(&dst_repo, self.page_size).await? {
                if held.contains(&dst_tag) || !rule.tag_filter.as_ref().is_none_or(|f| f.accepts(Some(&dst_tag))) {
                    continue;
                }
                // The tag-schema name of a subject the destination holds:
                // the fallback index the worker maintains there (registries
                // without the referrers API) or a signature's tag. Never a
                // source tag, so never "held"; deleting it would leave the
                // subject's signatures unfindable.
                if let Some(subject) = tag_schema_subject(&dst_tag) {
                    if dst.client.head_manifest(&dst_repo, &subject.to_string()).await?.is_some() {
                        continue;
                    }
                }
                let Some(digest) = dst.client.head_manifest(&dst_repo, dst_tag.as_str()).await? else { continue };
                // Harbor's deletes only: a tag the relay did not write (a
                // person pushed it, or it was re-pushed over the relay's) is
                // not drift, unless the rule prunes.
                if !rule.prune && !self.relay_wrote(&rule.destination.registry, &dst_repo, &dst_tag, &digest).await {
                    continue;
                }
                // The worker deletes by digest, and only a digest no feeding
                // source holds under any tag (`registry/delete.rs`): one a
                // source still holds would be planned every pass and kept
                // every time. Reach its verdict here instead.
                if self.source_holds(repo, &feeding, &digest).await? {
                    continue;
                }
                let event = synthetic(EventKind::Delete, repo, digest, Some(dst_tag.clone()));
                pass.tasks.extend(plan(self.config, &event, None, &mut new_id).tasks.into_iter().filter(|t| {
                    t.action == Action::Delete
                        && t.destination.registry == rule.destination.registry
                        && t.destination.repository == dst_repo
                }));
            }
        }
        Ok(Walked::Done)
    }
}

/// Tags of one digest going to one place travel in one task (the task
/// schema carries several): one copy, then one manifest PUT per tag.
fn merge_tags(tasks: Vec<Task>) -> Vec<Task> {
    let mut merged: Vec<Task> = Vec::with_capacity(tasks.len());
    let mut index = std::collections::HashMap::new();
    for t in tasks {
        let key = (t.action, t.destination.registry.clone(), t.destination.repository.clone(), t.source.digest.clone());
        match index.get(&key) {
            Some(&i) => {
                let m: &mut Task = &mut merged[i];
                m.source.tags.extend(t.source.tags);
                m.destination.tags.extend(t.destination.tags);
            }
            None => {
                index.insert(key, merged.len());
                merged.push(t);
            }
        }
    }
    merged
}

/// The subject a referrers tag-schema name stands for: `sha256-<hex>`
/// (OCI 1.1's fallback index) or `sha256-<hex>.sig|.att|.sbom` (cosign's
/// tags) → `sha256:<hex>`.
fn tag_schema_subject(tag: &Tag) -> Option<Digest> {
    let rest = tag.as_str().strip_prefix("sha256-")?;
    let hex = rest.split_once('.').map_or(rest, |(hex, _)| hex);
    let prefix = format!("sha256-{hex}");
    if !crate::registry::referrers::is_referrer_tag(tag.as_str(), &prefix) {
        return None;
    }
    format!("sha256:{hex}").parse().ok()
}

fn synthetic(kind: EventKind, repository: &RepositoryPath, digest: Digest, tag: Option<Tag>) -> HarborEvent {
    HarborEvent {
        kind,
        format: Format::Default,
        occurred_at: 0,
        operator: OPERATOR.into(),
        dedup_key: format!("reconcile-{}", uuid::Uuid::new_v4()),
        artifact: Some(Artifact { repository: repository.clone(), digest, tag }),
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The resume cursor, in an SSM parameter.
pub struct CursorStore {
    pub ssm: aws_sdk_ssm::Client,
    pub parameter: String,
}

impl CursorStore {
    pub async fn load(&self) -> Result<Option<String>, AwsError> {
        match self.ssm.get_parameter().name(&self.parameter).send().await {
            Ok(out) => {
                Ok(out.parameter().and_then(|p| p.value()).filter(|v| !v.is_empty() && *v != "-").map(str::to_owned))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_parameter_not_found()) => Ok(None),
            Err(e) => Err(AwsError::sdk("GetParameter", &self.parameter, &e)),
        }
    }

    /// Stores the cursor; `None` (the listing is complete) stores `-`.
    pub async fn save(&self, cursor: Option<&str>) -> Result<(), AwsError> {
        self.ssm
            .put_parameter()
            .name(&self.parameter)
            .value(cursor.unwrap_or("-"))
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .map(drop)
            .map_err(|e| AwsError::sdk("PutParameter", &self.parameter, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_resume_after_a_repository_or_inside_one() {
        assert_eq!(parse_cursor(None), (None, None));
        assert_eq!(parse_cursor(Some("p/app")), (Some("p/app"), None));
        assert_eq!(parse_cursor(Some("p/app:v1.2")), (Some("p/app"), Some("v1.2")));
        assert_eq!(parse_cursor(Some("p/app:@sha256:ab")), (Some("p/app"), Some("@sha256:ab")));
    }

    #[test]
    fn tag_schema_names_give_their_subject() {
        let hex = "a".repeat(64);
        let subject: Digest = format!("sha256:{hex}").parse().unwrap();
        for tag in [format!("sha256-{hex}"), format!("sha256-{hex}.sig"), format!("sha256-{hex}.sbom")] {
            assert_eq!(tag_schema_subject(&tag.parse().unwrap()), Some(subject.clone()), "{tag}");
        }
        for tag in ["v1".to_owned(), format!("sha256-{hex}.bak"), "sha256-abc".to_owned(), format!("sha512-{hex}")] {
            assert_eq!(tag_schema_subject(&tag.parse().unwrap()), None, "{tag}");
        }
    }
}
