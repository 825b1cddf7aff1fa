//! An in-process relay for end-to-end tests: the webhook's real HTTP server
//! on port 0 and, optionally, the worker's real SQS poller, both on a fresh
//! LocalStack queue. The same library calls the binaries make.

use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::poller::PollOptions;
use relay::queue::TaskQueue;
use relay::registry::retry::RetryPolicy;
use relay::settle::{Settler, Timing};
use relay::webhook::WebhookOptions;
use relay::{bootstrap, Config};
use tokio::sync::oneshot;

use crate::stack::create_queue;
use crate::{harbor_push_event, now, Stack};

/// One rule replicating everything to `cluster1-registry`.
pub const ALL_TO_CLUSTER1: &str = "  - name: everything\n    destination: { registry: cluster1-registry }\n";

/// Retries short enough for tests.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        base: Duration::from_millis(20),
        cap: Duration::from_millis(200),
        max_retry_after: Duration::from_secs(2),
    }
}

pub struct AppBuilder {
    config: String,
    worker: bool,
    options: WebhookOptions,
    queue_url: Option<String>,
    sqs_endpoint: Option<String>,
    secrets_manager: bool,
}

pub struct App {
    pub stack: Stack,
    pub config: Arc<Config>,
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    pub webhook_url: String,
    pub http: reqwest::Client,
    /// The in-process worker, when the app has one.
    pub worker: Option<Arc<relay::worker::Worker>>,
    _stop: Vec<oneshot::Sender<()>>,
}

impl AppBuilder {
    /// `rules` are YAML list items appended to the stack's configuration.
    pub fn rules(rules: &str) -> AppBuilder {
        let stack = Stack::load().expect("local stack");
        AppBuilder::config(stack.config_yaml(rules))
    }

    /// A whole configuration document.
    pub fn config(config: String) -> AppBuilder {
        AppBuilder {
            config,
            worker: false,
            options: WebhookOptions { untagged_delay: Duration::ZERO, ..Default::default() },
            queue_url: None,
            sqs_endpoint: None,
            secrets_manager: false,
        }
    }

    pub fn with_worker(mut self) -> Self {
        self.worker = true;
        self
    }

    pub fn untagged_delay(mut self, d: Duration) -> Self {
        self.options.untagged_delay = d;
        self
    }

    pub fn enqueue_timeout(mut self, d: Duration) -> Self {
        self.options.enqueue_timeout = d;
        self
    }

    /// Send the webhook's SQS calls to this endpoint instead of LocalStack's
    /// (e.g. one that never answers).
    pub fn sqs_endpoint(mut self, url: &str) -> Self {
        self.sqs_endpoint = Some(url.to_owned());
        self
    }

    /// Use this queue URL instead of creating one (e.g. one that does not exist).
    pub fn queue_url(mut self, url: &str) -> Self {
        self.queue_url = Some(url.to_owned());
        self
    }

    /// Resolve secrets through LocalStack's Secrets Manager too.
    pub fn secrets_manager(mut self) -> Self {
        self.secrets_manager = true;
        self
    }

    pub async fn spawn(self) -> App {
        let stack = Stack::load().expect("local stack");
        let aws = stack.aws_config().await;
        let (sqs, sm) = (aws_sdk_sqs::Client::new(&aws), aws_sdk_secretsmanager::Client::new(&aws));
        let queue_url = match self.queue_url {
            Some(u) => u,
            None => create_queue(&sqs, "e2e").await.unwrap(),
        };
        let config = Arc::new(Config::parse(&self.config).unwrap());
        let secrets = stack.secrets(self.secrets_manager.then_some(sm));
        let queue = TaskQueue::new(sqs.clone(), queue_url.clone());
        let webhook_queue = match &self.sqs_endpoint {
            Some(endpoint) => {
                let conf = sqs.config().to_builder().endpoint_url(endpoint).build();
                TaskQueue::new(aws_sdk_sqs::Client::from_conf(conf), queue_url.clone())
            }
            None => queue.clone(),
        };
        let webhook =
            Arc::new(bootstrap::webhook(config.clone(), &secrets, webhook_queue, self.options).await.unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let webhook_url = format!("http://{}/", listener.local_addr().unwrap());
        let (stop_web, rx) = oneshot::channel::<()>();
        tokio::spawn(relay::server::serve(listener, webhook, async move {
            let _ = rx.await;
        }));
        let mut stop = vec![stop_web];
        let mut shared_worker = None;
        if self.worker {
            let worker = Arc::new(bootstrap::worker(&config, &secrets, fast_retry()).await.unwrap());
            shared_worker = Some(worker.clone());
            let (tx, rx) = oneshot::channel::<()>();
            // Settled as the binary settles them (this queue has no DLQ).
            let timing = Timing::from_settings(&config.worker);
            let settler = Settler::new(sqs.clone(), Some(queue_url.clone()), None, timing);
            tokio::spawn(async move {
                relay::poller::poll(&queue, &worker, Some(&settler), &PollOptions::default(), async move {
                    let _ = rx.await;
                })
                .await
            });
            stop.push(tx);
        }
        App {
            stack,
            config,
            sqs,
            queue_url,
            webhook_url,
            http: reqwest::Client::new(),
            worker: shared_worker,
            _stop: stop,
        }
    }
}

impl App {
    pub async fn post(&self, auth: Option<&str>, content_type: &str, body: String) -> (u16, serde_json::Value) {
        let mut req = self.http.post(&self.webhook_url).header("content-type", content_type).body(body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// POSTs a Default-format event of `kind` with the right credentials.
    pub async fn event(&self, kind: &str, repo: &str, tag: Option<&str>, digest: &str) -> (u16, serde_json::Value) {
        let body = harbor_push_event(kind, self.stack.source_host(), repo, tag, digest, now());
        self.post(Some(&self.stack.webhook_auth), "application/json", body).await
    }

    pub async fn push_event(&self, repo: &str, tag: Option<&str>, digest: &str) -> (u16, serde_json::Value) {
        self.event("PUSH_ARTIFACT", repo, tag, digest).await
    }

    /// Waits until the target serves `reference` in `repo`. A read that
    /// fails counts as not there yet: distribution's filesystem storage can
    /// answer 500 to a manifest read that races the manifest's write.
    pub async fn wait_at_target(&self, repo: &str, reference: &str) {
        let target = self.stack.target();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let last = match target.get_manifest(repo, reference).await {
                Ok(Some(_)) => return,
                Ok(None) => "not found".to_owned(),
                Err(e) => e.to_string(),
            };
            assert!(Instant::now() < deadline, "{repo}:{reference} never reached the target ({last})");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the target no longer serves `reference` in `repo`.
    pub async fn wait_gone_at_target(&self, repo: &str, reference: &str) {
        let target = self.stack.target();
        let deadline = Instant::now() + Duration::from_secs(60);
        while target.get_manifest(repo, reference).await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "{repo}:{reference} never left the target");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// (visible, in flight, delayed) on this app's queue.
    pub async fn depth(&self) -> (u64, u64, u64) {
        crate::stack::queue_depth(&self.sqs, &self.queue_url).await.unwrap()
    }
}

/// A repository path no other test uses: `e2e-<hex>/<name>`.
pub fn unique_repo(name: &str) -> String {
    use rand::Rng;
    format!("e2e-{:08x}/{name}", rand::thread_rng().gen::<u32>())
}

/// A copy task of `img`'s tag `v1` into `registry`'s `dst_repo`, as a
/// rule named `test` plans it.
pub fn copy_task(img: &crate::GeneratedImage, registry: &str, dst_repo: &str) -> relay::Task {
    copy_task_of(img, registry, dst_repo, &["v1"])
}

/// [`copy_task`] for the tags `tags` (the same at both ends).
pub fn copy_task_of(img: &crate::GeneratedImage, registry: &str, dst_repo: &str, tags: &[&str]) -> relay::Task {
    use relay::task::{Action, CopyOptions, DestinationArtifact, EventRef, SourceArtifact, TASK_VERSION};
    relay::Task {
        version: TASK_VERSION,
        id: format!("t-{dst_repo}"),
        action: Action::Copy,
        source: SourceArtifact {
            repository: img.repository.parse().unwrap(),
            digest: img.digest.parse().unwrap(),
            tags: tags.iter().map(|t| t.parse().unwrap()).collect(),
        },
        destination: DestinationArtifact {
            registry: registry.into(),
            repository: dst_repo.parse().unwrap(),
            tags: tags.iter().map(|t| t.parse().unwrap()).collect(),
        },
        rules: vec!["test".into()],
        options: CopyOptions { override_existing: true, bandwidth_kbps: None, refresh_referrers: false },
        event: EventRef { key: "k".into(), occurred_at: 0, operator: "admin".into() },
    }
}
