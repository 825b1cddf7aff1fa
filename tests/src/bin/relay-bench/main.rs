//! `make bench`: performance figures measured on this machine, on loopback,
//! each against its peers in the same run. Prints Markdown for BENCHMARKS.md.
//!
//!   relay-bench webhook   handler latency, server throughput, cold start, sizes
//!   relay-bench copy      1 GiB image vs skopeo and raw curl, peak RSS,
//!                         2 GiB layer RSS, re-replication requests
//!   relay-bench shared    20 images sharing base layers: pipeline vs skopeo
//!                         and the destination registry's floor, on shared
//!                         cores, then in rounds with the registry on a core
//!                         of its own (`RELAY_BENCH_WORKER`: worker settings)
//!   relay-bench reconcile a pass over 1,000 tags already in sync
//!   relay-bench fanout    1 GiB into 3 destinations at once, and 5 copies in
//!                         a row in one process (source bytes, peak RSS)
//!   relay-bench latency   push-to-available of a small image, and its parts
//!   relay-bench lambda-batch  the event source mapping's batch size, emulated
//!   relay-bench standalone  the release worker binary polling its queue,
//!                         five 1 GiB copies in a row: peak RSS after each
//!   relay-bench sizes     the worker under each Lambda size's CPU share and
//!                         memory (cgroup v1): throughput, peak, price per GiB
//!
//! Needs the local stack (make bench starts it).

mod copy;
mod lambda;
mod latency;
mod shared;
mod sizes;
mod standalone;
mod webhook;

use std::time::Duration;

/// The worker's runtime (malloc tuned as the worker's): `copy-once` measures what the
/// worker does.
fn main() -> anyhow::Result<()> {
    relay::bootstrap::runtime()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    relay::metrics::set_enabled(false);
    // The relay's own log on stdout, to see where a run's time went:
    // `RELAY_BENCH_LOG=relay=debug relay-bench shared`.
    if let Ok(filter) = std::env::var("RELAY_BENCH_LOG") {
        relay::telemetry::init(Some(&filter));
    }
    match args.first().map(String::as_str).unwrap_or("webhook") {
        "webhook" => webhook::run().await,
        "copy" => copy::run().await,
        "shared" => shared::run().await,
        "reconcile" => copy::reconcile().await,
        "kinds" => copy::kinds().await,
        "copy-once" => copy::copy_once(&args[1..]).await,
        "fanout" => copy::fanout().await,
        "latency" => latency::run().await,
        "lambda-batch" => lambda::run().await,
        "copy-many" => copy::copy_many(&args[1..]).await,
        "sizes" => sizes::run().await,
        "standalone" => standalone::run().await,
        "copy-list" => sizes::copy_list(&args[1..]).await,
        other => anyhow::bail!("unknown benchmark {other}"),
    }
}

/// Waits until `succeeded` (the workers' count of tasks done) reaches
/// `n`; returns when each of the `n` reports came, from `started`.
pub async fn reports(
    succeeded: impl Fn() -> u64,
    n: usize,
    started: std::time::Instant,
) -> anyhow::Result<Vec<Duration>> {
    let mut at = Vec::with_capacity(n);
    while at.len() < n {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(300), "only {} of {n} tasks reported", at.len());
        while at.len() < (succeeded() as usize).min(n) {
            at.push(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(at)
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}
