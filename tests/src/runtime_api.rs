//! Lambda as it treats a function at its timeout, which cargo-lambda's
//! emulator ([`crate::lambda`]) does not model: a Runtime API that sends
//! each invocation a real deadline (epoch milliseconds, as AWS does) and
//! kills the function's process with SIGKILL — no signal to catch, no
//! chance to answer — when the deadline passes without an answer; the
//! next invocation starts a fresh process (a cold start). Beside it, the
//! SQS event source mapping as AWS runs it: receive a batch, invoke, delete
//! the messages the answer does not report failed; after a kill or an
//! error, delete nothing (the batch comes back after its visibility).
//!
//! Loopback only; everything stops when dropped.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    /// The function answered before its deadline.
    Answered(Value),
    /// The function reported an error (`/error`, or `/init/error`).
    Error(Value),
    /// The deadline passed first: the process was killed.
    Killed,
}

struct Invocation {
    id: String,
    event: Value,
    timeout: Duration,
    /// Told when the function takes the invocation: its deadline runs from
    /// there, as on AWS (a cold start's init has its own 10 s).
    taken: oneshot::Sender<tokio::time::Instant>,
}

/// Lambda's limit on a function's initialisation.
const INIT_LIMIT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Pending {
    /// Invocations handed to the function, waiting for its answer.
    answers: HashMap<String, oneshot::Sender<Ended>>,
    /// The function failed its start: every invocation of this process
    /// ends with that error.
    init_error: Option<Value>,
}

#[derive(Clone)]
struct Api {
    next: Arc<tokio::sync::Mutex<mpsc::Receiver<Invocation>>>,
    pending: Arc<Mutex<Pending>>,
}

/// A function process under a Runtime API that kills it at its deadline.
pub struct KillingRuntime {
    port: u16,
    invocations: mpsc::Sender<Invocation>,
    pending: Arc<Mutex<Pending>>,
    server: tokio::task::JoinHandle<()>,
    binary: PathBuf,
    envs: Vec<(String, String)>,
    timeout: Duration,
    child: Option<Child>,
    log: PathBuf,
    /// Processes killed at their deadline so far.
    pub kills: u32,
    /// Processes started so far (cold starts).
    pub starts: u32,
}

impl KillingRuntime {
    /// Serves the Runtime API on a loopback port for the workspace binary
    /// `name`, started with `envs` and told its `timeout`
    /// (`RELAY_FUNCTION_TIMEOUT_SECONDS`), as the template's `Timeout` is.
    pub async fn start(name: &str, envs: &[(&str, String)], timeout: Duration) -> KillingRuntime {
        let (invocations, rx) = mpsc::channel(1);
        let pending = Arc::new(Mutex::new(Pending::default()));
        let api = Api { next: Arc::new(tokio::sync::Mutex::new(rx)), pending: pending.clone() };
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(api);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let mut envs: Vec<(String, String)> = envs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        envs.push(("RELAY_FUNCTION_TIMEOUT_SECONDS".into(), timeout.as_secs().to_string()));
        let log = std::env::temp_dir().join(format!("relay-killing-{name}-{port}-{}.log", crate::now()));
        KillingRuntime {
            port,
            invocations,
            pending,
            server,
            binary: crate::workspace_binary(name),
            envs,
            timeout,
            child: None,
            log,
            kills: 0,
            starts: 0,
        }
    }

    /// The function's timeout: each invocation is killed when it has not
    /// answered by then.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The file the function's processes write to (removed when dropped).
    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    /// Everything the function's processes wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines the function logged at WARN or ERROR (or that are
    /// not JSON: a panic): a failed assertion's message short enough to be
    /// read whole where output is cut.
    pub fn problems(&self, n: usize) -> String {
        let output = self.output();
        let lines: Vec<&str> = output
            .lines()
            .filter(|l| match serde_json::from_str::<Value>(l) {
                Ok(v) => matches!(v["level"].as_str(), Some("WARN" | "ERROR")),
                Err(_) => !l.trim().is_empty(),
            })
            .collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn ensure_started(&mut self) {
        if self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none()) {
            return;
        }
        self.pending.lock().unwrap().init_error = None;
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut c = Command::new(&self.binary);
        c.env("AWS_LAMBDA_RUNTIME_API", format!("http://127.0.0.1:{}", self.port))
            .env("AWS_LAMBDA_FUNCTION_NAME", "killing")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        self.child = Some(c.spawn().expect("start the function"));
        self.starts += 1;
    }

    /// Invokes the function with `event`; kills its process (SIGKILL) if
    /// no answer came by the deadline.
    pub async fn invoke(&mut self, event: Value) -> Ended {
        self.ensure_started();
        let id = format!("{:032x}", rand::random::<u128>());
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().answers.insert(id.clone(), tx);
        let (taken_tx, taken) = oneshot::channel();
        let invocation = Invocation { id: id.clone(), event, timeout: self.timeout, taken: taken_tx };
        let init_until = tokio::time::Instant::now() + INIT_LIMIT;
        let sent = tokio::time::timeout_at(init_until, async {
            self.invocations.send(invocation).await.ok()?;
            taken.await.ok()
        });
        let ended = match sent.await {
            Ok(Some(at)) => tokio::time::timeout_at(at + self.timeout, rx).await.ok().and_then(Result::ok),
            _ => None,
        };
        self.pending.lock().unwrap().answers.remove(&id);
        match ended {
            Some(e) => e,
            None => {
                // Lambda's hard stop: no signal the runtime can handle.
                if let Some(mut c) = self.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                self.kills += 1;
                Ended::Killed
            }
        }
    }
}

impl Drop for KillingRuntime {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.server.abort();
        let _ = std::fs::remove_file(&self.log);
    }
}

async fn next(State(api): State<Api>) -> (StatusCode, HeaderMap, String) {
    let Some(inv) = api.next.lock().await.recv().await else {
        return (StatusCode::GONE, HeaderMap::new(), String::new());
    };
    let taken = tokio::time::Instant::now();
    let deadline = SystemTime::now() + inv.timeout;
    let deadline_ms = deadline.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default();
    let _ = inv.taken.send(taken);
    let mut h = HeaderMap::new();
    let value = |s: &str| HeaderValue::from_str(s).unwrap();
    h.insert("lambda-runtime-aws-request-id", value(&inv.id));
    h.insert("lambda-runtime-deadline-ms", value(&deadline_ms.to_string()));
    h.insert("lambda-runtime-invoked-function-arn", value("arn:aws:lambda:us-east-1:123456789012:function:killing"));
    h.insert("lambda-runtime-trace-id", value("Root=1-00000000-000000000000000000000000;Sampled=0"));
    h.insert("content-type", value("application/json"));
    // An init error before this invocation: it ends with it.
    let init_error = api.pending.lock().unwrap().init_error.clone();
    if let Some(e) = init_error {
        finish(&api, &inv.id, Ended::Error(e));
    }
    (StatusCode::OK, h, inv.event.to_string())
}

fn finish(api: &Api, id: &str, ended: Ended) {
    if let Some(tx) = api.pending.lock().unwrap().answers.remove(id) {
        let _ = tx.send(ended);
    }
}

fn parsed(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()))
}

async fn response(State(api): State<Api>, Path(id): Path<String>, body: String) -> StatusCode {
    finish(&api, &id, Ended::Answered(parsed(&body)));
    StatusCode::ACCEPTED
}

async fn error(State(api): State<Api>, Path(id): Path<String>, body: String) -> StatusCode {
    finish(&api, &id, Ended::Error(parsed(&body)));
    StatusCode::ACCEPTED
}

async fn init_error(State(api): State<Api>, body: String) -> StatusCode {
    let e = parsed(&body);
    let mut pending = api.pending.lock().unwrap();
    for (_, tx) in pending.answers.drain() {
        let _ = tx.send(Ended::Error(e.clone()));
    }
    pending.init_error = Some(e);
    StatusCode::ACCEPTED
}

/// An SQS record as Lambda's event source mapping hands it to a function.
pub fn sqs_record(m: &aws_sdk_sqs::types::Message, queue_arn: &str) -> Value {
    let attributes: serde_json::Map<String, Value> = m
        .attributes()
        .map(|a| a.iter().map(|(k, v)| (k.as_str().to_owned(), Value::String(v.clone()))).collect())
        .unwrap_or_default();
    let message_attributes: serde_json::Map<String, Value> = m
        .message_attributes()
        .map(|a| {
            a.iter()
                .map(|(k, v)| {
                    let value = json!({
                        "stringValue": v.string_value(),
                        "stringListValues": [],
                        "binaryListValues": [],
                        "dataType": v.data_type()
                    });
                    (k.clone(), value)
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "messageId": m.message_id(),
        "receiptHandle": m.receipt_handle(),
        "body": m.body(),
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": m.md5_of_body(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": "us-east-1"
    })
}

/// The queue's ARN as LocalStack names it (the event source's, in records).
pub fn queue_arn(queue_url: &str) -> String {
    format!("arn:aws:sqs:us-east-1:000000000000:{}", queue_url.rsplit('/').next().unwrap_or_default())
}

/// One batch as the event source mapping delivered it, and its end.
#[derive(Debug)]
pub struct Delivery {
    /// The batch's message ids.
    pub ids: Vec<String>,
    pub ended: Ended,
}

/// Lambda's SQS event source mapping (partial batch responses on): hands
/// `batch` to the function, then deletes every message its answer does not
/// report failed. A kill or an error deletes nothing: SQS delivers the
/// whole batch again after its visibility timeout.
pub async fn deliver(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    function: &mut KillingRuntime,
    batch: &[aws_sdk_sqs::types::Message],
) -> Delivery {
    let arn = queue_arn(queue_url);
    let event = json!({ "Records": batch.iter().map(|m| sqs_record(m, &arn)).collect::<Vec<_>>() });
    let ended = function.invoke(event).await;
    if let Ended::Answered(answer) = &ended {
        let failed: Vec<&str> = answer["batchItemFailures"]
            .as_array()
            .map(|a| a.iter().filter_map(|f| f["itemIdentifier"].as_str()).collect())
            .unwrap_or_default();
        for m in batch.iter().filter(|m| !failed.contains(&m.message_id().unwrap_or_default())) {
            sqs.delete_message().queue_url(queue_url).receipt_handle(m.receipt_handle().unwrap()).send().await.unwrap();
        }
    }
    Delivery { ids: batch.iter().filter_map(|m| m.message_id().map(str::to_owned)).collect(), ended }
}

/// Receives up to 10 messages, with every attribute, waiting up to `wait`.
pub async fn receive_batch(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    wait: Duration,
) -> Vec<aws_sdk_sqs::types::Message> {
    sqs.receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(10)
        .wait_time_seconds(wait.as_secs() as i32)
        .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
        .message_attribute_names("All")
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default()
}
