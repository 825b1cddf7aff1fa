//! Fixture commands for the demo and for poking at the local stack by hand.
//!
//!   relay-fixture push-image REPO TAG [oci-index|docker-list|oci|docker] [PLATFORMS] [LAYERS] [LAYER_BYTES]
//!   relay-fixture harbor-event REPO TAG DIGEST          (Default-format PUSH_ARTIFACT on stdout)
//!   relay-fixture create-queue PREFIX                   (LocalStack queue URL on stdout)
//!   relay-fixture wait-target REPO REFERENCE SECONDS
//!   relay-fixture compare REPO REFERENCE                (source vs target, every manifest and blob)
//!
//! Endpoints and secrets come from the environment `scripts/stack.sh up`
//! writes to .local/stack/env.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use relay_tests::{image, stack, ImageKind, Stack};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| {
        args.get(i)
            .map(String::as_str)
            .with_context(|| format!("missing argument {i}; see the usage at the top of relay-fixture.rs"))
    };
    let stack = Stack::load()?;
    match arg(0)? {
        "push-image" => {
            let kind = match args.get(3).map(String::as_str).unwrap_or("oci-index") {
                "oci-index" => ImageKind::OciIndex { platforms: num(&args, 4, 2)? },
                "docker-list" => ImageKind::DockerList { platforms: num(&args, 4, 2)? },
                "oci" => ImageKind::OciImage,
                "docker" => ImageKind::DockerImage,
                other => bail!("unknown image kind {other}"),
            };
            let pushed =
                image::push(&stack.source(), arg(1)?, arg(2)?, kind, num(&args, 5, 2)?, num(&args, 6, 1024 * 1024)?)
                    .await?;
            println!("{}", serde_json::to_string(&pushed)?);
        }
        "harbor-event" => {
            println!(
                "{}",
                relay_tests::harbor_push_event(
                    "PUSH_ARTIFACT",
                    stack.source_host(),
                    arg(1)?,
                    Some(arg(2)?),
                    arg(3)?,
                    relay_tests::now()
                )
            );
        }
        "create-queue" => println!("{}", stack::create_queue(&stack.sqs().await, arg(1)?).await?),
        "wait-target" => {
            let deadline = Instant::now() + Duration::from_secs(num(&args, 3, 60)? as u64);
            while stack.target().get_manifest(arg(1)?, arg(2)?).await?.is_none() {
                if Instant::now() > deadline {
                    bail!("{}:{} did not reach the target in time", arg(1)?, arg(2)?);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        "compare" => {
            let (repo, reference) = (arg(1)?, arg(2)?);
            let src = stack.source().tree(repo, reference).await?;
            let dst = stack.target().tree(repo, reference).await?;
            for (r, (mt, d)) in &dst.manifests {
                let same = src.manifests.get(r).map(|(_, s)| s) == Some(d);
                println!("  manifest {:<12} {d} {mt} {}", short(r), if same { "= source" } else { "DIFFERENT" });
            }
            for (d, actual) in &dst.blobs {
                let same = src.blobs.get(d) == Some(actual) && d == actual;
                println!("  blob     {d} {}", if same { "= source" } else { "DIFFERENT" });
            }
            if src != dst || !dst.self_consistent() {
                bail!("destination differs from source");
            }
            println!(
                "  {} manifests and {} blobs ({} bytes) identical at source and destination",
                dst.manifests.len(),
                dst.blobs.len(),
                dst.bytes
            );
        }
        other => bail!("unknown command {other}"),
    }
    Ok(())
}

fn num(args: &[String], i: usize, default: usize) -> anyhow::Result<usize> {
    args.get(i).map_or(Ok(default), |s| s.parse().with_context(|| format!("argument {i} must be a number")))
}

fn short(reference: &str) -> &str {
    if reference.starts_with("sha256:") {
        &reference[..19]
    } else {
        reference
    }
}
