//! Webhook figures: handler latency without SQS, the standalone server's
//! throughput with LocalStack SQS, cold start, binary sizes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::Method;
use relay::config::WebhookAuthSource;
use relay::queue::TaskQueue;
use relay::secrets::{AuthValues, SecretSource, WebhookAuth};
use relay::webhook::{Incoming, Webhook, WebhookOptions};
use relay::Config;
use relay_tests::app::{AppBuilder, ALL_TO_CLUSTER1};
use relay_tests::Stack;

use crate::percentile;

pub async fn run() -> anyhow::Result<()> {
    let stack = Stack::load()?;
    println!("## Webhook (`make bench`, relay-bench webhook)\n");
    println!("| measure | value |\n|---|---|");

    // 1. The handler's own work: auth, limits, parse, rules, plan. No SQS.
    let config = Arc::new(Config::parse(&stack.config_yaml(ALL_TO_CLUSTER1))?);
    let secrets = SecretSource::new(None, |_| Some("Bearer bench-0123456789".into()));
    let auth = WebhookAuth::load(WebhookAuthSource::Env("X".into()), secrets, &Default::default()).await?;
    let sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .build(),
    );
    let hook = Webhook::new(
        config,
        auth,
        TaskQueue::new(sqs, "http://127.0.0.1:1/unused"),
        WebhookOptions { untagged_delay: Duration::ZERO, ..Default::default() },
        None,
    );
    let values = AuthValues::new(vec!["Bearer bench-0123456789".into()]);
    let digest = relay_tests::plain::sha256(b"bench");
    let body =
        relay_tests::harbor_push_event("PUSH_ARTIFACT", stack.source_host(), "proj/team/app", Some("v1"), &digest, 1);
    let req = Incoming {
        method: Method::POST,
        path: "/".into(),
        content_type: Some("application/json".into()),
        authorization: Some("Bearer bench-0123456789".into()),
        body: Bytes::from(body.clone()),
    };
    let n = 20_000;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 1000 {
        let t = Instant::now();
        let event = hook.accept(&req, &values).map_err(|r| anyhow::anyhow!("{r}"))?;
        let plan = hook.plan(&event, None);
        let encoded: usize = plan.tasks.iter().map(|t| t.encode().len()).sum();
        std::hint::black_box(encoded);
        if i >= 1000 {
            samples.push(t.elapsed());
        }
    }
    samples.sort();
    println!("| handler excluding SQS, median ({n} requests) | {} |", us(percentile(&samples, 0.5)));
    println!("| handler excluding SQS, p99 | {} |", us(percentile(&samples, 0.99)));

    // 2. The standalone server with the real queue call (LocalStack).
    let app = AppBuilder::rules(ALL_TO_CLUSTER1).spawn().await;
    let client = reqwest::Client::builder().pool_max_idle_per_host(32).build()?;
    let concurrency = 16;
    let total = 2_000;
    let started = Instant::now();
    let latencies = Arc::new(tokio::sync::Mutex::new(Vec::with_capacity(total)));
    let mut handles = Vec::new();
    for w in 0..concurrency {
        let (client, url, auth, body, lat) =
            (client.clone(), app.webhook_url.clone(), stack.webhook_auth.clone(), body.clone(), latencies.clone());
        handles.push(tokio::spawn(async move {
            for _ in 0..total / concurrency {
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("authorization", &auth)
                    .body(body.clone())
                    .send()
                    .await?;
                anyhow::ensure!(r.status() == 202, "worker {w}: status {}", r.status());
                lat.lock().await.push(t.elapsed());
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let elapsed = started.elapsed();
    let mut lat = latencies.lock().await.clone();
    lat.sort();
    println!(
        "| standalone server + LocalStack SendMessageBatch, {concurrency} concurrent | {:.0} requests/s |",
        lat.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "| … latency median / p99 | {:.2} ms / {:.2} ms |",
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3
    );
    let (visible, _, _) = app.depth().await;
    anyhow::ensure!(visible as usize == lat.len(), "queue holds {visible} tasks for {} requests", lat.len());

    // 3. Cold start of the release binary to a ready /healthz, and sizes.
    let bin_dir = std::env::current_exe()?.parent().context("bin dir")?.to_owned();
    let config_file = std::env::temp_dir().join("relay-bench-config.yaml");
    std::fs::write(&config_file, stack.config_yaml(ALL_TO_CLUSTER1))?;
    let mut starts = Vec::new();
    for i in 0..10 {
        let port = 18_600 + i;
        let t = Instant::now();
        let mut child = std::process::Command::new(bin_dir.join("webhook"))
            .env("RELAY_CONFIG", &config_file)
            .env("RELAY_QUEUE_URL", &app.queue_url)
            .env("RELAY_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("release webhook binary (make bench builds it)")?;
        let url = format!("http://127.0.0.1:{port}/healthz");
        loop {
            if client.get(&url).send().await.is_ok_and(|r| r.status() == 200) {
                break;
            }
            anyhow::ensure!(t.elapsed() < Duration::from_secs(5), "webhook did not start");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        starts.push(t.elapsed());
        child.kill()?;
        child.wait()?;
    }
    starts.sort();
    println!(
        "| webhook cold start to ready /healthz, median of 10 | {:.1} ms |",
        percentile(&starts, 0.5).as_secs_f64() * 1e3
    );
    for b in ["webhook", "worker"] {
        let size = std::fs::metadata(bin_dir.join(b))?.len();
        println!("| release binary `{b}` (x86_64) | {:.1} MB |", size as f64 / 1e6);
    }
    Ok(())
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}
