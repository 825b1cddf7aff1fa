//! The three functions in their Lambda mode — the code AWS runs — under
//! cargo-lambda's Runtime API emulator, fed the event shapes AWS sends:
//! Function URL and API Gateway HTTP API (v2) requests to the webhook, an
//! SQS batch to the worker (its `batchItemFailures` checked message by
//! message), a scheduled EventBridge event to reconcile; LocalStack SQS and
//! the real registries behind them. The emulator sends a deadline that is
//! not an epoch time (`Lambda-Runtime-Deadline-Ms: 600000`), so these runs
//! also cover the worker's fallback to its configured timeout. A start that
//! fails and a sweep that fails reach the invocation as its error.

use std::time::Duration;

use base64::Engine;
use relay_tests::app::unique_repo;
use relay_tests::fake::{FakeRegistry, Fault, Op};
use relay_tests::lambda::Emulator;
use relay_tests::runtime_api::{queue_arn, sqs_record};
use relay_tests::stack::{create_queue, create_queue_with_dlq, queue_depth};
use relay_tests::{harbor_push_event, image, now, planned_tasks, ImageKind, Stack, TempFile};
use serde_json::{json, Value};

/// The EMF documents among a function's output lines.
fn emf_lines(output: &str) -> Vec<Value> {
    output.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|v| v.get("_aws").is_some()).collect()
}

fn config_file(yaml: &str) -> TempFile {
    TempFile::new("lambda", "yaml", yaml)
}

/// Receives up to 10 messages, with every attribute (waiting up to 10 s
/// for the first).
async fn receive(sqs: &aws_sdk_sqs::Client, queue: &str) -> Vec<aws_sdk_sqs::types::Message> {
    relay_tests::runtime_api::receive_batch(sqs, queue, Duration::from_secs(10)).await
}

/// An HTTP request event (payload format 2.0) as a Function URL sends it
/// (`function_url`) or as an API Gateway HTTP API does, body base64-encoded.
fn http_v2_event(function_url: bool, auth: &str, body: &str) -> Value {
    let (domain, account, api) = match function_url {
        true => ("a1b2c3d4e5.lambda-url.us-east-1.on.aws", "anonymous", "a1b2c3d4e5"),
        false => ("k7x9q2w4e6.execute-api.us-east-1.amazonaws.com", "123456789012", "k7x9q2w4e6"),
    };
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/",
        "rawQueryString": "",
        "headers": {
            "content-type": "application/json",
            "authorization": auth,
            "host": domain,
            "user-agent": "Go-http-client/1.1",
            "x-forwarded-proto": "https"
        },
        "requestContext": {
            "accountId": account,
            "apiId": api,
            "domainName": domain,
            "domainPrefix": api,
            "http": { "method": "POST", "path": "/", "protocol": "HTTP/1.1", "sourceIp": "203.0.113.9", "userAgent": "Go-http-client/1.1" },
            "requestId": format!("req-{:08x}", rand::random::<u32>()),
            "routeKey": "$default",
            "stage": "$default",
            "time": "01/Dec/2026:12:00:00 +0000",
            "timeEpoch": now() * 1000
        },
        "body": base64::engine::general_purpose::STANDARD.encode(body),
        "isBase64Encoded": true
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_lambda_mode_answers_function_url_and_http_api_events() {
    let stack = Stack::load().unwrap();
    let sqs = stack.sqs().await;
    let queue = create_queue(&sqs, "lam-hook").await.unwrap();
    let config = config_file(&stack.config_yaml("  - name: all\n    destination: { registry: cluster1-registry }\n"));
    let emulator = Emulator::start().await;
    let function = emulator.spawn("webhook", &[("RELAY_CONFIG", config.arg()), ("RELAY_QUEUE_URL", queue.clone())]);

    let repo = unique_repo("lam-hook");
    let img = image::push(&stack.source(), &repo, "v1", ImageKind::OciIndex { platforms: 1 }, 1, 4096).await.unwrap();
    let body = harbor_push_event("PUSH_ARTIFACT", stack.source_host(), &repo, Some("v1"), &img.digest, now());

    // Through the emulator's Function URL: a plain HTTP request, as Harbor sends it.
    let http = reqwest::Client::new();
    let post = |auth: &str| {
        http.post(emulator.function_url())
            .header("content-type", "application/json")
            .header("authorization", auth.to_owned())
            .body(body.clone())
            .timeout(Duration::from_secs(60))
            .send()
    };
    assert_eq!(post("Bearer not-the-value").await.unwrap().status(), 401, "{}", function.output());
    let ok = post(&stack.webhook_auth).await.unwrap();
    assert_eq!(ok.status(), 202, "{}", function.output());
    let reply: Value = ok.json().await.unwrap();
    let mut expected = vec![reply["tasks"][0]["id"].as_str().unwrap().to_owned()];

    // The event shapes themselves, body base64-encoded.
    for function_url in [true, false] {
        let (status, answer) = emulator.invoke(&http_v2_event(function_url, &stack.webhook_auth, &body)).await;
        assert_eq!(status, 200, "{answer}\n{}", function.output());
        assert_eq!(answer["statusCode"], 202, "{answer}");
        let reply: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
        expected.push(reply["tasks"][0]["id"].as_str().unwrap().to_owned());
        let (_, refused) = emulator.invoke(&http_v2_event(function_url, "Bearer not-the-value", &body)).await;
        assert_eq!(refused["statusCode"], 401, "{refused}");
    }

    // Each accepted request enqueued its task, for the pushed digest.
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        let got = receive(&sqs, &queue).await;
        assert!(!got.is_empty(), "tasks missing: {seen:?} of {expected:?}");
        for m in got {
            let task = relay::Task::decode(m.body().unwrap()).unwrap();
            assert_eq!(task.source.digest.to_string(), img.digest);
            seen.push(task.id);
        }
    }
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected);
}

/// A destination that answers every request 429 with a Retry-After past
/// the invocation's end — its task fails with a backoff and is to come back
/// (a destination that does not answer at all would be parked) — and a
/// configuration with a rule into it (`limited`) and one into the stack's
/// registry (`up`), then `more`.
async fn up_and_limited(stack: &Stack, more: &str) -> (FakeRegistry, String) {
    let limited = FakeRegistry::start(false).await;
    for op in [Op::Ping, Op::HeadManifest, Op::PutManifest, Op::HeadBlob, Op::StartUpload] {
        limited.inject(op, Fault::Status(429, Some("600".into())), 1000);
    }
    let rules = format!("  - name: up\n    destination: {{ registry: cluster1-registry }}\n  - name: limited\n    destination: {{ registry: limited-registry }}\n{more}");
    let yaml = stack
        .config_yaml(&rules)
        .replace("rules:\n", &format!("  - name: limited-registry\n    url: {}\nrules:\n", limited.url));
    (limited, yaml)
}

/// One invocation of the worker function under the emulator with `event`
/// (SQS records of `queue`): its answer and its output.
async fn worker_invocation(config: &TempFile, queue: &str, dlq: &str, event: &Value) -> (Value, String) {
    let emulator = Emulator::start().await;
    let function = emulator.spawn(
        "worker",
        &[
            ("RELAY_CONFIG", config.arg()),
            ("RELAY_QUEUE_URL", queue.to_owned()),
            ("RELAY_DLQ_URL", dlq.to_owned()),
            // Short, so the 429's wait (capped at a minute) does not fit.
            ("RELAY_FUNCTION_TIMEOUT_SECONDS", "30".into()),
        ],
    );
    let (status, answer) = emulator.invoke(event).await;
    let logs = function.output();
    assert_eq!(status, 200, "{answer}\n{logs}");
    (answer, logs)
}

/// An SQS event record for a message received from LocalStack, as the
/// event source mapping delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_lambda_mode_reports_each_failed_message_of_its_batch() {
    let stack = Stack::load().unwrap();
    let sqs = stack.sqs().await;
    let (queue, dlq) = create_queue_with_dlq(&sqs, "lam-work", 5, 60).await.unwrap();
    let (_limited, yaml) = up_and_limited(&stack, "").await;
    let config = config_file(&yaml);
    let parsed = relay::Config::parse(&yaml).unwrap();

    let repo = unique_repo("lam-work");
    let img =
        image::push(&stack.source(), &repo, "v1", ImageKind::OciIndex { platforms: 2 }, 2, 64 * 1024).await.unwrap();
    let tasks = planned_tasks(&parsed, &stack, "PUSH_ARTIFACT", &repo, "v1", &img.digest);
    assert_eq!(tasks.len(), 2);
    let to = |registry: &str| tasks.iter().find(|t| t.destination.registry == registry).unwrap().clone();
    // A task for a registry the configuration does not name: dead-lettered
    // at once, so not reported for another delivery.
    let mut unknown = to("cluster1-registry");
    unknown.destination.registry = "nowhere".into();
    let mut ids = std::collections::HashMap::new();
    for (name, task) in [("up", to("cluster1-registry")), ("limited", to("limited-registry")), ("unknown", unknown)] {
        let sent = sqs.send_message().queue_url(&queue).message_body(task.encode()).send().await.unwrap();
        ids.insert(sent.message_id().unwrap().to_owned(), name);
    }
    let mut messages = Vec::new();
    while messages.len() < 3 {
        let got = receive(&sqs, &queue).await;
        assert!(!got.is_empty(), "messages missing");
        messages.extend(got);
    }
    let arn = queue_arn(&queue);
    let event = json!({ "Records": messages.iter().map(|m| sqs_record(m, &arn)).collect::<Vec<_>>() });

    let (answer, logs) = worker_invocation(&config, &queue, &dlq, &event).await;

    // Exactly the message whose destination refused for now comes back.
    let failed: Vec<&str> = answer["batchItemFailures"]
        .as_array()
        .unwrap_or_else(|| panic!("no batchItemFailures: {answer}"))
        .iter()
        .map(|f| ids[f["itemIdentifier"].as_str().unwrap()])
        .collect();
    assert_eq!(failed, vec!["limited"], "{answer}\n{logs}");
    // The copy is complete at the destination, digest for digest.
    assert_eq!(stack.target().digest_at(&repo, "v1").await.unwrap().as_deref(), Some(img.digest.as_str()));
    // The unknown registry's task is in the DLQ.
    let dead = receive(&sqs, &dlq).await;
    assert_eq!(dead.len(), 1, "{logs}");
    assert_eq!(relay::Task::decode(dead[0].body().unwrap()).unwrap().destination.registry, "nowhere");
    // Metrics per destination and rule; the dead-lettered task counts once
    // as a final failure, the one to be retried does not.
    let emf = emf_lines(&logs);
    let sliced = |outcome: &str, registry: &str, rule: &str| {
        emf.iter().any(|d| {
            d["Outcome"] == outcome
                && d["Registry"] == registry
                && d["Rule"] == rule
                && d["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
                    == json!([
                        ["Function", "Outcome"],
                        ["Function", "Outcome", "Registry"],
                        ["Function", "Outcome", "Rule"]
                    ])
        })
    };
    assert!(sliced("copied", "cluster1-registry", "up"), "{emf:?}");
    assert!(sliced("failed", "limited-registry", "limited"), "{emf:?}");
    // Counted once by registry and rule, and once by its cause.
    let finals: Vec<&Value> =
        emf.iter().filter(|d| d.get("FinalFailures").is_some() && d.get("Cause").is_none()).collect();
    assert_eq!(finals.len(), 1, "{emf:?}");
    assert_eq!((finals[0]["Registry"].as_str(), finals[0]["Rule"].as_str()), (Some("(unknown)"), Some("up")));
    let causes: Vec<&str> =
        emf.iter().filter(|d| d.get("FinalFailures").is_some()).filter_map(|d| d["Cause"].as_str()).collect();
    assert_eq!(causes, ["unknown_registry"], "{emf:?}");
    // The emulator's relative deadline was not taken for a past one.
    assert!(logs.contains("using the function timeout instead"), "{logs}");
    assert!(!logs.contains("stopped before the invocation deadline"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_lambda_mode_runs_a_pass_on_a_scheduled_event() {
    let stack = Stack::load().unwrap();
    let sqs = stack.sqs().await;
    let queue = create_queue(&sqs, "lam-rec").await.unwrap();
    let project = format!("lamrec-{:08x}", rand::random::<u32>());
    let config = config_file(&stack.config_yaml(&format!(
        "  - name: mirror\n    filters: {{ name: \"{project}/**\" }}\n    destination: {{ registry: cluster1-registry }}\n"
    )));
    let img =
        image::push(&stack.source(), &format!("{project}/app"), "v1", ImageKind::OciIndex { platforms: 1 }, 1, 4096)
            .await
            .unwrap();

    let emulator = Emulator::start().await;
    let function = emulator.spawn("reconcile", &[("RELAY_CONFIG", config.arg()), ("RELAY_QUEUE_URL", queue.clone())]);
    let scheduled = json!({
        "version": "0",
        "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": "2026-12-01T12:00:00Z",
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/harbor-relay-reconcile"],
        "detail": {}
    });
    let (status, summary) = emulator.invoke(&scheduled).await;
    assert_eq!(status, 200, "{summary}\n{}", function.output());
    assert_eq!(summary["tasks_enqueued"], 1, "{summary}");
    assert_eq!(summary["repositories"], 1, "{summary}");
    let emf = emf_lines(&function.output());
    let pass =
        emf.iter().find(|d| d["Function"] == "reconcile").unwrap_or_else(|| panic!("no reconcile metrics: {emf:?}"));
    assert_eq!((pass["DriftFound"].as_f64(), pass["TasksEnqueued"].as_f64()), (Some(1.0), Some(1.0)), "{pass}");
    assert_eq!(pass["RepositoriesScanned"].as_f64(), Some(1.0), "{pass}");
    let got = receive(&sqs, &queue).await;
    assert_eq!(got.len(), 1);
    let task = relay::Task::decode(got[0].body().unwrap()).unwrap();
    assert_eq!(task.source.digest.to_string(), img.digest);
    assert_eq!(task.destination.repository.to_string(), format!("{project}/app"));

    // A rule added to the configuration is used by the next run, without
    // a restart: the version is checked at every run.
    let second = format!("{project}-more");
    image::push(&stack.source(), &format!("{second}/tool"), "v1", ImageKind::OciImage, 1, 1024).await.unwrap();
    std::fs::write(
        config.path(),
        stack.config_yaml(&format!(
            "  - name: mirror\n    filters: {{ name: \"{project}/**\" }}\n    destination: {{ registry: cluster1-registry }}\n  - name: more\n    filters: {{ name: \"{second}/**\" }}\n    destination: {{ registry: cluster1-registry }}\n"
        )),
    )
    .unwrap();
    let (status, summary) = emulator.invoke(&scheduled).await;
    assert_eq!(status, 200, "{summary}\n{}", function.output());
    assert_eq!(summary["repositories"], 2, "the new rule's repository too: {summary}");
    assert!(function.output().contains("configuration changed: read again"), "{}", function.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_init_failure_reaches_the_invocation() {
    let stack = Stack::load().unwrap();
    let sqs = stack.sqs().await;
    let queue = create_queue(&sqs, "lam-init").await.unwrap();
    // A rule naming a registry the configuration lacks: refused at start.
    let config = config_file(&stack.config_yaml("  - name: all\n    destination: { registry: not-configured }\n"));
    let emulator = Emulator::start().await;
    // The emulator answers an init error to an invocation that is already
    // waiting (on AWS the failed init fails the invocation that caused
    // it); it offers no way to see that one waits, hence the pause.
    let event = http_v2_event(true, &stack.webhook_auth, "{}");
    let invocation = tokio::spawn({
        let port = emulator.port;
        async move {
            reqwest::Client::new()
                .post(format!("http://127.0.0.1:{port}/2015-03-31/functions/_/invocations"))
                .json(&event)
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut function = emulator.spawn("webhook", &[("RELAY_CONFIG", config.arg()), ("RELAY_QUEUE_URL", queue)]);
    let code = function.exited(Duration::from_secs(30)).await;
    assert_ne!(code, Some(0), "{}", function.output());
    let answer = invocation.await.unwrap();
    assert_eq!(answer["errorType"], "Runtime.InitError", "{answer}");
    let message = answer["errorMessage"].as_str().unwrap();
    assert!(message.contains("not-configured"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sweep_is_the_invocations_error() {
    let stack = Stack::load().unwrap();
    let project = format!("lamerr-{:08x}", rand::random::<u32>());
    let config = config_file(&stack.config_yaml(&format!(
        "  - name: mirror\n    filters: {{ name: \"{project}/**\" }}\n    destination: {{ registry: cluster1-registry }}\n"
    )));
    image::push(&stack.source(), &format!("{project}/app"), "v1", ImageKind::OciImage, 1, 512).await.unwrap();
    // A queue that does not exist: the pass finds its task and cannot enqueue it.
    let missing = format!("{}/000000000000/lam-missing-{project}", std::env::var("AWS_ENDPOINT_URL").unwrap());
    let emulator = Emulator::start().await;
    let function = emulator.spawn("reconcile", &[("RELAY_CONFIG", config.arg()), ("RELAY_QUEUE_URL", missing)]);
    let (status, answer) =
        emulator.invoke(&json!({ "detail-type": "Scheduled Event", "source": "aws.events", "detail": {} })).await;
    assert_eq!(status, 500, "{answer}\n{}", function.output());
    let message = answer["errorMessage"].as_str().unwrap_or_default();
    assert!(message.contains("could not be enqueued") && message.contains("QueueDoesNotExist"), "{answer}");
}

/// Lambda kills a function at its timeout without a signal; every message
/// of an invocation that did not answer comes back, its finished
/// neighbours' too, and a task that never ends in time is dead-lettered
/// without a reason. Here a Runtime API kills the worker at each deadline
/// as AWS does, and the event source mapping deletes what the answers do
/// not report failed. A bandwidth-limited image whose layers cannot all
/// fit one invocation shares its first batch with quick ones: the worker
/// cuts the upload in flight before the deadline, answers, and continues
/// the long task in a fresh message. Nothing is killed, no message is
/// delivered twice, nothing is dead-lettered, every image arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_under_lambdas_hard_kill_loses_no_finished_message() {
    use relay_tests::runtime_api::{receive_batch, Ended, KillingRuntime};
    let stack = Stack::load().unwrap();
    let sqs = stack.sqs().await;
    // A short visibility: a batch lost to a kill comes back within the test.
    let (queue, dlq) = create_queue_with_dlq(&sqs, "lam-kill", 3, 5).await.unwrap();
    // 256 KiB layers at 800 kbit/s, one at a time: about 2.6 s each, in
    // invocations of 4 s (no blob starts in the last second; the cut comes
    // a third of that before the end). A layer is always in flight at the
    // deadline.
    let rules = "  - name: quick\n    filters: { name: '**/quick' }\n    destination: { registry: cluster1-registry }\n  \
                 - name: slow\n    filters: { name: '**/slow' }\n    destination: { registry: cluster1-registry }\n    bandwidth_kbps: 800\n";
    let yaml = format!("{}worker: {{ blob_concurrency: 1 }}\n", stack.config_yaml(rules));
    let config = config_file(&yaml);
    let parsed = relay::Config::parse(&yaml).unwrap();
    let mut images = Vec::new();
    for (name, layers, size) in
        [("slow", 3, 256 * 1024), ("quick", 1, 16 * 1024), ("quick", 1, 16 * 1024), ("quick", 2, 16 * 1024)]
    {
        let repo = unique_repo(name);
        let img = image::push(&stack.source(), &repo, "v1", ImageKind::OciImage, layers, size).await.unwrap();
        let tasks = planned_tasks(&parsed, &stack, "PUSH_ARTIFACT", &repo, "v1", &img.digest);
        assert_eq!(tasks.len(), 1, "{repo}: one rule each");
        sqs.send_message().queue_url(&queue).message_body(tasks[0].encode()).send().await.unwrap();
        images.push((repo, img.digest));
    }
    // The first batch holds them all, as one receive of the event source
    // mapping would.
    let mut first = Vec::new();
    while first.len() < images.len() {
        let got = receive_batch(&sqs, &queue, Duration::from_secs(5)).await;
        assert!(!got.is_empty(), "messages missing");
        first.extend(got);
    }
    let envs = [("RELAY_CONFIG", config.arg()), ("RELAY_QUEUE_URL", queue.clone()), ("RELAY_DLQ_URL", dlq.clone())];
    let mut function = KillingRuntime::start("worker", &envs, Duration::from_secs(4)).await;
    let deliveries = until_all_arrived(&stack, &sqs, &queue, &mut function, first, &images).await;
    let logs = function.output();
    assert_eq!(function.kills, 0, "an invocation ran into Lambda's kill: {deliveries:?}\n{logs}");
    assert!(deliveries.iter().all(|d| matches!(d.ended, Ended::Answered(_))), "{deliveries:?}\n{logs}");
    // No message was delivered twice: what finished was deleted at once.
    let mut ids: Vec<&String> = deliveries.iter().flat_map(|d| &d.ids).collect();
    let delivered = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), delivered, "a message came back: {deliveries:?}\n{logs}");
    // The long task was cut and continued, not finished in one run.
    assert!(deliveries.len() >= 2, "{deliveries:?}\n{logs}");
    assert!(logs.contains("cut at the invocation deadline"), "{logs}");
    assert!(receive_batch(&sqs, &dlq, Duration::from_secs(1)).await.is_empty(), "dead-lettered: {logs}");
}

/// Lambda's event source mapping over `queue` until every image of
/// `images` (repository, digest) is at the target under `v1` and the queue
/// is empty, starting with the batch `first`; fails after 90 s.
async fn until_all_arrived(
    stack: &Stack,
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    function: &mut relay_tests::runtime_api::KillingRuntime,
    first: Vec<aws_sdk_sqs::types::Message>,
    images: &[(String, String)],
) -> Vec<relay_tests::runtime_api::Delivery> {
    use relay_tests::runtime_api::{deliver, receive_batch};
    let mut deliveries = vec![deliver(sqs, queue, function, &first).await];
    let started = std::time::Instant::now();
    loop {
        let mut arrived = 0;
        for (repo, digest) in images {
            arrived += usize::from(stack.target().digest_at(repo, "v1").await.unwrap().as_deref() == Some(digest));
        }
        let depth = relay_tests::stack::queue_depth(sqs, queue).await.unwrap();
        if arrived == images.len() && depth == (0, 0, 0) {
            return deliveries;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{arrived} of {} images arrived, queue {depth:?}; deliveries {deliveries:?}\n{}",
            images.len(),
            function.output()
        );
        let batch = receive_batch(sqs, queue, Duration::from_secs(1)).await;
        if !batch.is_empty() {
            deliveries.push(deliver(sqs, queue, function, &batch).await);
        }
    }
}

/// A layer longer than one invocation: its rule's bandwidth limit makes
/// one 1 MiB layer take about 10.5 s, and every invocation lasts 6 s and is
/// killed at its end. The worker sends it in chunks a next run can go on
/// with; each run is cut before the kill with its upload's session, offset
/// and hash in the continuation, and the next asks the registry for the
/// session's range and goes on from there. It arrives digest-identical,
/// nothing killed or dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_longer_than_an_invocation_arrives_over_several() {
    use relay_tests::runtime_api::{receive_batch, KillingRuntime};
    let stack = Stack::load().unwrap();
    let sqs = stack.sqs().await;
    let (queue, dlq) = create_queue_with_dlq(&sqs, "lam-resume", 3, 5).await.unwrap();
    let rules = "  - name: slow\n    destination: { registry: cluster1-registry }\n    bandwidth_kbps: 800\n";
    let yaml = format!("{}worker: {{ blob_concurrency: 1 }}\n", stack.config_yaml(rules));
    let config = config_file(&yaml);
    let parsed = relay::Config::parse(&yaml).unwrap();
    let repo = unique_repo("long-layer");
    let img = image::push(&stack.source(), &repo, "v1", ImageKind::OciImage, 1, 1024 * 1024).await.unwrap();
    let task = planned_tasks(&parsed, &stack, "PUSH_ARTIFACT", &repo, "v1", &img.digest).remove(0);
    sqs.send_message().queue_url(&queue).message_body(task.encode()).send().await.unwrap();
    let first = receive_batch(&sqs, &queue, Duration::from_secs(5)).await;
    assert_eq!(first.len(), 1);
    let envs = [("RELAY_CONFIG", config.arg()), ("RELAY_QUEUE_URL", queue.clone()), ("RELAY_DLQ_URL", dlq.clone())];
    let mut function = KillingRuntime::start("worker", &envs, Duration::from_secs(6)).await;
    let images = [(repo.clone(), img.digest.clone())];
    let deliveries = until_all_arrived(&stack, &sqs, &queue, &mut function, first, &images).await;
    let logs = function.output();
    assert_eq!(function.kills, 0, "{deliveries:?}\n{logs}");
    assert!(deliveries.len() >= 2, "more than one invocation: {deliveries:?}");
    assert!(logs.contains("going on with the upload an earlier run left"), "{logs}");
    assert!(!logs.contains("starting over"), "no run started the layer over: {logs}");
    assert_eq!(stack.target().tree(&repo, "v1").await.unwrap(), stack.source().tree(&repo, "v1").await.unwrap());
    assert!(receive_batch(&sqs, &dlq, Duration::from_secs(1)).await.is_empty(), "dead-lettered: {logs}");
}

/// Under Lambda, a push into two registries comes as one message (a
/// bundle): the invocation copies into the one that answers and settles the
/// other's failure apart — a fresh message holding that task alone, its
/// attempt counted — so the bundle is not reported for another delivery
/// and the finished copy is not repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_lambda_mode_settles_a_bundles_failed_member_apart() {
    let stack = Stack::load().unwrap();
    let sqs = stack.sqs().await;
    let (queue, dlq) = create_queue_with_dlq(&sqs, "lam-bundle", 5, 60).await.unwrap();
    let (_limited, yaml) = up_and_limited(&stack, "worker: { retry_base_seconds: 1, retry_max_seconds: 2 }\n").await;
    let config = config_file(&yaml);
    let parsed = relay::Config::parse(&yaml).unwrap();
    let repo = unique_repo("lam-bundle");
    let img = image::push(&stack.source(), &repo, "v1", ImageKind::OciImage, 2, 64 * 1024).await.unwrap();
    let tasks = planned_tasks(&parsed, &stack, "PUSH_ARTIFACT", &repo, "v1", &img.digest);
    relay::queue::TaskQueue::new(sqs.clone(), queue.clone()).send_now(&tasks).await.unwrap();
    let messages = receive(&sqs, &queue).await;
    assert_eq!(messages.len(), 1, "one message for both destinations");
    assert_eq!(relay::bundle::tasks_in(messages[0].body().unwrap()).len(), 2);
    let event = json!({ "Records": [sqs_record(&messages[0], &queue_arn(&queue))] });

    let (answer, logs) = worker_invocation(&config, &queue, &dlq, &event).await;
    let reported = answer["batchItemFailures"].as_array().map_or(0, Vec::len);
    assert_eq!(reported, 0, "the bundle is settled, not redelivered: {answer}\n{logs}");
    assert_eq!(stack.target().digest_at(&repo, "v1").await.unwrap().as_deref(), Some(img.digest.as_str()));
    // The limited registry's task goes on alone after its backoff (≤ 2 s).
    let again = receive(&sqs, &queue).await;
    assert_eq!(again.len(), 1, "{logs}");
    let task = relay::Task::decode(again[0].body().unwrap()).expect("the member alone");
    assert_eq!(task.destination.registry, "limited-registry");
    let tried = again[0].message_attributes().and_then(|a| a.get(relay::message::TRIED_BEFORE));
    assert_eq!(tried.and_then(|v| v.string_value()), Some("1"), "its attempt is counted");
    assert_eq!(queue_depth(&sqs, &dlq).await.unwrap(), (0, 0, 0), "nothing dead-lettered");
}
