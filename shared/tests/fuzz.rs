//! Bounded mutation fuzzing of the webhook's front half (auth, limits,
//! parsing, rules) and of the task decoder. Properties: no panic; a request
//! is either refused with a 4xx or planned into tasks that survive an
//! encode/decode round trip; a decoded task re-encodes to itself.
//!
//! `make test` runs RELAY_FUZZ_CASES (default 20 000) cases per target with
//! a fixed seed; `make fuzz` runs millions with a random seed (printed, so a
//! failure can be replayed with RELAY_FUZZ_SEED).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay::config::WebhookAuthSource;
use relay::queue::TaskQueue;
use relay::secrets::{SecretSource, WebhookAuth};
use relay::webhook::{Incoming, Webhook, WebhookOptions};
use relay::{Config, Task};
use serde_json::Value;

const AUTH: &str = "Bearer fuzz-0123456789";

const CONFIG: &str = r#"
source: { url: "http://localhost" }
webhook: { auth_values_env: AUTH }
registries:
  - { name: r1, url: "http://127.0.0.1:1" }
  - { name: r2, url: "http://127.0.0.1:2" }
rules:
  - { name: all, destination: { registry: r1 }, deletion: true }
  - { name: flat, filters: { name: "harbor/**", tag: { pattern: "v*", decoration: excludes } }, destination: { registry: r2, namespace: mirror, flatten: 2 } }
  - { name: deep, destination: { registry: r2, namespace: deep, flatten: 3 } }
"#;

fn cases() -> usize {
    std::env::var("RELAY_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000)
}

fn rng() -> StdRng {
    let seed = std::env::var("RELAY_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(20261125);
    eprintln!("fuzz seed {seed} (RELAY_FUZZ_SEED to replay)");
    StdRng::seed_from_u64(seed)
}

fn seeds() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/harbor");
    let mut out: Vec<Vec<u8>> =
        std::fs::read_dir(dir).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
    let tagged = String::from_utf8(out[0].clone()).unwrap();
    out.push(tagged.replace("\"type\": \"DELETE_ARTIFACT\"", "\"type\": \"PUSH_ARTIFACT\"").into_bytes());
    out
}

fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    match rng.gen_range(0..9) {
        0 => Value::Null,
        1 => Value::Bool(rng.gen()),
        2 => Value::from(rng.gen::<i64>()),
        3 => Value::from(rng.gen::<f64>()),
        4 => Value::from("a".repeat(rng.gen_range(0..400))),
        5 => Value::from(
            [
                "",
                "sha256:",
                "../../etc",
                "localhost/a/b:c",
                "PUSH_ARTIFACT",
                "harbor.artifact.pushed",
                "1.0",
                "\u{0}\u{ffff}",
                "localhost/harbor/alpine@sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4",
            ][rng.gen_range(0..9)],
        ),
        6 if depth < 4 => Value::Array((0..rng.gen_range(0..4)).map(|_| random_value(rng, depth + 1)).collect()),
        7 if depth < 4 => {
            Value::Object((0..rng.gen_range(0..4)).map(|i| (format!("k{i}"), random_value(rng, depth + 1))).collect())
        }
        _ => {
            // Deep nesting, past serde_json's recursion limit at times.
            let n = rng.gen_range(1..300);
            serde_json::from_str(&format!("{}{}", "[".repeat(n), "]".repeat(n))).unwrap_or(Value::Null)
        }
    }
}

/// Replaces, removes or retypes one random node of a JSON document.
fn mutate_json(rng: &mut StdRng, v: &mut Value) {
    let descend = rng.gen_bool(0.6);
    match v {
        Value::Object(map) if descend && !map.is_empty() => {
            let key = map.keys().nth(rng.gen_range(0..map.len())).unwrap().clone();
            if rng.gen_bool(0.15) {
                map.remove(&key);
            } else {
                mutate_json(rng, map.get_mut(&key).unwrap());
            }
        }
        Value::Array(items) if descend && !items.is_empty() => {
            let i = rng.gen_range(0..items.len());
            mutate_json(rng, &mut items[i]);
        }
        _ => *v = random_value(rng, 0),
    }
}

fn mutate_bytes(rng: &mut StdRng, b: &mut Vec<u8>) {
    for _ in 0..rng.gen_range(1..8) {
        if b.is_empty() {
            b.push(rng.gen());
            continue;
        }
        let i = rng.gen_range(0..b.len());
        match rng.gen_range(0..3) {
            0 => b[i] = rng.gen(),
            1 => {
                b.remove(i);
            }
            _ => b.insert(i, rng.gen()),
        }
    }
}

async fn webhook() -> Webhook {
    let config = Arc::new(Config::parse(CONFIG).unwrap());
    let secrets = SecretSource::new(None, |_| Some(AUTH.to_owned()));
    let auth = WebhookAuth::load(WebhookAuthSource::Env("AUTH".into()), secrets, &Default::default()).await.unwrap();
    // Never called: accept() and plan() stop before the queue.
    let sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .build(),
    );
    Webhook::new(
        config,
        auth,
        TaskQueue::new(sqs, "http://127.0.0.1:1/q"),
        WebhookOptions { untagged_delay: Duration::ZERO, ..Default::default() },
        None,
    )
}

#[tokio::test]
async fn webhook_front_half_never_panics_and_plans_valid_tasks() {
    let webhook = webhook().await;
    let auth = relay::secrets::AuthValues::new(vec![AUTH.to_owned()]);
    let seeds = seeds();
    let mut rng = rng();
    let (mut planned, mut refused) = (0usize, std::collections::BTreeMap::<u16, usize>::new());
    for _ in 0..cases() {
        let mut body = seeds[rng.gen_range(0..seeds.len())].clone();
        match rng.gen_range(0..4) {
            0 => mutate_bytes(&mut rng, &mut body),
            1 | 2 => {
                if let Ok(mut v) = serde_json::from_slice::<Value>(&body) {
                    for _ in 0..rng.gen_range(1..4) {
                        mutate_json(&mut rng, &mut v);
                    }
                    body = serde_json::to_vec(&v).unwrap();
                }
            }
            _ => {}
        }
        let content_type =
            ["application/json", "application/cloudevents+json", "application/json; charset=utf-8", "text/plain", ""]
                [rng.gen_range(0..5)];
        let req = Incoming {
            method: if rng.gen_bool(0.95) { Method::POST } else { Method::PUT },
            path: "/".into(),
            content_type: Some(content_type.into()),
            authorization: if rng.gen_bool(0.95) { Some(AUTH.into()) } else { Some("Bearer nope".into()) },
            body: Bytes::from(body),
        };
        match webhook.accept(&req, &auth) {
            Ok(event) => {
                for task in webhook.plan(&event, None).tasks {
                    assert_eq!(Task::decode(&task.encode()).unwrap(), task);
                    planned += 1;
                }
            }
            Err(r) => {
                let s = r.status().as_u16();
                assert!((400..500).contains(&s), "refusals are 4xx, got {s}");
                *refused.entry(s).or_default() += 1;
            }
        }
    }
    eprintln!("planned {planned} tasks; refused by status: {refused:?}");
    assert!(planned > 0, "the fuzzer must also reach the planner");
    assert!(refused.get(&400).copied().unwrap_or(0) > 0);
}

#[test]
fn task_decoder_never_panics_and_round_trips() {
    let mut rng = rng();
    let base: Value = serde_json::from_str(r#"{"version":1,"id":"t","action":"copy","source":{"repository":"harbor/alpine","digest":"sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4","tags":["v1"]},"destination":{"registry":"r1","repository":"alpine","tags":["v1"]},"rules":["all"],"options":{"override":true},"event":{"key":"df-1","occurred_at":1,"operator":"admin"}}"#).unwrap();
    assert!(Task::decode(&base.to_string()).is_ok());
    let mut decoded = 0;
    for _ in 0..cases() {
        let body = if rng.gen_bool(0.3) {
            let mut b = base.to_string().into_bytes();
            mutate_bytes(&mut rng, &mut b);
            String::from_utf8_lossy(&b).into_owned()
        } else {
            let mut v = base.clone();
            mutate_json(&mut rng, &mut v);
            v.to_string()
        };
        if let Ok(task) = Task::decode(&body) {
            assert_eq!(Task::decode(&task.encode()).unwrap(), task);
            decoded += 1;
        }
    }
    assert!(decoded > 0);
}
