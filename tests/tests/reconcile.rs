//! Reconcile against the real registries: drift scenarios, deletion on and
//! off, override on and off, listings that need pagination, and the resume
//! cursor in SSM (LocalStack).

use std::time::Instant;

use relay::reconcile::{CursorStore, Pass, Reconciler};
use relay::secrets::SecretSource;
use relay::task::Action;
use relay::worker::Worker;
use relay::{bootstrap, Config};
use relay_tests::app::fast_retry;
use relay_tests::{image, ImageKind, Stack};

fn project() -> String {
    format!("rec-{:08x}", rand::random::<u32>())
}

fn rules(project: &str, deletion: bool, override_existing: bool) -> String {
    format!("  - name: mirror\n    filters: {{ name: \"{project}/**\" }}\n    destination: {{ registry: cluster1-registry }}\n    deletion: {deletion}\n    override: {override_existing}\n")
}

/// [`rules`] with deletion on and `prune: true`.
fn pruning(project: &str) -> String {
    rules(project, true, true) + "    prune: true\n"
}

async fn setup(stack: &Stack, rules: &str) -> (Config, Worker) {
    let config = Config::parse(&stack.config_yaml(rules)).unwrap();
    let worker = bootstrap::worker(&config, &SecretSource::from_process(None), fast_retry()).await.unwrap();
    (config, worker)
}

async fn pass(config: &Config, worker: &Worker, page: usize) -> Pass {
    Reconciler::new(config, worker, page).pass(None, None).await.unwrap()
}

async fn apply(worker: &Worker, pass: &Pass) {
    use futures_util::StreamExt;
    futures_util::stream::iter(&pass.tasks)
        .for_each_concurrent(8, |t| async move {
            worker.run(t).await.unwrap();
        })
        .await;
}

fn summary(pass: &Pass) -> Vec<(Action, String, String)> {
    let mut v: Vec<_> = pass
        .tasks
        .iter()
        .map(|t| {
            let mut tags: Vec<_> = t.destination.tags.iter().map(|t| t.to_string()).collect();
            tags.sort();
            (t.action, t.destination.repository.to_string(), tags.join(","))
        })
        .collect();
    v.sort_by_key(|t| (t.1.clone(), t.2.clone()));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_repaired() {
    let stack = Stack::load().unwrap();
    let p = project();
    let (config, worker) = setup(&stack, &rules(&p, true, true)).await;
    let (source, target) = (stack.source(), stack.target());
    let app = format!("{p}/app");
    let a = image::push(&source, &app, "v1", ImageKind::OciImage, 1, 2048).await.unwrap();
    let c = image::push(&source, &app, "old", ImageKind::DockerImage, 1, 2048).await.unwrap();

    // A first pass copies what was never announced; a second finds all in sync.
    let first = pass(&config, &worker, 1000).await;
    assert_eq!(
        summary(&first),
        vec![(Action::Copy, app.clone(), "old".into()), (Action::Copy, app.clone(), "v1".into())]
    );
    apply(&worker, &first).await;
    let again = pass(&config, &worker, 1000).await;
    assert!(again.tasks.is_empty(), "{:?}", summary(&again));
    assert_eq!(again.in_sync, 2);

    // Drift: a tag added only at the source, an image whose webhook never
    // came, a tag removed at the source, a destination tag overwritten by hand.
    let (_, bytes) = source.get_manifest(&app, "v1").await.unwrap().unwrap();
    source.put_manifest(&app, "extra", image::OCI_MANIFEST, &bytes).await.unwrap();
    let tool = format!("{p}/tool");
    image::push(&source, &tool, "1.0", ImageKind::OciIndex { platforms: 2 }, 1, 2048).await.unwrap();
    assert_eq!(source.delete_manifest(&app, &c.digest).await.unwrap().as_u16(), 202);
    image::push(&target, &app, "v1", ImageKind::OciImage, 1, 1024).await.unwrap();

    let drift = pass(&config, &worker, 1000).await;
    assert_eq!(
        summary(&drift),
        vec![
            (Action::Copy, app.clone(), "extra,v1".into()),
            (Action::Delete, app.clone(), "old".into()),
            (Action::Copy, tool.clone(), "1.0".into()),
        ]
    );
    apply(&worker, &drift).await;
    assert_eq!(target.digest_at(&app, "extra").await.unwrap().as_deref(), Some(a.digest.as_str()));
    assert_eq!(
        target.digest_at(&app, "v1").await.unwrap().as_deref(),
        Some(a.digest.as_str()),
        "overwritten tag restored"
    );
    assert!(
        target.digest_at(&app, &c.digest).await.unwrap().is_none(),
        "removed at the source, removed at the destination"
    );
    assert_eq!(target.tree(&tool, "1.0").await.unwrap(), source.tree(&tool, "1.0").await.unwrap());
    assert!(pass(&config, &worker, 1000).await.tasks.is_empty(), "converged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_off_and_override_off_leave_the_destination_alone() {
    let stack = Stack::load().unwrap();
    let p = project();
    let (source, target) = (stack.source(), stack.target());
    let app = format!("{p}/app");
    let a = image::push(&source, &app, "v1", ImageKind::OciImage, 1, 2048).await.unwrap();
    // At the destination only: a tag the source never had, and v1 by hand.
    let hand = image::push(&target, &app, "v1", ImageKind::OciImage, 1, 1024).await.unwrap();
    image::push(&target, &app, "only-there", ImageKind::OciImage, 1, 1024).await.unwrap();

    let (config, worker) = setup(&stack, &rules(&p, false, false)).await;
    let keep = pass(&config, &worker, 1000).await;
    assert!(keep.tasks.is_empty(), "{:?}", summary(&keep));
    assert_eq!(keep.in_sync, 1, "override off: the hand-made v1 counts as settled");
    assert_eq!(target.digest_at(&app, "v1").await.unwrap().as_deref(), Some(hand.digest.as_str()));

    // Deletion on propagates Harbor's deletes only: `only-there` was never
    // Harbor's (nor the relay's), so it stays; override restores v1.
    let (config, worker) = setup(&stack, &rules(&p, true, true)).await;
    let fix = pass(&config, &worker, 1000).await;
    assert_eq!(summary(&fix), vec![(Action::Copy, app.clone(), "v1".into())]);
    assert_ne!(hand.digest, a.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_are_paginated_and_a_synced_pass_is_head_only() {
    let stack = Stack::load().unwrap();
    let p = project();
    let (config, worker) = setup(&stack, &rules(&p, false, true)).await;
    let source = stack.source();
    let repo = format!("{p}/many");
    image::push(&source, &repo, "t0", ImageKind::OciImage, 1, 1024).await.unwrap();
    let (_, bytes) = source.get_manifest(&repo, "t0").await.unwrap().unwrap();
    for i in 1..300 {
        source.put_manifest(&repo, &format!("t{i}"), image::OCI_MANIFEST, &bytes).await.unwrap();
    }
    let first = pass(&config, &worker, 50).await;
    assert_eq!(first.tags_checked, 300);
    assert_eq!(first.tasks.len(), 1, "one digest, one place: one task");
    assert_eq!(first.tasks[0].destination.tags.len(), 300, "carrying all 300 tags");
    apply(&worker, &first).await;

    let before = (worker.source.requests(), worker.destinations["cluster1-registry"].client.requests());
    let started = Instant::now();
    let synced = pass(&config, &worker, 50).await;
    let took = started.elapsed();
    assert_eq!((synced.in_sync, synced.tasks.len()), (300, 0));
    let src = worker.source.requests() - before.0;
    let dst = worker.destinations["cluster1-registry"].client.requests() - before.1;
    // Catalog and tag pages at the source, then one HEAD per tag on each side.
    // (distribution 2.8 answers tags/list in one page; its catalog honours n.)
    assert!(src > 300 && src <= 300 + 50, "{src} source requests");
    assert_eq!(dst, 300, "one HEAD per tag at the destination");
    eprintln!("reconciled 300 synced tags in {took:?} with {src}+{dst} requests");

    // Link pagination of the catalog: small pages list the same repositories.
    let before = worker.source.requests();
    let paged = worker.source.catalog_paged(2).await.unwrap();
    let pages = worker.source.requests() - before;
    let whole = worker.source.catalog_paged(1000).await.unwrap();
    assert_eq!(paged, whole);

    // With a literal prefix only that stretch of the catalog is listed.
    let before = worker.source.requests();
    let own = worker.source.catalog_with_prefix(&format!("{p}/"), 2).await.unwrap();
    let prefix_pages = worker.source.requests() - before;
    let expected: Vec<_> = whole.iter().filter(|r| r.as_str().starts_with(&format!("{p}/"))).cloned().collect();
    assert_eq!(own, expected);
    assert!(prefix_pages <= 3 && prefix_pages < pages, "{prefix_pages} pages with the prefix, {pages} without");
    assert!(whole.len() > 2 && pages as usize >= whole.len() / 2, "{pages} pages for {} repositories", whole.len());
}

/// On a registry without the referrers API the worker keeps the OCI 1.1
/// fallback index tagged `sha256-<hex>` beside the subject. No source
/// repository holds that tag, but it is not drift: even a rule that prunes
/// never plans its delete while its subject is there (signatures would
/// become unfindable). Once the subject is gone, a pruning rule removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_keeps_the_fallback_index_of_a_subject_that_is_there() {
    let stack = Stack::load().unwrap();
    let p = project();
    let (config, worker) = setup(&stack, &pruning(&p)).await;
    let (source, target) = (stack.source(), stack.target());
    let app = format!("{p}/app");
    let img = image::push(&source, &app, "v1", ImageKind::OciImage, 1, 1024).await.unwrap();
    apply(&worker, &pass(&config, &worker, 1000).await).await;
    // A signature at the destination, listed by the fallback index.
    let signature = image::push_referrer(&target, &app, &img.digest, "application/vnd.example.signature", b"sig", None)
        .await
        .unwrap();
    let fallback = image::push_fallback_index(&target, &app, &img.digest, &[signature]).await.unwrap();
    let fallback_tag = img.digest.replacen(':', "-", 1);
    assert_eq!(target.digest_at(&app, &fallback_tag).await.unwrap().as_deref(), Some(fallback.as_str()));

    let kept = pass(&config, &worker, 1000).await;
    assert!(kept.tasks.is_empty(), "{:?}", summary(&kept));

    // The subject deleted at both ends: its fallback index is drift now.
    assert_eq!(source.delete_manifest(&app, &img.digest).await.unwrap().as_u16(), 202);
    assert_eq!(target.delete_manifest(&app, &img.digest).await.unwrap().as_u16(), 202);
    let orphaned = pass(&config, &worker, 1000).await;
    assert_eq!(summary(&orphaned), vec![(Action::Delete, app.clone(), fallback_tag)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_resumes_after_its_cursor() {
    let stack = Stack::load().unwrap();
    let p = project();
    let (config, worker) = setup(&stack, &rules(&p, false, true)).await;
    for name in ["a", "b", "c"] {
        image::push(&stack.source(), &format!("{p}/{name}"), "v1", ImageKind::OciImage, 1, 512).await.unwrap();
    }
    let r = Reconciler::new(&config, &worker, 1000);
    // Out of time from the start, a pass still walks its first stretch:
    // here the whole first repository (every run progresses).
    let stopped = r.pass(Some(&format!("{p}/")), Some(Instant::now())).await.unwrap();
    assert_eq!(stopped.repositories, 1);
    assert_eq!(stopped.cursor, Some(format!("{p}/a")));
    let resumed = r.pass(Some(&format!("{p}/a")), None).await.unwrap();
    let repos: Vec<_> = resumed.tasks.iter().map(|t| t.destination.repository.to_string()).collect();
    assert_eq!(repos, [format!("{p}/b"), format!("{p}/c")]);

    let shared = relay::bootstrap::aws_config().await;
    let store =
        CursorStore { ssm: aws_sdk_ssm::Client::new(&shared), parameter: format!("/harbor-relay/test/cursor-{p}") };
    assert_eq!(store.load().await.unwrap(), None);
    store.save(Some(&format!("{p}/b"))).await.unwrap();
    assert_eq!(store.load().await.unwrap(), Some(format!("{p}/b")));
    store.save(None).await.unwrap();
    assert_eq!(store.load().await.unwrap(), None, "a finished listing starts over next time");
}

/// A tag gone from the source while its digest stays there under another
/// tag: the worker deletes by digest and keeps one a source still holds, so
/// reconcile must not plan that delete either — planned every pass and
/// refused every time otherwise. Three passes, zero tasks after the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_whose_digest_the_source_still_holds_is_not_planned_for_deletion() {
    let stack = Stack::load().unwrap();
    let p = project();
    let (config, worker) = setup(&stack, &rules(&p, true, true)).await;
    let (source, target) = (stack.source(), stack.target());
    let app = format!("{p}/app");
    let img = image::push(&source, &app, "v2", ImageKind::OciImage, 1, 1024).await.unwrap();
    let first = pass(&config, &worker, 1000).await;
    assert_eq!(summary(&first), vec![(Action::Copy, app.clone(), "v2".into())]);
    apply(&worker, &first).await;
    // `v1` was the same digest's tag at the source, removed there (as
    // Harbor's UI removes a tag) after the relay replicated it.
    let (media_type, bytes) = target.get_manifest(&app, "v2").await.unwrap().unwrap();
    target.put_manifest(&app, "v1", &media_type, &bytes).await.unwrap();
    let written = worker.written.as_ref().expect("the stack names the record's bucket (RELAY_RECORD_BUCKET)");
    let digest: relay::Digest = img.digest.parse().unwrap();
    written.note("cluster1-registry", &app.parse().unwrap(), &["v1".parse().unwrap()], &digest).await.unwrap();
    for n in 2..=4 {
        let again = pass(&config, &worker, 1000).await;
        assert!(again.tasks.is_empty(), "pass {n}: {:?}", summary(&again));
        apply(&worker, &again).await;
    }
    for tag in ["v1", "v2"] {
        assert_eq!(target.digest_at(&app, tag).await.unwrap().as_deref(), Some(img.digest.as_str()), "{tag} kept");
    }
}

/// A repository with more tags than one run can check: each run stops
/// inside it after a stretch and the next resumes after the last entry it
/// checked (`repo:tag`), so the walk ends, every tag planned exactly once,
/// and the pass after it finds everything in sync. (Each pass here is out
/// of time from the start: it walks one stretch.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_longer_than_a_run_progresses_run_after_run() {
    let stack = Stack::load().unwrap();
    let p = project();
    let (config, worker) = setup(&stack, &rules(&p, false, true)).await;
    let source = stack.source();
    let repo = format!("{p}/many");
    image::push(&source, &repo, "t000", ImageKind::OciImage, 1, 512).await.unwrap();
    let (_, bytes) = source.get_manifest(&repo, "t000").await.unwrap().unwrap();
    for i in 1..150 {
        source.put_manifest(&repo, &format!("t{i:03}"), image::OCI_MANIFEST, &bytes).await.unwrap();
    }
    let r = Reconciler::new(&config, &worker, 1000);
    let mut cursor = Some(format!("{p}/"));
    let (mut runs, mut planned) = (0, Vec::new());
    loop {
        let pass = r.pass(cursor.as_deref(), Some(Instant::now())).await.unwrap();
        runs += 1;
        assert!(pass.tags_checked > 0, "run {runs} from {cursor:?} checked nothing");
        planned.extend(pass.tasks.iter().flat_map(|t| t.destination.tags.iter().map(|t| t.to_string())));
        match pass.cursor {
            Some(c) if c.starts_with(&format!("{repo}:")) => {
                assert!(cursor.as_ref().is_none_or(|before| &c > before), "{c} after {cursor:?}");
                cursor = Some(c);
            }
            // Past the repository: done.
            _ => break,
        }
        assert!(runs < 10, "no end in sight: {cursor:?}");
    }
    assert!(runs >= 3, "one stretch is 64 entries: 150 tags take 3 runs, took {runs}");
    let mut expected: Vec<String> = (0..150).map(|i| format!("t{i:03}")).collect();
    planned.sort();
    expected.sort();
    assert_eq!(planned, expected, "every tag planned once");
}

/// With `source.harbor_api`, the listing comes from Harbor's REST API
/// (projects → repositories → artifacts, paginated, with tags and labels):
/// no source HEAD per tag, label filters apply (Harbor sends no webhook when
/// a label changes), the resource filter reads Harbor's artifact type (a
/// Helm chart is no image), an index's children are not separate artifacts, and
/// listings longer than a page (artifacts, and tags of one artifact) are
/// read to the end. The source is the fake Harbor; the destination is real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harbor_api_listing_applies_labels_and_pages() {
    use relay_tests::fake::{FakeRegistry, Op};
    let stack = Stack::load().unwrap();
    let harbor = FakeRegistry::start(false).await;
    harbor.enable_referrers_api();
    let src = relay_tests::PlainRegistry::new(&harbor.url, None);
    let target = stack.target();
    let p = project();
    let (app, tool) = (format!("{p}/team/app"), format!("{p}/tool"));

    let a = image::push(&src, &app, "v1", ImageKind::OciImage, 1, 2048).await.unwrap();
    let (_, a_bytes) = src.get_manifest(&app, "v1").await.unwrap().unwrap();
    let extra: Vec<String> = (0..104).map(|i| format!("a{i:03}")).collect();
    for t in &extra {
        src.put_manifest(&app, t, image::OCI_MANIFEST, &a_bytes).await.unwrap();
    }
    harbor.set_labels(&app, &a.digest, &["prod"]);
    let b = image::push(&src, &app, "v2", ImageKind::OciImage, 1, 2048).await.unwrap();
    // 100 untagged, unlabelled artifacts: the artifact listing needs two pages.
    for i in 0..100 {
        let m = format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"{}\",\"config\":{{}},\"layers\":[],\"n\":{i}}}",
            image::OCI_MANIFEST
        );
        let d = relay_tests::plain::sha256(m.as_bytes());
        harbor.insert_manifest(&app, &d, image::OCI_MANIFEST, m.into_bytes().into());
    }
    let t = image::push(&src, &tool, "1.0", ImageKind::OciIndex { platforms: 2 }, 1, 2048).await.unwrap();
    harbor.set_labels(&tool, &t.digest, &["prod"]);
    // Labelled prod too, but Harbor types it CHART: `resource: image` drops it.
    let chart = format!("{p}/charts/web");
    let c = image::push_chart(&src, &chart, "0.1.0").await.unwrap();
    harbor.set_labels(&chart, &c, &["prod"]);

    let yaml = format!(
        "source: {{ url: {}, harbor_api: true }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - name: cluster1-registry\n    url: {}\n    credentials: {{ username: {}, password_env: CLUSTER1_PASSWORD }}\nrules:\n  - {{ name: prod, filters: {{ name: \"{p}/**\", label: [prod], resource: image }}, destination: {{ registry: cluster1-registry }} }}\n",
        harbor.url, stack.target_url, stack.target_user
    );
    let (config, worker) = {
        let config = Config::parse(&yaml).unwrap();
        let worker = bootstrap::worker(&config, &SecretSource::from_process(None), fast_retry()).await.unwrap();
        (config, worker)
    };

    harbor.reset_counts();
    let progress = relay::progress::Progress::default();
    let mut reconciler = Reconciler::new(&config, &worker, 1000);
    reconciler.progress = Some(&progress);
    let first = reconciler.pass(None, None).await.unwrap();
    // What `relay reconcile` shows on a terminal: app, charts/web, tool;
    // the 105 tags of a and tool:1.0 to replicate (merged into 2 tasks).
    assert_eq!(progress.line(), format!("repositories 3/3, {} artifacts, 106 to replicate", first.tags_checked));
    assert_eq!(harbor.count(Op::HeadManifest), 0, "digests come from the listing, not from HEADs");
    assert!(harbor.count(Op::HarborList) >= 6, "projects, repositories, 2 artifact pages, 2 tag pages");
    // 105 tags of a, v2, 100 untagged, tool:1.0 (its children are not
    // artifacts), the chart.
    assert_eq!(first.tags_checked, 105 + 1 + 100 + 1 + 1);
    let mut all_a: Vec<String> = extra.clone();
    all_a.push("v1".into());
    all_a.sort();
    assert_eq!(
        summary(&first),
        vec![(Action::Copy, app.clone(), all_a.join(",")), (Action::Copy, tool.clone(), "1.0".into())],
        "only the images labelled prod, every tag of each"
    );
    apply(&worker, &first).await;
    assert_eq!(target.digest_at(&app, "a103").await.unwrap().as_deref(), Some(a.digest.as_str()));
    assert_eq!(target.tree(&tool, "1.0").await.unwrap(), src.tree(&tool, "1.0").await.unwrap());
    assert!(target.digest_at(&app, "v2").await.unwrap().is_none(), "unlabelled: not replicated");
    assert!(target.digest_at(&chart, "0.1.0").await.unwrap().is_none(), "a chart: not replicated");

    // A label added in Harbor's UI sends no webhook; the next pass sees it.
    harbor.set_labels(&app, &b.digest, &["prod"]);
    let second = pass(&config, &worker, 1000).await;
    assert_eq!(summary(&second), vec![(Action::Copy, app.clone(), "v2".into())]);
    apply(&worker, &second).await;
    assert_eq!(target.digest_at(&app, "v2").await.unwrap().as_deref(), Some(b.digest.as_str()));
    assert!(pass(&config, &worker, 1000).await.tasks.is_empty(), "converged");

    // An accessory (a signature) attached later in Harbor: the tag is in
    // sync, the accessory is missing at the destination → a task, whose
    // copy brings the referrer.
    let (sig, _) =
        image::push_referrer(&src, &app, &b.digest, "application/vnd.dev.cosign.simplesigning.v1+json", b"sig", None)
            .await
            .unwrap();
    let third = pass(&config, &worker, 1000).await;
    assert_eq!(summary(&third), vec![(Action::Copy, app.clone(), "v2".into())]);
    assert_eq!(third.tags_checked, 105 + 1 + 100 + 1 + 1, "the accessory is not an artifact of its own");
    apply(&worker, &third).await;
    assert_eq!(target.digest_at(&app, &sig).await.unwrap().as_deref(), Some(sig.as_str()));
    assert!(pass(&config, &worker, 1000).await.tasks.is_empty(), "converged with the accessory");
}

/// A reconcile racing the webhook: the event's task and the reconcile's
/// task for the same tag run at the same time in one worker — the blobs
/// cross once (the worker's ledger), the manifests are pushed once, and the
/// end state is the source's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_racing_the_webhook_moves_no_duplicate_bytes() {
    let stack = Stack::load().unwrap();
    let p = project();
    let (config, worker) = setup(&stack, &rules(&p, false, true)).await;
    let (source, target) = (stack.source(), stack.target());
    let app = format!("{p}/app");
    let img = image::push(&source, &app, "v1", ImageKind::OciIndex { platforms: 2 }, 2, 64 * 1024).await.unwrap();
    let from_event = relay_tests::planned_tasks(&config, &stack, "PUSH_ARTIFACT", &app, "v1", &img.digest).remove(0);
    let from_reconcile = pass(&config, &worker, 1000).await;
    assert_eq!(from_reconcile.tasks.len(), 1);

    let (a, b) = tokio::join!(worker.run(&from_event), worker.run(&from_reconcile.tasks[0]));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.bytes + b.bytes, img.blob_bytes, "every blob byte crossed once");
    assert_eq!(a.manifests_pushed + b.manifests_pushed, 3, "two children and the index, once");
    assert_eq!(target.tree(&app, "v1").await.unwrap(), source.tree(&app, "v1").await.unwrap());
    assert!(pass(&config, &worker, 1000).await.tasks.is_empty(), "converged");
}

/// Reconcile propagates Harbor's deletes and nothing else: it deletes a
/// destination tag only when the relay's record says the relay pointed it
/// at that digest — a tag Harbor deleted while its webhook was lost — and
/// keeps one a person pushed straight to the destination, or pushed over
/// the relay's. The record outlives the process (a fresh worker reads it),
/// and the relay forgets a tag it deleted. A rule with `prune: true` also
/// removes the tags the relay never wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_deletes_only_tags_the_relay_wrote_unless_the_rule_prunes() {
    let stack = Stack::load().unwrap();
    let p = project();
    let (config, worker) = setup(&stack, &rules(&p, true, true)).await;
    let (source, target) = (stack.source(), stack.target());
    let app = format!("{p}/app");
    let v1 = image::push(&source, &app, "v1", ImageKind::OciImage, 1, 1024).await.unwrap();
    let v2 = image::push(&source, &app, "v2", ImageKind::OciImage, 1, 1024).await.unwrap();
    image::push(&source, &app, "v3", ImageKind::OciImage, 1, 1024).await.unwrap();
    apply(&worker, &pass(&config, &worker, 1000).await).await;
    assert_eq!(target.digest_at(&app, "v2").await.unwrap().as_deref(), Some(v2.digest.as_str()));

    // A tag pushed straight to the destination; `v3` pushed over by hand
    // there and then removed at the source; `v2` removed at the source
    // with no event reaching the relay.
    let hand = image::push(&target, &app, "hand", ImageKind::OciImage, 1, 512).await.unwrap();
    let over = image::push(&target, &app, "v3", ImageKind::OciImage, 1, 512).await.unwrap();
    for tag in ["v2", "v3"] {
        let digest = source.digest_at(&app, tag).await.unwrap().unwrap();
        assert_eq!(source.delete_manifest(&app, &digest).await.unwrap().as_u16(), 202);
    }

    // A cold start: another worker, the same record.
    let (config, worker) = setup(&stack, &rules(&p, true, true)).await;
    let missed = pass(&config, &worker, 1000).await;
    assert_eq!(summary(&missed), vec![(Action::Delete, app.clone(), "v2".into())]);
    apply(&worker, &missed).await;
    assert!(target.digest_at(&app, "v2").await.unwrap().is_none(), "Harbor's missed delete propagated");
    let written = worker.written.as_ref().expect("the stack names the record's bucket (RELAY_RECORD_BUCKET)");
    let repo = app.parse().unwrap();
    assert_eq!(written.wrote("cluster1-registry", &repo, &"v2".parse().unwrap()).await.unwrap(), None, "forgotten");
    assert_eq!(
        written.wrote("cluster1-registry", &repo, &"v1".parse().unwrap()).await.unwrap(),
        Some(v1.digest.parse().unwrap())
    );
    for (tag, digest) in [("v1", &v1.digest), ("hand", &hand.digest), ("v3", &over.digest)] {
        assert_eq!(target.digest_at(&app, tag).await.unwrap().as_deref(), Some(digest.as_str()), "{tag} kept");
    }
    assert!(pass(&config, &worker, 1000).await.tasks.is_empty(), "nothing else is Harbor's delete");

    // Pruning, asked for, removes what the source never held.
    let (config, worker) = setup(&stack, &pruning(&p)).await;
    let pruned = pass(&config, &worker, 1000).await;
    assert_eq!(
        summary(&pruned),
        vec![(Action::Delete, app.clone(), "hand".into()), (Action::Delete, app.clone(), "v3".into())]
    );
    apply(&worker, &pruned).await;
    for tag in ["hand", "v3"] {
        assert!(target.digest_at(&app, tag).await.unwrap().is_none(), "{tag} pruned");
    }
    assert_eq!(target.digest_at(&app, "v1").await.unwrap().as_deref(), Some(v1.digest.as_str()));
}
