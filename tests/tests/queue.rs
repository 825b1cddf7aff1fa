//! Queue semantics against LocalStack SQS: partial batch failures, poison
//! messages reaching the DLQ after the redrive count, convergence of
//! duplicated, reordered push and delete tasks, and of tasks racing changes
//! at the source.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use relay::queue::{Outgoing, TaskQueue};
use relay::secrets::SecretSource;
use relay::worker::Message;
use relay::{bootstrap, Config, Task};
use relay_tests::app::{fast_retry, unique_repo, ALL_TO_CLUSTER1};
use relay_tests::fake::{FakeRegistry, Fault, Op};
use relay_tests::stack::{create_queue_with_dlq, queue_depth};
use relay_tests::{image, planned_tasks, ImageKind, Stack};
use tokio::sync::oneshot;

async fn worker(stack: &Stack, rules: &str) -> (Config, relay::worker::Worker) {
    let config = Config::parse(&stack.config_yaml(rules)).unwrap();
    let w = bootstrap::worker(&config, &SecretSource::from_process(None), fast_retry()).await.unwrap();
    (config, w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_task_never_fails_its_neighbours() {
    let stack = Stack::load().unwrap();
    let (config, w) = worker(&stack, ALL_TO_CLUSTER1).await;
    let repo = unique_repo("batch");
    let img = image::push(&stack.source(), &repo, "v1", ImageKind::OciImage, 1, 4096).await.unwrap();
    let good = planned_tasks(&config, &stack, "PUSH_ARTIFACT", &repo, "v1", &img.digest).remove(0);
    let mut future = serde_json::to_value(&good).unwrap();
    future["version"] = 3.into();
    let mut unknown_registry = good.clone();
    unknown_registry.destination.registry = "elsewhere".into();
    let batch = vec![
        Message { id: "good".into(), body: good.encode(), receive_count: 1, ..Default::default() },
        Message { id: "garbage".into(), body: "{not json".into(), receive_count: 1, ..Default::default() },
        Message { id: "future".into(), body: future.to_string(), receive_count: 1, ..Default::default() },
        Message { id: "nowhere".into(), body: unknown_registry.encode(), receive_count: 1, ..Default::default() },
    ];
    let mut failed: Vec<(String, String)> =
        w.handle_batch(batch, None).await.into_iter().map(|f| (f.message.id, f.error)).collect();
    failed.sort();
    let ids: Vec<&str> = failed.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(ids, ["future", "garbage", "nowhere"]);
    assert!(failed[0].1.contains("version 3 is not supported"), "{}", failed[0].1);
    assert!(failed[1].1.starts_with("undecodable task"), "{}", failed[1].1);
    assert!(failed[2].1.contains("\"elsewhere\", which is not in this worker's configuration"), "{}", failed[2].1);
    assert!(stack.target().get_manifest(&repo, "v1").await.unwrap().is_some(), "the good task ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_reach_the_dlq_and_good_ones_are_deleted() {
    let stack = Stack::load().unwrap();
    let sqs = stack.sqs().await;
    let (url, dlq) = create_queue_with_dlq(&sqs, "redrive", 2, 1).await.unwrap();

    let (config, w) = worker(&stack, ALL_TO_CLUSTER1).await;
    let repo = unique_repo("dlq");
    let img = image::push(&stack.source(), &repo, "v1", ImageKind::OciImage, 1, 4096).await.unwrap();
    let good = planned_tasks(&config, &stack, "PUSH_ARTIFACT", &repo, "v1", &img.digest);
    let queue = TaskQueue::new(sqs.clone(), url.clone());
    queue.send_now(&good).await.unwrap();
    sqs.send_message().queue_url(&url).message_body("{\"version\": 99}").send().await.unwrap();

    let dead_letters = relay::dead_letter::DeadLetters::discover(&sqs, &url, None).await.expect("redrive policy");
    let timing = relay::settle::Timing::from_settings(&config.worker);
    let settler = relay::settle::Settler::new(sqs.clone(), Some(url.clone()), Some(dead_letters), timing);
    let (stop, rx) = oneshot::channel::<()>();
    let poller = tokio::spawn(async move {
        relay::poller::poll(&queue, &w, Some(&settler), &Default::default(), async move {
            let _ = rx.await;
        })
        .await
    });
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let (dlq_visible, _, _) = queue_depth(&sqs, &dlq).await.unwrap();
        let main = queue_depth(&sqs, &url).await.unwrap();
        if dlq_visible == 1 && main == (0, 0, 0) {
            break;
        }
        assert!(Instant::now() < deadline, "dlq {dlq_visible}, main {main:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = stop.send(());
    poller.await.unwrap();
    let msg = sqs.receive_message().queue_url(&dlq).message_attribute_names("All").send().await.unwrap();
    let m = &msg.messages()[0];
    assert_eq!(m.body(), Some("{\"version\": 99}"), "exactly the poison message");
    // No retry can fix it: dead-lettered by the worker at its first
    // attempt (of 2 allowed), with the reason.
    let attr =
        |name: &str| m.message_attributes().and_then(|a| a.get(name)).and_then(|v| v.string_value()).map(str::to_owned);
    assert_eq!(attr(relay::dead_letter::ATTEMPTS).as_deref(), Some("1"));
    let error = attr(relay::dead_letter::LAST_ERROR).expect("last error attached");
    assert!(error.contains("version 99 is not supported"), "{error}");
    assert_eq!(attr(relay::dead_letter::CAUSE).as_deref(), Some("undecodable"), "the cause by its stable name");
    assert!(stack.target().get_manifest(&repo, "v1").await.unwrap().is_some());
}

/// Duplicated tasks run in any order converge on the source's final state.
/// Not a race — the source is final before any task runs; what converges
/// them is each task reading the source again (a push whose artifact is
/// gone does nothing, a tag that moved is pushed where it points now). The
/// race is `tasks_racing_source_changes_converge`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_reordered_tasks_converge() {
    let stack = Stack::load().unwrap();
    let rules = "  - name: mirror\n    deletion: true\n    destination: { registry: cluster1-registry }\n";
    let (config, w) = worker(&stack, rules).await;
    let repo = unique_repo("converge");
    let source = stack.source();
    // Three images: `keep` stays, `gone` is deleted at the source, `moved`
    // has its tag moved to a new digest.
    let keep = image::push(&source, &repo, "keep", ImageKind::OciIndex { platforms: 2 }, 1, 4096).await.unwrap();
    let gone = image::push(&source, &repo, "gone", ImageKind::OciImage, 1, 4096).await.unwrap();
    let old = image::push(&source, &repo, "moved", ImageKind::OciImage, 1, 4096).await.unwrap();
    let new = image::push(&source, &repo, "moved", ImageKind::DockerImage, 1, 4096).await.unwrap();
    assert_eq!(source.delete_manifest(&repo, &gone.digest).await.unwrap().as_u16(), 202);

    let mut tasks = Vec::new();
    for _ in 0..3 {
        tasks.extend(planned_tasks(&config, &stack, "PUSH_ARTIFACT", &repo, "keep", &keep.digest));
        tasks.extend(planned_tasks(&config, &stack, "PUSH_ARTIFACT", &repo, "gone", &gone.digest));
        tasks.extend(planned_tasks(&config, &stack, "DELETE_ARTIFACT", &repo, "gone", &gone.digest));
        tasks.extend(planned_tasks(&config, &stack, "PUSH_ARTIFACT", &repo, "moved", &old.digest));
        tasks.extend(planned_tasks(&config, &stack, "PUSH_ARTIFACT", &repo, "moved", &new.digest));
    }
    tasks.shuffle(&mut rand::thread_rng());
    // Run them in two interleaved halves, as two workers would.
    let (a, b) = tasks.split_at(tasks.len() / 2);
    let run = |ts: Vec<Task>| {
        let w = &w;
        async move {
            for t in ts {
                w.run(&t).await.unwrap();
            }
        }
    };
    tokio::join!(run(a.to_vec()), run(b.to_vec()));

    let target = stack.target();
    assert_eq!(target.tree(&repo, "keep").await.unwrap(), source.tree(&repo, "keep").await.unwrap());
    assert!(target.get_manifest(&repo, &gone.digest).await.unwrap().is_none(), "deleted at the source");
    // The tag ends where the source has it, whatever order the tasks ran in.
    let (_, moved) = target.get_manifest(&repo, "moved").await.unwrap().unwrap();
    assert_eq!(relay_tests::plain::sha256(&moved), new.digest);
}

/// Tasks running while the source changes under them, as Harbor's events
/// arrive while earlier ones are still being copied. Six times: the tag
/// moves to a large image and its task starts; while that task is still
/// copying, the tag moves on to a tiny image, whose task starts at once on
/// the second runner and finishes first. The large task would then
/// overwrite the tag with a stale digest, unless it checks the source again
/// before its tag push. The test checks that the second change landed while
/// the first task ran (the race happened) and that the destination ends
/// where the source ends, pair after pair. (The same, held mid-blob by the
/// fault registry, is copy_engine's stale-overwrite test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_racing_source_changes_converge() {
    use std::sync::Arc;
    let stack = Stack::load().unwrap();
    let (config, w) = worker(&stack, ALL_TO_CLUSTER1).await;
    let w = Arc::new(w);
    let repo = unique_repo("race");
    let (source, target) = (stack.source(), stack.target());
    let move_tag = |size: usize, name: String| {
        let (source, repo) = (&source, &repo);
        async move {
            let img = image::push(source, repo, &name, ImageKind::OciImage, 1, size).await.unwrap();
            let (media_type, bytes) = source.get_manifest(repo, &img.digest).await.unwrap().unwrap();
            (img.digest, media_type, bytes)
        }
    };
    let mut raced = 0;
    for pair in 0..6 {
        let large = move_tag(16 * 1024 * 1024, format!("large-{pair}")).await;
        let tiny = move_tag(4096, format!("tiny-{pair}")).await;
        let task_for = |digest: &str| planned_tasks(&config, &stack, "PUSH_ARTIFACT", &repo, "moved", digest).remove(0);

        source.put_manifest(&repo, "moved", &large.1, &large.2).await.unwrap();
        let (started_tx, started_rx) = oneshot::channel();
        let first = {
            let (w, task) = (w.clone(), task_for(&large.0));
            tokio::spawn(async move {
                let run = w.run(&task);
                let _ = started_tx.send(());
                let report = run.await.unwrap_or_else(|e| panic!("{e}"));
                (report, Instant::now())
            })
        };
        started_rx.await.unwrap();
        // Past the large task's first look at the source: it is copying.
        tokio::time::sleep(Duration::from_millis(20)).await;
        source.put_manifest(&repo, "moved", &tiny.1, &tiny.2).await.unwrap();
        let changed = Instant::now();
        w.run(&task_for(&tiny.0)).await.unwrap();
        let (report, first_done) = first.await.unwrap();
        if first_done > changed {
            raced += 1;
        }
        assert_eq!(
            target.digest_at(&repo, "moved").await.unwrap(),
            Some(tiny.0.clone()),
            "pair {pair}: the large task ended {:?} ({:?} after the move)",
            report.outcome,
            first_done.checked_duration_since(changed)
        );
    }
    assert!(raced > 0, "no move landed while the large task ran: nothing raced");
}

/// A worker on the fake source `src`, with `worker_yaml` appended to the
/// stack's configuration.
async fn worker_on_fake(stack: &Stack, src: &FakeRegistry, worker_yaml: &str) -> (Config, Arc<relay::worker::Worker>) {
    let yaml = stack.config_yaml(ALL_TO_CLUSTER1).replace(&stack.source_url, &src.url) + worker_yaml;
    let config = Config::parse(&yaml).unwrap();
    let w = Arc::new(bootstrap::worker(&config, &SecretSource::from_process(None), fast_retry()).await.unwrap());
    (config, w)
}

/// `w` polling `url` until the returned sender is used. Messages sent
/// before this call are there for its first receive, which takes as many
/// as the worker has free slots: one batch.
async fn start_polling(
    stack: &Stack,
    config: &Config,
    w: &Arc<relay::worker::Worker>,
    url: &str,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let sqs = stack.sqs().await;
    let queue = TaskQueue::new(sqs.clone(), url.to_owned());
    let timing = relay::settle::Timing::from_settings(&config.worker);
    let settler = relay::settle::Settler::new(sqs, Some(url.to_owned()), None, timing);
    let (stop, rx) = oneshot::channel::<()>();
    let polling = w.clone();
    let poller = tokio::spawn(async move {
        relay::poller::poll(&queue, &polling, Some(&settler), &Default::default(), async move {
            let _ = rx.await;
        })
        .await
    });
    (stop, poller)
}

/// One tagged single-layer image pushed to the fake source `src` in each of
/// `repos`, and the push task of each.
async fn fake_tasks(config: &Config, src: &FakeRegistry, repos: &[&str]) -> Vec<Task> {
    let source = relay_tests::PlainRegistry::new(&src.url, None);
    let host = src.url.trim_start_matches("http://");
    let mut tasks = Vec::new();
    for repo in repos {
        let img = image::push(&source, repo, "v1", ImageKind::OciImage, 1, 4096).await.unwrap();
        tasks.push(relay_tests::planned_tasks_on(config, host, "PUSH_ARTIFACT", repo, "v1", &img.digest).remove(0));
    }
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_task_never_holds_the_next_messages() {
    let stack = Stack::load().unwrap();
    let sqs = stack.sqs().await;
    let url = relay_tests::stack::create_queue(&sqs, "pipelined").await.unwrap();
    let src = FakeRegistry::start(false).await;
    let (config, w) = worker_on_fake(&stack, &src, "").await;
    let (stop, poller) = start_polling(&stack, &config, &w, &url).await;
    let (slow_repo, quick_repo) = (unique_repo("slow"), unique_repo("quick"));
    let [slow_task, quick_task]: [Task; 2] =
        fake_tasks(&config, &src, &[&slow_repo, &quick_repo]).await.try_into().expect("two tasks");
    // The slow task's first blob read is held for 12 s.
    src.inject(Op::GetBlob, Fault::Hold(Duration::from_secs(12)), 1);
    let sender = TaskQueue::new(sqs.clone(), url.clone());
    sender.send(&[Outgoing { task: &slow_task, delay: Duration::ZERO }]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while src.count(Op::GetBlob) == 0 {
        assert!(Instant::now() < deadline, "the slow task never read its blob");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = Instant::now();
    sender.send(&[Outgoing { task: &quick_task, delay: Duration::ZERO }]).await.unwrap();
    let target = stack.target();
    while target.get_manifest(&quick_repo, "v1").await.unwrap().is_none() {
        assert!(sent.elapsed() < Duration::from_secs(30), "the quick task never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let quick_took = sent.elapsed();
    assert!(
        target.get_manifest(&slow_repo, "v1").await.unwrap().is_none(),
        "the quick task was received only after the slow one finished ({quick_took:?})"
    );
    assert!(quick_took < Duration::from_secs(8), "{quick_took:?}");
    // The slow task still completes, and both messages are deleted.
    while target.get_manifest(&slow_repo, "v1").await.unwrap().is_none() {
        assert!(sent.elapsed() < Duration::from_secs(40), "the slow task never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while queue_depth(&sqs, &url).await.unwrap() != (0, 0, 0) {
        assert!(Instant::now() < deadline, "messages left: {:?}", queue_depth(&sqs, &url).await.unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    poller.await.unwrap();
}

/// A task's slot is free as soon as it ends: with two slots, a batch of a
/// slow task and a quick one leaves room for the next message while the
/// slow one still runs (not when the whole batch ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_task_frees_its_slot_while_its_batch_neighbour_runs() {
    let stack = Stack::load().unwrap();
    let sqs = stack.sqs().await;
    let url = relay_tests::stack::create_queue(&sqs, "slots").await.unwrap();
    let src = FakeRegistry::start(false).await;
    let (config, w) = worker_on_fake(&stack, &src, "worker:\n  task_concurrency: 2\n").await;
    let repos = [unique_repo("slow"), unique_repo("quick"), unique_repo("next")];
    let tasks = fake_tasks(&config, &src, &repos.each_ref().map(String::as_str)).await;
    // The quick task's image is at the destination already: it reads no
    // blob, so the held read is the slow task's.
    w.run(&tasks[1]).await.unwrap();
    let done_before = w.stats.tasks_succeeded.load(Ordering::Relaxed);
    src.inject(Op::GetBlob, Fault::Hold(Duration::from_secs(12)), 1);
    let queue = TaskQueue::new(sqs.clone(), url.clone());
    // Sent before the poller starts: its first receive (two free slots)
    // takes both, in one batch.
    queue.send_now(&tasks[..2]).await.unwrap();
    let batches_before = w.stats.batches.load(Ordering::Relaxed);
    let (stop, poller) = start_polling(&stack, &config, &w, &url).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while src.count(Op::GetBlob) == 0 || w.stats.tasks_succeeded.load(Ordering::Relaxed) == done_before {
        assert!(Instant::now() < deadline, "the slow task never read its blob, or the quick one never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let batches = w.stats.batches.load(Ordering::Relaxed) - batches_before;
    assert_eq!(batches, 1, "the slow and the quick task came in one batch (else the test proves nothing)");
    let sent = Instant::now();
    queue.send(&[Outgoing { task: &tasks[2], delay: Duration::ZERO }]).await.unwrap();
    let target = stack.target();
    while target.get_manifest(&repos[2], "v1").await.unwrap().is_none() {
        assert!(sent.elapsed() < Duration::from_secs(30), "the next task never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let next_took = sent.elapsed();
    assert!(
        target.get_manifest(&repos[0], "v1").await.unwrap().is_none(),
        "the next task was received only after its slot's batch ended ({next_took:?})"
    );
    // The slow task still completes, and every message is deleted.
    let deadline = Instant::now() + Duration::from_secs(40);
    while target.get_manifest(&repos[0], "v1").await.unwrap().is_none()
        || queue_depth(&sqs, &url).await.unwrap() != (0, 0, 0)
    {
        assert!(Instant::now() < deadline, "left: {:?}", queue_depth(&sqs, &url).await.unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    poller.await.unwrap();
}

/// A copy that outlasts the queue's visibility timeout is not delivered
/// again while it runs (the poller renews its batch's visibility), and its
/// batch neighbour that finished is deleted while it still runs, not held
/// in flight until the batch ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_longer_than_the_visibility_timeout_is_not_delivered_again() {
    let stack = Stack::load().unwrap();
    let sqs = stack.sqs().await;
    let (url, _dlq) = create_queue_with_dlq(&sqs, "renewed", 5, 2).await.unwrap();
    let src = FakeRegistry::start(false).await;
    let (config, w) = worker_on_fake(&stack, &src, "").await;
    let (repo, quick_repo) = (unique_repo("long"), unique_repo("quick"));
    let tasks = fake_tasks(&config, &src, &[&repo, &quick_repo]).await;
    // The neighbour's image is at the destination already: it reads no
    // blob and ends at once.
    w.run(&tasks[1]).await.unwrap();
    let ran_before = w.stats.tasks_succeeded.load(Ordering::Relaxed);
    // The long task's blob read takes 7 s: three and a half visibility timeouts.
    src.inject(Op::GetBlob, Fault::Hold(Duration::from_secs(7)), 1);
    // Sent before the poller starts: one batch.
    TaskQueue::new(sqs.clone(), url.clone()).send_now(&tasks).await.unwrap();
    let batches_before = w.stats.batches.load(Ordering::Relaxed);
    let (stop, poller) = start_polling(&stack, &config, &w, &url).await;
    let target = stack.target();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut neighbour_gone_first = false;
    while target.get_manifest(&repo, "v1").await.unwrap().is_none()
        || queue_depth(&sqs, &url).await.unwrap() != (0, 0, 0)
    {
        let depth = queue_depth(&sqs, &url).await.unwrap();
        if depth == (0, 1, 0) && target.get_manifest(&repo, "v1").await.unwrap().is_none() {
            neighbour_gone_first = true;
        }
        assert!(Instant::now() < deadline, "left: {depth:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    poller.await.unwrap();
    let batches = w.stats.batches.load(Ordering::Relaxed) - batches_before;
    assert_eq!(batches, 1, "the long task and its neighbour came in one batch (else the test proves nothing)");
    assert!(neighbour_gone_first, "the finished neighbour stayed in flight until the long copy ended");
    let ran =
        w.stats.tasks_succeeded.load(Ordering::Relaxed) + w.stats.tasks_failed.load(Ordering::Relaxed) - ran_before;
    assert_eq!(ran, 2, "a message was delivered again while its copy ran");
}
