//! Many small images over shared base layers: the whole pipeline against
//! `skopeo copy`, and against the destination registry's own floor for the
//! same job in the same run.
//!
//! Two settings. First every process on all of the machine's cores, as they
//! come. Then the destination registry on a core of its own and everything
//! else (this process with the webhook and worker in it, the source
//! registry, LocalStack) on the others, in rounds: as deployed, the
//! registry's CPU is not shared with Harbor, SQS or the worker, so its floor
//! is what the relay can be held to. On a small machine the first setting
//! measures how the processes share the cores as much as the relay.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use relay_tests::app::{App, AppBuilder};
use relay_tests::{image, Stack};

use crate::copy::{
    blobs_of, cores, curl_all, measure, median, rounds, run_id, skopeo, stack_pid, Cpu, HARBOR_JOB_WORKERS, MIB,
};

/// 20 images sharing two large base layers, 20 repositories of one project.
pub async fn run() -> anyhow::Result<()> {
    let stack = Stack::load()?;
    let id = run_id();
    let project = format!("shared-{id}");
    let unique_bytes = shared_base_images(&stack, &project).await?;
    // skopeo, one image after another.
    let skopeo_cpu = Cpu::now()?;
    let started = Instant::now();
    let mut skopeo_rss = 0;
    for i in 0..20 {
        let m = measure(skopeo(&stack, &format!("{project}/app-{i}:v1"), &format!("skopeo-{id}/app-{i}:v1")))?;
        skopeo_rss = skopeo_rss.max(m.max_rss_kib);
    }
    let skopeo_wall = started.elapsed();
    let skopeo_cpu = Cpu::now()?.since(skopeo_cpu);
    // The raw transfer under any copy of them: the two base layers alone,
    // piped by curl into a repository of their own.
    let (first, raw) = (format!("{project}/app-0"), format!("raw-{id}/base"));
    let job = SharedJob::read(&stack, &project).await?;
    let base: Vec<_> = job.base.iter().map(|b| (b.digest.clone(), b.bytes.len() as u64)).collect();
    let raw_base = measure(curl_all(&stack, &first, std::slice::from_ref(&raw), &base))?;
    for (d, _) in &base {
        anyhow::ensure!(stack.target().blob_exists(&raw, d).await?, "curl did not copy {d}");
    }

    let floor = job.timed(&stack, &format!("fewest-{id}"), Floor::Together).await?;
    let base_first = job.timed(&stack, &format!("fewest-first-{id}"), Floor::BaseFirst).await?;
    let reading = job.timed(&stack, &format!("fewest-source-{id}"), Floor::FromSource).await?;
    let relay = job.pipeline("relay").await?;

    println!("## Shared base layers (`make bench`, relay-bench shared)\n");
    println!("20 images in 20 repositories of one project, sharing two 64 MiB base layers (plus 1 MiB of their own each), into a fresh target. Every process on the machine's {} cores:\n", cores());
    println!("| tool | wall | × skopeo |\n|---|---|---|");
    let skopeo_s = skopeo_wall.as_secs_f64();
    let row = |name: &str, wall: Duration| {
        println!("| {name} | {:.2} s | {:.2} |", wall.as_secs_f64(), wall.as_secs_f64() / skopeo_s)
    };
    row(&format!("skopeo copy, one by one (peak RSS {:.1} MiB)", skopeo_rss as f64 / 1024.0), skopeo_wall);
    row("harbor-relay: 20 webhooks → LocalStack SQS → worker", relay.wall);
    row("raw parallel curl GET→PUT of the two base layers alone", raw_base.wall);
    row("**the floor**: the destination's side alone in the fewest requests (a `POST` and a `PUT` per missing blob, then 2 mounts and the manifest per image), every byte in memory, all at once", floor.wall);
    row("the same, the base layers first, then the rest", base_first.wall);
    row("the same, each manifest and blob read from the source once and streamed into its upload (any replicator's least: no check, no queue)", reading.wall);
    let reports = &relay.reports;
    println!(
        "\nTimeline of the pipeline run: the 20 webhooks ({HARBOR_JOB_WORKERS} at a time) answered by {:.2} s; the first task done at {:.2} s; the 10th at {:.2} s; the 20th at {:.2} s (each after its tag is served; all 20 manifests checked at the target afterwards).",
        relay.sent.as_secs_f64(),
        reports[0].as_secs_f64(),
        reports[9].as_secs_f64(),
        reports[19].as_secs_f64()
    );
    let cores = cores();
    let share = |c: &Cpu, wall: Duration| 100.0 * c.busy / (cores as f64 * wall.as_secs_f64());
    println!(
        "\nCPU over each run (from /proc), on this machine's {cores} cores: skopeo's run {:.0} % busy ({:.1} s; the destination registry {:.1} s, the source {:.1} s); the pipeline's {:.0} % ({:.1} s; iowait {:.1} s; the destination registry {:.1} s, the source {:.1} s, LocalStack {:.1} s, the webhook and worker the rest).",
        share(&skopeo_cpu, skopeo_wall),
        skopeo_cpu.busy,
        skopeo_cpu.target,
        skopeo_cpu.source,
        share(&relay.cpu, relay.wall),
        relay.cpu.busy,
        relay.cpu.iowait,
        relay.cpu.target,
        relay.cpu.source,
        relay.cpu.localstack,
    );
    // What the pipeline's work alone needs of the cores, beside what the
    // floor's needed.
    let floor_s = floor.wall.as_secs_f64();
    println!(
        "\nAgainst the floor: its run kept the cores {:.0} % busy ({:.2} s; the destination registry {:.2} s, this process {:.2} s). The pipeline's {:.2} s add the source's reads ({:.2} s), LocalStack ({:.2} s) and the relay's part in this process ({:.2} s: the source's bytes read and hashed, the webhook, the SQS calls) beside the destination registry's {:.2} s: on {cores} cores, with no core ever idle, {:.2} s, {:.2} × the floor's time; the pipeline took {:.2} ×.",
        share(&floor.cpu, floor.wall),
        floor.cpu.busy,
        floor.cpu.target,
        floor.cpu.own,
        relay.cpu.busy,
        relay.cpu.source,
        relay.cpu.localstack,
        relay.cpu.own,
        relay.cpu.target,
        relay.cpu.busy / cores as f64,
        relay.cpu.busy / cores as f64 / floor_s,
        relay.wall.as_secs_f64() / floor_s
    );
    println!(
        "\nThe floor reading the source: {:.2} s, {:.2} × the floor's time, the cores {:.0} % busy ({:.2} s; the destination registry {:.2} s, the source {:.2} s, this process {:.2} s). The pipeline took {:.2} × that.",
        reading.wall.as_secs_f64(),
        reading.wall.as_secs_f64() / floor_s,
        share(&reading.cpu, reading.wall),
        reading.cpu.busy,
        reading.cpu.target,
        reading.cpu.source,
        reading.cpu.own,
        relay.wall.as_secs_f64() / reading.wall.as_secs_f64()
    );
    println!(
        "\nharbor-relay sent {} bytes for {unique_bytes} unique bytes ({:.3}×): {} blobs uploaded, {} mounted, {} skipped; {} requests to the destination ({FEWEST_REQUESTS} in the floor's run, {:.3} ×), {} to the source.",
        relay.bytes,
        relay.bytes as f64 / unique_bytes as f64,
        relay.blobs[0],
        relay.blobs[1],
        relay.blobs[2],
        relay.target_requests,
        relay.target_requests as f64 / FEWEST_REQUESTS as f64,
        relay.source_requests
    );
    if cores >= 2 {
        own_core(&stack, &job, &id).await?;
    }
    Ok(())
}

/// The floor, the floor reading the source and the pipeline in rounds (the
/// order reversed each round), the destination registry on a core of its
/// own; the median of each round's ratio.
async fn own_core(stack: &Stack, job: &SharedJob, id: &str) -> anyhow::Result<()> {
    // One round's ratio spans 0.9–1.2 ×: the floor's own time moves by
    // 10–20 % between runs.
    let rounds = rounds(5);
    let pinned = Pinned::apply()?;
    let mut runs = Vec::new();
    for r in 0..rounds {
        let (floor_repo, reading_repo) = (format!("fewest-{id}-{r}"), format!("fewest-source-{id}-{r}"));
        let floor = || job.timed(stack, &floor_repo, Floor::Together);
        let reading = || job.timed(stack, &reading_repo, Floor::FromSource);
        let relay = || job.pipeline(format!("relay-{r}"));
        runs.push(if r % 2 == 0 {
            let (f, s) = (floor().await?, reading().await?);
            (f, s, relay().await?)
        } else {
            let p = relay().await?;
            let s = reading().await?;
            (floor().await?, s, p)
        });
    }
    drop(pinned);
    println!(
        "\n### The destination registry on a core of its own\n\nThe destination registry on core {}, every other process (this one with the webhook and worker, the source registry, LocalStack) on the rest; {rounds} rounds, the order reversed each round, each into fresh repositories:\n",
        cores() - 1
    );
    println!("| round | the floor | its registry's CPU | the floor reading the source | the pipeline | its registry's CPU | pipeline ÷ floor | pipeline ÷ floor reading the source |\n|---|---|---|---|---|---|---|---|");
    let (mut to_floor, mut to_reading) = (Vec::new(), Vec::new());
    for (r, (floor, reading, relay)) in runs.iter().enumerate() {
        let (f, s, p) = (floor.wall.as_secs_f64(), reading.wall.as_secs_f64(), relay.wall.as_secs_f64());
        to_floor.push(p / f);
        to_reading.push(p / s);
        println!(
            "| {} | {f:.2} s | {:.2} s | {s:.2} s | {p:.2} s | {:.2} s | {:.2} | {:.2} |",
            r + 1,
            floor.cpu.target,
            relay.cpu.target,
            p / f,
            p / s
        );
    }
    println!(
        "\nMedian: the pipeline took {:.2} × the floor's time, and {:.2} × the floor reading the source; {} requests to the destination, {:.3} × the floor's {FEWEST_REQUESTS}.",
        median(&mut to_floor),
        median(&mut to_reading),
        runs[0].2.target_requests,
        runs[0].2.target_requests as f64 / FEWEST_REQUESTS as f64
    );
    Ok(())
}

/// The destination registry pinned to the machine's last core and the rest
/// of the run (this process, the source registry, LocalStack: every thread
/// of each) to the other cores, until dropped. `taskset` (util-linux).
struct Pinned {
    pids: Vec<u32>,
    all: String,
}

impl Pinned {
    fn apply() -> anyhow::Result<Pinned> {
        let last = cores() - 1;
        let rest = if last == 1 { "0".to_owned() } else { format!("0-{}", last - 1) };
        let target = stack_pid("target")?;
        let others = [stack_pid("source")?, stack_pid("localstack")?, std::process::id()];
        let pinned = Pinned { pids: [target].into_iter().chain(others).collect(), all: format!("0-{last}") };
        taskset(&last.to_string(), target)?;
        for pid in others {
            taskset(&rest, pid)?;
        }
        Ok(pinned)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        for &pid in &self.pids {
            if let Err(e) = taskset(&self.all, pid) {
                eprintln!("could not give process {pid} every core back: {e:#}");
            }
        }
    }
}

fn taskset(cpus: &str, pid: u32) -> anyhow::Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .context("taskset (util-linux)")?;
    anyhow::ensure!(status.success(), "taskset -c {cpus} {pid}: {status}");
    Ok(())
}

/// Requests of [`SharedJob::fewest_requests`]: a `POST` and a `PUT` for
/// each of the 42 blobs, 2 mounts for each of 19 images, 20 manifests.
const FEWEST_REQUESTS: u64 = 2 * 42 + 2 * 19 + 20;

/// A run's wall time and the CPU used over it.
struct Timed {
    wall: Duration,
    cpu: Cpu,
}

/// One run of the whole pipeline over the job.
struct PipelineRun {
    wall: Duration,
    cpu: Cpu,
    /// When the last webhook was answered.
    sent: Duration,
    /// When each task reported.
    reports: Vec<Duration>,
    target_requests: u64,
    source_requests: u64,
    bytes: u64,
    /// Blobs uploaded, mounted, skipped.
    blobs: [u64; 3],
}

/// The 20 shared-base images (as pushed by [`shared_base_images`]), every
/// byte in memory.
struct SharedJob {
    images: Vec<SharedImage>,
    /// The two base layers, as `images[0]` holds them at the source.
    base: Vec<Blob>,
}

struct SharedImage {
    /// Its repository at the source.
    from: String,
    /// Its name under the target's repository (`app-N`).
    name: String,
    media_type: String,
    manifest: Vec<u8>,
    /// The base layers' digests.
    base: Vec<String>,
    /// Its own blobs (config and layer).
    own: Vec<Blob>,
}

struct Blob {
    digest: String,
    bytes: bytes::Bytes,
}

/// How [`SharedJob::fewest_requests`] feeds the destination.
#[derive(Clone, Copy, PartialEq)]
enum Floor {
    /// Every byte from memory, all uploads at once: the destination's own
    /// floor, the one the goal is against.
    Together,
    /// From memory, the base layers' uploads ended before any other
    /// request starts.
    BaseFirst,
    /// As `Together`, but each manifest and each blob read from the source
    /// once and streamed into its upload: the least any replicator reading
    /// Harbor does, with no check and no queue.
    FromSource,
}

impl SharedJob {
    async fn read(stack: &Stack, project: &str) -> anyhow::Result<SharedJob> {
        let source = stack.source();
        let (mut images, mut base) = (Vec::new(), Vec::new());
        for i in 0..20 {
            let from = format!("{project}/app-{i}");
            let (media_type, manifest) = source.get_manifest(&from, "v1").await?.context("manifest")?;
            let (mut shared, mut own) = (Vec::new(), Vec::new());
            for (digest, size) in blobs_of(&manifest)? {
                let bytes = || async {
                    anyhow::Ok(bytes::Bytes::from(source.get_blob(&from, &digest).await?.context("blob")?))
                };
                if size == (64 * MIB) as u64 {
                    if i == 0 {
                        base.push(Blob { bytes: bytes().await?, digest: digest.clone() });
                    }
                    shared.push(digest);
                } else {
                    own.push(Blob { bytes: bytes().await?, digest });
                }
            }
            images.push(SharedImage { name: format!("app-{i}"), from, media_type, manifest, base: shared, own });
        }
        anyhow::ensure!(base.len() == 2, "two base layers expected, found {}", base.len());
        Ok(SharedJob { images, base })
    }

    /// [`SharedJob::fewest_requests`] with the CPU it used.
    async fn timed(&self, stack: &Stack, into: &str, floor: Floor) -> anyhow::Result<Timed> {
        let before = Cpu::now()?;
        let wall = self.fewest_requests(stack, into, floor).await?;
        Ok(Timed { wall, cpu: Cpu::now()?.since(before) })
    }

    /// The destination's side of the job into `into/app-*`, in the fewest
    /// requests the protocol allows: a `POST` and a `PUT` for each blob the
    /// destination lacks (the base layers once), then each image's two
    /// mounts at once and its manifest. With the bytes in memory no source
    /// read and no client logic is in the time: it is what this job costs
    /// the registry. [`Floor::FromSource`] adds what reading Harbor costs.
    async fn fewest_requests(&self, stack: &Stack, into: &str, floor: Floor) -> anyhow::Result<Duration> {
        use futures_util::future::try_join_all;
        let (source, target) = (&stack.source(), &stack.target());
        let repos: Vec<String> = self.images.iter().map(|image| format!("{into}/{}", image.name)).collect();
        let first = &repos[0];
        let started = Instant::now();
        if floor == Floor::FromSource {
            // A replicator learns the blobs from the manifests.
            try_join_all(self.images.iter().map(|image| async move {
                let (_, bytes) = source.get_manifest(&image.from, &image.digest()).await?.context("manifest")?;
                anyhow::ensure!(bytes == image.manifest, "{}: another manifest at the source", image.from);
                anyhow::Ok(())
            }))
            .await?;
        }
        let upload = |repo: &str, from: &str, blob: &Blob| {
            let (repo, from) = (repo.to_owned(), from.to_owned());
            let (digest, bytes) = (blob.digest.clone(), blob.bytes.clone());
            async move {
                let body = match floor {
                    Floor::FromSource => source.blob_body(&from, &digest).await?,
                    Floor::Together | Floor::BaseFirst => bytes.into(),
                };
                target.put_blob_body(&repo, &digest, body).await
            }
        };
        let base_uploads = try_join_all(self.base.iter().map(|b| upload(first, &self.images[0].from, b)));
        let own_uploads = try_join_all(
            self.images
                .iter()
                .zip(&repos)
                .flat_map(|(image, repo)| image.own.iter().map(|b| upload(repo, &image.from, b))),
        );
        if floor == Floor::BaseFirst {
            base_uploads.await?;
            own_uploads.await?;
        } else {
            futures_util::future::try_join(base_uploads, own_uploads).await?;
        }
        try_join_all(self.images.iter().zip(&repos).map(|(image, repo)| async move {
            if repo != first {
                try_join_all(image.base.iter().map(|d| target.mount_blob(repo, d, first))).await?;
            }
            target.put_manifest(repo, "v1", &image.media_type, &image.manifest).await
        }))
        .await?;
        Ok(started.elapsed())
    }

    /// The whole pipeline over the job into `namespace/` at the target: 20
    /// webhook deliveries → SQS → worker, a worker of its own (nothing in
    /// its ledger); every manifest checked at the target afterwards.
    async fn pipeline(&self, namespace: impl AsRef<str>) -> anyhow::Result<PipelineRun> {
        let namespace = namespace.as_ref();
        let app = app(namespace).await;
        let worker = app.worker.as_ref().expect("worker");
        let stats = &worker.stats;
        let to_target = || worker.destinations.get("cluster1-registry").map_or(0, |d| d.client.requests());
        let (target_requests, source_requests) = (to_target(), worker.source.requests());
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let cpu = Cpu::now()?;
        let started = Instant::now();
        // Harbor's job service delivers webhooks on its worker pool
        // (`jobservice.max_job_workers`, 10 by default), not one by one.
        // Its payload carries the digest.
        let statuses: Vec<u16> = futures_util::stream::iter(&self.images)
            .map(|image| async { app.push_event(&image.from, Some("v1"), &image.digest()).await.0 })
            .buffer_unordered(HARBOR_JOB_WORKERS)
            .collect()
            .await;
        anyhow::ensure!(statuses.iter().all(|&s| s == 202), "webhook answers: {statuses:?}");
        let sent = started.elapsed();
        // When each task reported (after its tag is served): the worker's own
        // count, read without loading the target (polling its manifests would
        // put a bcrypt check per request on the same cores).
        let reports = crate::reports(|| load(&stats.tasks_succeeded), 20, started).await?;
        let wall = started.elapsed();
        let cpu = Cpu::now()?.since(cpu);
        let run = PipelineRun {
            wall,
            cpu,
            sent,
            reports,
            target_requests: to_target() - target_requests,
            source_requests: worker.source.requests() - source_requests,
            bytes: load(&stats.bytes),
            blobs: [load(&stats.blobs_copied), load(&stats.blobs_mounted), load(&stats.blobs_skipped)],
        };
        let target = app.stack.target();
        for image in &self.images {
            let (_, bytes) = target
                .get_manifest(&format!("{namespace}/{}", image.from), "v1")
                .await?
                .context("not at the target")?;
            anyhow::ensure!(bytes == image.manifest, "{namespace}/{}: another manifest at the target", image.from);
        }
        Ok(run)
    }
}

impl SharedImage {
    fn digest(&self) -> String {
        relay_tests::plain::sha256(&self.manifest)
    }
}

/// The webhook and a worker polling LocalStack's queue, replicating every
/// push into `namespace/` at the target (`RELAY_BENCH_WORKER`: the
/// worker's settings under test, e.g. `task_concurrency: 20`).
async fn app(namespace: &str) -> App {
    let mut rules = format!(
        "  - name: all\n    destination: {{ registry: cluster1-registry, namespace: {namespace}, flatten: 0 }}\n"
    );
    if let Ok(settings) = std::env::var("RELAY_BENCH_WORKER") {
        rules.push_str(&format!("worker: {{ {settings} }}\n"));
    }
    AppBuilder::rules(&rules).with_worker().spawn().await
}

/// Pushes `project/app-0` … `app-19:v1`: two 64 MiB base layers shared by
/// all (mounted, as a registry stores them), 1 MiB and a config of their
/// own each. Returns the unique bytes.
pub async fn shared_base_images(stack: &Stack, project: &str) -> anyhow::Result<u64> {
    let source = stack.source();
    eprintln!("generating 20 images over two 64 MiB base layers…");
    let base = [random_blob(64 * MIB), random_blob(64 * MIB)];
    let first = format!("{project}/app-0");
    let mut base_digests = Vec::new();
    for b in &base {
        base_digests.push(source.put_blob(&first, b.clone()).await?);
    }
    let mut unique_bytes = (2 * 64 * MIB) as u64;
    for i in 0..20 {
        let repo = format!("{project}/app-{i}");
        if i > 0 {
            for d in &base_digests {
                source.mount_blob(&repo, d, &first).await?;
            }
        }
        let own = random_blob(MIB);
        let own_digest = source.put_blob(&repo, own.clone()).await?;
        let config = serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, "n": i}).to_string();
        let config_digest = source.put_blob(&repo, config.clone().into_bytes().into()).await?;
        unique_bytes += (own.len() + config.len()) as u64;
        let layer = |d: &String, s: usize| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s});
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": image::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [layer(&base_digests[0], 64 * MIB), layer(&base_digests[1], 64 * MIB), layer(&own_digest, MIB)],
        })
        .to_string();
        source.put_manifest(&repo, "v1", image::OCI_MANIFEST, manifest.as_bytes()).await?;
    }

    Ok(unique_bytes)
}

fn random_blob(len: usize) -> bytes::Bytes {
    use rand::RngCore;
    let mut v = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut v);
    v.into()
}
