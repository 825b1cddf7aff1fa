//! One budget of failed sends per blob, shared by the client's request
//! retries and the copy's re-opens of the source: a request that keeps
//! failing is sent at most the budget's number of times for the blob,
//! counted at the in-process fake registry, and transient failures within
//! it still end in a copy.

use relay::registry::Outcome;
use relay::secrets::SecretSource;
use relay::task::Task;
use relay::worker::Worker;
use relay::{bootstrap, Config};
use relay_tests::app::{fast_retry, unique_repo};
use relay_tests::fake::{FakeRegistry, Fault, Op};
use relay_tests::{image, GeneratedImage, ImageKind, PlainRegistry};

/// A worker copying one blob at a time: the first blob that fails for
/// good ends the task before another starts, so the fake's counts are one
/// blob's.
async fn worker(source: &FakeRegistry, destination: &FakeRegistry) -> Worker {
    let yaml = format!(
        "source: {{ url: {} }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: dst, url: {} }}\nworker: {{ blob_concurrency: 1 }}\n",
        source.url, destination.url
    );
    let config = Config::parse(&yaml).unwrap();
    bootstrap::worker(&config, &SecretSource::from_process(None), fast_retry()).await.unwrap()
}

fn task(img: &GeneratedImage, repo: &str) -> Task {
    relay_tests::app::copy_task(img, "dst", repo)
}

/// A source holding a one-layer image (a config and a layer: two blobs),
/// and an empty destination.
async fn registries(name: &str) -> (FakeRegistry, FakeRegistry, GeneratedImage, String) {
    let (src, dst) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    let repo = unique_repo(name);
    let img =
        image::push(&PlainRegistry::new(&src.url, None), &repo, "v1", ImageKind::OciImage, 1, 16 * 1024).await.unwrap();
    assert_eq!(img.blobs.len(), 2);
    (src, dst, img, repo)
}

/// An upload session the destination never opens: the client resends the
/// `POST` while its attempts last, the copy then re-opens the blob and the
/// client resends again, all from one count — the budget's sends per blob,
/// where request retries inside blob retries once sent attempts².
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_always_fails_is_sent_at_most_the_budget() {
    let (src, dst, img, repo) = registries("budget-post").await;
    dst.inject(Op::StartUpload, Fault::Status(500, None), 1000);
    let w = worker(&src, &dst).await;
    assert!(w.run(&task(&img, &repo)).await.is_err());
    let policy = fast_retry();
    let budget = policy.blob_budget().sends() as usize;
    assert!(budget < (policy.attempts * policy.attempts) as usize, "fewer than retries inside retries");
    assert_eq!(dst.count(Op::StartUpload), budget, "the blob's POSTs: its budget, both layers together");
    assert!(!dst.has_manifest(&repo, "v1"));
}

/// A commit (`PUT`) that always fails is a one-shot request the client
/// does not resend: the copy's re-opens spend the budget, within the
/// policy's attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_always_fails_is_sent_within_the_budget() {
    let (src, dst, img, repo) = registries("budget-put").await;
    dst.inject(Op::PutUpload, Fault::Status(500, None), 1000);
    let w = worker(&src, &dst).await;
    assert!(w.run(&task(&img, &repo)).await.is_err());
    let policy = fast_retry();
    let sent = dst.count(Op::PutUpload);
    assert!(sent <= policy.blob_budget().sends() as usize, "{sent}");
    assert_eq!(sent, policy.attempts as usize, "re-opened while the attempts last");
}

/// Failures fewer than a blob's budget, wherever they land, are retried
/// through: the copy ends as it would without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_within_the_budget_still_copy() {
    let (src, dst, img, repo) = registries("budget-ok").await;
    let failures = fast_retry().blob_budget().sends() as usize - 1;
    dst.inject(Op::StartUpload, Fault::Status(500, None), failures);
    let w = worker(&src, &dst).await;
    let report = w.run(&task(&img, &repo)).await.unwrap();
    assert_eq!(report.outcome, Some(Outcome::Copied));
    assert_eq!(dst.count(Op::StartUpload), img.blobs.len() + failures);
    assert!(dst.has_manifest(&repo, "v1"));
    for b in &img.blobs {
        assert!(dst.has_blob(&repo, b));
    }
}
