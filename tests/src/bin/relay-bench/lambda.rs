//! The SQS event source mapping's batch size, measured (the template's
//! `WorkerBatchSize` and `WorkerBatchingWindowSeconds`). The mapping is
//! emulated: a few Lambda instances, each its own worker (its own ledger and
//! connections, as separate execution environments have), each receiving up
//! to the batch size without a batching window and running what it got as
//! one invocation (`handle_batch`), deleting the messages that succeeded.
//! The webhook enqueues as deployed (one event's tasks in one
//! `SendMessageBatch`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use relay::poller::{self, PollOptions};
use relay::queue::TaskQueue;
use relay::secrets::SecretSource;
use relay::worker::Worker;
use relay::{bootstrap, Config};
use relay_tests::app::{fast_retry, App, AppBuilder};
use relay_tests::{image, ImageKind, Stack};

use crate::copy::with_registries;
use crate::shared::shared_base_images;

/// Execution environments of the emulated mapping.
const INSTANCES: usize = 3;
const MIB: usize = 1024 * 1024;

/// Runs the instances until `stop`; returns their workers (for their stats).
async fn run_instances(
    app: &App,
    config: &Config,
    batch: i32,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<Arc<Worker>>> {
    let mut workers = Vec::new();
    for _ in 0..INSTANCES {
        let w = Arc::new(bootstrap::worker(config, &SecretSource::from_process(None), fast_retry()).await?);
        workers.push(w.clone());
        let (queue, stop) = (TaskQueue::new(app.sqs.clone(), app.queue_url.clone()), stop.clone());
        // One invocation per receive: the batch it got, nothing settled
        // (a failure would reappear after the visibility timeout).
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match poller::receive(&queue, batch, None).await {
                    Ok(messages) if !messages.is_empty() => {
                        poller::run_batch(&queue, &w, None, &PollOptions::default(), messages).await;
                    }
                    _ => {}
                }
            }
        });
    }
    Ok(workers)
}

async fn wait_for(stack: &Stack, repos: &[String], started: Instant) -> anyhow::Result<Duration> {
    let target = stack.target();
    for repo in repos {
        while target.get_manifest(repo, "v1").await?.is_none() {
            ensure!(started.elapsed() < Duration::from_secs(300), "{repo} never arrived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(started.elapsed())
}

pub async fn run() -> anyhow::Result<()> {
    let stack = Stack::load()?;
    let id = format!("{:08x}", rand::random::<u32>());
    println!("## Lambda batch size (`make bench`, relay-bench lambda-batch)\n");
    println!("The SQS event source mapping emulated with {INSTANCES} instances (each its own worker, no batching window), the webhook enqueueing as deployed. Per batch size: the 20 shared-base images, and one push of a 128 MiB image (2 layers of 64 MiB) into 3 destinations (3 rules):\n");
    println!("| batch size | 20 shared-base images | one push into 3 destinations | source bytes read for it |\n|---|---|---|---|");
    for batch in [1, 5, 10] {
        // The 20 images, one webhook each.
        let project = format!("lb{batch}-{id}");
        shared_base_images(&stack, &project).await?;
        let rules = format!("  - name: all\n    destination: {{ registry: cluster1-registry, namespace: relay-lb{batch}, flatten: 0 }}\n");
        let config = Config::parse(&stack.config_yaml(&rules))?;
        let app = AppBuilder::rules(&rules).spawn().await;
        let stop = Arc::new(AtomicBool::new(false));
        run_instances(&app, &config, batch, stop.clone()).await?;
        let source = stack.source();
        let started = Instant::now();
        let mut repos = Vec::new();
        for i in 0..20 {
            let repo = format!("{project}/app-{i}");
            let (_, bytes) = source.get_manifest(&repo, "v1").await?.context("manifest")?;
            let (status, _) = app.push_event(&repo, Some("v1"), &relay_tests::plain::sha256(&bytes)).await;
            ensure!(status == 202, "webhook answered {status}");
            repos.push(format!("relay-lb{batch}/{repo}"));
        }
        let shared_wall = wait_for(&stack, &repos, started).await?;
        stop.store(true, Ordering::Relaxed);

        // One push into three destinations.
        let repo = format!("lbfan{batch}-{id}/big");
        let img = image::push(&source, &repo, "v1", ImageKind::OciImage, 2, 64 * MIB).await?;
        let rules: String = (1..=3)
            .map(|i| {
                format!("  - name: to-c{i}\n    destination: {{ registry: c{i}, namespace: fan{i}, flatten: 0 }}\n")
            })
            .collect();
        let yaml = with_registries(&stack, 3, &rules);
        let config = Config::parse(&yaml)?;
        let app = AppBuilder::config(yaml).spawn().await;
        let stop = Arc::new(AtomicBool::new(false));
        let workers = run_instances(&app, &config, batch, stop.clone()).await?;
        let started = Instant::now();
        let (status, _) = app.push_event(&repo, Some("v1"), &img.digest).await;
        ensure!(status == 202, "webhook answered {status}");
        let fan_repos: Vec<String> = (1..=3).map(|i| format!("fan{i}/{repo}")).collect();
        let fan_wall = wait_for(&stack, &fan_repos, started).await?;
        // The tags are visible before the tasks have reported (referrers
        // come after): read the counts once all three are done.
        let succeeded = || workers.iter().map(|w| w.stats.tasks_succeeded.load(Ordering::Relaxed)).sum();
        crate::reports(succeeded, 3, started).await?;
        stop.store(true, Ordering::Relaxed);
        let read: u64 = workers.iter().map(|w| w.stats.source_bytes.load(Ordering::Relaxed)).sum();
        println!(
            "| {batch} | {:.2} s | {:.2} s | {:.2} × the image |",
            shared_wall.as_secs_f64(),
            fan_wall.as_secs_f64(),
            read as f64 / img.blob_bytes as f64
        );
    }
    println!();
    busy().await
}

/// Small images queued around the push, each into one destination: their
/// blobs are read exactly once, so what the source gives beyond them is
/// the push's.
const BUSY: usize = 30;
/// Of which this many are queued before the push.
const BEFORE: usize = 9;

/// Read once per push while other work is queued: the push into N
/// destinations sits among [`BUSY`] other tasks, and the emulated mapping
/// (batch size 10) splits the queue over its receives as it comes. The
/// same run sends the push's tasks one message each (as before bundles)
/// and as the webhook now does (one bundle).
async fn busy() -> anyhow::Result<()> {
    let stack = Stack::load()?;
    let id = format!("{:08x}", rand::random::<u32>());
    println!("### Read once per push, with other work queued (batch size 10)\n");
    println!("A push of a 128 MiB image (2 layers of 64 MiB) into N destinations, enqueued among {BUSY} small single-destination copies (1 MiB each, {BEFORE} of them queued before the push, so that a receive of ten ends inside it) before the {INSTANCES} instances start; source bytes read for the push = all read − the small copies' blobs (each read once):\n");
    println!("| N | one message per task | one bundle (as the webhook enqueues) |\n|---|---|---|");
    for n in [2, 3, 5] {
        let mut cells = Vec::new();
        for bundled in [false, true] {
            let ratio = busy_push(&stack, &format!("lbq{n}{}-{id}", u8::from(bundled)), n, bundled).await?;
            cells.push(format!("{ratio:.2} × the image"));
        }
        println!("| {n} | {} | {} |", cells[0], cells[1]);
    }
    println!();
    Ok(())
}

/// One run of [`busy`]: the push's source reads over the image's size.
async fn busy_push(stack: &Stack, project: &str, n: usize, bundled: bool) -> anyhow::Result<f64> {
    let source = stack.source();
    let big = format!("{project}/big");
    let img = image::push(&source, &big, "v1", ImageKind::OciImage, 2, 64 * MIB).await?;
    let mut small = Vec::new();
    for i in 0..BUSY {
        small.push(image::push(&source, &format!("{project}/small-{i}"), "v1", ImageKind::OciImage, 1, MIB).await?);
    }
    let mut rules: String = (1..=n)
        .map(|i| format!("  - name: to-c{i}\n    filters: {{ name: \"**/big\" }}\n    destination: {{ registry: c{i}, namespace: {project}-{i}, flatten: 0 }}\n"))
        .collect();
    rules += &format!("  - name: busy\n    filters: {{ name: \"**/small-*\" }}\n    destination: {{ registry: cluster1-registry, namespace: {project}-busy, flatten: 0 }}\n");
    let yaml = with_registries(stack, n, &rules);
    let config = Config::parse(&yaml)?;
    let app = AppBuilder::config(yaml).spawn().await;
    let host = stack.source_host();
    let plan =
        |repo: &str, digest: &str| relay_tests::planned_tasks_on(&config, host, "PUSH_ARTIFACT", repo, "v1", digest);
    let push = plan(&big, &img.digest);
    ensure!(push.len() == n, "{} tasks for the push", push.len());
    // The queue as it stands when the instances start: nine small copies,
    // the push (its first message the tenth, where a receive of ten ends),
    // the rest.
    let mut bodies: Vec<String> = Vec::new();
    let small_body = |i: usize| -> anyhow::Result<String> {
        let s = &small[i];
        Ok(plan(&s.repository, &s.digest).pop().context("a task per small image")?.encode())
    };
    for i in 0..BEFORE {
        bodies.push(small_body(i)?);
    }
    match bundled {
        true => bodies.push(relay::bundle::encode(&push.iter().collect::<Vec<_>>())),
        false => bodies.extend(push.iter().map(|t| t.encode())),
    }
    for i in BEFORE..BUSY {
        bodies.push(small_body(i)?);
    }
    for body in &bodies {
        app.sqs.send_message().queue_url(&app.queue_url).message_body(body).send().await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let workers = run_instances(&app, &config, 10, stop.clone()).await?;
    let started = Instant::now();
    let succeeded = || workers.iter().map(|w| w.stats.tasks_succeeded.load(Ordering::Relaxed)).sum();
    crate::reports(succeeded, n + BUSY, started).await?;
    stop.store(true, Ordering::Relaxed);
    let read: u64 = workers.iter().map(|w| w.stats.source_bytes.load(Ordering::Relaxed)).sum();
    let small_bytes: u64 = small.iter().map(|s| s.blob_bytes).sum();
    Ok(read.saturating_sub(small_bytes) as f64 / img.blob_bytes as f64)
}
