//! Copy figures, each against `skopeo copy` (and a raw parallel curl
//! GET→PUT of the same blobs) in the same run, on the real registries.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use relay::secrets::SecretSource;
use relay::task::{Action, CopyOptions, DestinationArtifact, EventRef, SourceArtifact, Task, TASK_VERSION};
use relay::worker::Message;
use relay::{bootstrap, Config};
use relay_tests::{image, ImageKind, Stack};

pub(crate) const MIB: usize = 1024 * 1024;

/// Harbor's default `jobservice.max_job_workers`: webhooks of concurrent
/// pushes are delivered this many at a time.
pub(crate) const HARBOR_JOB_WORKERS: usize = 10;

/// Wall time, peak RSS (KiB) and stdout of a child process.
pub(crate) struct Measured {
    pub(crate) wall: Duration,
    /// VmHWM of the child's own memory image, polled from /proc while it
    /// runs (getrusage's ru_maxrss would include the pre-exec parent's).
    pub(crate) max_rss_kib: i64,
    /// The anonymous part of the resident set (heap, stacks), its largest
    /// sample: VmHWM also counts the binary's own code pages, some 10 MiB
    /// here, and how many of those a run maps moves between builds.
    max_anon_kib: i64,
    stdout: String,
}

pub(crate) fn vm_hwm_kib(pid: u32) -> Option<i64> {
    status_kib(pid, "VmHWM:")
}

/// A KiB figure of `/proc/PID/status`.
pub(crate) fn status_kib(pid: u32, field: &str) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU seconds used so far, read together: by the whole machine (`busy`:
/// every state but idle and iowait; `iowait` apart), and by the stack's
/// processes (`.local/stack/NAME.pid`; 0 for one that is not running).
/// Over a run, they say whether the cores were the limit, and whose work
/// filled them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cpu {
    pub(crate) busy: f64,
    pub(crate) iowait: f64,
    pub(crate) target: f64,
    pub(crate) source: f64,
    pub(crate) localstack: f64,
    pub(crate) own: f64,
}

impl Cpu {
    pub(crate) fn now() -> anyhow::Result<Cpu> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let line = stat.lines().next().context("/proc/stat")?;
        let ticks: Vec<f64> = line.split_whitespace().skip(1).map(|t| t.parse().unwrap_or(0.0)).collect();
        anyhow::ensure!(ticks.len() >= 8, "/proc/stat: {line}");
        // user nice system idle iowait irq softirq steal
        let busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7];
        Ok(Cpu {
            busy: busy / clock_ticks(),
            iowait: ticks[4] / clock_ticks(),
            target: process_cpu("target")?,
            source: process_cpu("source")?,
            localstack: process_cpu("localstack")?,
            own: own_cpu()?,
        })
    }

    /// What was used since `before`.
    pub(crate) fn since(self, before: Cpu) -> Cpu {
        Cpu {
            busy: self.busy - before.busy,
            iowait: self.iowait - before.iowait,
            target: self.target - before.target,
            source: self.source - before.source,
            localstack: self.localstack - before.localstack,
            own: self.own - before.own,
        }
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// The machine's cores, whatever this process's affinity.
pub(crate) fn cores() -> usize {
    // SAFETY: sysconf only reads a configuration value.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(online).unwrap_or(1).max(1)
}

/// How many times a comparison is run (`RELAY_BENCH_ROUNDS`, else
/// `default`): one run's ratio moves with the machine's state by more than
/// a 5 % goal, the median of several less.
pub(crate) fn rounds(default: usize) -> usize {
    std::env::var("RELAY_BENCH_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(default).max(1)
}

/// The middle of `ratios` (the upper one of an even count).
pub(crate) fn median(ratios: &mut [f64]) -> f64 {
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

/// CPU seconds the stack's process `name` has used so far (its threads
/// included), 0 when it is not running.
fn process_cpu(name: &str) -> anyhow::Result<f64> {
    let Ok(pid) = stack_pid(name) else { return Ok(0.0) };
    Ok(stat_cpu(&format!("/proc/{pid}/stat"))?.unwrap_or(0.0))
}

/// The pid of the stack's process `name` (`.local/stack/NAME.pid`).
pub(crate) fn stack_pid(name: &str) -> anyhow::Result<u32> {
    let path = format!("{}/../.local/stack/{name}.pid", env!("CARGO_MANIFEST_DIR"));
    Ok(std::fs::read_to_string(&path).with_context(|| path.clone())?.trim().parse()?)
}

/// CPU seconds this process (the bench, with the webhook and worker it
/// runs in-process) has used so far.
fn own_cpu() -> anyhow::Result<f64> {
    stat_cpu("/proc/self/stat")?.context("/proc/self/stat")
}

/// User and system CPU seconds from a `/proc/<pid>/stat`; none when the
/// process is gone.
fn stat_cpu(path: &str) -> anyhow::Result<Option<f64>> {
    let Ok(stat) = std::fs::read_to_string(path) else { return Ok(None) };
    // After the command name: state is field 3, utime and stime 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')').context("/proc stat")?.1.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> { Ok(fields.get(i - 3).context("/proc stat field")?.parse()?) };
    Ok(Some((ticks(14)? + ticks(15)?) as f64 / clock_ticks()))
}

/// How long the disk under the stack's data takes to write `bytes` (in
/// 1 MiB writes, then fsync), as a registry's filesystem storage does.
fn disk_write(bytes: u64) -> anyhow::Result<Duration> {
    use std::io::Write;
    let path = format!("{}/../.local/stack/disk-write.bench", env!("CARGO_MANIFEST_DIR"));
    let piece = vec![0x5au8; MIB];
    let started = Instant::now();
    let written = (|| {
        let mut f = std::fs::File::create(&path)?;
        for _ in 0..bytes.div_ceil(MIB as u64) {
            f.write_all(&piece)?;
        }
        f.sync_all()
    })();
    let took = started.elapsed();
    std::fs::remove_file(&path)?;
    written?;
    Ok(took)
}

/// [`measure`], and the CPU used over the run.
fn measure_with_cpu(cmd: Command) -> anyhow::Result<(Measured, Cpu)> {
    let before = Cpu::now()?;
    let m = measure(cmd)?;
    Ok((m, Cpu::now()?.since(before)))
}

pub(crate) fn measure(mut cmd: Command) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let pid = child.id();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut peak, mut anon) = (0, 0);
            let ours = std::fs::read("/proc/self/cmdline").unwrap_or_default();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Only once the child has exec'd (its own image, not our
                // fork; a child of this binary has other arguments).
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok();
                if cmdline.is_some_and(|c| !c.is_empty() && c != ours) {
                    peak = peak.max(vm_hwm_kib(pid).unwrap_or(0));
                    anon = anon.max(status_kib(pid, "RssAnon:").unwrap_or(0));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (peak, anon)
        })
    };
    let reader = std::thread::spawn(move || {
        let (mut o, mut e) = (String::new(), String::new());
        let _ = out.read_to_string(&mut o);
        let _ = err.read_to_string(&mut e);
        (o, e)
    });
    let status = child.wait()?;
    let wall = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (polled, max_anon_kib) = poller.join().expect("poller");
    let (stdout, stderr) = reader.join().expect("reader");
    if !status.success() {
        bail!("{:?} failed: {stderr}", cmd.get_program());
    }
    // A child that reports its own peak (copy-once) is more exact than polling.
    let reported =
        serde_json::from_str::<serde_json::Value>(stdout.trim()).ok().and_then(|v| v["peak_rss_kib"].as_i64());
    Ok(Measured { wall, max_rss_kib: reported.unwrap_or(polled), max_anon_kib, stdout })
}

pub(crate) fn skopeo(stack: &Stack, src: &str, dst: &str) -> Command {
    let mut c = Command::new("skopeo");
    c.args(["copy", "--all", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false", "--dest-creds"])
        .arg(format!("{}:{}", stack.target_user, stack.target_password))
        .arg(format!("docker://{}/{src}", stack.source_host()))
        .arg(format!("docker://{}/{dst}", stack.target_host()));
    c
}

pub(crate) fn relay_once(config: &std::path::Path, src_repo: &str, tag: &str, dst_repo: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("exe"));
    c.arg("copy-once").arg(config).args([src_repo, tag, dst_repo]);
    c
}

/// Raw HTTP: every blob GET from the source piped by curl into a POST+PUT
/// at the destination, all blobs into every repository of `dst_repos` at
/// once (a read of its own for each).
pub(crate) fn curl_all(stack: &Stack, src_repo: &str, dst_repos: &[String], blobs: &[(String, u64)]) -> Command {
    let creds = format!("{}:{}", stack.target_user, stack.target_password);
    let mut script = String::from("set -o pipefail\npids=()\n");
    for ((d, size), dst_repo) in dst_repos.iter().flat_map(|r| blobs.iter().map(move |b| (b, r))) {
        script.push_str(&format!(
            "( loc=$(curl -sf -D - -o /dev/null -u '{creds}' -X POST {dst}/v2/{dst_repo}/blobs/uploads/ | tr -d '\\r' | awk 'tolower($1)==\"location:\"{{print $2}}') && \
             curl -sf {src}/v2/{src_repo}/blobs/{d} | curl -sf -o /dev/null -u '{creds}' -T - -H 'Content-Type: application/octet-stream' -H 'Content-Length: {size}' \"$loc&digest={d}\" ) & pids+=($!)\n",
            dst = stack.target_url,
            src = stack.source_url,
        ));
    }
    script.push_str("for p in \"${pids[@]}\"; do wait $p || exit 1; done\n");
    let mut c = Command::new("bash");
    c.arg("-c").arg(script);
    c
}

pub(crate) fn config_file(stack: &Stack) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::temp_dir().join("relay-bench-copy.yaml");
    std::fs::write(&path, stack.config_yaml("  - name: all\n    destination: { registry: cluster1-registry }\n"))?;
    Ok(path)
}

pub(crate) fn run_id() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xffffff)
}

pub async fn run() -> anyhow::Result<()> {
    let stack = Stack::load()?;
    let config = config_file(&stack)?;
    let id = run_id();
    println!("## Copy engine (`make bench`, relay-bench copy)\n");

    // 1 GiB of 8 random layers.
    let repo = format!("bench-{id}/big");
    eprintln!("generating the 1 GiB image…");
    let img = image::push(&stack.source(), &repo, "v1", ImageKind::OciImage, 8, 128 * MIB).await?;
    let blob_sizes = blob_sizes(&stack, &repo, "v1").await?;

    let sk = measure(skopeo(&stack, &format!("{repo}:v1"), &format!("skopeo-{id}/big:v1")))?;
    // The raw copy and the relay's, in pairs into fresh repositories, the
    // order swapped each round.
    let rounds = rounds(3);
    let mut pairs = Vec::new();
    for round in 0..rounds {
        let (curl_repo, relay_repo) = (format!("curl-{id}-{round}/big"), format!("relay-{id}-{round}/big"));
        let curl = || measure(curl_all(&stack, &repo, std::slice::from_ref(&curl_repo), &blob_sizes));
        let relay = || measure(relay_once(&config, &repo, "v1", &relay_repo));
        let (curl, rl) = if round % 2 == 0 {
            let c = curl()?;
            (c, relay()?)
        } else {
            let r = relay()?;
            (curl()?, r)
        };
        for (d, _) in &blob_sizes {
            anyhow::ensure!(stack.target().blob_exists(&curl_repo, d).await?, "curl did not copy {d}");
        }
        verify(&stack, &repo, &relay_repo, "v1").await?;
        pairs.push((curl, rl));
    }
    let (curl, rl) = &pairs[0];
    let report: serde_json::Value = serde_json::from_str(rl.stdout.trim())?;

    println!("1 GiB image, 8 random layers of 128 MiB, OCI manifest, into a fresh repository:\n");
    println!("| tool | wall | × skopeo | peak RSS |\n|---|---|---|---|");
    row("skopeo copy --all", &sk, &sk);
    println!(
        "| raw parallel curl GET→PUT (blobs only, no manifest) | {:.2} s | {:.2} | n/a (one curl pair per blob) |",
        curl.wall.as_secs_f64(),
        curl.wall.as_secs_f64() / sk.wall.as_secs_f64()
    );
    row("harbor-relay worker", rl, &sk);
    println!(
        "\nharbor-relay sent {} requests to the destination for {} missing blobs (+ manifest and tag checks), {} to the source; {} bytes moved (image: {} bytes).\n",
        report["dst_requests"], img.blobs.len(), report["src_requests"], report["bytes"], img.blob_bytes
    );
    println!("The raw copy and the relay's in {rounds} pairs (the first above; curl first in rounds 1, 3, …, the relay first in the others):\n");
    println!("| round | raw parallel curl | harbor-relay | × raw |\n|---|---|---|---|");
    let mut ratios = Vec::new();
    for (i, (c, r)) in pairs.iter().enumerate() {
        let ratio = r.wall.as_secs_f64() / c.wall.as_secs_f64();
        ratios.push(ratio);
        println!("| {} | {:.2} s | {:.2} s | {ratio:.2} |", i + 1, c.wall.as_secs_f64(), r.wall.as_secs_f64());
    }
    println!("\nMedian: harbor-relay {:.2} × the raw copy.\n", median(&mut ratios));

    // Re-replicating what is already there.
    let again = measure(relay_once(&config, &repo, "v1", &format!("relay-{id}-0/big")))?;
    let r: serde_json::Value = serde_json::from_str(again.stdout.trim())?;
    println!(
        "Re-replicating the same image: outcome `{}`, {} requests in all ({} source + {} destination; no manifest or blob GET), {:.1} ms inside the worker, {:.0} ms for the whole process.\n",
        r["outcome"].as_str().unwrap_or("?"),
        r["src_requests"].as_u64().unwrap_or(0) + r["dst_requests"].as_u64().unwrap_or(0),
        r["src_requests"],
        r["dst_requests"],
        r["seconds"].as_f64().unwrap_or(0.0) * 1e3,
        again.wall.as_secs_f64() * 1e3
    );

    // One 2 GiB layer: memory must not grow with the layer.
    let big = format!("bench-{id}/layer");
    eprintln!("generating the 2 GiB layer…");
    image::push(&stack.source(), &big, "v1", ImageKind::OciImage, 1, 2048 * MIB).await?;
    let sk2 = measure(skopeo(&stack, &format!("{big}:v1"), &format!("skopeo-{id}/layer:v1")))?;
    let rl2 = measure(relay_once(&config, &big, "v1", &format!("relay-{id}/layer")))?;
    verify(&stack, &big, &format!("relay-{id}/layer"), "v1").await?;
    println!("A single 2 GiB layer:\n");
    println!("| tool | wall | × skopeo | peak RSS |\n|---|---|---|---|");
    row("skopeo copy --all", &sk2, &sk2);
    row("harbor-relay worker", &rl2, &sk2);
    Ok(())
}

fn row(name: &str, m: &Measured, base: &Measured) {
    println!(
        "| {name} | {:.2} s | {:.2} | {:.1} MiB |",
        m.wall.as_secs_f64(),
        m.wall.as_secs_f64() / base.wall.as_secs_f64(),
        m.max_rss_kib as f64 / 1024.0
    );
}

async fn blob_sizes(stack: &Stack, repo: &str, tag: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let (_, bytes) = stack.source().get_manifest(repo, tag).await?.context("manifest")?;
    blobs_of(&bytes)
}

/// (digest, size) of an image manifest's config and layers.
pub(crate) fn blobs_of(manifest: &[u8]) -> anyhow::Result<Vec<(String, u64)>> {
    let v: serde_json::Value = serde_json::from_slice(manifest)?;
    Ok(std::iter::once(&v["config"])
        .chain(v["layers"].as_array().into_iter().flatten())
        .map(|d| (d["digest"].as_str().unwrap_or_default().to_owned(), d["size"].as_u64().unwrap_or(0)))
        .collect())
}

/// The destination has the manifest with the source's digest (blob bytes
/// were verified by the registry on each PUT).
pub(crate) async fn verify(stack: &Stack, src_repo: &str, dst_repo: &str, tag: &str) -> anyhow::Result<()> {
    let (_, a) = stack.source().get_manifest(src_repo, tag).await?.context("source manifest")?;
    let (_, b) = stack.target().get_manifest(dst_repo, tag).await?.context("destination manifest")?;
    anyhow::ensure!(a == b, "destination manifest differs");
    Ok(())
}

/// Child process: one copy task with the real worker, report on stdout.
pub async fn copy_once(args: &[String]) -> anyhow::Result<()> {
    let [config, src_repo, tag, dst_repo] = args else { bail!("copy-once CONFIG SRC_REPO TAG DST_REPO") };
    Stack::load()?;
    let config = Config::load(config.as_ref())?;
    let worker = bootstrap::worker(&config, &SecretSource::from_process(None), Default::default()).await?;
    let digest = {
        let (_, bytes) = Stack::load()?.source().get_manifest(src_repo, tag).await?.context("source manifest")?;
        relay_tests::plain::sha256(&bytes)
    };
    let task = Task {
        version: TASK_VERSION,
        id: "bench".into(),
        action: Action::Copy,
        source: SourceArtifact { repository: src_repo.parse()?, digest: digest.parse()?, tags: vec![tag.parse()?] },
        destination: DestinationArtifact {
            registry: "cluster1-registry".into(),
            repository: dst_repo.parse()?,
            tags: vec![tag.parse()?],
        },
        rules: vec!["bench".into()],
        options: CopyOptions { override_existing: true, bandwidth_kbps: None, refresh_referrers: false },
        event: EventRef { key: "bench".into(), occurred_at: 0, operator: "bench".into() },
    };
    let started = Instant::now();
    let r = worker.run(&task).await?;
    let seconds = started.elapsed().as_secs_f64();
    let dst = &worker.destinations["cluster1-registry"].client;
    println!(
        "{}",
        serde_json::json!({
            "outcome": r.outcome.map(|o| o.as_str()),
            "bytes": r.bytes,
            "blobs_copied": r.blobs_copied,
            "blobs_skipped": r.blobs_skipped,
            "src_requests": worker.source.requests(),
            "dst_requests": dst.requests(),
            "seconds": seconds,
            "peak_rss_kib": vm_hwm_kib(std::process::id()),
        })
    );
    Ok(())
}

/// The kind seam on the hot path: the same 1 GiB copy into the same
/// registry, once as an `ecr`-kind destination (token from moto's
/// `GetAuthorizationToken`, `CreateRepository` before the first push) and
/// once as a plain `registry` with the same credentials; alternated, best
/// of three each.
pub async fn kinds() -> anyhow::Result<()> {
    use base64::Engine as _;
    let stack = Stack::load()?;
    let ecr = aws_sdk_ecr::Client::new(&bootstrap::aws_config().await);
    let token = ecr.get_authorization_token().send().await.context("ECR control plane (moto)")?;
    let token = token.authorization_data().first().and_then(|d| d.authorization_token()).context("token")?;
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(token)?)?;
    let (user, password) = decoded.split_once(':').context("user:password")?;
    let registry = relay_tests::spawned::SpawnedRegistry::start(&[(user, password)]).await?;
    let config = |kind: &str, fields: &str| -> anyhow::Result<std::path::PathBuf> {
        let path = std::env::temp_dir().join(format!("relay-bench-kind-{kind}.yaml"));
        std::fs::write(
            &path,
            format!(
                "source: {{ url: {} }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: cluster1-registry, url: {}, {fields} }}\nrules:\n  - {{ name: all, destination: {{ registry: cluster1-registry }} }}\n",
                stack.source_url, registry.url
            ),
        )?;
        Ok(path)
    };
    let plain =
        config("registry", &format!("credentials: {{ username: {user}, password_env: RELAY_BENCH_DST_PASSWORD }}"))?;
    let ecr_kind = config("ecr", "kind: ecr, region: us-east-1")?;

    let id = run_id();
    let repo = format!("bench-{id}/kinds");
    eprintln!("generating the 1 GiB image…");
    image::push(&stack.source(), &repo, "v1", ImageKind::OciImage, 8, 128 * MIB).await?;
    let (_, source_manifest) = stack.source().get_manifest(&repo, "v1").await?.context("source manifest")?;
    let dest = registry.client(user, password);
    let mut runs: Vec<(&str, Measured)> = Vec::new();
    for round in 0..3 {
        for (kind, cfg) in [("registry", &plain), ("ecr", &ecr_kind)] {
            let dst_repo = format!("{kind}-{id}-{round}/kinds");
            let mut run = relay_once(cfg, &repo, "v1", &dst_repo);
            // The password of the `registry`-kind run, for the child alone.
            run.env("RELAY_BENCH_DST_PASSWORD", password);
            runs.push((kind, measure(run)?));
            let (_, copied) = dest.get_manifest(&dst_repo, "v1").await?.context("destination manifest")?;
            anyhow::ensure!(copied == source_manifest, "{kind}: destination manifest differs");
        }
    }
    let best = |kind: &str| runs.iter().filter(|(k, _)| *k == kind).map(|(_, m)| m).min_by_key(|m| m.wall).unwrap();
    let (r, e) = (best("registry"), best("ecr"));
    println!("## Destination kinds (`make bench`, relay-bench kinds)\n");
    println!("The 1 GiB image (8 random layers of 128 MiB) into the same registry, best of three each, alternated:\n");
    println!("| destination kind | wall | × registry kind | peak RSS |\n|---|---|---|---|");
    row("`registry` (credentials from the configuration)", r, r);
    row("`ecr` (token from GetAuthorizationToken, CreateRepository first; moto)", e, r);
    Ok(())
}

/// `copy-many` destinations: registry entries for the same target server,
/// each with its own clients and ledger, so none knows what another wrote
/// (every copy uploads every blob, as into a separate registry).
const FAN_DESTINATIONS: usize = 9;

fn fan_config(stack: &Stack) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::temp_dir().join("relay-bench-fan.yaml");
    std::fs::write(&path, separate_destinations(stack, FAN_DESTINATIONS))?;
    Ok(path)
}

/// A configuration with `n` registry entries `c1`… for the same target
/// server (each with its own clients and ledger, so none knows what
/// another wrote) and a rule `to-c<i>` for each, as the worker admits only
/// the tasks the rules in force produce: `c<i>/<source repository>`.
pub(crate) fn separate_destinations(stack: &Stack, n: usize) -> String {
    let rules: String = (1..=n)
        .map(|i| format!("  - {{ name: to-c{i}, destination: {{ registry: c{i}, namespace: c{i}, flatten: 0 }} }}\n"))
        .collect();
    with_registries(stack, n, &rules)
}

/// The stack's configuration with `rules` and `n` more registry entries,
/// `c1`… for the same target server.
pub(crate) fn with_registries(stack: &Stack, n: usize, rules: &str) -> String {
    let registries: String = (1..=n)
        .map(|i| {
            format!(
                "  - {{ name: c{i}, url: {}, credentials: {{ username: {}, password_env: CLUSTER1_PASSWORD }} }}\n",
                stack.target_url, stack.target_user
            )
        })
        .collect();
    stack.config_yaml(rules).replace("rules:\n", &format!("{registries}rules:\n"))
}

/// The 1 GiB image into several destinations by one worker process:
/// tasks of one push at the same time (as the webhook sends them, in one
/// batch), and copies one after another in a long-running worker (peak
/// RSS after each). Source bytes are what the tasks read from the source.
pub async fn fanout() -> anyhow::Result<()> {
    let stack = Stack::load()?;
    let config = fan_config(&stack)?;
    let id = run_id();
    let repo = format!("fan-{id}/big");
    eprintln!("generating the 1 GiB image…");
    let img = image::push(&stack.source(), &repo, "v1", ImageKind::OciImage, 8, 128 * MIB).await?;
    let blobs = blob_sizes(&stack, &repo, "v1").await?;
    let image_bytes = blobs.iter().map(|(_, s)| s).sum::<u64>();
    let many = |mode: &str, registries: &[usize]| {
        let mut c = Command::new(std::env::current_exe().expect("exe"));
        c.arg("copy-many").arg(&config).args([&repo, "v1", mode]);
        c.args(registries.iter().map(|i| format!("c{i}")));
        measure_with_cpu(c)
    };
    let (one, one_cpu) = many("together", &[1])?;
    let (three, three_cpu) = many("together", &[2, 3, 4])?;
    let (five, _) = many("one-by-one", &[5, 6, 7, 8, 9])?;
    for i in 1..=FAN_DESTINATIONS {
        verify(&stack, &repo, &format!("c{i}/{repo}"), "v1").await?;
    }
    // The raw HTTP limit of the same destination registry: curl pipes into
    // one repository, then into three at once.
    let raw_repos: Vec<String> = (1..=4).map(|i| format!("fan-{id}/raw{i}")).collect();
    let (raw_one, raw_one_cpu) = measure_with_cpu(curl_all(&stack, &repo, &raw_repos[..1], &blobs))?;
    let (raw_three, raw_three_cpu) = measure_with_cpu(curl_all(&stack, &repo, &raw_repos[1..], &blobs))?;
    // The destination's storage alone: the registry writes every blob and
    // fsyncs it, on the disk the stack's data lives on.
    let (disk_one, disk_three) = (disk_write(image_bytes)?, disk_write(3 * image_bytes)?);
    for (r, (d, _)) in raw_repos.iter().flat_map(|r| blobs.iter().map(move |b| (r, b))) {
        anyhow::ensure!(stack.target().blob_exists(r, d).await?, "curl did not copy {d} into {r}");
    }
    let report = |m: &Measured| -> anyhow::Result<serde_json::Value> { Ok(serde_json::from_str(m.stdout.trim())?) };
    let (r1, r3, r5) = (report(&one)?, report(&three)?, report(&five)?);
    let read = |r: &serde_json::Value| r["source_bytes"].as_u64().unwrap_or(0) as f64 / image_bytes as f64;
    let mib = |kib: i64| kib as f64 / 1024.0;
    println!("## Fan-out and a long-running worker (`make bench`, relay-bench fanout)\n");
    println!("The 1 GiB image ({}; 8 random layers of 128 MiB) copied by one worker process into destinations that share nothing (each its own registry entry, clients and ledger):\n", img.digest);
    println!("| run | wall | × one destination | source bytes read | peak RSS | of it anonymous (heap, stacks) |\n|---|---|---|---|---|---|");
    for (name, m, r) in [("1 destination", &one, &r1), ("3 destinations, one push (3 tasks at once)", &three, &r3)] {
        println!(
            "| {name} | {:.2} s | {:.2} | {:.2} × the image | {:.1} MiB | {:.1} MiB |",
            m.wall.as_secs_f64(),
            m.wall.as_secs_f64() / one.wall.as_secs_f64(),
            read(r),
            mib(m.max_rss_kib),
            mib(m.max_anon_kib)
        );
    }
    for (name, m, reads) in [
        ("raw parallel curl GET→PUT, 1 destination (blobs only)", &raw_one, 1),
        ("raw parallel curl GET→PUT, 3 destinations at once (a read each)", &raw_three, 3),
    ] {
        println!(
            "| {name} | {:.2} s | {:.2} | {reads}.00 × the image | n/a | n/a |",
            m.wall.as_secs_f64(),
            m.wall.as_secs_f64() / one.wall.as_secs_f64()
        );
    }
    println!(
        "\nThe destination's raw limit: three destinations at once take curl {:.2} × its one destination's time; the worker {:.2} ×.",
        raw_three.wall.as_secs_f64() / raw_one.wall.as_secs_f64(),
        three.wall.as_secs_f64() / one.wall.as_secs_f64()
    );
    let cores = cores();
    let share = |c: &Cpu, m: &Measured| 100.0 * c.busy / (cores as f64 * m.wall.as_secs_f64());
    println!(
        "\nCPU over each run (from /proc): the machine's {cores} cores were {:.0} % busy for one destination ({:.1} s; iowait {:.1} s) and {:.0} % for three ({:.1} s; iowait {:.1} s). Of it the destination registry's own process: {:.1} s and {:.1} s, the source's {:.1} s and {:.1} s (curl: {:.1} s and {:.1} s at the destination). The three copies' work, {:.1} CPU-seconds, needs at least {:.1} s on {cores} cores: {:.2} × the one destination's time; the registries' part alone, {:.2} ×.",
        share(&one_cpu, &one),
        one_cpu.busy,
        one_cpu.iowait,
        share(&three_cpu, &three),
        three_cpu.busy,
        three_cpu.iowait,
        one_cpu.target,
        three_cpu.target,
        one_cpu.source,
        three_cpu.source,
        raw_one_cpu.target,
        raw_three_cpu.target,
        three_cpu.busy,
        three_cpu.busy / cores as f64,
        three_cpu.busy / cores as f64 / one.wall.as_secs_f64(),
        (three_cpu.target + three_cpu.source) / cores as f64 / one.wall.as_secs_f64()
    );
    println!(
        "\nThe destination's storage alone (the disk under `.local/stack`, written and fsynced as the registry writes blobs): the image's bytes in {:.2} s, three times them in {:.2} s — {:.2} × the one destination's time before any request, hash or read.",
        disk_one.as_secs_f64(),
        disk_three.as_secs_f64(),
        disk_three.as_secs_f64() / one.wall.as_secs_f64()
    );
    let peaks: Vec<String> = r5["peaks_kib"]
        .as_array()
        .map(|a| a.iter().map(|k| format!("{:.1}", mib(k.as_i64().unwrap_or(0)))).collect())
        .unwrap_or_default();
    println!(
        "\n5 copies one after another in one process (a long-running standalone worker): {:.2} s, peak RSS after each copy {} MiB; anonymous (heap, stacks) at most {:.1} MiB.\n",
        five.wall.as_secs_f64(),
        peaks.join(" → "),
        mib(five.max_anon_kib)
    );
    Ok(())
}

/// Child process of [`fanout`]: `copy-many CONFIG SRC_REPO TAG
/// together|one-by-one REGISTRY…`, one copy task per registry into
/// `<registry>/SRC_REPO` (the task its rule `to-<registry>` makes);
/// reports on stdout.
pub async fn copy_many(args: &[String]) -> anyhow::Result<()> {
    let [config, src_repo, tag, mode, registries @ ..] = args else {
        bail!("copy-many CONFIG SRC_REPO TAG together|one-by-one REGISTRY…")
    };
    let config = Config::load(config.as_ref())?;
    let worker = bootstrap::worker(&config, &SecretSource::from_process(None), Default::default()).await?;
    let (_, bytes) = Stack::load()?.source().get_manifest(src_repo, tag).await?.context("source manifest")?;
    let digest = relay_tests::plain::sha256(&bytes);
    let task = |registry: &str| -> anyhow::Result<Task> {
        Ok(Task {
            version: TASK_VERSION,
            id: format!("bench-{registry}"),
            action: Action::Copy,
            source: SourceArtifact { repository: src_repo.parse()?, digest: digest.parse()?, tags: vec![tag.parse()?] },
            destination: DestinationArtifact {
                registry: registry.into(),
                repository: format!("{registry}/{src_repo}").parse()?,
                tags: vec![tag.parse()?],
            },
            rules: vec![format!("to-{registry}")],
            options: CopyOptions { override_existing: true, bandwidth_kbps: None, refresh_referrers: false },
            event: EventRef { key: "bench".into(), occurred_at: 0, operator: "bench".into() },
        })
    };
    let tasks = registries.iter().map(|r| task(r)).collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    let (mut source_bytes, mut peaks) = (0, Vec::new());
    match mode.as_str() {
        // One batch, as the webhook sends one push's tasks.
        "together" => {
            let batch = tasks
                .iter()
                .map(|t| Message { id: t.id.clone(), body: t.encode(), receive_count: 1, ..Default::default() })
                .collect();
            if let Some(f) = worker.handle_batch(batch, None).await.first() {
                bail!("task {} failed: {}", f.message.id, f.error);
            }
            source_bytes = worker.stats.source_bytes.load(std::sync::atomic::Ordering::Relaxed);
        }
        "one-by-one" => {
            for t in &tasks {
                source_bytes += worker.run(t).await?.source_bytes;
                peaks.push(vm_hwm_kib(std::process::id()));
            }
        }
        other => bail!("mode {other}: together or one-by-one"),
    }
    println!(
        "{}",
        serde_json::json!({
            "seconds": started.elapsed().as_secs_f64(),
            "source_bytes": source_bytes,
            "src_requests": worker.source.requests(),
            "peaks_kib": peaks,
            "peak_rss_kib": vm_hwm_kib(std::process::id()),
        })
    );
    Ok(())
}

/// Reconcile over 1,000 tags that are already in sync: time and requests.
pub async fn reconcile() -> anyhow::Result<()> {
    let stack = Stack::load()?;
    let id = run_id();
    let repo = format!("reconcile-{id}/many");
    let source = stack.source();
    image::push(&source, &repo, "t0", ImageKind::OciImage, 1, 4096).await?;
    let (_, bytes) = source.get_manifest(&repo, "t0").await?.context("manifest")?;
    futures_util::stream::iter(1..1000)
        .for_each_concurrent(16, |i| {
            let (source, repo, bytes) = (&source, &repo, &bytes);
            async move {
                source.put_manifest(repo, &format!("t{i}"), image::OCI_MANIFEST, bytes).await.expect("tag");
            }
        })
        .await;
    let rules = format!("  - name: r\n    filters: {{ name: \"reconcile-{id}/**\" }}\n    destination: {{ registry: cluster1-registry }}\n");
    let config = Config::parse(&stack.config_yaml(&rules))?;
    let worker = bootstrap::worker(&config, &SecretSource::from_process(None), Default::default()).await?;
    let reconciler = relay::reconcile::Reconciler::new(&config, &worker, 1000);
    let first = reconciler.pass(None, None).await?;
    futures_util::stream::iter(&first.tasks)
        .for_each_concurrent(16, |t| {
            let worker = &worker;
            async move {
                worker.run(t).await.expect("copy");
            }
        })
        .await;
    let dst = &worker.destinations["cluster1-registry"].client;
    let before = (worker.source.requests(), dst.requests());
    let started = Instant::now();
    let pass = reconciler.pass(None, None).await?;
    let took = started.elapsed();
    anyhow::ensure!(
        pass.tasks.is_empty() && pass.in_sync == 1000,
        "expected 1000 tags in sync, got {:?}",
        (pass.in_sync, pass.tasks.len())
    );
    println!("## Reconcile (`make bench`, relay-bench reconcile)\n");
    println!(
        "1,000 tags already in sync: one pass took {:.2} s with {} source requests (catalog pages, tag list, 1,000 HEADs) and {} destination requests (HEAD only); no GET, no task enqueued.",
        took.as_secs_f64(),
        worker.source.requests() - before.0,
        dst.requests() - before.1
    );
    Ok(())
}
