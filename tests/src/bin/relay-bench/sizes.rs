//! What a GiB costs on each Lambda size. Lambda gives a function CPU in
//! proportion to its memory (1,769 MB is one vCPU) and kills it past its
//! memory; here the worker runs under the same two limits, as cgroup v1
//! sets them (`cpu.cfs_quota_us` over a 100 ms period, and
//! `memory.limit_in_bytes`), copying the 1 GiB image and then the 20
//! shared-base images, for each memory size the template may be given.
//! Prices are Lambda's public list (below); the figures say throughput,
//! peak memory, and the price per GiB replicated and per thousand small
//! pushes.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use relay::secrets::SecretSource;
use relay::task::{Action, CopyOptions, DestinationArtifact, EventRef, SourceArtifact, Task, TASK_VERSION};
use relay::worker::Message;
use relay::{bootstrap, Config};
use relay_tests::{image, ImageKind, Stack};

use crate::copy::{config_file, measure, relay_once, run_id, verify, MIB};
use crate::shared::shared_base_images;

/// The sizes measured: Lambda's smallest, the template's choices, one
/// vCPU, and the most a new account is given without a quota request.
const SIZES_MB: [u64; 6] = [128, 256, 512, 1024, 1769, 3008];
/// Memory that buys one full vCPU.
const ONE_VCPU_MB: u64 = 1769;
/// Lambda, x86_64, us-east-1, from aws.amazon.com/lambda/pricing (the
/// list as of 2026-12-01): per GB-second and per request.
const PRICE_GB_SECOND: f64 = 0.000_016_666_7;
const PRICE_REQUEST: f64 = 0.000_000_2;
/// Lambda's default batch size for an SQS event source.
const BATCH: usize = 10;

/// A cgroup (v1) pair holding a Lambda size's CPU share and memory.
struct Cgroup {
    cpu: std::path::PathBuf,
    memory: std::path::PathBuf,
}

impl Cgroup {
    fn new(mb: u64) -> anyhow::Result<Cgroup> {
        let name = format!("relay-bench-{mb}");
        let (cpu, memory) = (
            std::path::Path::new("/sys/fs/cgroup/cpu").join(&name),
            std::path::Path::new("/sys/fs/cgroup/memory").join(&name),
        );
        for dir in [&cpu, &memory] {
            if !dir.exists() {
                std::fs::create_dir(dir)
                    .with_context(|| format!("create {} (needs root and cgroup v1)", dir.display()))?;
            }
        }
        let period = 100_000u64;
        std::fs::write(cpu.join("cpu.cfs_period_us"), period.to_string())?;
        std::fs::write(cpu.join("cpu.cfs_quota_us"), (period * mb / ONE_VCPU_MB).max(1000).to_string())?;
        std::fs::write(memory.join("memory.limit_in_bytes"), (mb * 1024 * 1024).to_string())?;
        // A fresh peak and failure count for this size.
        let _ = std::fs::write(memory.join("memory.max_usage_in_bytes"), "0");
        let _ = std::fs::write(memory.join("memory.failcnt"), "0");
        Ok(Cgroup { cpu, memory })
    }

    /// `cmd`, run inside this cgroup from its first instruction.
    fn wrap(&self, cmd: &Command) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && echo $$ > {}/cgroup.procs && exec \"$@\"",
                self.cpu.display(),
                self.memory.display()
            ))
            .arg("sh")
            .arg(cmd.get_program())
            .args(cmd.get_args());
        c
    }

    /// The group's peak memory (the process and the page cache it caused, as Lambda counts).
    fn peak_mib(&self) -> f64 {
        read_u64(&self.memory.join("memory.max_usage_in_bytes")) as f64 / MIB as f64
    }

    /// How often the limit was hit (reclaim; an OOM kill shows as a failed run).
    fn limit_hits(&self) -> u64 {
        read_u64(&self.memory.join("memory.failcnt"))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.cpu);
        let _ = std::fs::remove_dir(&self.memory);
    }
}

fn read_u64(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// Dollars for `seconds` of a function of `mb`, and its requests.
fn price(mb: u64, seconds: f64, requests: f64) -> f64 {
    seconds * mb as f64 / 1024.0 * PRICE_GB_SECOND + requests * PRICE_REQUEST
}

pub async fn run() -> anyhow::Result<()> {
    let stack = Stack::load()?;
    let config = config_file(&stack)?;
    let id = run_id();
    eprintln!("generating the 1 GiB image and the 20 shared-base images…");
    let big = format!("sizes-{id}/big");
    let img = image::push(&stack.source(), &big, "v1", ImageKind::OciImage, 8, 128 * MIB).await?;
    let project = format!("sizes-{id}-shared");
    shared_base_images(&stack, &project).await?;
    let gib = img.blob_bytes as f64 / (1024.0 * MIB as f64);

    println!("## Lambda sizes (`make bench`, relay-bench sizes)\n");
    println!(
        "The worker under each size's CPU share (memory ÷ {ONE_VCPU_MB} MB of one vCPU, cgroup v1 `cpu.cfs_quota_us`) and memory limit (`memory.limit_in_bytes`): the 1 GiB image (8 layers of 128 MiB) into a fresh repository, then the 20 shared-base images in batches of {BATCH} as Lambda's event source hands them. Prices: Lambda x86_64, us-east-1, ${PRICE_GB_SECOND} per GB-second and ${PRICE_REQUEST} per request (aws.amazon.com/lambda/pricing, list of 2026-12-01); one invocation per batch.\n"
    );
    println!("| memory | vCPU | 1 GiB wall | MiB/s | peak (group) | $ per GiB | 20 images wall | $ per 1,000 pushes |");
    println!("|---|---|---|---|---|---|---|---|");
    // `RELAY_BENCH_SIZES=128,1769` measures those only.
    let sizes: Vec<u64> = match std::env::var("RELAY_BENCH_SIZES") {
        Ok(list) => list.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>().context("RELAY_BENCH_SIZES")?,
        Err(_) => SIZES_MB.to_vec(),
    };
    for mb in sizes {
        let group = Cgroup::new(mb)?;
        let dst = format!("sizes-{id}-{mb}/big");
        let one = measure(group.wrap(&relay_once(&config, &big, "v1", &dst)));
        let (one_wall, one_peak) = match one {
            Ok(m) => {
                verify(&stack, &big, &dst, "v1").await?;
                (Some(m.wall.as_secs_f64()), group.peak_mib())
            }
            Err(e) => {
                eprintln!("{mb} MB: the 1 GiB copy failed: {e:#}");
                (None, group.peak_mib())
            }
        };
        drop(group);
        let group = Cgroup::new(mb)?;
        // The rules must produce the tasks (the worker refuses others): the
        // source project mapped onto this size's own.
        let dst_project = format!("sizes-{id}-{mb}-shared");
        let mapped = std::env::temp_dir().join(format!("relay-bench-sizes-{mb}.yaml"));
        std::fs::write(
            &mapped,
            stack.config_yaml(&format!(
                "  - name: all\n    destination: {{ registry: cluster1-registry, namespace: {dst_project}, flatten: 1 }}\n"
            )),
        )?;
        let mut list = Command::new(std::env::current_exe()?);
        list.arg("copy-list").arg(&mapped).arg(&project).arg(&dst_project);
        let many = match measure(group.wrap(&list)) {
            Ok(m) => Some(m.wall.as_secs_f64()),
            Err(e) => {
                eprintln!("{mb} MB: the 20 images failed: {e:#}");
                None
            }
        };
        let hits = group.limit_hits();
        let cell = |v: Option<String>| v.unwrap_or_else(|| "failed".into());
        let per_push = many.map(|s| price(mb, s, (20 / BATCH) as f64) / 20.0 * 1000.0);
        println!(
            "| {mb} MB | {:.2} | {} | {} | {:.1} MiB{} | {} | {} | {} |",
            mb as f64 / ONE_VCPU_MB as f64,
            cell(one_wall.map(|s| format!("{s:.1} s"))),
            cell(one_wall.map(|s| format!("{:.0}", gib * 1024.0 / s))),
            one_peak.max(group.peak_mib()),
            if hits > 0 { format!(" (limit reached {hits}×)") } else { String::new() },
            cell(one_wall.map(|s| format!("{:.6}", price(mb, s, 1.0) / gib))),
            cell(many.map(|s| format!("{s:.1} s"))),
            cell(per_push.map(|p| format!("{p:.4}"))),
        );
    }
    Ok(())
}

/// Child process: the 20 shared-base images of `SRC_PROJECT` into
/// `DST_PROJECT`, in batches as Lambda's event source hands them to one
/// worker; reports on stdout.
pub async fn copy_list(args: &[String]) -> anyhow::Result<()> {
    let [config, src_project, dst_project] = args else { bail!("copy-list CONFIG SRC_PROJECT DST_PROJECT") };
    let stack = Stack::load()?;
    let config = Config::load(config.as_ref())?;
    let worker = bootstrap::worker(&config, &SecretSource::from_process(None), Default::default()).await?;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let repo = format!("{src_project}/app-{i}");
        let (_, bytes) = stack.source().get_manifest(&repo, "v1").await?.context("source manifest")?;
        tasks.push(Task {
            version: TASK_VERSION,
            id: format!("sizes-{i}"),
            action: Action::Copy,
            source: SourceArtifact {
                repository: repo.parse()?,
                digest: relay_tests::plain::sha256(&bytes).parse()?,
                tags: vec!["v1".parse()?],
            },
            destination: DestinationArtifact {
                registry: "cluster1-registry".into(),
                repository: format!("{dst_project}/app-{i}").parse()?,
                tags: vec!["v1".parse()?],
            },
            rules: vec!["all".into()],
            options: CopyOptions { override_existing: true, bandwidth_kbps: None, refresh_referrers: false },
            event: EventRef { key: format!("sizes-{i}"), occurred_at: 0, operator: "bench".into() },
        });
    }
    let started = Instant::now();
    for batch in tasks.chunks(BATCH) {
        let messages = batch
            .iter()
            .map(|t| Message { id: t.id.clone(), body: t.encode(), receive_count: 1, ..Default::default() })
            .collect();
        if let Some(f) = worker.handle_batch(messages, None).await.first() {
            bail!("task {} failed: {}", f.message.id, f.error);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    for t in &tasks {
        let at = stack.target().digest_at(t.destination.repository.as_str(), "v1").await?;
        anyhow::ensure!(at == Some(t.source.digest.to_string()), "{}: not at the target", t.destination.repository);
    }
    println!("{}", serde_json::json!({ "seconds": seconds }));
    Ok(())
}
