//! End to end through the real parts: the webhook's HTTP server and the
//! worker's SQS poller (both in-process, the same code as the binaries),
//! LocalStack SQS, and two docker-registry servers. Needs the local stack
//! (`scripts/stack.sh up`; `make test` starts it).

use relay::secrets::SecretSource;
use relay::{bootstrap, Config};
use relay_tests::app::{fast_retry, unique_repo, App, AppBuilder, ALL_TO_CLUSTER1};
use relay_tests::{harbor_push_event, image, now, ImageKind, Stack};

async fn spawn_app(rules: &str, with_worker: bool) -> App {
    let b = AppBuilder::rules(rules);
    if with_worker { b.with_worker() } else { b }.spawn().await
}

/// skopeo's view of the target: the digest of the raw manifest bytes.
fn skopeo_digest(stack: &Stack, repo: &str, reference: &str) -> String {
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", "--creds"])
        .arg(format!("{}:{}", stack.target_user, stack.target_password))
        .arg(format!(
            "docker://{}/{repo}{}{reference}",
            stack.target_host(),
            if reference.starts_with("sha256:") { "@" } else { ":" }
        ))
        .output()
        .expect("skopeo installed");
    assert!(out.status.success(), "skopeo: {}", String::from_utf8_lossy(&out.stderr));
    relay_tests::plain::sha256(&out.stdout)
}

async fn assert_same_tree(app: &App, repo: &str, reference: &str, pushed: &relay_tests::GeneratedImage) {
    let src = app.stack.source().tree(repo, reference).await.unwrap();
    let dst = app.stack.target().tree(repo, reference).await.unwrap();
    assert!(dst.self_consistent(), "destination bytes must hash to their digests");
    assert_eq!(dst, src, "destination must hold the same manifests and blobs");
    assert_eq!(dst.manifests[reference].1, pushed.digest);
    assert_eq!(dst.blobs.len(), pushed.blobs.len());
    for child in &pushed.children {
        assert!(dst.manifests.contains_key(child), "child {child} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_arch_oci_index_is_replicated_by_tag() {
    let app = spawn_app(ALL_TO_CLUSTER1, true).await;
    let repo = unique_repo("app");
    let pushed = image::push(&app.stack.source(), &repo, "v1", ImageKind::OciIndex { platforms: 2 }, 2, 64 * 1024)
        .await
        .unwrap();

    let (status, body) = app.push_event(&repo, Some("v1"), &pushed.digest).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(body["tasks"][0]["registry"], "cluster1-registry");

    app.wait_at_target(&repo, "v1").await;
    assert_same_tree(&app, &repo, "v1", &pushed).await;
    assert_eq!(skopeo_digest(&app.stack, &repo, "v1"), pushed.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_v2_image_pushed_by_digest_is_replicated() {
    let app = spawn_app(ALL_TO_CLUSTER1, true).await;
    let repo = unique_repo("single");
    let pushed =
        image::push(&app.stack.source(), &repo, "build-1", ImageKind::DockerImage, 3, 32 * 1024).await.unwrap();

    let (status, body) = app.push_event(&repo, None, &pushed.digest).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["tasks"][0]["tags"], serde_json::json!([]));

    app.wait_at_target(&repo, &pushed.digest).await;
    assert_same_tree(&app, &repo, &pushed.digest, &pushed).await;
    assert_eq!(skopeo_digest(&app.stack, &repo, &pushed.digest), pushed.digest);
    // Pushed by digest: no tag may appear at the destination.
    assert!(app.stack.target().get_manifest(&repo, "build-1").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_manifest_list_with_flattened_namespace() {
    let repo = unique_repo("team/tool");
    let namespace = format!("mirror-{}", &repo[4..12]);
    let rules = format!(
        "  - name: flat\n    destination: {{ registry: cluster1-registry, namespace: {namespace}, flatten: -1 }}\n"
    );
    let app = spawn_app(&rules, true).await;
    let flat = format!("{namespace}/tool");
    let pushed = image::push(&app.stack.source(), &repo, "2.0", ImageKind::DockerList { platforms: 3 }, 1, 16 * 1024)
        .await
        .unwrap();

    let (status, body) = app.push_event(&repo, Some("2.0"), &pushed.digest).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["tasks"][0]["repository"], flat.as_str());

    app.wait_at_target(&flat, "2.0").await;
    let src = app.stack.source().tree(&repo, "2.0").await.unwrap();
    let dst = app.stack.target().tree(&flat, "2.0").await.unwrap();
    assert_eq!(dst, src);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_enqueue_nothing() {
    // No worker: whatever is enqueued stays on the queue to be counted.
    let app = spawn_app(ALL_TO_CLUSTER1, false).await;
    let digest = relay_tests::plain::sha256(b"not pushed anywhere");
    let event = harbor_push_event("PUSH_ARTIFACT", app.stack.source_host(), "proj/app", Some("v1"), &digest, now());
    let auth = app.stack.webhook_auth.clone();

    let cases: Vec<(Option<&str>, &str, String, u16)> = vec![
        (None, "application/json", event.clone(), 401),
        (Some("Bearer wrong"), "application/json", event.clone(), 401),
        (Some(&auth), "application/json", "{\"hello\": \"world\"}".into(), 400),
        (Some(&auth), "application/json", "this is not json".into(), 400),
        (Some(&auth), "text/plain", event.clone(), 415),
        (Some(&auth), "application/json", event.replace(app.stack.source_host(), "169.254.169.254"), 422),
        (Some(&auth), "application/json", " ".repeat(1024 * 1024 + 1), 413),
    ];
    for (a, ct, body, want) in cases {
        let (status, reply) = app.post(a, ct, body).await;
        assert_eq!(status, want, "{reply}");
        if want == 400 {
            assert!(reply["error"].as_str().is_some_and(|e| !e.is_empty()), "400 must carry a reason: {reply}");
        }
    }
    let get = app.http.get(&app.webhook_url).send().await.unwrap().status().as_u16();
    assert_eq!(get, 405);
    let health = app.http.get(format!("{}healthz", app.webhook_url)).send().await.unwrap().status().as_u16();
    assert_eq!(health, 200);
    assert_eq!(app.depth().await, (0, 0, 0), "refused requests must enqueue nothing");

    // The same event with the right credentials is accepted and enqueued:
    // the depth check above can see a task when there is one.
    let (status, _) = app.post(Some(&auth), "application/json", event).await;
    assert_eq!(status, 202);
    let (visible, _, delayed) = app.depth().await;
    assert_eq!(visible + delayed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicating_again_moves_no_bytes() {
    let stack = Stack::load().unwrap();
    let config = Config::parse(&stack.config_yaml(ALL_TO_CLUSTER1)).unwrap();
    let worker = bootstrap::worker(&config, &SecretSource::from_process(None), fast_retry()).await.unwrap();
    let repo = unique_repo("again");
    let pushed =
        image::push(&stack.source(), &repo, "v1", ImageKind::OciIndex { platforms: 2 }, 2, 64 * 1024).await.unwrap();
    let task = relay_tests::planned_tasks(&config, &stack, "PUSH_ARTIFACT", &repo, "v1", &pushed.digest).remove(0);

    let first = worker.run(&task).await.unwrap();
    assert_eq!(first.outcome, Some(relay::registry::Outcome::Copied));
    assert_eq!(first.bytes, pushed.blob_bytes, "every blob byte crosses once");
    assert_eq!(first.blobs_copied as usize, pushed.blobs.len());
    assert_eq!(first.manifests_pushed, 3, "two children and the index");

    let second = worker.run(&task).await.unwrap();
    assert_eq!(second.outcome, Some(relay::registry::Outcome::AlreadyPresent));
    assert_eq!((second.bytes, second.blobs_copied, second.manifests_pushed), (0, 0, 0));
}

/// Harbor delivering the same event three times, and a delete delivered
/// before the push it follows: the destination converges on the source.
/// Not a race (the source is final before any task runs): the push that
/// arrives after its delete must find the artifact gone at the source and
/// copy nothing. Tasks racing source changes: queue.rs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_swapped_harbor_deliveries_converge() {
    let rules = "  - name: mirror\n    deletion: true\n    destination: { registry: cluster1-registry }\n";
    let app = spawn_app(rules, true).await;
    let (source, target) = (app.stack.source(), app.stack.target());
    let repo = unique_repo("dupes");
    let keep = image::push(&source, &repo, "keep", ImageKind::OciIndex { platforms: 2 }, 1, 4096).await.unwrap();
    for _ in 0..3 {
        assert_eq!(app.push_event(&repo, Some("keep"), &keep.digest).await.0, 202);
    }
    // `gone` is pushed then deleted at the source; Harbor's two deliveries
    // arrive swapped: the delete first, then the push.
    let gone = image::push(&source, &repo, "gone", ImageKind::OciImage, 1, 4096).await.unwrap();
    assert_eq!(source.delete_manifest(&repo, &gone.digest).await.unwrap().as_u16(), 202);
    assert_eq!(app.event("DELETE_ARTIFACT", &repo, Some("gone"), &gone.digest).await.0, 202);
    assert_eq!(app.push_event(&repo, Some("gone"), &gone.digest).await.0, 202);

    app.wait_at_target(&repo, "keep").await;
    drained(&app).await;
    assert_eq!(target.tree(&repo, "keep").await.unwrap(), source.tree(&repo, "keep").await.unwrap());
    assert!(target.get_manifest(&repo, "gone").await.unwrap().is_none(), "deleted at the source: not at the target");
    assert!(target.get_manifest(&repo, &gone.digest).await.unwrap().is_none());
}

/// Waits until `app`'s queue is empty: every task ran to its end. With
/// an in-process worker, a failed run fails the wait at once, rather than
/// when the wait gives up.
async fn drained(app: &App) {
    let failed = || app.worker.as_ref().map_or(0, |w| w.stats.tasks_failed.load(std::sync::atomic::Ordering::Relaxed));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while app.depth().await != (0, 0, 0) {
        assert_eq!(failed(), 0, "a task failed");
        assert!(std::time::Instant::now() < deadline, "queue never drained: {:?}", app.depth().await);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The source robot's secret rotated in place (Harbor and its token service
/// take only the new password from then on, the secret in Secrets Manager
/// changed at the same moment), and the running webhook, worker and
/// reconcile go on without a restart, each refused once and reading the
/// secret again: a push whose label rule needs Harbor's API (the webhook's
/// lookup, the worker's tags and its source reads through the token
/// service), a delete whose feeders are listed through Harbor's API, and a
/// reconcile pass that lists Harbor's API and finds a tag pushed without
/// an event. The source is the fake Harbor; the destination is real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_robot_secret_rotated_in_place_needs_no_restart() {
    use relay::reconcile::Reconciler;
    use relay::task::Action;
    use relay_tests::fake::{FakeRegistry, Op};
    use std::sync::atomic::Ordering::Relaxed;

    let stack = Stack::load().unwrap();
    let (_, sm) = bootstrap::aws_clients().await;
    let robot = "robot$relay";
    let (old, new) = (format!("old-{:016x}", rand::random::<u64>()), format!("new-{:016x}", rand::random::<u64>()));
    let harbor = FakeRegistry::start(false).await;
    harbor.set_robot(robot, &old);
    let host = harbor.url.trim_start_matches("http://").to_owned();
    let secret = format!("relay-test/source-robot-{:08x}", rand::random::<u32>());
    let value = |password: &str| serde_json::json!({ "username": robot, "password": password }).to_string();
    sm.create_secret().name(&secret).secret_string(value(&old)).send().await.unwrap();

    let p = format!("rot-{:08x}", rand::random::<u32>());
    let (app_repo, db) = (format!("{p}/app"), format!("{p}/svc/db"));
    let mirrored = format!("m-{p}/svc/db");
    let yaml = format!(
        "source: {{ url: {}, harbor_api: true, credentials: {{ secret_id: {secret} }} }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - name: cluster1-registry\n    url: {}\n    credentials: {{ username: {}, password_env: CLUSTER1_PASSWORD }}\nrules:\n  - {{ name: labelled, filters: {{ name: '{app_repo}', label: [prod] }}, destination: {{ registry: cluster1-registry }} }}\n  - {{ name: mirror, deletion: true, filters: {{ name: '{p}/svc/**' }}, destination: {{ registry: cluster1-registry, namespace: m-{p}, flatten: 1 }} }}\n",
        harbor.url, stack.target_url, stack.target_user
    );
    let app = AppBuilder::config(yaml.clone()).with_worker().secrets_manager().spawn().await;
    // Reconcile runs in a process of its own, with clients of its own.
    let config = Config::parse(&yaml).unwrap();
    let reconciling =
        bootstrap::worker(&config, &SecretSource::from_process(Some(sm.clone())), fast_retry()).await.unwrap();
    let post = |kind: &'static str, repo: String, tag: &'static str, digest: String| {
        let (app, host) = (&app, &host);
        async move {
            let body = harbor_push_event(kind, host, &repo, Some(tag), &digest, now());
            app.post(Some(&app.stack.webhook_auth), "application/json", body).await
        }
    };

    // Before the rotation: two images replicated through the mirror rule.
    let src = relay_tests::PlainRegistry::new(&harbor.url, Some((robot.to_owned(), old.clone())));
    let gone = image::push(&src, &db, "old", ImageKind::OciImage, 1, 2048).await.unwrap();
    let keep = image::push(&src, &db, "keep", ImageKind::OciImage, 1, 2048).await.unwrap();
    for (tag, img) in [("old", &gone), ("keep", &keep)] {
        let (status, body) = post("PUSH_ARTIFACT", db.clone(), tag, img.digest.clone()).await;
        assert_eq!(status, 202, "{body}");
        app.wait_at_target(&mirrored, tag).await;
    }
    let before = Reconciler::new(&config, &reconciling, 100).pass(None, None).await.unwrap();
    assert!(before.tasks.is_empty(), "in sync before the rotation: {:?}", before.tasks);
    // Labelled prod, tagged twice; and one more pushed without an event.
    let labelled = image::push(&src, &app_repo, "v1", ImageKind::OciImage, 1, 2048).await.unwrap();
    let (_, manifest) = src.get_manifest(&app_repo, "v1").await.unwrap().unwrap();
    src.put_manifest(&app_repo, "stable", image::OCI_MANIFEST, &manifest).await.unwrap();
    harbor.set_labels(&app_repo, &labelled.digest, &["prod"]);
    let drift = image::push(&src, &app_repo, "v3", ImageKind::OciImage, 1, 2048).await.unwrap();
    harbor.set_labels(&app_repo, &drift.digest, &["prod"]);
    let refused = |op| harbor.refused(op);
    assert_eq!([Op::Token, Op::HarborArtifact, Op::HarborList].map(refused), [0, 0, 0]);

    // Rotated in place: Harbor and its secret at once, and the tokens the
    // old secret obtained expire, so the next source read needs a new one.
    harbor.set_robot(robot, &new);
    sm.put_secret_value().secret_id(&secret).secret_string(value(&new)).send().await.unwrap();
    harbor.expire_tokens();
    let started = std::time::Instant::now();
    assert!(src.get_manifest(&app_repo, "v1").await.is_err(), "the old password is refused");
    let src = relay_tests::PlainRegistry::new(&harbor.url, Some((robot.to_owned(), new.clone())));

    // (a) A push the label rule decides: the webhook's label lookup, the
    // worker's other tags and its source reads all succeed.
    let (status, body) = post("PUSH_ARTIFACT", app_repo.clone(), "v1", labelled.digest.clone()).await;
    assert_eq!(status, 202, "the label lookup succeeds: {body}");
    assert_eq!(body["tasks"].as_array().map(Vec::len), Some(1), "{body}");
    drained(&app).await;
    app.wait_at_target(&app_repo, "v1").await;
    let target = stack.target();
    // Harbor's webhook names one tag; the worker asks Harbor's API for the rest.
    for tag in ["v1", "stable"] {
        assert_eq!(target.digest_at(&app_repo, tag).await.unwrap(), Some(labelled.digest.clone()), "{tag}");
    }
    assert_eq!(target.tree(&app_repo, "v1").await.unwrap(), src.tree(&app_repo, "v1").await.unwrap());
    assert_eq!(skopeo_digest(&stack, &app_repo, "v1"), labelled.digest);

    // (b) Deleted in Harbor: the worker lists the feeders through Harbor's
    // API, finds the digest gone at the source and deletes it.
    harbor.delete_artifact(&db, &gone.digest);
    let listed = harbor.count(Op::HarborList);
    let (status, body) = post("DELETE_ARTIFACT", db.clone(), "old", gone.digest.clone()).await;
    assert_eq!(status, 202, "{body}");
    drained(&app).await;
    app.wait_gone_at_target(&mirrored, "old").await;
    assert!(target.get_manifest(&mirrored, &gone.digest).await.unwrap().is_none());
    assert!(harbor.count(Op::HarborList) > listed, "the delete was checked through Harbor's API");
    assert_eq!(target.digest_at(&mirrored, "keep").await.unwrap(), Some(keep.digest.clone()));

    // (c) Reconcile lists Harbor's API, finds the tag pushed without an
    // event and its task copies it.
    let pass = Reconciler::new(&config, &reconciling, 100).pass(None, None).await.unwrap();
    let planned: Vec<_> = pass
        .tasks
        .iter()
        .map(|t| {
            (
                t.action,
                t.destination.repository.to_string(),
                t.destination.tags.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            )
        })
        .collect();
    assert_eq!(planned, vec![(Action::Copy, app_repo.clone(), vec!["v3".to_owned()])]);
    let queue = relay::queue::TaskQueue::new(app.sqs.clone(), app.queue_url.clone());
    queue.send_now(&pass.tasks).await.unwrap();
    drained(&app).await;
    app.wait_at_target(&app_repo, "v3").await;
    assert_eq!(target.digest_at(&app_repo, "v3").await.unwrap(), Some(drift.digest.clone()));

    // Each client held the old secret, was refused once and read it again:
    // the webhook's and the worker's artifact lookups, reconcile's listing,
    // the worker's token.
    assert_eq!(refused(Op::HarborArtifact), 2, "the webhook's and the worker's Harbor API");
    assert_eq!(refused(Op::HarborList), 1, "reconcile's Harbor API");
    assert!(refused(Op::Token) >= 1, "the worker's source client asked the token service with the old secret");
    let worker = app.worker.as_ref().unwrap();
    assert_eq!(worker.credentials.reads_on_denial.load(Relaxed), 1, "the source's token refused, read again");
    assert_eq!(worker.stats.tasks_failed.load(Relaxed), 0, "every task succeeded within its run");
    eprintln!("after the rotation: push, delete and reconcile in {:?}", started.elapsed());
}
