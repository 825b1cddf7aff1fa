//! Nothing Harbor still holds is removed downstream: deletes across rules
//! that map several source repositories onto one destination repository,
//! deletes that would take tags the deleted artifact did not map to, and
//! reconcile on such a mapping (no delete/re-copy flapping). Real source
//! and target registries; the worker and reconcile as the binaries run them.

use relay::reconcile::{Pass, Reconciler};
use relay::registry::Outcome;
use relay::secrets::SecretSource;
use relay::task::Action;
use relay::worker::Worker;
use relay::{bootstrap, Config};
use relay_tests::app::fast_retry;
use relay_tests::{image, planned_tasks, GeneratedImage, ImageKind, PlainRegistry, Stack};

fn project() -> String {
    format!("safe-{:08x}", rand::random::<u32>())
}

/// `<p>-dev/**` and `<p>-prod/**` both land in `<p>-mirror/<rest>`
/// (namespace, flatten 1): `dev/app` and `prod/app` share `mirror/app`.
fn colliding_rules(p: &str) -> String {
    let rule = |name: &str| {
        format!("  - name: {name}\n    filters: {{ name: \"{p}-{name}/**\" }}\n    destination: {{ registry: cluster1-registry, namespace: {p}-mirror, flatten: 1 }}\n    deletion: true\n")
    };
    rule("dev") + &rule("prod")
}

async fn setup(stack: &Stack, rules: &str) -> (Config, Worker) {
    let config = Config::parse(&stack.config_yaml(rules)).unwrap();
    let worker = bootstrap::worker(&config, &SecretSource::from_process(None), fast_retry()).await.unwrap();
    (config, worker)
}

/// Puts `img` (an image, not an index) into `to` under `tag` as well, by
/// mounting its blobs: the same digest in a second repository.
async fn also_in(reg: &PlainRegistry, img: &GeneratedImage, to: &str, tag: &str) {
    for b in &img.blobs {
        reg.mount_blob(to, b, &img.repository).await.unwrap();
    }
    let (media_type, bytes) = reg.get_manifest(&img.repository, &img.digest).await.unwrap().unwrap();
    reg.put_manifest(to, tag, &media_type, &bytes).await.unwrap();
}

/// The colliding mapping, a worker for it, and one image in both feeding
/// repositories (`<p>-dev/app:v1` and `<p>-prod/app:v1`, same digest).
struct Colliding {
    stack: Stack,
    config: Config,
    worker: Worker,
    dev: String,
    prod: String,
    mirror: String,
    shared: GeneratedImage,
}

async fn colliding() -> Colliding {
    let stack = Stack::load().unwrap();
    let p = project();
    let (config, worker) = setup(&stack, &colliding_rules(&p)).await;
    let (dev, prod, mirror) = (format!("{p}-dev/app"), format!("{p}-prod/app"), format!("{p}-mirror/app"));
    let shared = image::push(&stack.source(), &dev, "v1", ImageKind::OciImage, 1, 2048).await.unwrap();
    also_in(&stack.source(), &shared, &prod, "v1").await;
    Colliding { stack, config, worker, dev, prod, mirror, shared }
}

/// Runs the tasks the rules plan for a Harbor event; returns the outcomes.
async fn event(
    config: &Config,
    stack: &Stack,
    worker: &Worker,
    kind: &str,
    repo: &str,
    tag: &str,
    digest: &str,
) -> Vec<relay::registry::CopyReport> {
    let tasks = planned_tasks(config, stack, kind, repo, tag, digest);
    assert!(!tasks.is_empty(), "the rules plan something for {kind} {repo}:{tag}");
    let mut reports = Vec::new();
    for t in &tasks {
        reports.push(worker.run(t).await.unwrap());
    }
    reports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_keeps_what_another_mapped_source_still_holds() {
    let Colliding { stack, config, worker, dev, prod, mirror, shared: img } = colliding().await;
    let (source, target) = (stack.source(), stack.target());
    for repo in [&dev, &prod] {
        event(&config, &stack, &worker, "PUSH_ARTIFACT", repo, "v1", &img.digest).await;
    }
    assert_eq!(target.digest_at(&mirror, "v1").await.unwrap().as_deref(), Some(img.digest.as_str()));

    // Deleted from dev only: prod still holds it, so mirror/app keeps it.
    assert_eq!(source.delete_manifest(&dev, &img.digest).await.unwrap().as_u16(), 202);
    let reports = event(&config, &stack, &worker, "DELETE_ARTIFACT", &dev, "v1", &img.digest).await;
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].outcome, Some(Outcome::SourceStillHas));
    assert_eq!(reports[0].held_by.as_ref().map(|r| r.as_str()), Some(prod.as_str()), "the outcome says who holds it");
    assert_eq!(target.digest_at(&mirror, "v1").await.unwrap().as_deref(), Some(img.digest.as_str()), "not deleted");

    // Deleted from prod as well: now it goes.
    assert_eq!(source.delete_manifest(&prod, &img.digest).await.unwrap().as_u16(), 202);
    let reports = event(&config, &stack, &worker, "DELETE_ARTIFACT", &prod, "v1", &img.digest).await;
    assert_eq!(reports[0].outcome, Some(Outcome::Deleted));
    assert!(target.digest_at(&mirror, &img.digest).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_keeps_tags_the_deleted_artifact_did_not_map_to() {
    let stack = Stack::load().unwrap();
    let p = project();
    let rules = format!("  - name: mirror\n    filters: {{ name: \"{p}/**\" }}\n    destination: {{ registry: cluster1-registry }}\n    deletion: true\n");
    let (config, worker) = setup(&stack, &rules).await;
    let (source, target) = (stack.source(), stack.target());
    let app = format!("{p}/app");
    let pinned = image::push(&source, &app, "v1", ImageKind::OciImage, 1, 2048).await.unwrap();
    let plain = image::push(&source, &app, "v2", ImageKind::OciImage, 1, 2048).await.unwrap();
    for img in [&pinned, &plain] {
        event(&config, &stack, &worker, "PUSH_ARTIFACT", &app, &img.tag, &img.digest).await;
    }
    // A person tags v1's digest at the destination by hand.
    let (media_type, bytes) = target.get_manifest(&app, "v1").await.unwrap().unwrap();
    target.put_manifest(&app, "pinned-by-ops", &media_type, &bytes).await.unwrap();

    for img in [&pinned, &plain] {
        assert_eq!(source.delete_manifest(&app, &img.digest).await.unwrap().as_u16(), 202);
    }
    let kept = event(&config, &stack, &worker, "DELETE_ARTIFACT", &app, "v1", &pinned.digest).await;
    assert_eq!(kept[0].outcome, Some(Outcome::KeptForeignTags));
    assert_eq!(kept[0].foreign_tags.iter().map(|t| t.as_str()).collect::<Vec<_>>(), vec!["pinned-by-ops"]);
    assert_eq!(
        target.digest_at(&app, "pinned-by-ops").await.unwrap().as_deref(),
        Some(pinned.digest.as_str()),
        "survives"
    );

    // The other artifact carries only its own mapped tag: deleted.
    let gone = event(&config, &stack, &worker, "DELETE_ARTIFACT", &app, "v2", &plain.digest).await;
    assert_eq!(gone[0].outcome, Some(Outcome::Deleted));
    assert!(target.digest_at(&app, "v2").await.unwrap().is_none());
}

fn counts(pass: &Pass) -> (usize, usize) {
    let deletes = pass.tasks.iter().filter(|t| t.action == Action::Delete).count();
    (pass.tasks.len() - deletes, deletes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_on_a_colliding_mapping_converges_without_flapping() {
    let Colliding { stack, config, worker, dev, prod, mirror, shared } = colliding().await;
    let (source, target) = (stack.source(), stack.target());
    let dev_only = image::push(&source, &dev, "dev-only", ImageKind::OciImage, 1, 2048).await.unwrap();
    let prod_only = image::push(&source, &prod, "prod-only", ImageKind::OciImage, 1, 2048).await.unwrap();

    let mut totals = Vec::new();
    for _ in 0..3 {
        let pass = Reconciler::new(&config, &worker, 1000).pass(None, None).await.unwrap();
        let mut deleted = 0;
        for t in &pass.tasks {
            let r = worker.run(t).await.unwrap();
            deleted += usize::from(r.outcome == Some(Outcome::Deleted));
        }
        totals.push((counts(&pass), deleted));
    }
    assert_eq!(totals[0].0 .1, 0, "the first pass deletes nothing either: {totals:?}");
    assert!(totals[0].0 .0 >= 2, "the first pass copies: {totals:?}");
    assert_eq!(&totals[1..], &[((0, 0), 0), ((0, 0), 0)], "zero copies and zero deletes after the first pass");
    for (tag, img) in [("v1", &shared), ("dev-only", &dev_only), ("prod-only", &prod_only)] {
        assert_eq!(target.digest_at(&mirror, tag).await.unwrap().as_deref(), Some(img.digest.as_str()), "{tag}");
    }

    // A tag gone from every feeding source is deleted, once.
    assert_eq!(source.delete_manifest(&prod, &prod_only.digest).await.unwrap().as_u16(), 202);
    let pass = Reconciler::new(&config, &worker, 1000).pass(None, None).await.unwrap();
    assert_eq!(counts(&pass), (0, 1), "{:?}", pass.tasks);
    for t in &pass.tasks {
        assert_eq!(worker.run(t).await.unwrap().outcome, Some(Outcome::Deleted));
    }
    assert!(target.digest_at(&mirror, "prod-only").await.unwrap().is_none());
    assert_eq!(target.digest_at(&mirror, "v1").await.unwrap().as_deref(), Some(shared.digest.as_str()));
    let after = Reconciler::new(&config, &worker, 1000).pass(None, None).await.unwrap();
    assert_eq!(counts(&after), (0, 0));
}

/// A task from the queue as the worker receives it.
fn message(t: &relay::Task) -> relay::worker::Message {
    relay::worker::Message { id: t.id.clone(), body: t.encode(), receive_count: 1, ..Default::default() }
}

/// The worker checks a queued task against the rules in force, not the
/// ones that wrote it: a delete planned while `deletion` was on is refused
/// once it is off (a redrive days later), and so is a copy whose mapping no
/// enabled rule produces (a task someone wrote by hand). Each is dead-
/// lettered at once with its reason, and the destination is untouched;
/// the rules' own task still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_carries_out_only_what_todays_rules_produce() {
    let stack = Stack::load().unwrap();
    let p = project();
    let rule = |deletion: bool| {
        format!("  - name: mirror\n    filters: {{ name: \"{p}/**\" }}\n    destination: {{ registry: cluster1-registry }}\n    deletion: {deletion}\n")
    };
    let (then, _) = setup(&stack, &rule(true)).await;
    let (now, worker) = setup(&stack, &rule(false)).await;
    let (source, target) = (stack.source(), stack.target());
    let app = format!("{p}/app");
    let img = image::push(&source, &app, "v1", ImageKind::OciImage, 1, 2048).await.unwrap();

    // The rules' own copy runs from the queue.
    let copy = planned_tasks(&now, &stack, "PUSH_ARTIFACT", &app, "v1", &img.digest).remove(0);
    assert!(worker.handle_batch(vec![message(&copy)], None).await.is_empty());
    assert_eq!(target.digest_at(&app, "v1").await.unwrap().as_deref(), Some(img.digest.as_str()));

    // A delete planned while deletion was on, delivered after it was turned off.
    assert_eq!(source.delete_manifest(&app, &img.digest).await.unwrap().as_u16(), 202);
    let stale = planned_tasks(&then, &stack, "DELETE_ARTIFACT", &app, "v1", &img.digest).remove(0);
    // A copy into a repository no rule maps `app` onto.
    let mut forged = copy.clone();
    forged.id = format!("{}-forged", copy.id);
    forged.destination.repository = format!("{p}-elsewhere/app").parse().unwrap();
    let failures = worker.handle_batch(vec![message(&stale), message(&forged)], None).await;
    let mut refused: Vec<(String, String, relay::settle::Disposition)> =
        failures.into_iter().map(|f| (f.message.id, f.error, f.disposition)).collect();
    refused.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(refused.len(), 2, "{refused:?}");
    for (id, error, disposition) in &refused {
        assert_eq!(*disposition, relay::settle::Disposition::Permanent, "{id}: {error}");
        assert!(error.contains("refused by the rules in force"), "{id}: {error}");
    }
    let reason = |id: &str| refused.iter().find(|r| r.0 == id).map(|r| r.1.clone()).unwrap();
    assert!(reason(&stale.id).contains("`deletion`"), "{}", reason(&stale.id));
    assert!(reason(&forged.id).contains("no enabled rule maps"), "{}", reason(&forged.id));
    assert_eq!(target.digest_at(&app, "v1").await.unwrap().as_deref(), Some(img.digest.as_str()), "not deleted");
    assert!(target.digest_at(&format!("{p}-elsewhere/app"), "v1").await.unwrap().is_none(), "not copied");
}
