//! How failed tasks are settled, against LocalStack SQS and real registries:
//! a transient failure backs off by visibility (not the queue's timeout), a
//! copy longer than an invocation continues instead of failing, and a
//! destination that is down parks its tasks until it answers, without
//! dead letters and without slowing the other destination.

use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::poller::PollOptions;
use relay::queue::TaskQueue;
use relay::secrets::SecretSource;
use relay::settle::{Settler, Timing};
use relay::worker::Worker;
use relay::{bootstrap, Config, Task};
use relay_tests::app::{fast_retry, unique_repo};
use relay_tests::fake::{FakeRegistry, Fault, Op};
use relay_tests::proxy::Proxy;
use relay_tests::stack::{create_queue_with_dlq, queue_depth};
use relay_tests::{image, planned_tasks, ImageKind, PlainRegistry, Stack};
use tokio::sync::oneshot;

/// A worker polling `url` with its settler (the queue's DLQ discovered),
/// as the binary runs; stops when the sender is dropped or fired.
async fn poll(
    config: &Config,
    worker: Arc<Worker>,
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    options: PollOptions,
) -> oneshot::Sender<()> {
    let dead_letters = relay::dead_letter::DeadLetters::discover(sqs, url, None).await.expect("redrive policy");
    let settler =
        Settler::new(sqs.clone(), Some(url.to_owned()), Some(dead_letters), Timing::from_settings(&config.worker));
    let queue = TaskQueue::new(sqs.clone(), url.to_owned());
    let (stop, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        relay::poller::poll(&queue, &worker, Some(&settler), &options, async move {
            let _ = rx.await;
        })
        .await
    });
    stop
}

async fn send(sqs: &aws_sdk_sqs::Client, url: &str, tasks: &[Task]) {
    TaskQueue::new(sqs.clone(), url.to_owned()).send_now(tasks).await.unwrap();
}

/// Waits until `done` holds, failing after `limit` with `what`.
async fn wait_for<F: std::future::Future<Output = bool>>(limit: Duration, what: &str, mut done: impl FnMut() -> F) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "{what} not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether `reg` serves every tag; an error answer (distribution 2.8 can
/// answer 500 to a read racing a push of the same repository) counts as
/// "not yet", and the caller asks again.
async fn has_all(reg: &PlainRegistry, repo: &str, tags: &[String]) -> bool {
    for t in tags {
        if !matches!(reg.get_manifest(repo, t).await, Ok(Some(_))) {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_backs_off_by_visibility_then_dead_letters_with_its_reason() {
    let stack = Stack::load().unwrap();
    let sqs = stack.sqs().await;
    // The queue would hide a failed message for 60 s; the backoff says 1–2 s.
    let (url, dlq) = create_queue_with_dlq(&sqs, "backoff", 3, 60).await.unwrap();
    let src = FakeRegistry::start(false).await;
    let repo = unique_repo("backoff");
    let img =
        image::push(&PlainRegistry::new(&src.url, None), &repo, "v1", ImageKind::OciImage, 1, 1024).await.unwrap();
    src.inject(Op::HeadManifest, Fault::Status(503, None), 1000);
    let yaml = format!(
        "source: {{ url: {} }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: dst, url: {} }}\nrules:\n  - {{ name: all, destination: {{ registry: dst }} }}\nworker: {{ retry_base_seconds: 1, retry_max_seconds: 2 }}\n",
        src.url, stack.target_url
    );
    let config = Config::parse(&yaml).unwrap();
    let worker = Arc::new(bootstrap::worker(&config, &SecretSource::from_process(None), fast_retry()).await.unwrap());
    let body = relay_tests::harbor_push_event(
        "PUSH_ARTIFACT",
        src.url.trim_start_matches("http://"),
        &repo,
        Some("v1"),
        &img.digest,
        1,
    );
    let event = relay::event::HarborEvent::parse(
        relay::event::Format::Default,
        body.as_bytes(),
        src.url.trim_start_matches("http://"),
    )
    .unwrap();
    let tasks = relay::plan::plan(&config, &event, None, &mut || "t-backoff".into()).tasks;
    send(&sqs, &url, &tasks).await;

    let started = Instant::now();
    let _stop = poll(&config, worker, &sqs, &url, PollOptions::default()).await;
    wait_for(Duration::from_secs(30), "three attempts, then the DLQ", || async {
        queue_depth(&sqs, &dlq).await.unwrap().0 == 1
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "backed off by seconds, not the queue's 60 s: {:?}",
        started.elapsed()
    );
    let msg = sqs.receive_message().queue_url(&dlq).message_attribute_names("All").send().await.unwrap();
    let attr = |name: &str| {
        msg.messages()[0]
            .message_attributes()
            .and_then(|a| a.get(name))
            .and_then(|v| v.string_value())
            .map(str::to_owned)
    };
    assert_eq!(attr(relay::dead_letter::ATTEMPTS).as_deref(), Some("3"), "transient: every attempt used");
    assert!(attr(relay::dead_letter::LAST_ERROR).unwrap().contains("503"));
    // The cause by its stable name, from the error's type: the source answered 503.
    assert_eq!(attr(relay::dead_letter::CAUSE).as_deref(), Some("source_refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_longer_than_an_invocation_continues_and_never_dead_letters() {
    let stack = Stack::load().unwrap();
    let sqs = stack.sqs().await;
    let (url, dlq) = create_queue_with_dlq(&sqs, "long", 2, 30).await.unwrap();
    // 500 kB/s, one blob at a time: 6 layers of 96 KiB take ~1.2 s; each
    // run gets 0.3 s, so the copy needs several runs.
    let p = unique_repo("long");
    let rules = "  - name: slow\n    destination: { registry: cluster1-registry }\n    bandwidth_kbps: 4000\n";
    let yaml = format!("{}worker: {{ blob_concurrency: 1, deadline_margin_seconds: 0 }}\n", stack.config_yaml(rules));
    let config = Config::parse(&yaml).unwrap();
    let worker = Arc::new(bootstrap::worker(&config, &SecretSource::from_process(None), fast_retry()).await.unwrap());
    let img = image::push(&stack.source(), &p, "v1", ImageKind::OciImage, 6, 96 * 1024).await.unwrap();
    send(&sqs, &url, &planned_tasks(&config, &stack, "PUSH_ARTIFACT", &p, "v1", &img.digest)).await;

    let options = PollOptions { run_for: Some(Duration::from_millis(300)), ..Default::default() };
    let _stop = poll(&config, worker.clone(), &sqs, &url, options).await;
    let target = stack.target();
    wait_for(Duration::from_secs(60), "the long copy", || async {
        target.get_manifest(&p, "v1").await.unwrap().is_some()
    })
    .await;
    assert_eq!(target.tree(&p, "v1").await.unwrap(), stack.source().tree(&p, "v1").await.unwrap());
    let continued = worker.stats.tasks_deferred.load(std::sync::atomic::Ordering::Relaxed);
    assert!(continued >= 2, "the copy spanned several runs: {continued} continuations");
    wait_for(Duration::from_secs(10), "the queue drained", || async {
        queue_depth(&sqs, &url).await.unwrap() == (0, 0, 0)
    })
    .await;
    assert_eq!(queue_depth(&sqs, &dlq).await.unwrap().0, 0, "nothing dead-lettered with maxReceiveCount 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_down_for_a_while_loses_nothing_and_heals_by_itself() {
    let stack = Stack::load().unwrap();
    let sqs = stack.sqs().await;
    let (url, dlq) = create_queue_with_dlq(&sqs, "parked", 2, 30).await.unwrap();
    // cluster2 is the real target behind a proxy we can cut, mapped under
    // its own namespace; cluster1 is the target itself.
    let proxy = Proxy::to(&stack.target_url).await.unwrap();
    let repo = unique_repo("outage");
    let (ns, _) = repo.split_once('/').unwrap();
    let yaml = format!(
        "source:\n  url: {}\nwebhook:\n  auth_values_env: RELAY_WEBHOOK_AUTH\nregistries:\n  - name: cluster1-registry\n    url: {}\n    credentials: {{ username: {user}, password_env: CLUSTER1_PASSWORD }}\n  - name: cluster2-registry\n    url: {}\n    credentials: {{ username: {user}, password_env: CLUSTER1_PASSWORD }}\nrules:\n  - {{ name: one, destination: {{ registry: cluster1-registry }} }}\n  - {{ name: two, destination: {{ registry: cluster2-registry, namespace: {ns}-c2, flatten: 1 }} }}\nworker: {{ park_base_seconds: 1, park_max_seconds: 4, retry_base_seconds: 1, retry_max_seconds: 2 }}\n",
        stack.source_url,
        stack.target_url,
        proxy.url(),
        user = stack.target_user,
    );
    let config = Config::parse(&yaml).unwrap();
    let worker = Arc::new(bootstrap::worker(&config, &SecretSource::from_process(None), fast_retry()).await.unwrap());

    proxy.cut();
    let source = stack.source();
    let mut tags = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let tag = format!("v{i}");
        let img = image::push(&source, &repo, &tag, ImageKind::OciImage, 1, 512).await.unwrap();
        tasks.extend(planned_tasks(&config, &stack, "PUSH_ARTIFACT", &repo, &tag, &img.digest));
        tags.push(tag);
    }
    assert_eq!(tasks.len(), 100);
    let started = Instant::now();
    send(&sqs, &url, &tasks).await;
    let _stop = poll(&config, worker.clone(), &sqs, &url, PollOptions::default()).await;

    let target = stack.target();
    wait_for(Duration::from_secs(30), "the healthy destination's 50", || has_all(&target, &repo, &tags)).await;
    let healthy_done = started.elapsed();
    assert!(
        worker.stats.tasks_deferred.load(std::sync::atomic::Ordering::Relaxed) >= 50,
        "cluster2's tasks were parked"
    );
    assert!(worker.destinations["cluster2-registry"].health.is_open(), "its breaker is open");
    // Down a while longer: parked tasks come back and park again, without
    // knocking (only the breaker's probes try the registry).
    let deferred_before = worker.stats.tasks_deferred.load(std::sync::atomic::Ordering::Relaxed);
    let tried_before = worker.destinations["cluster2-registry"].client.requests();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let parked_again = worker.stats.tasks_deferred.load(std::sync::atomic::Ordering::Relaxed) - deferred_before;
    let tried = worker.destinations["cluster2-registry"].client.requests() - tried_before;
    assert!(parked_again >= 20, "parked tasks came back and were parked again: {parked_again}");
    assert!(tried <= 20, "{tried} requests for {parked_again} parked tasks: only probes reach the registry");
    assert_eq!(queue_depth(&sqs, &dlq).await.unwrap().0, 0, "no dead letters while it is down");

    proxy.restore();
    let back = Instant::now();
    let c2 = format!("{ns}-c2/{}", repo.split_once('/').unwrap().1);
    wait_for(Duration::from_secs(30), "cluster2's 50 after it came back", || has_all(&target, &c2, &tags)).await;
    eprintln!(
        "healthy destination done after {healthy_done:?}; cluster2 caught up {:?} after coming back",
        back.elapsed()
    );
    wait_for(Duration::from_secs(10), "the queue drained", || async {
        queue_depth(&sqs, &url).await.unwrap() == (0, 0, 0)
    })
    .await;
    assert_eq!(queue_depth(&sqs, &dlq).await.unwrap().0, 0, "the DLQ stays empty");
    assert_eq!(worker.stats.tasks_failed.load(std::sync::atomic::Ordering::Relaxed), 0, "no failed attempt counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_is_read_again_and_a_denial_after_that_is_final() {
    let stack = Stack::load().unwrap();
    let (_, sm) = bootstrap::aws_clients().await;
    let secret = format!("relay-test/rotated-{:08x}", rand::random::<u32>());
    let value = |password: &str| serde_json::json!({ "username": stack.target_user, "password": password }).to_string();
    sm.create_secret().name(&secret).secret_string(value("not-the-password")).send().await.unwrap();
    let yaml = format!(
        "source: {{ url: {} }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: cluster1-registry, url: {}, credentials: {{ secret_id: {secret} }} }}\nrules:\n  - {{ name: all, destination: {{ registry: cluster1-registry }} }}\n",
        stack.source_url, stack.target_url
    );
    let config = Config::parse(&yaml).unwrap();
    let worker = bootstrap::worker(&config, &SecretSource::from_process(Some(sm.clone())), fast_retry()).await.unwrap();
    let repo = unique_repo("rotated");
    let img = image::push(&stack.source(), &repo, "v1", ImageKind::OciImage, 1, 1024).await.unwrap();
    let task = planned_tasks(&config, &stack, "PUSH_ARTIFACT", &repo, "v1", &img.digest).remove(0);

    // Wrong before and after the re-read: denied for good, dead-lettered at once.
    let denied = worker.run(&task).await.unwrap_err();
    assert!(denied.to_string().contains("401"), "{denied}");
    assert_eq!(denied.disposition(), relay::settle::Disposition::Permanent);

    // The password rotated with its secret: the running worker reads it again.
    sm.put_secret_value().secret_id(&secret).secret_string(value(&stack.target_password)).send().await.unwrap();
    // Denials within REREAD_EVERY of a re-read share it; this one is later.
    tokio::time::sleep(relay::secrets::REREAD_EVERY).await;
    let report = worker.run(&task).await.unwrap();
    assert_eq!(report.outcome, Some(relay::registry::Outcome::Copied));
    assert!(stack.target().get_manifest(&repo, "v1").await.unwrap().is_some());
}

/// Secrets rotate without a redeploy, against a registry of its own whose
/// users change while the same worker keeps running. First the graceful way
/// (a second user added, the secret switched, the first user removed after
/// a while): the TTL picks the new secret up before the old user goes, so
/// no task is ever denied. Then in place (password and secret changed at
/// once): the denial makes the worker read the secret again, and the task
/// succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_registry_passwords_need_no_restart() {
    use relay_tests::spawned::SpawnedRegistry;
    use std::sync::atomic::Ordering::Relaxed;
    let stack = Stack::load().unwrap();
    let (_, sm) = bootstrap::aws_clients().await;
    let pw = |n: u32| format!("rotation-{n}-{:016x}", rand::random::<u64>());
    let (p1, p2, p3) = (pw(1), pw(2), pw(3));
    let registry = SpawnedRegistry::start(&[("relay-a", &p1)]).await.unwrap();
    let secret = format!("relay-test/rotation-{:08x}", rand::random::<u32>());
    let value = |user: &str, password: &str| serde_json::json!({ "username": user, "password": password }).to_string();
    sm.create_secret().name(&secret).secret_string(value("relay-a", &p1)).send().await.unwrap();
    let repo = unique_repo("rotation");
    let yaml = format!(
        "source: {{ url: {} }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: rotating, url: {}, credentials: {{ secret_id: {secret} }} }}\nrules:\n  - {{ name: all, filters: {{ name: '{repo}' }}, destination: {{ registry: rotating }} }}\nsecrets: {{ ttl_seconds: 1, fail_closed_after_seconds: 60 }}\n",
        stack.source_url, registry.url
    );
    let config = Config::parse(&yaml).unwrap();
    let worker = bootstrap::worker(&config, &SecretSource::from_process(Some(sm.clone())), fast_retry()).await.unwrap();
    let copy = |tag: &'static str| {
        let (stack, config, repo, worker) = (&stack, &config, repo.clone(), &worker);
        async move {
            let img = image::push(&stack.source(), &repo, tag, ImageKind::OciImage, 1, 1024).await.unwrap();
            let task = planned_tasks(config, stack, "PUSH_ARTIFACT", &repo, tag, &img.digest).remove(0);
            let report = worker.run(&task).await.unwrap_or_else(|e| panic!("{tag}: {e}"));
            assert_eq!(report.outcome, Some(relay::registry::Outcome::Copied), "{tag}");
            img.digest
        }
    };
    copy("v1").await;

    // Graceful: both users valid while the secret switches; the old one goes
    // once the TTL has passed.
    registry.set_users(&[("relay-a", &p1), ("relay-b", &p2)]).unwrap();
    sm.put_secret_value().secret_id(&secret).secret_string(value("relay-b", &p2)).send().await.unwrap();
    tokio::time::sleep(config.secrets.ttl() + Duration::from_millis(100)).await;
    registry.set_users(&[("relay-b", &p2)]).unwrap();
    let v2 = copy("v2").await;
    assert!(worker.credentials.reads_on_expiry.load(Relaxed) >= 1);
    assert_eq!(worker.credentials.reads_on_denial.load(Relaxed), 0, "the TTL read the secret before the old user went");

    // In place: the password and its secret change together.
    registry.set_users(&[("relay-b", &p3)]).unwrap();
    sm.put_secret_value().secret_id(&secret).secret_string(value("relay-b", &p3)).send().await.unwrap();
    let v3 = copy("v3").await;
    assert_eq!(worker.credentials.reads_on_denial.load(Relaxed), 1, "denied once, read again, copied");

    let dest = registry.client("relay-b", &p3);
    assert_eq!(dest.digest_at(&repo, "v2").await.unwrap(), Some(v2));
    assert_eq!(dest.digest_at(&repo, "v3").await.unwrap(), Some(v3));

    // A reconcile pass, by a worker whose TTL is far off, after another
    // rotation in place: refused during the pass, it reads the secret
    // again, runs once more and finds everything in sync.
    let long_ttl =
        Config::parse(&yaml.replace("ttl_seconds: 1, fail_closed_after_seconds: 60", "ttl_seconds: 3600")).unwrap();
    let reconciling =
        bootstrap::worker(&long_ttl, &SecretSource::from_process(Some(sm.clone())), fast_retry()).await.unwrap();
    let p4 = pw(4);
    registry.set_users(&[("relay-b", &p4)]).unwrap();
    sm.put_secret_value().secret_id(&secret).secret_string(value("relay-b", &p4)).send().await.unwrap();
    let pass = relay::reconcile::Reconciler::new(&long_ttl, &reconciling, 1000).pass(None, None).await.unwrap();
    assert!(pass.tasks.is_empty(), "in sync: {:?}", pass.tasks);
    assert_eq!(pass.in_sync, 3, "{pass:?}");
    assert_eq!(reconciling.credentials.reads_on_denial.load(Relaxed), 1, "denied during the pass, read again");
}

/// A worker with the parking lot (`RELAY_PARKING_QUEUE_URL`), as the binary
/// builds it: (worker, parking queue URL).
async fn with_parking(config: &Config, sqs: &aws_sdk_sqs::Client, url: &str) -> (Arc<Worker>, String) {
    let parking_url = relay_tests::stack::create_queue(sqs, "parking").await.unwrap();
    let dead_letters = relay::dead_letter::DeadLetters::discover(sqs, url, None).await;
    let mut worker = bootstrap::worker(config, &SecretSource::from_process(None), fast_retry()).await.unwrap();
    worker.parking = Some(Arc::new(relay::parking::ParkingLot::new(
        sqs.clone(),
        parking_url.clone(),
        url.to_owned(),
        dead_letters,
        &config.worker,
    )));
    (Arc::new(worker), parking_url)
}

/// [`poll`] with the worker's parking lot in its settler.
async fn poll_parking(worker: Arc<Worker>, sqs: &aws_sdk_sqs::Client, url: &str) -> oneshot::Sender<()> {
    let dead_letters = relay::dead_letter::DeadLetters::discover(sqs, url, None).await.expect("redrive policy");
    let settler =
        Settler::new(sqs.clone(), Some(url.to_owned()), Some(dead_letters), Timing::from_settings(&worker.settings))
            .with_parking(worker.parking.clone());
    let queue = TaskQueue::new(sqs.clone(), url.to_owned());
    let (stop, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        relay::poller::poll(&queue, &worker, Some(&settler), &PollOptions::default(), async move {
            let _ = rx.await;
        })
        .await
    });
    stop
}

/// One side of the copy down for longer than a probe period, with the
/// default settings (a probe every 20 s): the tasks that need it wait in
/// the parking queue, parked once each (not delivered again and again
/// while it is down), nothing is dead-lettered, and everything arrives
/// within 30 s of its return. `side` is the proxy's place: the destination
/// (cluster2) or the source (a Harbor maintenance window).
async fn an_outage_heals_within_a_probe_of_its_end(source_down: bool) {
    let stack = Stack::load().unwrap();
    let sqs = stack.sqs().await;
    let (url, dlq) = create_queue_with_dlq(&sqs, "parking-lot", 2, 30).await.unwrap();
    let proxy = Proxy::to(if source_down { &stack.source_url } else { &stack.target_url }).await.unwrap();
    let repo = unique_repo(if source_down { "harbor-down" } else { "cluster-down" });
    let (source_url, target_url) = match source_down {
        true => (proxy.url(), stack.target_url.clone()),
        false => (stack.source_url.clone(), proxy.url()),
    };
    let yaml = format!(
        "source:\n  url: {source_url}\nwebhook:\n  auth_values_env: RELAY_WEBHOOK_AUTH\nregistries:\n  - name: cluster2-registry\n    url: {target_url}\n    credentials: {{ username: {}, password_env: CLUSTER1_PASSWORD }}\nrules:\n  - {{ name: two, destination: {{ registry: cluster2-registry }} }}\n",
        stack.target_user,
    );
    let config = Config::parse(&yaml).unwrap();
    assert_eq!(config.worker.probe_seconds, 20, "the default settings");
    let (worker, parking) = with_parking(&config, &sqs, &url).await;
    let source_host = source_url.trim_start_matches("http://").to_owned();

    let source = stack.source();
    let (mut tags, mut tasks) = (Vec::new(), Vec::new());
    for i in 0..20 {
        let tag = format!("v{i}");
        let img = image::push(&source, &repo, &tag, ImageKind::OciImage, 1, 512).await.unwrap();
        tasks.extend(relay_tests::planned_tasks_on(&config, &source_host, "PUSH_ARTIFACT", &repo, &tag, &img.digest));
        tags.push(tag);
    }
    assert_eq!(tasks.len(), 20);
    proxy.cut();
    send(&sqs, &url, &tasks).await;
    let _stop = poll_parking(worker.clone(), &sqs, &url).await;

    wait_for(Duration::from_secs(30), "the tasks parked", || async {
        queue_depth(&sqs, &parking).await.unwrap().0 == 20
    })
    .await;
    // Down for longer than a probe period: the tasks stay parked, once each.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let deferred = worker.stats.tasks_deferred.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(deferred, 20, "each task parked once while it was down, not delivered again");
    assert_eq!(queue_depth(&sqs, &parking).await.unwrap().0, 20);
    assert_eq!(queue_depth(&sqs, &dlq).await.unwrap().0, 0, "no dead letters while it is down");

    proxy.restore();
    let back = Instant::now();
    let target = stack.target();
    wait_for(Duration::from_secs(30), "every image within 30 s of the return", || has_all(&target, &repo, &tags)).await;
    eprintln!("caught up {:?} after the return (source down: {source_down})", back.elapsed());
    assert_eq!(queue_depth(&sqs, &parking).await.unwrap(), (0, 0, 0), "the parking queue is empty");
    assert_eq!(queue_depth(&sqs, &dlq).await.unwrap().0, 0, "the DLQ stays empty");
    assert_eq!(worker.stats.tasks_failed.load(std::sync::atomic::Ordering::Relaxed), 0, "no failed attempt counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_outage_heals_within_a_probe_of_its_end() {
    an_outage_heals_within_a_probe_of_its_end(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_harbor_maintenance_window_dead_letters_nothing_and_heals_within_a_probe() {
    an_outage_heals_within_a_probe_of_its_end(true).await;
}

/// One artifact whose blob the source answers 500 for, while the source
/// answers everything else: a failure of that artifact, not an outage. The
/// registry's own `GET /v2/` decides: the task is retried (and in the end
/// dead-lettered with its reason) and never parked, and the source's
/// breaker stays closed for the other tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_artifact_is_no_outage() {
    let stack = Stack::load().unwrap();
    let src = FakeRegistry::start(false).await;
    let repo = unique_repo("bad-artifact");
    let img =
        image::push(&PlainRegistry::new(&src.url, None), &repo, "v1", ImageKind::OciImage, 1, 1024).await.unwrap();
    src.inject(Op::GetBlob, Fault::Status(500, None), 10_000);
    let yaml = format!(
        "source:\n  url: {}\nwebhook:\n  auth_values_env: RELAY_WEBHOOK_AUTH\nregistries:\n  - name: cluster1-registry\n    url: {}\n    credentials: {{ username: {}, password_env: CLUSTER1_PASSWORD }}\nrules:\n  - {{ name: one, destination: {{ registry: cluster1-registry }} }}\n",
        src.url, stack.target_url, stack.target_user
    );
    let config = Config::parse(&yaml).unwrap();
    let worker = bootstrap::worker(&config, &SecretSource::from_process(None), fast_retry()).await.unwrap();
    let host = src.url.trim_start_matches("http://").to_owned();
    let task = relay_tests::planned_tasks_on(&config, &host, "PUSH_ARTIFACT", &repo, "v1", &img.digest).remove(0);
    let message =
        relay::worker::Message { id: "m".into(), body: task.encode(), receive_count: 1, ..Default::default() };
    for _ in 0..config.worker.breaker_failures + 1 {
        let failures = worker.handle_batch(vec![message.clone()], None).await;
        assert_eq!(failures.len(), 1);
        assert!(
            matches!(failures[0].disposition, relay::settle::Disposition::Retry { .. }),
            "{:?}: {}",
            failures[0].disposition,
            failures[0].error
        );
    }
    assert!(!worker.source_health.is_open(), "the source's breaker stays closed");
}

/// Parking has a cap (`worker.park_limit_seconds`, a day by default): a
/// task parked longer is dead-lettered with that reason instead of waiting
/// on — when it would be parked again, and, while its registry stays down,
/// by the probe once the outage is older than the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_parked_past_the_limit_is_dead_lettered_with_its_reason() {
    use relay::parking::{ParkingLot, Probe, PARKED_ON, PARKED_SINCE};
    let stack = Stack::load().unwrap();
    let sqs = stack.sqs().await;
    let (url, dlq) = create_queue_with_dlq(&sqs, "park-cap", 3, 30).await.unwrap();
    let parking_url = relay_tests::stack::create_queue(&sqs, "park-cap-lot").await.unwrap();
    let config =
        Config::parse(&stack.config_yaml("  - { name: one, destination: { registry: cluster1-registry } }\n")).unwrap();
    assert_eq!(config.worker.park_limit_seconds, 86_400, "a day by default");
    let dead_letters = relay::dead_letter::DeadLetters::discover(&sqs, &url, None).await;
    let lot =
        Arc::new(ParkingLot::new(sqs.clone(), parking_url.clone(), url.clone(), dead_letters.clone(), &config.worker));
    let settler = Settler::new(sqs.clone(), Some(url.clone()), dead_letters, Timing::from_settings(&config.worker))
        .with_parking(Some(lot.clone()));
    let two_days_ago = relay::parking::unix_now() - 2 * 86_400;

    // Parked again after two days: dead-lettered, with the reason.
    let old = relay::worker::Message {
        id: "old".into(),
        body: "{\"a\":\"task parked two days ago\"}".into(),
        receive_count: 1,
        parked: 40,
        parked_since: Some(two_days_ago),
        ..Default::default()
    };
    let failure = relay::worker::Failure {
        message: old,
        error: "registry cluster1-registry is unavailable".into(),
        cause: relay::worker::FailureCause::RegistryUnavailable,
        disposition: relay::settle::Disposition::Park { source: false },
        slices: Default::default(),
    };
    assert!(settler.settle(vec![failure]).await.is_empty(), "settled, not redelivered");
    assert_eq!(queue_depth(&sqs, &parking_url).await.unwrap(), (0, 0, 0), "not parked again");
    let mut reasons = dead_letter_reasons(&sqs, &dlq, 1).await;
    // Still waiting in the lot after two days of an outage: the probe sends it on.
    sqs.send_message()
        .queue_url(&parking_url)
        .message_body("{\"a\":\"task waiting two days\"}")
        .message_attributes(PARKED_ON, attr("String", "cluster1-registry"))
        .message_attributes(PARKED_SINCE, attr("Number", &two_days_ago.to_string()))
        .send()
        .await
        .unwrap();
    let probe = Probe { registry: "cluster1-registry".into(), down_since: two_days_ago };
    assert!(lot.still_down(&probe).await);

    reasons.extend(dead_letter_reasons(&sqs, &dlq, 1).await);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons.iter().all(|r| r.contains("parked for more than 86400 s")), "{reasons:?}");
    assert_eq!(queue_depth(&sqs, &parking_url).await.unwrap(), (0, 0, 0), "nothing left parked");
}

/// A push into two registries is one message (a bundle): the source is
/// read once for both, the registry that keeps failing has its task
/// retried in fresh messages that count its attempts and then dead-lettered
/// as a task of its own — the other registry's copy is not repeated — and
/// a redrive of that dead letter completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_member_fails_alone_and_is_dead_lettered_and_redriven_as_its_own_task() {
    let stack = Stack::load().unwrap();
    let sqs = stack.sqs().await;
    let (url, dlq) = create_queue_with_dlq(&sqs, "bundle", 3, 60).await.unwrap();
    let src = FakeRegistry::start(false).await;
    let bad = FakeRegistry::start(false).await;
    let repo = unique_repo("bundle");
    let img =
        image::push(&PlainRegistry::new(&src.url, None), &repo, "v1", ImageKind::OciImage, 2, 64 * 1024).await.unwrap();
    bad.inject(Op::PutManifest, Fault::Status(500, None), 1000);
    let yaml = format!(
        "source: {{ url: {} }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: good, url: {}, credentials: {{ username: {}, password_env: CLUSTER1_PASSWORD }} }}\n  - {{ name: bad, url: {} }}\nrules:\n  - {{ name: to-good, destination: {{ registry: good }} }}\n  - {{ name: to-bad, destination: {{ registry: bad }} }}\nworker: {{ retry_base_seconds: 1, retry_max_seconds: 2 }}\n",
        src.url, stack.target_url, stack.target_user, bad.url
    );
    let config = Config::parse(&yaml).unwrap();
    let source_host = src.url.trim_start_matches("http://");
    let tasks = relay_tests::planned_tasks_on(&config, source_host, "PUSH_ARTIFACT", &repo, "v1", &img.digest);
    assert_eq!(tasks.len(), 2);
    send(&sqs, &url, &tasks).await;
    assert_eq!(queue_depth(&sqs, &url).await.unwrap().0, 1, "both tasks in one message");

    let worker = Arc::new(bootstrap::worker(&config, &SecretSource::from_process(None), fast_retry()).await.unwrap());
    let stop = poll(&config, worker.clone(), &sqs, &url, PollOptions::default()).await;
    wait_for(Duration::from_secs(40), "the failing member's three attempts, then the DLQ", || async {
        queue_depth(&sqs, &dlq).await.unwrap().0 == 1 && queue_depth(&sqs, &url).await.unwrap() == (0, 0, 0)
    })
    .await;
    assert_eq!(stack.target().digest_at(&repo, "v1").await.unwrap().as_deref(), Some(img.digest.as_str()));
    assert_eq!(src.count(Op::GetBlob), img.blobs.len(), "each blob read once: for both at first, then found at `bad`");
    assert_eq!(worker.stats.tasks_succeeded.load(std::sync::atomic::Ordering::Relaxed), 1, "`good` copied once");

    let got = sqs.receive_message().queue_url(&dlq).message_attribute_names("All").send().await.unwrap();
    let m = &got.messages()[0];
    let attr =
        |name: &str| m.message_attributes().and_then(|a| a.get(name)).and_then(|v| v.string_value()).map(str::to_owned);
    let dead = Task::decode(m.body().unwrap()).expect("a task of its own, not the bundle");
    assert_eq!(dead.destination.registry, "bad");
    assert_eq!(attr(relay::dead_letter::ATTEMPTS).as_deref(), Some("3"), "attempts counted across messages");
    assert_eq!(attr(relay::dead_letter::CAUSE).as_deref(), Some("destination_refused"));
    sqs.change_message_visibility()
        .queue_url(&dlq)
        .receipt_handle(m.receipt_handle().unwrap())
        .visibility_timeout(0)
        .send()
        .await
        .unwrap();

    // Mended: the operator's redrive sends that task, and it alone, again.
    bad.clear_faults();
    let letters = relay::ops::list_dead_letters(&sqs, &dlq, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].tasks.len(), 1);
    assert_eq!(relay::ops::redrive(&sqs, &dlq, &url).await.unwrap(), 1);
    wait_for(Duration::from_secs(20), "the redriven task", || async { bad.has_manifest(&repo, "v1") }).await;
    wait_for(Duration::from_secs(10), "the queues empty", || async {
        queue_depth(&sqs, &url).await.unwrap() == (0, 0, 0) && queue_depth(&sqs, &dlq).await.unwrap() == (0, 0, 0)
    })
    .await;
    assert_eq!(worker.stats.tasks_succeeded.load(std::sync::atomic::Ordering::Relaxed), 2);
    drop(stop);
}

/// Without a settler (failures left to the queue's visibility timeout), a
/// bundle whose member failed is kept for redelivery, not deleted with its
/// member's failure unsettled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_settler_a_bundle_with_a_failed_member_is_kept() {
    let stack = Stack::load().unwrap();
    let sqs = stack.sqs().await;
    let (url, _dlq) = create_queue_with_dlq(&sqs, "bundle-kept", 3, 60).await.unwrap();
    let bad = FakeRegistry::start(false).await;
    bad.inject(Op::PutManifest, Fault::Status(400, None), 1000);
    let rules = "  - name: to-good\n    destination: { registry: cluster1-registry }\n  - name: to-bad\n    destination: { registry: bad }\n";
    let yaml =
        stack.config_yaml(rules).replace("rules:\n", &format!("  - {{ name: bad, url: {} }}\nrules:\n", bad.url));
    let config = Config::parse(&yaml).unwrap();
    let repo = unique_repo("bundle-kept");
    let img = image::push(&stack.source(), &repo, "v1", ImageKind::OciImage, 1, 4096).await.unwrap();
    let tasks = planned_tasks(&config, &stack, "PUSH_ARTIFACT", &repo, "v1", &img.digest);
    send(&sqs, &url, &tasks).await;
    let worker = bootstrap::worker(&config, &SecretSource::from_process(None), fast_retry()).await.unwrap();
    let queue = TaskQueue::new(sqs.clone(), url.clone());
    let messages = relay::poller::receive(&queue, 10, None).await.unwrap();
    assert_eq!(messages.len(), 1, "one bundle");
    relay::poller::run_batch(&queue, &worker, None, &PollOptions::default(), messages).await;
    assert_eq!(stack.target().digest_at(&repo, "v1").await.unwrap().as_deref(), Some(img.digest.as_str()));
    assert_eq!(queue_depth(&sqs, &url).await.unwrap(), (0, 1, 0), "the bundle waits for its visibility timeout");
}

/// `relay dlq`'s reading of a bundle that SQS's own redrive moved whole (a
/// worker killed on every delivery): each of its tasks is listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_in_the_dead_letter_queue_lists_each_of_its_tasks() {
    let stack = Stack::load().unwrap();
    let sqs = stack.sqs().await;
    let (url, dlq) = create_queue_with_dlq(&sqs, "bundle-dlq", 3, 60).await.unwrap();
    let rules = "  - name: one\n    destination: { registry: cluster1-registry, namespace: one }\n  - name: two\n    destination: { registry: cluster1-registry, namespace: two }\n";
    let config = Config::parse(&stack.config_yaml(rules)).unwrap();
    let digest = format!("sha256:{}", "a".repeat(64));
    let tasks = relay_tests::planned_tasks(&config, &stack, "PUSH_ARTIFACT", "lib/app", "v1", &digest);
    assert_eq!(tasks.len(), 2);
    send(&sqs, &dlq, &tasks).await;
    let letters = relay::ops::list_dead_letters(&sqs, &dlq, 10).await.unwrap();
    assert_eq!(letters.len(), 1, "one message");
    let listed: Vec<String> =
        letters[0].tasks.iter().map(|t| t.as_ref().unwrap().destination.repository.to_string()).collect();
    assert_eq!(listed, ["one/app", "two/app"], "each task, the default flatten applied");
    // As `relay dlq --list` shows it, in JSON and as text.
    let relay = |output: &str| {
        let out = std::process::Command::new(relay_tests::workspace_binary("relay"))
            .args(["dlq", "--list", "--queue-url", &url, "--dlq-url", &dlq, "--output", output])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let json: serde_json::Value = serde_json::from_str(&relay("json")).unwrap();
    let tasks: Vec<&str> =
        json[0]["tasks"].as_array().unwrap().iter().map(|t| t["destination"]["repository"].as_str().unwrap()).collect();
    assert_eq!(tasks, ["one/app", "two/app"], "{json}");
    assert!(json[0]["task"].is_null(), "a bundle is no one task: {json}");
    let text = relay("table");
    assert_eq!(text.lines().filter(|l| l.contains("-> cluster1-registry/")).count(), 2, "{text}");
    // And a redrive moves it back whole, which the worker reads.
    assert_eq!(relay::ops::redrive(&sqs, &dlq, &url).await.unwrap(), 1);
    let back = sqs.receive_message().queue_url(&url).wait_time_seconds(2).send().await.unwrap();
    assert_eq!(relay::bundle::tasks_in(back.messages()[0].body().unwrap()).len(), 2);
}

/// The `RelayLastError` of `n` dead letters (waiting up to 10 s for them).
async fn dead_letter_reasons(sqs: &aws_sdk_sqs::Client, dlq: &str, n: usize) -> Vec<String> {
    let mut reasons: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while reasons.len() < n && Instant::now() < deadline {
        let got =
            sqs.receive_message().queue_url(dlq).max_number_of_messages(10).message_attribute_names("All").send().await;
        for m in got.unwrap().messages() {
            let reason = m.message_attributes().and_then(|a| a.get(relay::dead_letter::LAST_ERROR));
            reasons.push(reason.and_then(|r| r.string_value()).unwrap_or_default().to_owned());
        }
    }
    reasons
}

fn attr(data_type: &str, value: &str) -> aws_sdk_sqs::types::MessageAttributeValue {
    aws_sdk_sqs::types::MessageAttributeValue::builder().data_type(data_type).string_value(value).build().unwrap()
}
