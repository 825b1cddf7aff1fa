//! The soak run behind `make soak` (200 pushes) and its short version in
//! `make test`: many image pushes through the real path — Harbor events to
//! the `webhook` binary → LocalStack SQS → the `worker` binary → three
//! destinations (the real target registry and two fake registries that
//! answer 503 bursts and 429 with Retry-After) — while faults are injected:
//! connections from the worker to the source reset mid-response, SQS
//! unreachable for a while through a proxy that is cut (the webhook must
//! answer 503 and the event be delivered again, as Harbor does), the source
//! (a Harbor maintenance window) and then the real destination unreachable
//! for a while (their tasks wait in the parking queue until a probe finds
//! them answering), the worker killed with SIGKILL mid-run and restarted,
//! and poison messages on the queue. Beside the standalone worker, a second
//! one consumes the same copy queue in its Lambda mode, under a Runtime API
//! that SIGKILLs it at each invocation's (short) deadline as Lambda does,
//! fed by a stand-in for Lambda's SQS event source mapping. Mid-run the
//! configuration gains a rule: the standalone binaries are restarted on it,
//! the Lambda-mode worker must read it again by itself. At the end every
//! destination must equal what the rules say for every image, digest by
//! digest, nothing may be left parked, and the DLQ must hold exactly the
//! poison. A failed run leaves every process's log in
//! `$TMPDIR/soak-<id>/`, the Lambda-mode worker's in `worker-lambda.log`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;

use crate::fake::{FakeRegistry, Fault, Op};
use crate::image::{self, ImageKind};
use crate::plain::PlainRegistry;
use crate::proxy::Proxy;
use crate::runtime_api::KillingRuntime;
use crate::stack::{create_queue_with_dlq, queue_depth};
use crate::{harbor_push_event, now, workspace_binary, Stack};

/// How big a run is.
#[derive(Debug, Clone)]
pub struct SoakParams {
    pub pushes: usize,
    /// This many of the pushes carry one large layer of `large_mib` MiB.
    pub large: usize,
    pub large_mib: usize,
    /// How long SQS is unreachable.
    pub sqs_cut: Duration,
    /// How long the source (a Harbor maintenance window), then the real
    /// destination, is unreachable: their tasks park and come back when a
    /// probe finds them answering.
    pub outage: Duration,
    /// Poison messages put on the queue, which must end in the DLQ.
    pub poison: usize,
    /// The Lambda-mode worker's function timeout: each invocation is
    /// killed (SIGKILL) when it has not answered by then.
    pub lambda_timeout: Duration,
    /// Images pushed under the rule the configuration gains mid-run.
    pub late: usize,
    /// The run fails if it has not converged by then.
    pub deadline: Duration,
}

impl SoakParams {
    /// The `make soak` run.
    pub fn full() -> Self {
        SoakParams {
            pushes: 200,
            large: 4,
            large_mib: 32,
            sqs_cut: Duration::from_secs(20),
            outage: Duration::from_secs(30),
            poison: 3,
            lambda_timeout: Duration::from_secs(10),
            late: 6,
            deadline: Duration::from_secs(900),
        }
    }

    /// The version in `make test`.
    pub fn short() -> Self {
        SoakParams {
            pushes: 24,
            large: 1,
            large_mib: 4,
            sqs_cut: Duration::from_secs(5),
            outage: Duration::from_secs(10),
            poison: 2,
            lambda_timeout: Duration::from_secs(10),
            late: 3,
            deadline: Duration::from_secs(240),
        }
    }
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct SoakReport {
    pub pushes: usize,
    pub destinations: usize,
    pub tasks_done: usize,
    pub deliveries_failed: usize,
    pub duplicates: usize,
    /// Bytes the duplicate runs copied (must be 0: they find everything present).
    pub duplicate_bytes: u64,
    pub bytes: u64,
    pub retries: u64,
    pub webhook_503: usize,
    pub source_resets: usize,
    pub worker_kills: usize,
    pub dead_letters: usize,
    /// Images deleted from one source of the colliding mapping while the
    /// other still held them (their merged copy must stay), and images
    /// deleted from their only source (their merged copy must go).
    pub collisions_kept: usize,
    pub collisions_deleted: usize,
    /// The Lambda-mode worker: invocations, those killed at their deadline,
    /// and task runs it cut before the deadline (continued in a fresh
    /// message), and the distinct tasks it finished.
    pub lambda_invocations: usize,
    pub lambda_kills: u32,
    pub lambda_cuts: usize,
    pub lambda_tasks_done: usize,
    /// Images pushed under the rule added mid-run (all at the target).
    pub late: usize,
    pub latency_p50_ms: u64,
    pub latency_p99_ms: u64,
    pub elapsed: Duration,
}

impl SoakReport {
    pub fn markdown(&self, p: &SoakParams) -> String {
        format!(
            "| pushes | destinations | tasks done (by the Lambda-mode worker) | failed runs (poison included) | duplicate runs | bytes copied | blob retries | webhook 503 during the SQS cut | source resets | worker SIGKILLs | Lambda-mode invocations / killed at the deadline / task runs cut before it | pushes under the reloaded rule | DLQ (= poison) | colliding deletes kept / done, wrongful | push→replicated p50 / p99 | wall time |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n\
             | {} ({} large × {} MiB) | {} | {} ({}) | {} | {} | {:.1} MiB | {} | {} | {} | {} | {} / {} / {} | {} | {} | {} / {}, 0 | {:.1} s / {:.1} s | {:.0} s |\n",
            self.pushes,
            p.large,
            p.large_mib,
            self.destinations,
            self.tasks_done,
            self.lambda_tasks_done,
            self.deliveries_failed,
            self.duplicates,
            self.bytes as f64 / (1024.0 * 1024.0),
            self.retries,
            self.webhook_503,
            self.source_resets,
            self.worker_kills,
            self.lambda_invocations,
            self.lambda_kills,
            self.lambda_cuts,
            self.late,
            self.dead_letters,
            self.collisions_kept,
            self.collisions_deleted,
            self.latency_p50_ms as f64 / 1000.0,
            self.latency_p99_ms as f64 / 1000.0,
            self.elapsed.as_secs_f64(),
        )
    }
}

/// One pushed image: what the event named and where to compare it.
#[derive(Debug, Clone)]
struct Pushed {
    repo: String,
    digest: String,
}

struct Process {
    name: &'static str,
    envs: Vec<(String, String)>,
    logs: PathBuf,
    runs: usize,
    /// SIGKILLs that ended a running process (not one that had already
    /// exited on its own).
    kills: usize,
    child: Option<Child>,
}

impl Process {
    fn start(name: &'static str, envs: Vec<(String, String)>, logs: &Path) -> anyhow::Result<Process> {
        let mut p = Process { name, envs, logs: logs.to_owned(), runs: 0, kills: 0, child: None };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        self.runs += 1;
        let log = std::fs::File::create(self.logs.join(format!("{}-{}.log", self.name, self.runs)))?;
        let mut c = Command::new(workspace_binary(self.name));
        c.env("RUST_LOG", "info").stdout(log.try_clone()?).stderr(log);
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        self.child = Some(c.spawn().with_context(|| format!("start {}", self.name))?);
        Ok(())
    }

    fn kill(&mut self) {
        use std::os::unix::process::ExitStatusExt;
        if let Some(mut c) = self.child.take() {
            let running = matches!(c.try_wait(), Ok(None));
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            if running && c.wait().is_ok_and(|s| s.signal() == Some(libc::SIGKILL)) {
                self.kills += 1;
            }
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    fn all_logs(&self) -> String {
        (1..=self.runs)
            .filter_map(|i| std::fs::read_to_string(self.logs.join(format!("{}-{i}.log", self.name))).ok())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Pushes image `i` of the mix to the source.
async fn push_one(
    source: &PlainRegistry,
    project: &str,
    i: usize,
    p: &SoakParams,
    base: &(String, String, usize),
) -> anyhow::Result<Pushed> {
    let repo = format!("{project}/app-{i:03}");
    let small = 16 * 1024;
    let img = if i < p.large {
        image::push(source, &repo, "v1", ImageKind::OciImage, 1, p.large_mib * 1024 * 1024).await?
    } else if i.is_multiple_of(10) {
        image::push(source, &repo, "v1", ImageKind::OciIndex { platforms: 2 }, 2, small).await?
    } else if i % 10 == 5 {
        image::push(source, &repo, "v1", ImageKind::DockerList { platforms: 2 }, 1, small).await?
    } else if i % 4 == 2 {
        return push_on_base(source, &repo, base).await;
    } else if i % 3 == 1 {
        image::push(source, &repo, "v1", ImageKind::DockerImage, 2, small).await?
    } else {
        image::push(source, &repo, "v1", ImageKind::OciImage, 2, small).await?
    };
    Ok(Pushed { repo, digest: img.digest })
}

/// An image over the shared base layer (`base` = repository, digest, size),
/// mounted from where it was first pushed, as builds on one base do.
async fn push_on_base(source: &PlainRegistry, repo: &str, base: &(String, String, usize)) -> anyhow::Result<Pushed> {
    source.mount_blob(repo, &base.1, &base.0).await?;
    let own = bytes::Bytes::from(format!("own layer of {repo} {}", rand::random::<u64>()).into_bytes());
    let own_digest = source.put_blob(repo, own.clone()).await?;
    let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"salt\":\"{}\"}}", rand::random::<u64>());
    let config_digest = source.put_blob(repo, config.clone().into_bytes().into()).await?;
    let layer = "application/vnd.oci.image.layer.v1.tar+gzip";
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": image::OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
        "layers": [
            { "mediaType": layer, "digest": base.1, "size": base.2 },
            { "mediaType": layer, "digest": own_digest, "size": own.len() },
        ],
    })
    .to_string();
    let digest = source.put_manifest(repo, "v1", image::OCI_MANIFEST, manifest.as_bytes()).await?;
    Ok(Pushed { repo: repo.to_owned(), digest })
}

/// Puts `from:v1` into `to` as well (blobs mounted, children by digest,
/// then the tag): the same digest in a second repository.
async fn clone_into(source: &PlainRegistry, from: &str, to: &str) -> anyhow::Result<()> {
    let tree = source.tree(from, "v1").await?;
    for blob in tree.blobs.keys() {
        source.mount_blob(to, blob, from).await?;
    }
    for reference in tree.manifests.keys().filter(|r| r.as_str() != "v1").chain(std::iter::once(&"v1".to_owned())) {
        let (media_type, bytes) = source.get_manifest(from, reference).await?.context("manifest vanished")?;
        source.put_manifest(to, reference, &media_type, &bytes).await?;
    }
    Ok(())
}

/// Posts the event until the webhook accepts it (Harbor retries a failed
/// delivery); returns how many 503 answers it got first.
async fn deliver(http: &reqwest::Client, url: &str, auth: &str, body: &str, until: Instant) -> anyhow::Result<usize> {
    let mut refused = 0;
    loop {
        let resp = http
            .post(url)
            .header("content-type", "application/json")
            .header("authorization", auth)
            .body(body.to_owned())
            .send()
            .await;
        match resp.map(|r| r.status().as_u16()) {
            Ok(202) => return Ok(refused),
            Ok(503) => refused += 1,
            Ok(s) => bail!("webhook answered {s}"),
            Err(_) => {}
        }
        if Instant::now() > until {
            bail!("the webhook never accepted the event");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What the Lambda-mode worker did, once its event source stopped.
struct LambdaRun {
    invocations: usize,
    kills: u32,
    /// Invocations that ended in an error (a failed start): their batch
    /// comes back, as after a kill.
    errors: usize,
    output: String,
}

/// Lambda's SQS event source mapping over the copy queue, beside the
/// standalone worker: receives a batch, invokes the worker (killed at its
/// deadline by [`KillingRuntime`]), deletes what the answer does not report
/// failed, and after a kill or an error deletes nothing, so the whole batch
/// comes back after the queue's visibility timeout. It talks to LocalStack
/// directly (AWS's own side is not cut with the function's SQS access);
/// its own call failures are waited out, as AWS retries them. Runs until
/// `stop`, finishing the invocation under way.
async fn event_source(
    sqs: aws_sdk_sqs::Client,
    queue: String,
    mut function: KillingRuntime,
    stop: Arc<AtomicBool>,
    keep_log: PathBuf,
) -> LambdaRun {
    use crate::runtime_api::{queue_arn, sqs_record, Ended};
    let _kept = KeepLog { from: function.log_path().to_owned(), to: keep_log };
    // AWS wants a queue's visibility timeout at least the function's: the
    // copy queue's suits the standalone worker (which extends it), so the
    // batches taken here hide their messages for the function's timeout
    // and a cold start's worth more, as a queue made for Lambda would.
    let visibility = function.timeout().as_secs() as i32 + 5;
    let arn = queue_arn(&queue);
    let (mut invocations, mut errors) = (0, 0);
    while !stop.load(Ordering::SeqCst) {
        let received = sqs
            .receive_message()
            .queue_url(&queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(visibility)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await;
        let batch = match received {
            Ok(out) => out.messages.unwrap_or_default(),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        let event = serde_json::json!({ "Records": batch.iter().map(|m| sqs_record(m, &arn)).collect::<Vec<_>>() });
        invocations += 1;
        let answer = match function.invoke(event).await {
            Ended::Answered(answer) => answer,
            Ended::Killed => continue,
            Ended::Error(_) => {
                errors += 1;
                continue;
            }
        };
        let failed: HashSet<&str> = answer["batchItemFailures"]
            .as_array()
            .map(|a| a.iter().filter_map(|f| f["itemIdentifier"].as_str()).collect())
            .unwrap_or_default();
        for m in batch.iter().filter(|m| !failed.contains(m.message_id().unwrap_or_default())) {
            let receipt = m.receipt_handle().unwrap_or_default();
            for _ in 0..10 {
                if sqs.delete_message().queue_url(&queue).receipt_handle(receipt).send().await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    LambdaRun { invocations, kills: function.kills, errors, output: function.output() }
}

/// The last errors of the messages on the DLQ (a glance: they stay).
async fn dead_letter_errors(sqs: &aws_sdk_sqs::Client, dlq: &str) -> Vec<String> {
    let out = sqs
        .receive_message()
        .queue_url(dlq)
        .max_number_of_messages(10)
        .visibility_timeout(0)
        .message_attribute_names("All")
        .send()
        .await;
    let messages = out.map(|o| o.messages.unwrap_or_default()).unwrap_or_default();
    messages
        .iter()
        .map(|m| {
            m.message_attributes()
                .and_then(|a| a.get(relay::dead_letter::LAST_ERROR))
                .and_then(|v| v.string_value())
                .unwrap_or("(no error: moved by the redrive policy)")
                .to_owned()
        })
        .collect()
}

/// Copies the Lambda-mode worker's output beside the other logs when the
/// event source ends, also when a failed run drops it (the function's own
/// log goes with it).
struct KeepLog {
    from: PathBuf,
    to: PathBuf,
}

impl Drop for KeepLog {
    fn drop(&mut self) {
        let _ = std::fs::copy(&self.from, &self.to);
    }
}

/// Waits until the webhook on `port` answers its health check.
async fn healthy(http: &reqwest::Client, port: u16, webhook: &Process) -> anyhow::Result<()> {
    let started = Instant::now();
    while !http.get(format!("http://127.0.0.1:{port}/healthz")).send().await.is_ok_and(|r| r.status() == 200) {
        if started.elapsed() > Duration::from_secs(20) {
            bail!("webhook did not start: {}", webhook.all_logs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs the soak; `Err` says what did not hold.
pub async fn run(p: SoakParams) -> anyhow::Result<SoakReport> {
    let started = Instant::now();
    let until = started + p.deadline;
    let stack = Stack::load()?;
    let sqs = stack.sqs().await;
    // Short visibility: a killed worker's messages and the poison come back
    // quickly; tasks are idempotent, so an early redelivery costs HEADs.
    // Five deliveries before SQS dead-letters, as the template's default.
    let (queue, dlq) = create_queue_with_dlq(&sqs, "soak", 5, 8).await?;
    let endpoint = std::env::var("AWS_ENDPOINT_URL").context("AWS_ENDPOINT_URL (LocalStack)")?;
    let sqs_proxy = Proxy::to(&endpoint).await?;
    let source_proxy = Proxy::to(&stack.source_url).await?;
    let target_proxy = Proxy::to(&stack.target_url).await?;
    let parking = crate::stack::create_queue(&sqs, "soak-parking").await?;
    let (fake_503, fake_429) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    let project = format!("soak-{:08x}", rand::random::<u32>());

    let dir = std::env::temp_dir().join(&project);
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("config.yaml");
    // A colliding mapping with deletion: `<p>/app-N` and `<p>-twin/app-N`
    // both land in `<p>-merged/app-N` at cluster1.
    let merging = |project: &str, from: &str| {
        format!("  - name: merge-{from}\n    filters: {{ name: \"{from}/**\" }}\n    destination: {{ registry: cluster1-registry, namespace: {project}-merged, flatten: 1 }}\n    deletion: true\n")
    };
    let rule = |name: &str| {
        format!(
            "  - name: to-{name}\n    filters: {{ name: \"{project}/**\" }}\n    destination: {{ registry: {name} }}\n"
        )
    };
    // `extra`: the rules the configuration gains mid-run.
    let config_yaml = |extra: &str| {
        format!(
            "source:\n  url: {}\nwebhook:\n  auth_values_env: RELAY_WEBHOOK_AUTH\nregistries:\n  - name: cluster1-registry\n    url: {}\n    credentials: {{ username: {}, password_env: CLUSTER1_PASSWORD }}\n  - {{ name: fake-503, url: {} }}\n  - {{ name: fake-429, url: {} }}\nrules:\n{}{}{}{}{}{}{}",
            source_proxy.url(),
            target_proxy.url(),
            stack.target_user,
            fake_503.url,
            fake_429.url,
            rule("cluster1-registry"),
            rule("fake-503"),
            rule("fake-429"),
            merging(&project, &project),
            merging(&project, &format!("{project}-twin")),
            extra,
            // Settling delays and the parking lot's probe scaled down like
            // the queue's visibility (a probe every 2 s, not 20).
            "worker: { retry_base_seconds: 1, retry_max_seconds: 4, park_base_seconds: 1, park_max_seconds: 4, probe_seconds: 2 }\n",
        )
    };
    std::fs::write(&config, config_yaml(""))?;
    let port = 20_000 + (rand::random::<u16>() % 20_000);
    let envs = vec![
        ("RELAY_CONFIG".to_owned(), config.display().to_string()),
        ("RELAY_QUEUE_URL".to_owned(), queue.clone()),
        ("RELAY_LISTEN".to_owned(), format!("127.0.0.1:{port}")),
        ("AWS_ENDPOINT_URL".to_owned(), sqs_proxy.url()),
    ];
    let mut webhook = Process::start("webhook", envs.clone(), &dir)?;
    let mut worker_envs = envs;
    worker_envs.push(("RELAY_PARKING_QUEUE_URL".to_owned(), parking.clone()));
    let worker = Arc::new(std::sync::Mutex::new(Process::start("worker", worker_envs.clone(), &dir)?));
    // The same worker in its Lambda mode on the same queues and
    // configuration, killed at every deadline it does not answer by.
    let lambda_envs: Vec<(&str, String)> = worker_envs
        .iter()
        .filter(|(k, _)| k != "RELAY_LISTEN")
        .map(|(k, v)| (k.as_str(), v.clone()))
        .chain(std::iter::once(("RUST_LOG", "info".to_owned())))
        .collect();
    let function = KillingRuntime::start("worker", &lambda_envs, p.lambda_timeout).await;
    let stop_lambda = Arc::new(AtomicBool::new(false));
    let lambda = tokio::spawn(event_source(
        stack.sqs().await,
        queue.clone(),
        function,
        stop_lambda.clone(),
        dir.join("worker-lambda.log"),
    ));
    let http = reqwest::Client::new();
    healthy(&http, port, &webhook).await?;

    // Poison: an unknown task version, and a task for a registry the worker
    // does not know. Both fail on every delivery.
    let mut poison = HashSet::new();
    for k in 0..p.poison {
        let body = if k.is_multiple_of(2) {
            format!("{{\"version\": 99, \"soak\": {k}}}")
        } else {
            let digest = format!("sha256:{}", "ab".repeat(32));
            let mut t = serde_json::to_value(
                crate::planned_tasks(
                    &relay::Config::parse(&stack.config_yaml(crate::app::ALL_TO_CLUSTER1))?,
                    &stack,
                    "PUSH_ARTIFACT",
                    &format!("{project}/poison-{k}"),
                    "v1",
                    &digest,
                )
                .remove(0),
            )?;
            t["destination"]["registry"] = "nowhere".into();
            t.to_string()
        };
        sqs.send_message().queue_url(&queue).message_body(&body).send().await?;
        poison.insert(body);
    }

    // Faults at the destinations and on the way from the source.
    fake_503.inject(Op::PutUpload, Fault::Status(503, None), 3);
    fake_503.inject(Op::HeadManifest, Fault::Status(503, None), 2);
    fake_429.inject(Op::StartUpload, Fault::Status(429, Some("1".into())), 3);
    fake_429.inject(Op::PutManifest, Fault::Status(503, None), 2);
    source_proxy.reset_next(2, 4096);

    let source = stack.source();
    let base_repo = format!("{project}/base");
    let base_bytes = bytes::Bytes::from(vec![7u8; 256 * 1024]);
    let base = (base_repo.clone(), source.put_blob(&base_repo, base_bytes.clone()).await?, base_bytes.len());

    // The fault schedule follows the pushes' progress.
    let delivered = Arc::new(AtomicUsize::new(0));
    let faults = {
        let (delivered, sqs_proxy, worker, fake_503) =
            (delivered.clone(), sqs_proxy.clone(), worker.clone(), fake_503.clone());
        let (n, cut) = (p.pushes, p.sqs_cut);
        tokio::spawn(async move {
            while delivered.load(Ordering::SeqCst) < n / 3 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Refused for the first half, then silent (connections taken
            // and never answered, as when packets are dropped): a worker
            // whose settling waits on SQS past its deadline is killed.
            sqs_proxy.cut();
            tokio::time::sleep(cut / 2).await;
            sqs_proxy.restore();
            sqs_proxy.silence();
            tokio::time::sleep(cut / 2).await;
            sqs_proxy.restore();
            fake_503.inject(Op::PutUpload, Fault::Status(503, None), 3);
            while delivered.load(Ordering::SeqCst) < 2 * n / 3 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut w = worker.lock().unwrap();
            w.kill();
            w.spawn().expect("restart the worker");
        })
    };

    let url = format!("http://127.0.0.1:{port}/");
    let host = source_proxy.addr.to_string();
    let refused = AtomicUsize::new(0);
    let results: Vec<anyhow::Result<Pushed>> = futures_util::stream::iter(0..p.pushes)
        .map(|i| {
            let (source, p, base, http, url, host, refused, delivered, project) =
                (&source, &p, &base, &http, &url, &host, &refused, &delivered, &project);
            let auth = stack.webhook_auth.clone();
            async move {
                let pushed = push_one(source, project, i, p, base).await?;
                let body = harbor_push_event("PUSH_ARTIFACT", host, &pushed.repo, Some("v1"), &pushed.digest, now());
                refused.fetch_add(deliver(http, url, &auth, &body, until).await?, Ordering::Relaxed);
                delivered.fetch_add(1, Ordering::SeqCst);
                Ok(pushed)
            }
        })
        .buffer_unordered(6)
        .collect()
        .await;
    let mut pushed: Vec<Pushed> = results.into_iter().collect::<anyhow::Result<_>>()?;
    faults.await?;

    // A Harbor maintenance window, then the real destination down: pushes
    // announced while it lasts park their tasks until a probe finds the
    // registry answering again.
    for (k, proxy) in [&source_proxy, &target_proxy].into_iter().enumerate() {
        proxy.cut();
        for i in 0..3 {
            let img = push_one(&source, &project, 2000 + 10 * k + i, &p, &base).await?;
            let body = harbor_push_event("PUSH_ARTIFACT", &host, &img.repo, Some("v1"), &img.digest, now());
            refused.fetch_add(deliver(&http, &url, &stack.webhook_auth, &body, until).await?, Ordering::Relaxed);
            pushed.push(img);
        }
        tokio::time::sleep(p.outage).await;
        proxy.restore();
    }

    // A configuration reload: the configuration gains a rule for
    // `<p>-late/**` to the real target. The standalone binaries read their
    // configuration at start, so the webhook is restarted on it (and the
    // standalone worker after the late pushes arrived); the Lambda-mode
    // worker, alone on the queue meanwhile, must read it again by itself —
    // had it kept the old rules, it would refuse the new tasks as a mapping
    // no rule produces and dead-letter them.
    let late_project = format!("{project}-late");
    worker.lock().unwrap().stop();
    std::fs::write(
        &config,
        config_yaml(&format!(
            "  - name: late\n    filters: {{ name: \"{late_project}/**\" }}\n    destination: {{ registry: cluster1-registry }}\n"
        )),
    )?;
    webhook.stop();
    webhook.spawn()?;
    healthy(&http, port, &webhook).await?;
    let mut late = Vec::new();
    for k in 0..p.late {
        let img = push_one(&source, &late_project, 3000 + k, &p, &base).await?;
        let body = harbor_push_event("PUSH_ARTIFACT", &host, &img.repo, Some("v1"), &img.digest, now());
        refused.fetch_add(deliver(&http, &url, &stack.webhook_auth, &body, until).await?, Ordering::Relaxed);
        late.push(img);
    }
    let target = stack.target();
    loop {
        let mut arrived = 0;
        for img in &late {
            arrived += usize::from(target.digest_at(&img.repo, "v1").await?.as_deref() == Some(img.digest.as_str()));
        }
        if arrived == late.len() {
            break;
        }
        let d = queue_depth(&sqs, &dlq).await?;
        if d.0 + d.1 > p.poison as u64 || Instant::now() > until {
            bail!(
                "{arrived} of {} images under the reloaded rule arrived; the DLQ holds {:?}",
                late.len(),
                dead_letter_errors(&sqs, &dlq).await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    worker.lock().unwrap().spawn()?;

    // The colliding mapping: every 8th image also in `<p>-twin/`, then
    // deleted there (the merged copy must stay: `<p>/` still holds it); and
    // images only ever in `<p>-twin/`, pushed then deleted (they must go).
    let twin = |repo: &str| format!("{project}-twin/{}", repo.split_once('/').map_or(repo, |r| r.1));
    let (mut kept, mut solo) = (Vec::new(), Vec::new());
    for (k, img) in pushed.iter().step_by(8).enumerate() {
        clone_into(&source, &img.repo, &twin(&img.repo)).await?;
        let only = push_one(&source, &format!("{project}-twin"), 1000 + k, &p, &base).await?;
        for (repo, digest) in [(twin(&img.repo), &img.digest), (only.repo.clone(), &only.digest)] {
            let body = harbor_push_event("PUSH_ARTIFACT", &host, &repo, Some("v1"), digest, now());
            refused.fetch_add(deliver(&http, &url, &stack.webhook_auth, &body, until).await?, Ordering::Relaxed);
        }
        kept.push(img.clone());
        solo.push(only);
    }
    for (repo, digest) in
        kept.iter().map(|i| (twin(&i.repo), &i.digest)).chain(solo.iter().map(|i| (i.repo.clone(), &i.digest)))
    {
        source.delete_manifest(&repo, digest).await?;
        let body = harbor_push_event("DELETE_ARTIFACT", &host, &repo, Some("v1"), digest, now());
        refused.fetch_add(deliver(&http, &url, &stack.webhook_auth, &body, until).await?, Ordering::Relaxed);
    }

    // Converged: nothing left on the queue or parked, the poison in the DLQ.
    loop {
        let q = queue_depth(&sqs, &queue).await?;
        let d = queue_depth(&sqs, &dlq).await?;
        let parked = queue_depth(&sqs, &parking).await?;
        if q == (0, 0, 0) && parked == (0, 0, 0) && d.0 + d.1 >= p.poison as u64 {
            break;
        }
        if Instant::now() > until {
            bail!("not converged in time: queue {q:?}, parked {parked:?}, DLQ {d:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker.lock().unwrap().stop();
    webhook.stop();
    stop_lambda.store(true, Ordering::SeqCst);
    let lambda = lambda.await?;
    let elapsed = started.elapsed();

    // Every destination equals the source, digest by digest.
    let destinations = [
        ("cluster1-registry", stack.target()),
        ("fake-503", PlainRegistry::new(&fake_503.url, None)),
        ("fake-429", PlainRegistry::new(&fake_429.url, None)),
    ];
    for img in &pushed {
        let want = source.tree(&img.repo, "v1").await?;
        if !want.self_consistent() || want.manifests.get("v1").map(|m| &m.1) != Some(&img.digest) {
            bail!("{} changed at the source", img.repo);
        }
        for (name, reg) in &destinations {
            let got = reg.tree(&img.repo, "v1").await.with_context(|| format!("{}:v1 at {name}", img.repo))?;
            if got != want {
                bail!("{}:v1 at {name} differs from the source", img.repo);
            }
        }
    }

    // The rule added mid-run: its images at the target, as at the source,
    // and nowhere else.
    for img in &late {
        let want = source.tree(&img.repo, "v1").await?;
        if target.tree(&img.repo, "v1").await.with_context(|| format!("{}:v1 at cluster1", img.repo))? != want {
            bail!("{}:v1 (the reloaded rule's) at cluster1 differs from the source", img.repo);
        }
        for (name, reg) in &destinations[1..] {
            if reg.get_manifest(&img.repo, "v1").await?.is_some() {
                bail!("{}:v1 is at {name}, which no rule maps it to", img.repo);
            }
        }
    }

    // The merged destination holds exactly what its feeding sources hold:
    // every `<p>/` image (deleted from `<p>-twin/` or not), no twin-only one.
    let merged = |repo: &str| format!("{project}-merged/{}", repo.split_once('/').map_or(repo, |r| r.1));
    let mut wrongful_deletes = 0;
    for img in &pushed {
        match target.get_manifest(&merged(&img.repo), "v1").await? {
            Some((_, bytes)) if crate::plain::sha256(&bytes) == img.digest => {}
            Some(_) => bail!("{} at cluster1 holds another digest", merged(&img.repo)),
            None => wrongful_deletes += 1,
        }
    }
    if wrongful_deletes > 0 {
        bail!("{wrongful_deletes} images deleted from the merged destination while a source still held them");
    }
    for img in &solo {
        if target.get_manifest(&merged(&img.repo), &img.digest).await?.is_some() {
            bail!("{} was deleted from every source but stays at {}", img.repo, merged(&img.repo));
        }
    }

    // The DLQ holds exactly the poison, each once, with its last error:
    // every message is read (received ones stay hidden for a minute) until
    // a receive comes back empty, so a duplicate dead letter is counted.
    let mut dead: Vec<(String, Option<String>)> = Vec::new();
    for _ in 0..20 {
        let out = sqs
            .receive_message()
            .queue_url(&dlq)
            .max_number_of_messages(10)
            .visibility_timeout(60)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await?;
        if out.messages().is_empty() && dead.len() >= p.poison {
            break;
        }
        for m in out.messages() {
            let error = m
                .message_attributes()
                .and_then(|a| a.get(relay::dead_letter::LAST_ERROR))
                .and_then(|v| v.string_value())
                .map(str::to_owned);
            dead.push((m.body().unwrap_or_default().to_owned(), error));
        }
    }
    let dead_bodies: HashSet<String> = dead.iter().map(|(b, _)| b.clone()).collect();
    if dead.len() != poison.len() || dead_bodies != poison {
        bail!(
            "the DLQ holds {} messages, not exactly the {} poison ones once each: {dead_bodies:?}",
            dead.len(),
            poison.len()
        );
    }
    // The worker dead-letters with the error; only if its send to the DLQ
    // failed (SQS cut at that instant) does SQS's redrive move a message
    // without it — so at least one must carry it, and each that does, the
    // right one.
    let with_error: Vec<&String> = dead.iter().filter_map(|(_, e)| e.as_ref()).collect();
    if with_error.is_empty() {
        bail!("no dead letter carries its last error");
    }
    if let Some(e) = with_error.iter().find(|e| !(e.contains("version 99") || e.contains("\"nowhere\""))) {
        bail!("a dead letter carries an unexpected error: {e}");
    }

    // What the workers' logs say (the standalone one's and the Lambda-mode
    // one's together: they share the queues).
    let worker_logs = format!("{}\n{}", worker.lock().unwrap().all_logs(), lambda.output);
    let logs = format!("{worker_logs}\n{}", webhook.all_logs());
    // Both outages parked tasks, and the probes released them.
    for (what, line) in [
        ("no task was parked during the outages", "task parked until its registry answers"),
        ("no probe released parked tasks", "registry answers again: its parked tasks are back on the copy queue"),
    ] {
        if !worker_logs.contains(line) {
            bail!("{what}");
        }
    }
    let leaks = crate::leaked_secrets(&logs, &stack, &[]);
    if !leaks.is_empty() {
        bail!("in the logs: {leaks:?}");
    }
    // The Lambda-mode worker read the changed configuration by itself.
    if !lambda.output.contains("configuration changed: read again") {
        bail!("the Lambda-mode worker never read the changed configuration again");
    }
    if lambda.errors > 0 {
        bail!("{} invocations of the Lambda-mode worker ended in an error", lambda.errors);
    }
    let parse =
        |text: &str| -> Vec<serde_json::Value> { text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect() };
    let lines = parse(&worker_logs);
    let lambda_lines = parse(&lambda.output);
    let task_id = |l: &serde_json::Value| l["task_id"].as_str().unwrap_or_default().to_owned();
    let is_done = |l: &&serde_json::Value| l["message"] == "task done";
    let done: Vec<&serde_json::Value> = lines.iter().filter(is_done).collect();
    let unique: HashSet<String> = done.iter().map(|l| task_id(l)).collect();
    // Bytes copied by a task's runs past its largest one: the two workers'
    // logs carry no common order, so which run came first is not known,
    // only that all but one should have found everything present.
    let mut per_task: std::collections::HashMap<String, Vec<u64>> = Default::default();
    for l in &done {
        per_task.entry(task_id(l)).or_default().push(l["bytes"].as_u64().unwrap_or(0));
    }
    let duplicate_bytes: u64 =
        per_task.values().map(|b| b.iter().sum::<u64>() - b.iter().max().copied().unwrap_or(0)).sum();
    // Nothing lost on the way: every task a worker took up (any line of
    // its naming the task) was finished by one of them, the poison aside.
    // A message lost with its task unfinished — a killed batch dropped, a
    // continuation or a parked task never sent — leaves its task here.
    let poison_ids: HashSet<String> = poison.iter().filter_map(|b| relay::Task::decode(b).ok()).map(|t| t.id).collect();
    let unfinished: Vec<String> = lines
        .iter()
        .map(task_id)
        .filter(|id| !id.is_empty() && !unique.contains(id) && !poison_ids.contains(id))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if !unfinished.is_empty() {
        bail!("{} tasks were taken up and never finished: {unfinished:?}", unfinished.len());
    }
    let expected = pushed.len() * destinations.len() + late.len();
    if unique.len() < expected {
        bail!("{} tasks done, expected {expected}", unique.len());
    }
    let mut latencies: Vec<u64> =
        done.iter().filter(|l| l["outcome"] == "copied").filter_map(|l| l["push_to_replicated_ms"].as_u64()).collect();
    latencies.sort_unstable();
    let report = SoakReport {
        pushes: pushed.len(),
        destinations: destinations.len(),
        tasks_done: unique.len(),
        deliveries_failed: lines
            .iter()
            .filter(|l| {
                l["message"] == "task failed" || l["message"] == "message is not a task this worker understands"
            })
            .count(),
        duplicates: done.len() - unique.len(),
        duplicate_bytes,
        bytes: done.iter().filter_map(|l| l["bytes"].as_u64()).sum(),
        retries: lines.iter().filter(|l| l["_aws"].is_object()).filter_map(|l| l["Retries"].as_f64()).sum::<f64>()
            as u64,
        webhook_503: refused.load(Ordering::Relaxed),
        source_resets: source_proxy.resets_done(),
        worker_kills: worker.lock().unwrap().kills,
        dead_letters: dead.len(),
        collisions_kept: kept.len(),
        collisions_deleted: solo.len(),
        lambda_invocations: lambda.invocations,
        lambda_kills: lambda.kills,
        lambda_cuts: lambda_lines
            .iter()
            .filter(|l| {
                l["message"] == "task failed"
                    && l["error"].as_str().is_some_and(|e| e.contains("cut at the invocation deadline"))
            })
            .count(),
        lambda_tasks_done: lambda_lines.iter().filter(is_done).map(task_id).collect::<HashSet<_>>().len(),
        late: late.len(),
        latency_p50_ms: percentile(&latencies, 0.5),
        latency_p99_ms: percentile(&latencies, 0.99),
        elapsed,
    };
    if report.duplicate_bytes != 0 {
        bail!("duplicate runs copied {} bytes again", report.duplicate_bytes);
    }
    if report.webhook_503 == 0 {
        bail!("the webhook never answered 503 while SQS was cut");
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(report)
}
