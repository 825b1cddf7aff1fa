//! The real binaries, standalone, as an operator runs them: a replication
//! through webhook → LocalStack SQS → worker, with every log line captured
//! and searched for secrets; one correlation id from webhook to worker; EMF
//! metric lines; graceful stop on SIGTERM.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use relay_tests::app::unique_repo;
use relay_tests::stack::create_queue;
use relay_tests::{harbor_push_event, image, now, workspace_binary, ImageKind, Stack, TempFile};

fn spawn(name: &str, envs: &[(&str, String)]) -> Child {
    let mut c = Command::new(workspace_binary(name));
    c.env("RUST_LOG", "debug").stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in envs {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

fn stop(child: Child) -> String {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_binaries_replicate_and_never_log_secrets() {
    let stack = Stack::load().unwrap();
    let sqs = stack.sqs().await;
    let queue = create_queue(&sqs, "bin").await.unwrap();
    let config = TempFile::new(
        "bin",
        "yaml",
        stack.config_yaml("  - name: all\n    destination: { registry: cluster1-registry }\n"),
    );
    let port = 20_000 + (rand::random::<u16>() % 20_000);
    let envs = [
        ("RELAY_CONFIG", config.arg()),
        ("RELAY_QUEUE_URL", queue.clone()),
        ("RELAY_LISTEN", format!("127.0.0.1:{port}")),
    ];
    let webhook = spawn("webhook", &envs);
    let worker = spawn("worker", &envs);
    let http = reqwest::Client::new();
    let health = format!("http://127.0.0.1:{port}/healthz");
    let started = Instant::now();
    while !http.get(&health).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(started.elapsed() < Duration::from_secs(10), "webhook did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let repo = unique_repo("bin");
    let img = image::push(&stack.source(), &repo, "v1", ImageKind::OciIndex { platforms: 2 }, 1, 8192).await.unwrap();
    let body = harbor_push_event("PUSH_ARTIFACT", stack.source_host(), &repo, Some("v1"), &img.digest, now());
    let url = format!("http://127.0.0.1:{port}/");
    let post = |auth: &str| {
        http.post(&url)
            .header("content-type", "application/json")
            .header("authorization", auth.to_owned())
            .body(body.clone())
            .send()
    };
    // A task for a registry the worker does not know: it fails (the saved
    // queries must read its line too).
    let parsed = relay::Config::parse(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let mut poison = relay_tests::planned_tasks(&parsed, &stack, "PUSH_ARTIFACT", &repo, "v1", &img.digest).remove(0);
    poison.destination.registry = "nowhere".into();
    sqs.send_message().queue_url(&queue).message_body(poison.encode()).send().await.unwrap();

    let wrong = "Bearer wrong-secret-attempt-123";
    assert_eq!(post(wrong).await.unwrap().status(), 401);
    let ok = post(&stack.webhook_auth).await.unwrap();
    assert_eq!(ok.status(), 202);
    let reply: serde_json::Value = ok.json().await.unwrap();
    // A pull yields no task: answered 200 with why, and logged for `relay history --all`.
    let pull = harbor_push_event("PULL_ARTIFACT", stack.source_host(), &repo, Some("v1"), &img.digest, now() + 1);
    let pulled = http
        .post(&url)
        .header("content-type", "application/json")
        .header("authorization", stack.webhook_auth.clone())
        .body(pull)
        .send()
        .await
        .unwrap();
    assert_eq!(pulled.status(), 200);
    let pulled: serde_json::Value = pulled.json().await.unwrap();
    assert_eq!(pulled["reason"], "event type PULL_ARTIFACT is not replicated", "{pulled}");
    let task_id = reply["tasks"][0]["id"].as_str().unwrap().to_owned();

    let target = stack.target();
    let started = Instant::now();
    while target.get_manifest(&repo, "v1").await.unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(60), "not replicated");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both messages received (the poison goes back to the queue invisible),
    // then let the worker log the ends of the tasks before stopping it.
    while relay_tests::stack::queue_depth(&sqs, &queue).await.unwrap().0 > 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "messages not received");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (webhook_log, worker_log) = (stop(webhook), stop(worker));
    let logs = format!("{webhook_log}\n{worker_log}");

    let leaks = relay_tests::leaked_secrets(&logs, &stack, &["wrong-secret-attempt-123"]);
    assert!(leaks.is_empty(), "in the logs: {leaks:?}");

    // One correlation id from the webhook's enqueue to the worker's result.
    let lines: Vec<serde_json::Value> = logs.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    // The search above read lines that hold the account with its password
    // (the registry's challenge, answered as whom): their `Debug` redacts
    // it, and a `Debug` that did not would leak it there.
    let shown = |l: &&serde_json::Value| l["credentials"].as_str().is_some_and(|c| c.contains(&stack.target_user));
    assert!(
        lines.iter().filter(|l| l["message"] == "registry asks for authentication").any(|l| shown(&l)),
        "no log line shows the credentials (redacted): the secret search did not cover them"
    );
    // The webhook's request and its accepted values reach the logs too,
    // through their redacting `Debug` (the search above found no value).
    let logged = |msg: &str, field: &str| {
        lines.iter().any(|l| l["message"] == msg && l[field].as_str().is_some_and(|v| v.contains("redacted")))
    };
    assert!(logged("webhook request", "request"), "the request line, its Authorization redacted");
    assert!(logged("webhook auth values read", "values"), "the accepted values line, redacted");
    let with_id = |msg: &str| lines.iter().any(|l| l["message"] == msg && l["task_id"] == task_id.as_str());
    assert!(with_id("task enqueued"), "webhook logs the task id");
    assert!(with_id("task done"), "worker logs the same task id");
    assert!(
        lines
            .iter()
            .any(|l| l["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "HarborRelay" && l["Outcome"] == "copied"),
        "EMF metrics line"
    );

    // The saved Logs Insights queries read fields the worker really writes,
    // at the top level of its lines (a failed task's included).
    let worker_lines: Vec<&serde_json::Value> = lines.iter().filter(|l| l["task_id"].is_string()).collect();
    let failed = worker_lines.iter().find(|l| l["message"] == "task failed").expect("the poison task failed");
    let done = worker_lines.iter().find(|l| l["message"] == "task done").expect("a task done");
    for (query, fields) in saved_query_fields() {
        for field in fields {
            let on = |l: &serde_json::Value| l.get(&field).is_some_and(|v| !v.is_null());
            assert!(on(done) || on(failed), "query {query}: field {field} is on no worker line: {done} {failed}");
        }
    }
    // Every line of a task carries the task's fields, not only its last.
    for l in &worker_lines {
        for f in ["task_id", "event_key", "rule", "source", "destination", "digest", "tags"] {
            assert!(l[f].is_string(), "{f} missing on {l}");
        }
    }

    // `relay history` over these very lines: the push reached cluster1 with
    // its bytes; the poison task is the only failure, its reason given; the
    // same from a CloudWatch Logs FilterLogEvents answer.
    let event_key = reply["event_key"].as_str().unwrap().to_owned();
    let file = TempFile::new("history", "log", &logs);
    let history = |args: &[&str]| -> serde_json::Value {
        let out = Command::new(workspace_binary("relay"))
            .arg("history")
            .arg(file.path())
            .args(["--output", "json", "--since", "1h"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let all = history(&[]);
    assert!(!all.to_string().contains(pulled["event_key"].as_str().unwrap()), "the pull shows with --all only");
    let with_pull = history(&["--all"]);
    let shown = with_pull.as_array().unwrap().iter().find(|e| e["event_key"] == pulled["event_key"]).expect("the pull");
    assert_eq!(shown["unanswered"]["cause"], "event_type", "{shown}");
    assert_eq!(shown["unanswered"]["reason"], "event type PULL_ARTIFACT is not replicated", "{shown}");
    assert_eq!(shown["destinations"], serde_json::json!([]));
    let pushed = all.as_array().unwrap().iter().find(|e| e["event_key"] == event_key.as_str()).expect("the push");
    assert_eq!(pushed["artifact"], format!("{repo}@{}", img.digest));
    assert_eq!(pushed["tags"], serde_json::json!(["v1"]));
    // The poison task was planned from the same event: two destinations.
    let runs = pushed["destinations"].as_array().unwrap();
    let run = |registry: &str| {
        runs.iter()
            .find(|d| d["destination"] == format!("{registry}/{repo}").as_str())
            .unwrap_or_else(|| panic!("{runs:?}"))
    };
    assert_eq!(run("cluster1-registry")["outcome"], "copied");
    assert!(run("cluster1-registry")["bytes"].as_u64().unwrap() > 8192, "{runs:?}");
    assert_eq!(run("nowhere")["outcome"], "failed");
    let failed = history(&["--failed"]);
    let failed = failed.as_array().unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["destinations"].as_array().unwrap().len(), 1, "{failed:?}");
    assert!(failed[0]["destinations"][0]["error"].as_str().unwrap().contains("nowhere"), "{failed:?}");
    assert_eq!(history(&["--destination", "nowhere", "--tag", "v1"]).as_array().unwrap().len(), 1);
    assert_eq!(history(&["--destination", "cluster1-registry", "--failed"]), serde_json::json!([]));
    let events: Vec<serde_json::Value> =
        logs.lines().map(|l| serde_json::json!({ "message": l, "logStreamName": "2026/12/01/[$LATEST]x" })).collect();
    std::fs::write(file.path(), serde_json::json!({ "events": events }).to_string()).unwrap();
    assert_eq!(history(&[]), all, "the same from CloudWatch's answer");

    // And from CloudWatch Logs itself (LocalStack's): the lines in the log
    // groups the template gives a stack's webhook and worker, beside
    // Lambda's own plain-text lines, read by `relay history --stack`.
    let stack_name = format!("relay-history-{:08x}", rand::random::<u32>());
    put_log_lines(&format!("/aws/lambda/{stack_name}-webhook"), &webhook_log).await;
    put_log_lines(&format!("/aws/lambda/{stack_name}-worker"), &worker_log).await;
    let out = Command::new(workspace_binary("relay"))
        .args(["history", "--stack", &stack_name, "--output", "json", "--since", "1h"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let from_logs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(from_logs, all, "the same read from CloudWatch Logs");
}

/// Writes `text`'s lines into a new log group (one stream, now), with a
/// Lambda `START` line first, as the Lambda service writes them.
async fn put_log_lines(group: &str, text: &str) {
    use aws_sdk_cloudwatchlogs::types::InputLogEvent;
    let logs = aws_sdk_cloudwatchlogs::Client::new(&relay::bootstrap::aws_config().await);
    logs.create_log_group().log_group_name(group).send().await.unwrap();
    logs.create_log_stream().log_group_name(group).log_stream_name("2026/12/01/[$LATEST]a").send().await.unwrap();
    let at = now() * 1000;
    let start = "START RequestId: 8f5e Version: $LATEST";
    let lines: Vec<&str> = std::iter::once(start).chain(text.lines().filter(|l| !l.trim().is_empty())).collect();
    for chunk in lines.chunks(500) {
        let events = chunk.iter().map(|l| InputLogEvent::builder().message(*l).timestamp(at).build().unwrap());
        logs.put_log_events()
            .log_group_name(group)
            .log_stream_name("2026/12/01/[$LATEST]a")
            .set_log_events(Some(events.collect()))
            .send()
            .await
            .unwrap();
    }
}

/// The `fields` of each saved query in the template (`@` fields are
/// CloudWatch's own).
fn saved_query_fields() -> Vec<(String, Vec<String>)> {
    let template = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/template.yaml")).unwrap();
    let mut out = Vec::new();
    let mut name = String::new();
    for line in template.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("Name: !Sub \"${AWS::StackName}/") {
            name = n.trim_end_matches('"').to_owned();
        }
        if let Some(fields) = line.strip_prefix("fields ") {
            let fields = fields.split(',').map(str::trim).filter(|f| !f.starts_with('@')).map(str::to_owned).collect();
            out.push((name.clone(), fields));
        }
    }
    assert!(out.len() >= 2, "saved queries found: {out:?}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weak_webhook_auth_value_is_refused_at_start_naming_the_field() {
    let stack = Stack::load().unwrap();
    let config = TempFile::new("weak", "yaml", stack.config_yaml(""));
    let child = spawn(
        "webhook",
        &[
            ("RELAY_CONFIG", config.arg()),
            ("RELAY_QUEUE_URL", "http://127.0.0.1:9/000000000000/none".into()),
            ("RELAY_LISTEN", "127.0.0.1:0".into()),
            ("RELAY_WEBHOOK_AUTH", "Bearer guess".into()),
        ],
    );
    let pid = child.id() as i32;
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap());
    let out = match tokio::time::timeout(Duration::from_secs(20), waiting).await {
        Ok(out) => out.unwrap(),
        Err(_) => {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the webhook started with a 12-character auth value");
        }
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("webhook.auth_values_env (RELAY_WEBHOOK_AUTH)"), "{text}");
    assert!(!text.contains("Bearer guess"), "the value itself is never printed: {text}");
}
