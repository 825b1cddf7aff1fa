//! Push-to-available: from the webhook's answer to the tag being served by
//! the destination, for a small image, through the standalone pipeline
//! (webhook → LocalStack SQS → worker), with where the time goes: the queue
//! hop (send to long-poll receive) and the copy itself, each measured alone
//! in the same run.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use relay::secrets::SecretSource;
use relay::{bootstrap, Config};
use relay_tests::app::{fast_retry, AppBuilder};
use relay_tests::{image, planned_tasks, ImageKind, Stack};

use crate::percentile;

const SAMPLES: usize = 20;
const RULES: &str =
    "  - name: all\n    destination: { registry: cluster1-registry, namespace: relay-latency, flatten: 0 }\n";

pub async fn run() -> anyhow::Result<()> {
    let stack = Stack::load()?;
    let id = format!("{:08x}", rand::random::<u32>());
    let (source, target) = (stack.source(), stack.target());
    let app = AppBuilder::rules(RULES).with_worker().spawn().await;

    // End to end; the first push warms connections and tokens up.
    let mut total = Vec::new();
    for i in 0..=SAMPLES {
        let repo = format!("lat-{id}/app-{i}");
        let img = image::push(&source, &repo, "v1", ImageKind::OciImage, 1, 64 * 1024).await?;
        let (status, _) = app.push_event(&repo, Some("v1"), &img.digest).await;
        let answered = Instant::now();
        ensure!(status == 202, "webhook answered {status}");
        let dst = format!("relay-latency/{repo}");
        while target.get_manifest(&dst, "v1").await?.is_none() {
            ensure!(answered.elapsed() < Duration::from_secs(60), "{dst} never arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if i > 0 {
            total.push(answered.elapsed());
        }
    }

    // The queue hop alone: send, and a long poll already waiting receives.
    let sqs = stack.sqs().await;
    let url = relay_tests::stack::create_queue(&sqs, "latency").await?;
    let mut hop = Vec::new();
    for i in 0..=SAMPLES {
        let receiver = {
            let (sqs, url) = (sqs.clone(), url.clone());
            tokio::spawn(async move {
                loop {
                    let out = sqs.receive_message().queue_url(&url).wait_time_seconds(5).send().await?;
                    if let Some(m) = out.messages().first() {
                        let handle = m.receipt_handle().context("receipt")?.to_owned();
                        let got = Instant::now();
                        sqs.delete_message().queue_url(&url).receipt_handle(handle).send().await?;
                        return anyhow::Ok(got);
                    }
                }
            })
        };
        // Let the long poll start first, as the worker's always is.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = Instant::now();
        sqs.send_message().queue_url(&url).message_body(format!("hop {i}")).send().await?;
        let got = receiver.await??;
        if i > 0 {
            hop.push(got - sent);
        }
    }

    // The copy alone: the same task, run directly by a worker.
    let config = Config::parse(&stack.config_yaml(RULES))?;
    let worker = bootstrap::worker(&config, &SecretSource::from_process(None), fast_retry()).await?;
    let mut copy = Vec::new();
    for i in 0..=SAMPLES {
        let repo = format!("lat-{id}/direct-{i}");
        let img = image::push(&source, &repo, "v1", ImageKind::OciImage, 1, 64 * 1024).await?;
        let task = planned_tasks(&config, &stack, "PUSH_ARTIFACT", &repo, "v1", &img.digest).remove(0);
        let started = Instant::now();
        worker.run(&task).await?;
        if i > 0 {
            copy.push(started.elapsed());
        }
    }

    for v in [&mut total, &mut hop, &mut copy] {
        v.sort();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("## Push to available (`make bench`, relay-bench latency)\n");
    println!("A small image (one 64 KiB layer), {SAMPLES} pushes one after another (after one warm-up), from the webhook's 202 to the tag served by the destination (polled every 5 ms), standalone webhook → LocalStack SQS → worker:\n");
    println!("| step | p50 | p90 |\n|---|---|---|");
    for (name, v) in [
        ("push to available (end to end)", &total),
        ("of which: SQS send → long-poll receive, measured alone", &hop),
        ("of which: the copy (HEADs, blobs, manifest PUT), measured alone", &copy),
    ] {
        println!("| {name} | {:.0} ms | {:.0} ms |", ms(percentile(v, 0.5)), ms(percentile(v, 0.9)));
    }
    let rest = ms(percentile(&total, 0.5)) - ms(percentile(&hop, 0.5)) - ms(percentile(&copy, 0.5));
    println!("\nThe rest of the median ({rest:.0} ms) is the worker between receive and copy (decoding, the batch), the destination's poll interval and scheduling.\n");
    Ok(())
}
