//! Bounded mutation fuzzing of the webhook's front half (auth, limits,
//! parsing, rules) and of the task decoder. Properties: no panic; a request
//! is refused with the status its known fault calls for (405, 401, 415, and
//! 400/422 for a body), or planned into tasks that survive an encode/decode
//! round trip; nesting deeper than serde_json's recursion limit changes no
//! answer; a decoded task re-encodes to itself.
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

/// Harbor's payloads, in file-name order (a seed replays the same cases on
/// every machine, whatever order the directory lists them in).
fn seeds() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/harbor");
    // The payloads only (`api/` holds Harbor's REST answers).
    let mut paths: Vec<_> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    paths.sort();
    let mut out: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    // A tagged push in the Default format (Harbor's sample push is by digest).
    let delete = std::fs::read_to_string(format!("{dir}/delete_artifact.default.json")).unwrap();
    assert!(delete.contains("\"type\": \"DELETE_ARTIFACT\""));
    out.push(delete.replace("\"type\": \"DELETE_ARTIFACT\"", "\"type\": \"PUSH_ARTIFACT\"").into_bytes());
    out
}

/// A seed with a first field of `depth` nested arrays, as bytes: a `Value`
/// deeper than serde_json's recursion limit (128) cannot be built and
/// serialised, so this is the only way such input reaches the parser.
fn deeply_nested(seed: &[u8], depth: usize) -> Vec<u8> {
    let text = String::from_utf8_lossy(seed);
    let Some(brace) = text.find('{') else { return seed.to_vec() };
    format!("{{\"nested\": {}{}, {}", "[".repeat(depth), "]".repeat(depth), &text[brace + 1..]).into_bytes()
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
            // Nesting below serde_json's recursion limit (deeper input is
            // made as bytes: `deeply_nested`).
            let n = rng.gen_range(1..120);
            serde_json::from_str(&format!("{}{}", "[".repeat(n), "]".repeat(n))).expect("below the limit")
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

/// The status the webhook must answer for what the request is known to get
/// wrong, checked in the webhook's order (method, auth, media type); `None`
/// when only the body decides (a refusal is then 400 or 422).
fn expected_refusal(method: &Method, authorization: &str, content_type: &str) -> Option<u16> {
    if method != Method::POST {
        Some(405)
    } else if authorization != AUTH {
        Some(401)
    } else if !content_type.starts_with("application/json") && content_type != "application/cloudevents+json" {
        Some(415)
    } else {
        None
    }
}

#[tokio::test]
async fn webhook_front_half_never_panics_and_plans_valid_tasks() {
    let webhook = webhook().await;
    let auth = relay::secrets::AuthValues::new(vec![AUTH.to_owned()]);
    let seeds = seeds();
    let mut rng = rng();
    let (mut planned, mut refused) = (0usize, std::collections::BTreeMap::<u16, usize>::new());
    let mut too_deep = 0usize;
    for _ in 0..cases() {
        let mut body = seeds[rng.gen_range(0..seeds.len())].clone();
        let mut undeep = None;
        match rng.gen_range(0..5) {
            0 => mutate_bytes(&mut rng, &mut body),
            1 | 2 => {
                if let Ok(mut v) = serde_json::from_slice::<Value>(&body) {
                    for _ in 0..rng.gen_range(1..4) {
                        mutate_json(&mut rng, &mut v);
                    }
                    body = serde_json::to_vec(&v).unwrap();
                }
            }
            3 if rng.gen_bool(0.2) => {
                let deep = deeply_nested(&body, rng.gen_range(129..5000));
                let e = serde_json::from_slice::<Value>(&deep).expect_err("deeper than serde_json's limit");
                assert!(e.to_string().contains("recursion limit"), "{e}");
                undeep = Some(std::mem::replace(&mut body, deep));
            }
            _ => {}
        }
        let content_type =
            ["application/json", "application/cloudevents+json", "application/json; charset=utf-8", "text/plain", ""]
                [rng.gen_range(0..5)];
        let method = if rng.gen_bool(0.95) { Method::POST } else { Method::PUT };
        let authorization = if rng.gen_bool(0.95) { AUTH } else { "Bearer nope-0123456789" };
        let expected = expected_refusal(&method, authorization, content_type);
        let req = Incoming {
            method,
            path: "/".into(),
            content_type: Some(content_type.into()),
            authorization: Some(authorization.into()),
            body: Bytes::from(body),
        };
        let result = webhook.accept(&req, &auth);
        if let Some(plain) = undeep {
            // An unknown field nested past the limit is skipped (without
            // recursion: no stack to exhaust) and changes nothing.
            let without = webhook.accept(&Incoming { body: Bytes::from(plain), ..req }, &auth);
            let status = |r: &Result<_, relay::webhook::Rejection>| r.as_ref().err().map(|r| r.status().as_u16());
            assert_eq!(status(&result), status(&without), "deep nesting changed the answer");
            too_deep += 1;
        }
        match result {
            Ok(event) => {
                assert_eq!(expected, None, "accepted a request that should be refused");
                for task in webhook.plan(&event, None).tasks {
                    assert_eq!(Task::decode(&task.encode()).unwrap(), task);
                    planned += 1;
                }
            }
            Err(r) => {
                let s = r.status().as_u16();
                match expected {
                    Some(want) => assert_eq!(s, want, "{r}"),
                    None => assert!(s == 400 || s == 422, "a body refused with {s}: {r}"),
                }
                *refused.entry(s).or_default() += 1;
            }
        }
    }
    eprintln!("planned {planned} tasks; refused by status: {refused:?}; {too_deep} nested past the recursion limit");
    assert!(planned > 0, "the fuzzer must also reach the planner");
    assert!(too_deep > 0, "deep nesting must reach the parser");
    for status in [400, 401, 405, 415] {
        assert!(refused.get(&status).copied().unwrap_or(0) > 0, "no case was refused with {status}");
    }
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
