//! The long-running worker as an operator deploys it standalone: the
//! release `worker` binary polling its queue (LocalStack SQS) with its
//! configuration file, given five 1 GiB copies one after another. Its peak
//! RSS (`VmHWM`) after each: polling, configuration, clients and all, not
//! only the copy engine.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use relay_tests::{image, planned_tasks, ImageKind, Stack};

use crate::copy::{separate_destinations, status_kib, verify, vm_hwm_kib};

/// Copies in a row; each into a registry entry of its own (the same
/// server), so no ledger knows the blobs: every copy sends all 1 GiB.
const COPIES: usize = 5;
const MIB: usize = 1024 * 1024;

pub async fn run() -> anyhow::Result<()> {
    let stack = Stack::load()?;
    let id = format!("{:08x}", rand::random::<u32>());
    let repo = format!("solo-{id}/big");
    eprintln!("generating the 1 GiB image…");
    let img = image::push(&stack.source(), &repo, "v1", ImageKind::OciImage, 8, 128 * MIB).await?;
    let yaml = separate_destinations(&stack, COPIES);
    let file = std::env::temp_dir().join(format!("relay-bench-standalone-{id}.yaml"));
    std::fs::write(&file, &yaml)?;
    let config = relay::Config::parse(&yaml)?;
    let sqs = stack.sqs().await;
    let queue = relay_tests::stack::create_queue(&sqs, "standalone").await?;

    // The release binary beside this one, as `make bench` builds both.
    let binary = std::env::current_exe()?.parent().context("exe dir")?.join("worker");
    ensure!(binary.exists(), "{} not built (make bench builds it)", binary.display());
    let mut worker = Command::new(&binary)
        .env("RELAY_CONFIG", &file)
        .env("RELAY_QUEUE_URL", &queue)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = worker.id();
    let tasks = planned_tasks(&config, &stack, "PUSH_ARTIFACT", &repo, "v1", &img.digest);
    let (mut peaks, mut walls, mut anon) = (Vec::new(), Vec::new(), 0);
    let outcome = async {
        for i in 1..=COPIES {
            let registry = format!("c{i}");
            let task = tasks.iter().find(|t| t.destination.registry == registry).context("a task per rule")?;
            let dst = format!("c{i}/{repo}");
            let started = Instant::now();
            sqs.send_message().queue_url(&queue).message_body(task.encode()).send().await?;
            while stack.target().get_manifest(&dst, "v1").await?.is_none() {
                ensure!(started.elapsed() < Duration::from_secs(300), "{dst} never arrived");
                anon = anon.max(status_kib(pid, "RssAnon:").unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            walls.push(started.elapsed());
            verify(&stack, &repo, &dst, "v1").await?;
            peaks.push(vm_hwm_kib(pid).context("the worker's VmHWM")?);
        }
        anyhow::Ok(())
    }
    .await;
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = worker.wait();
    let _ = std::fs::remove_file(&file);
    outcome?;

    let mib = |kib: i64| kib as f64 / 1024.0;
    println!("## The standalone worker, long-running (`make bench`, relay-bench standalone)\n");
    println!(
        "The release `worker` binary polling LocalStack SQS with its configuration file ({COPIES} destinations), given {COPIES} copies of the 1 GiB image (8 layers of 128 MiB) one after another, each into a registry entry of its own (every byte sent each time):\n"
    );
    println!("| copy | wall (send → tag served) | peak RSS (`VmHWM`) after it |\n|---|---|---|");
    for (i, (w, p)) in walls.iter().zip(&peaks).enumerate() {
        println!("| {} | {:.2} s | {:.1} MiB |", i + 1, w.as_secs_f64(), mib(*p));
    }
    println!("\nAnonymous resident memory (heap, stacks), largest sample: {:.1} MiB.", mib(anon));
    Ok(())
}
