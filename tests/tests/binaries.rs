//! The real binaries, standalone, as an operator runs them: a replication
//! through webhook → LocalStack SQS → worker, with every log line captured
//! and searched for secrets; one correlation id from webhook to worker; EMF
//! metric lines; graceful stop on SIGTERM.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use relay_tests::app::unique_repo;
use relay_tests::stack::create_queue;
use relay_tests::{harbor_push_event, image, now, workspace_binary, ImageKind, Stack};

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
    let config = std::env::temp_dir().join(format!("relay-bin-{}.yaml", now()));
    std::fs::write(&config, stack.config_yaml("  - name: all\n    destination: { registry: cluster1-registry }\n"))
        .unwrap();
    let port = 20_000 + (rand::random::<u16>() % 20_000);
    let envs = [
        ("RELAY_CONFIG", config.display().to_string()),
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
    let wrong = "Bearer wrong-secret-attempt-123";
    assert_eq!(post(wrong).await.unwrap().status(), 401);
    let ok = post(&stack.webhook_auth).await.unwrap();
    assert_eq!(ok.status(), 202);
    let reply: serde_json::Value = ok.json().await.unwrap();
    let task_id = reply["tasks"][0]["id"].as_str().unwrap().to_owned();

    let target = stack.target();
    let started = Instant::now();
    while target.get_manifest(&repo, "v1").await.unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(60), "not replicated");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the worker log the end of the task before stopping it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = format!("{}\n{}", stop(webhook), stop(worker));
    std::fs::remove_file(&config).ok();

    let leaks = relay_tests::leaked_secrets(&logs, &stack, &["wrong-secret-attempt-123"]);
    assert!(leaks.is_empty(), "in the logs: {leaks:?}");

    // One correlation id from the webhook's enqueue to the worker's result.
    let lines: Vec<serde_json::Value> = logs.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let with_id = |msg: &str| {
        lines.iter().any(|l| {
            l["message"] == msg && (l["task_id"] == task_id.as_str() || l["span"]["task_id"] == task_id.as_str())
        })
    };
    assert!(with_id("task enqueued"), "webhook logs the task id");
    assert!(with_id("task done"), "worker logs the same task id");
    assert!(
        lines
            .iter()
            .any(|l| l["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "HarborRelay" && l["Outcome"] == "copied"),
        "EMF metrics line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weak_webhook_auth_value_is_refused_at_start_naming_the_field() {
    let stack = Stack::load().unwrap();
    let config = std::env::temp_dir().join(format!("relay-weak-{}.yaml", rand::random::<u32>()));
    std::fs::write(&config, stack.config_yaml("")).unwrap();
    let child = spawn(
        "webhook",
        &[
            ("RELAY_CONFIG", config.display().to_string()),
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
