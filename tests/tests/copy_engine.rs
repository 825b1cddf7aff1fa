//! The copy engine under faults and against peers' request budgets, with
//! the in-process fake registry (fault injection) beside the real ones.

use std::time::{Duration, Instant};

use relay::registry::{CopyError, Outcome, RegistryError};
use relay::secrets::SecretSource;
use relay::settle::Disposition;
use relay::task::Task;
use relay::worker::{Message, TaskFailure, Worker};
use relay::{bootstrap, Config};
use relay_tests::app::{fast_retry, unique_repo};
use relay_tests::fake::{FakeRegistry, Fault, Op};
use relay_tests::{image, GeneratedImage, ImageKind, PlainRegistry, Stack};

/// A worker whose source is `source` and whose `dst` registry is
/// `destination` (credentials of the real target when `real_target`).
async fn worker(source: &str, destination: &str, real_target: bool) -> Worker {
    worker_into(source, &[("dst", destination, real_target)], "").await
}

/// A worker whose source is `source`, with one registry entry per
/// `(name, url, real_target)` and `worker` settings (YAML, may be empty).
async fn worker_into(source: &str, destinations: &[(&str, &str, bool)], worker: &str) -> Worker {
    let stack = Stack::load().unwrap();
    let registries: String = destinations
        .iter()
        .map(|(name, url, real_target)| {
            let creds = if *real_target {
                format!(", credentials: {{ username: {}, password_env: CLUSTER1_PASSWORD }}", stack.target_user)
            } else {
                String::new()
            };
            format!("  - {{ name: {name}, url: {url}{creds} }}\n")
        })
        .collect();
    let yaml = format!(
        "source: {{ url: {source} }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n{registries}{worker}"
    );
    let config = Config::parse(&yaml).unwrap();
    bootstrap::worker(&config, &SecretSource::from_process(None), fast_retry()).await.unwrap()
}

fn task(img: &GeneratedImage, dst_repo: &str, tags: &[&str]) -> Task {
    relay_tests::app::copy_task_of(img, "dst", dst_repo, tags)
}

async fn push_to(reg: &PlainRegistry, repo: &str, kind: ImageKind, layers: usize, size: usize) -> GeneratedImage {
    image::push(reg, repo, "v1", kind, layers, size).await.unwrap()
}

fn plain(fake: &FakeRegistry) -> PlainRegistry {
    PlainRegistry::new(&fake.url, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_server_errors_are_retried_honouring_retry_after() {
    let (src, dst) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    let repo = unique_repo("retry");
    let img = push_to(&plain(&src), &repo, ImageKind::OciImage, 2, 32 * 1024).await;
    src.inject(Op::HeadManifest, Fault::Status(429, Some("1".into())), 1);
    src.inject(Op::GetManifest, Fault::Status(503, None), 1);
    let http_date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3));
    dst.inject(Op::StartUpload, Fault::Status(429, Some(http_date)), 1);
    dst.inject(Op::PutManifest, Fault::Status(502, None), 1);
    src.inject(Op::GetBlob, Fault::Status(503, None), 2);

    let w = worker(&src.url, &dst.url, false).await;
    let started = Instant::now();
    let report = w.run(&task(&img, &repo, &["v1"])).await.unwrap();
    assert_eq!(report.outcome, Some(Outcome::Copied));
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "both Retry-After waits honoured: {:?}",
        started.elapsed()
    );
    assert_eq!(src.count(Op::HeadManifest), 3, "429, success, then the source tag checked again before its PUT");
    assert!(dst.has_manifest(&repo, "v1"));
    for b in &img.blobs {
        assert!(dst.has_blob(&repo, b));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_blob_reopens_the_source_stream() {
    let stack = Stack::load().unwrap();
    let src = FakeRegistry::start(false).await;
    let repo = unique_repo("reset");
    let img = push_to(&plain(&src), &repo, ImageKind::OciImage, 1, 256 * 1024).await;
    src.inject(Op::GetBlob, Fault::ResetMidBody, 1);
    let w = worker(&src.url, &stack.target_url, true).await;
    let report = w.run(&task(&img, &repo, &["v1"])).await.unwrap();
    assert_eq!(report.outcome, Some(Outcome::Copied));
    assert_eq!(src.count(Op::GetBlob), img.blobs.len() + 1, "one blob opened twice");
    assert!(report.bytes >= img.blob_bytes);
    let dst = stack.target().tree(&repo, "v1").await.unwrap();
    assert!(dst.self_consistent());
    assert_eq!(dst.blobs.len(), img.blobs.len());
    assert_eq!(dst.manifests["v1"].1, img.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_are_streamed_to_the_end() {
    let (src, dst) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    let repo = unique_repo("slow");
    let img = push_to(&plain(&src), &repo, ImageKind::OciImage, 1, 64 * 1024).await;
    src.inject(Op::GetBlob, Fault::Slow(Duration::from_millis(25)), 10);
    let w = worker(&src.url, &dst.url, false).await;
    let report = w.run(&task(&img, &repo, &["v1"])).await.unwrap();
    assert_eq!(report.outcome, Some(Outcome::Copied));
    assert_eq!(report.bytes, img.blob_bytes);
    assert!(dst.has_manifest(&repo, "v1"));
}

/// The project's own guard, not the registry's: the destination commits
/// an upload under whatever digest it is told, and the source serves other
/// bytes of the blob's length. The worker refuses the blob before its last
/// bytes, so the commit never completes; it abandons the session, pushes no
/// manifest, and the message is dead-lettered at once with the digests.
/// In chunks, the final `PUT ?digest=` is not even sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_source_blob_is_refused_and_no_manifest_is_pushed() {
    let (src, dst) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    dst.accept_any_digest();
    let repo = unique_repo("corrupt");
    let img = push_to(&plain(&src), &repo, ImageKind::OciImage, 1, 16 * 1024).await;
    let refused = |e: &TaskFailure| {
        matches!(e, TaskFailure::Copy(CopyError::Registry(RegistryError::DigestMismatch { what: "blob", .. })))
    };
    // One blob at a time: the first one fails the task before another starts.
    let one_at_a_time = "worker: { blob_concurrency: 1 }\n";
    let w = worker_into(&src.url, &[("dst", &dst.url, false)], one_at_a_time).await;
    src.reset_counts();
    src.inject(Op::GetBlob, Fault::Corrupt, 1);
    let err = w.run(&task(&img, &repo, &["v1"])).await.unwrap_err();
    assert!(refused(&err), "{err}");
    assert_eq!(err.disposition(), Disposition::Permanent, "dead-lettered at once: {err}");
    assert_eq!(src.count(Op::GetBlob), 1, "not retried");
    assert!(!dst.has_manifest(&repo, "v1") && !dst.has_manifest(&repo, &img.digest), "no manifest without its blobs");
    assert!(img.blobs.iter().all(|b| !dst.has_blob(&repo, b)), "no blob committed");
    assert_eq!(dst.open_uploads(), 0, "the upload session was abandoned");

    // In chunks (learnt from a clean copy's 413): the last chunk fails and
    // the commit is not sent.
    let chunked = FakeRegistry::start(false).await;
    chunked.accept_any_digest();
    chunked.limit_uploads(400 * 1024, None);
    let w = worker_into(&src.url, &[("dst", &chunked.url, false)], one_at_a_time).await;
    let clean = push_to(&plain(&src), &unique_repo("clean"), ImageKind::OciImage, 1, 1024 * 1024).await;
    w.run(&task(&clean, &clean.repository, &["v1"])).await.unwrap();
    assert!(w.destinations["dst"].client.chunk_size().is_some(), "the clean copy taught chunks");
    let commits = chunked.count(Op::PutUpload);
    let repo = unique_repo("corrupt-chunks");
    let img = push_to(&plain(&src), &repo, ImageKind::OciImage, 1, 1024 * 1024).await;
    src.inject(Op::GetBlob, Fault::Corrupt, 1);
    let err = w.run(&task(&img, &repo, &["v1"])).await.unwrap_err();
    assert!(refused(&err), "{err}");
    assert_eq!(err.disposition(), Disposition::Permanent);
    assert_eq!(chunked.count(Op::PutUpload), commits, "no commit sent for the refused blob");
    assert!(!chunked.has_manifest(&repo, "v1"));
    assert!(img.blobs.iter().all(|b| !chunked.has_blob(&repo, b)), "no blob committed");
    assert_eq!(chunked.open_uploads(), 0, "the upload session was abandoned");
}

/// A source blob longer than its descriptor, announced by its
/// `Content-Length` or not, fails the task for good (a retry reads the same
/// bytes), at a destination that would commit whatever it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_source_blob_is_refused_for_good() {
    for fault in [Fault::Longer, Fault::LongerUnannounced] {
        let (src, dst) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
        dst.accept_any_digest();
        let repo = unique_repo("longer");
        let img = push_to(&plain(&src), &repo, ImageKind::OciImage, 1, 16 * 1024).await;
        let w = worker_into(&src.url, &[("dst", &dst.url, false)], "worker: { blob_concurrency: 1 }\n").await;
        src.reset_counts();
        src.inject(Op::GetBlob, fault.clone(), 1);
        let err = w.run(&task(&img, &repo, &["v1"])).await.unwrap_err();
        assert!(
            matches!(&err, TaskFailure::Copy(CopyError::Registry(RegistryError::TooLarge { .. }))),
            "{fault:?}: {err}"
        );
        assert_eq!(err.disposition(), Disposition::Permanent, "{fault:?}: {err}");
        assert_eq!(src.count(Op::GetBlob), 1, "{fault:?}: not retried");
        assert!(!dst.has_manifest(&repo, "v1"), "{fault:?}");
        assert!(img.blobs.iter().all(|b| !dst.has_blob(&repo, b)), "{fault:?}: no blob committed");
        assert_eq!(dst.open_uploads(), 0, "{fault:?}: the upload session was abandoned");
    }
}

/// An index at the fake source, tagged `tag`, listing `children` (digest,
/// media type, size); its digest and size.
fn index_of(src: &FakeRegistry, repo: &str, tag: &str, children: &[(String, &str, usize)]) -> (String, usize) {
    let manifests: Vec<_> = children
        .iter()
        .map(
            |(digest, media_type, size)| serde_json::json!({ "mediaType": media_type, "digest": digest, "size": size }),
        )
        .collect();
    let index = serde_json::json!({ "schemaVersion": 2, "mediaType": image::OCI_INDEX, "manifests": manifests });
    let bytes = index.to_string();
    (src.insert_manifest(repo, tag, image::OCI_INDEX, bytes.clone().into()), bytes.len())
}

/// The copy of the source's `tag` (pointing at `digest`) into a fresh fake
/// destination, and that destination.
async fn copy_tag(
    src: &FakeRegistry,
    img: &GeneratedImage,
    tag: &str,
    digest: &str,
) -> (Result<Outcome, TaskFailure>, FakeRegistry) {
    let dst = FakeRegistry::start(false).await;
    let w = worker(&src.url, &dst.url, false).await;
    let mut t = task(img, &img.repository, &[tag]);
    t.source.digest = digest.parse().unwrap();
    let copied = w.run(&t).await.map(|r| r.outcome.expect("an outcome"));
    (copied, dst)
}

/// Nothing of `img` (its blobs, its manifest) nor the index `root` reached `dst`.
fn nothing_pushed(dst: &FakeRegistry, img: &GeneratedImage, root: &str) {
    let repo = &img.repository;
    assert!(!dst.has_manifest(repo, root) && !dst.has_manifest(repo, &img.digest), "no manifest pushed");
    assert!(img.blobs.iter().all(|b| !dst.has_blob(repo, b)), "no blob pushed");
}

/// A chain of indexes over an image is walked as deep as the bound
/// (`MAX_INDEX_DEPTH` levels below the artifact), and one level deeper is
/// refused for good before anything is pushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_nested_past_the_bound_is_refused_and_nothing_is_pushed() {
    use relay::registry::manifest::{ManifestError, MAX_INDEX_DEPTH};
    let src = FakeRegistry::start(false).await;
    let img = push_to(&plain(&src), &unique_repo("deep"), ImageKind::OciImage, 1, 1024).await;
    let (media_type, bytes) = plain(&src).get_manifest(&img.repository, "v1").await.unwrap().unwrap();
    // The image under `levels` indexes: at depth `levels` below the root.
    let nest = |levels: usize, tag: &str| {
        let mut below = (img.digest.clone(), media_type.clone(), bytes.len());
        for level in 0..levels {
            let tag = if level + 1 == levels { tag.to_owned() } else { format!("{tag}-{level}") };
            let (digest, size) = index_of(&src, &img.repository, &tag, &[(below.0.clone(), &below.1, below.2)]);
            below = (digest, image::OCI_INDEX.to_owned(), size);
        }
        below.0
    };
    let at_bound = nest(MAX_INDEX_DEPTH, "at-bound");
    let (copied, dst) = copy_tag(&src, &img, "at-bound", &at_bound).await;
    assert_eq!(copied.unwrap(), Outcome::Copied, "{MAX_INDEX_DEPTH} levels are copied");
    assert!(dst.has_manifest(&img.repository, &img.digest));

    let too_deep = nest(MAX_INDEX_DEPTH + 1, "too-deep");
    let (copied, dst) = copy_tag(&src, &img, "too-deep", &too_deep).await;
    let err = copied.unwrap_err();
    assert!(matches!(err, TaskFailure::Copy(CopyError::Manifest(ManifestError::TooDeep { .. }))), "{err}");
    assert_eq!(err.disposition(), Disposition::Permanent, "{err}");
    nothing_pushed(&dst, &img, &too_deep);
}

/// An index may list `MAX_INDEX_CHILDREN` manifests; one more is refused
/// for good, before a child is asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_with_too_many_children_is_refused_and_nothing_is_pushed() {
    use relay::registry::manifest::{ManifestError, MAX_INDEX_CHILDREN};
    let src = FakeRegistry::start(false).await;
    let img = push_to(&plain(&src), &unique_repo("wide"), ImageKind::OciImage, 1, 1024).await;
    let (_, bytes) = plain(&src).get_manifest(&img.repository, "v1").await.unwrap().unwrap();
    // The same image listed again and again: walked once, so the bound is
    // the only thing that can refuse the wider index.
    let child = (img.digest.clone(), image::OCI_MANIFEST, bytes.len());
    let (at_bound, _) = index_of(&src, &img.repository, "at-bound", &vec![child.clone(); MAX_INDEX_CHILDREN]);
    let (copied, dst) = copy_tag(&src, &img, "at-bound", &at_bound).await;
    assert_eq!(copied.unwrap(), Outcome::Copied, "{MAX_INDEX_CHILDREN} children are copied");
    assert!(dst.has_manifest(&img.repository, &at_bound));

    let (wide, _) = index_of(&src, &img.repository, "wide", &vec![child; MAX_INDEX_CHILDREN + 1]);
    src.reset_counts();
    let (copied, dst) = copy_tag(&src, &img, "wide", &wide).await;
    let err = copied.unwrap_err();
    assert!(matches!(err, TaskFailure::Copy(CopyError::Manifest(ManifestError::TooManyChildren { .. }))), "{err}");
    assert_eq!(err.disposition(), Disposition::Permanent, "{err}");
    assert_eq!(src.count(Op::GetManifest), 1, "the index only: no child asked for");
    nothing_pushed(&dst, &img, &wide);
}

/// The manifests one task reads add up to `MAX_TASK_MANIFEST_BYTES` at
/// most: an index of large manifests past it is refused for good, before
/// the one that would pass it is read and before anything is pushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_past_the_task_budget_are_refused_and_nothing_is_pushed() {
    use relay::registry::manifest::{ManifestError, MAX_MANIFEST_BYTES, MAX_TASK_MANIFEST_BYTES};
    let src = FakeRegistry::start(false).await;
    let img = push_to(&plain(&src), &unique_repo("heavy"), ImageKind::OciImage, 1, 1024).await;
    let (_, bytes) = plain(&src).get_manifest(&img.repository, "v1").await.unwrap().unwrap();
    // Copies of the image's manifest, each made large (and distinct) by an
    // annotation: just under the per-manifest limit.
    let large = |i: usize| {
        let mut m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        m["annotations"] = serde_json::json!({ "padding": format!("{i}{}", "x".repeat(MAX_MANIFEST_BYTES - 4096)) });
        let bytes = bytes::Bytes::from(m.to_string());
        let size = bytes.len();
        (src.insert_manifest(&img.repository, &format!("large-{i}"), image::OCI_MANIFEST, bytes), size)
    };
    let fit = (MAX_TASK_MANIFEST_BYTES as usize) / MAX_MANIFEST_BYTES;
    let children: Vec<_> = (0..=fit).map(large).map(|(d, size)| (d, image::OCI_MANIFEST, size)).collect();
    let (heavy, _) = index_of(&src, &img.repository, "heavy", &children);
    src.reset_counts();
    let (copied, dst) = copy_tag(&src, &img, "heavy", &heavy).await;
    let err = copied.unwrap_err();
    assert!(matches!(err, TaskFailure::Copy(CopyError::Manifest(ManifestError::TooManyBytes { .. }))), "{err}");
    assert_eq!(err.disposition(), Disposition::Permanent, "{err}");
    assert_eq!(src.count(Op::GetManifest), 1 + fit, "the index and the children that fit, not the one past");
    nothing_pushed(&dst, &img, &heavy);
    for (child, _, _) in &children {
        assert!(!dst.has_manifest(&img.repository, child));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_mid_copy_is_renewed() {
    let src = FakeRegistry::start(false).await;
    let dst = FakeRegistry::start(true).await;
    let repo = unique_repo("token");
    let img = push_to(&plain(&src), &repo, ImageKind::OciImage, 2, 16 * 1024).await;
    dst.inject(Op::PutUpload, Fault::ExpireTokens, 1);
    dst.inject(Op::PutManifest, Fault::ExpireTokens, 1);
    let w = worker(&src.url, &dst.url, false).await;
    let report = w.run(&task(&img, &repo, &["v1"])).await.unwrap();
    assert_eq!(report.outcome, Some(Outcome::Copied));
    assert!(dst.count(Op::Token) >= 3, "first token plus one per expiry, got {}", dst.count(Op::Token));
    assert!(dst.has_manifest(&repo, "v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_blobs_are_mounted_and_a_declined_mount_still_uploads() {
    let (src, dst) = (FakeRegistry::start(false).await, FakeRegistry::start(true).await);
    let repo = unique_repo("base");
    let img = push_to(&plain(&src), &repo, ImageKind::OciImage, 2, 16 * 1024).await;
    let w = worker(&src.url, &dst.url, false).await;
    let first = w.run(&task(&img, &repo, &["v1"])).await.unwrap();
    assert_eq!((first.blobs_copied as usize, first.blobs_mounted), (img.blobs.len(), 0));

    // Another repository of the same destination: every blob is mounted.
    let other = unique_repo("other");
    let second = w.run(&task(&img, &other, &["v1"])).await.unwrap();
    assert_eq!((second.blobs_mounted as usize, second.blobs_copied, second.bytes), (img.blobs.len(), 0, 0));
    assert!(dst.has_manifest(&other, "v1"));

    // A registry that answers 202 to the mount: the session is used to upload.
    dst.decline_mounts();
    let third_repo = unique_repo("third");
    let third = w.run(&task(&img, &third_repo, &["v1"])).await.unwrap();
    assert_eq!((third.blobs_mounted, third.blobs_copied as usize), (0, img.blobs.len()));
    assert_eq!(third.bytes, img.blob_bytes);
    assert!(dst.has_manifest(&third_repo, "v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tasks_send_each_blob_once() {
    let (src, dst) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    let repo = unique_repo("shared");
    let img = push_to(&plain(&src), &repo, ImageKind::OciIndex { platforms: 2 }, 2, 128 * 1024).await;
    src.inject(Op::GetBlob, Fault::Slow(Duration::from_millis(2)), 1000);
    let w = worker(&src.url, &dst.url, false).await;
    let (a, b) = (unique_repo("a"), unique_repo("b"));
    let (ta, tb) = (task(&img, &a, &["v1"]), task(&img, &b, &["v1"]));
    let (ra, rb) = tokio::join!(w.run(&ta), w.run(&tb));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(dst.count(Op::PutUpload), img.blobs.len(), "each blob's bytes sent once");
    assert_eq!(ra.bytes + rb.bytes, img.blob_bytes);
    assert_eq!((ra.blobs_mounted + rb.blobs_mounted) as usize, img.blobs.len());
    assert!(dst.has_manifest(&a, "v1") && dst.has_manifest(&b, "v1"));
}

/// A task that finds a blob being uploaded by another task of the worker
/// (another image over the same layers) waits for it and mounts it,
/// without asking the destination first (its config, which no task
/// knows, is asked by its upload's `POST`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_in_flight_is_waited_for_without_a_head() {
    let (src, dst) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    let repo = unique_repo("inflight");
    let img = push_to(&plain(&src), &repo, ImageKind::OciImage, 2, 64 * 1024).await;
    let layers = img.blobs.len() - 1;
    // A second image: the same layers under a config of its own.
    let (media_type, bytes) = plain(&src).get_manifest(&repo, "v1").await.unwrap().unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let config = bytes::Bytes::from_static(
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"second":true}"#,
    );
    manifest["config"]["size"] = config.len().into();
    manifest["config"]["digest"] = src.insert_blob(&repo, config).into();
    let second_digest = src.insert_manifest(&repo, "v2", &media_type, manifest.to_string().into());

    src.inject(Op::GetBlob, Fault::Hold(Duration::from_millis(1500)), img.blobs.len());
    let w = worker(&src.url, &dst.url, false).await;
    let (a, b) = (unique_repo("a"), unique_repo("b"));
    let ta = task(&img, &a, &["v1"]);
    let mut tb = task(&img, &b, &["v2"]);
    tb.source.digest = second_digest.parse().unwrap();
    let first = w.run(&ta);
    let second = async {
        // Every blob of the first image is being read: its uploads are in flight.
        while src.count(Op::GetBlob) < img.blobs.len() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let asked = (dst.count(Op::StartUpload), dst.mount_requests());
        (w.run(&tb).await, asked)
    };
    let (ra, (rb, asked_before)) = tokio::join!(first, second);
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let n = img.blobs.len();
    assert_eq!(asked_before, (n, n), "the first task asked for each of its blobs, by its POST (a mount in place)");
    assert_eq!(dst.count(Op::HeadBlob), 0, "no HEAD: a blob's check is its upload's POST");
    assert_eq!(
        dst.count(Op::StartUpload),
        n + 1 + layers,
        "the second task asked for its config only (one POST), and mounted its layers once in flight"
    );
    assert_eq!((rb.blobs_copied, rb.blobs_mounted as usize), (1, layers));
    assert_eq!(ra.blobs_copied as usize, img.blobs.len());
    assert_eq!(dst.count(Op::PutUpload), img.blobs.len() + 1, "each blob's bytes sent once");
    assert!(dst.has_manifest(&a, "v1") && dst.has_manifest(&b, "v2"));
}

/// One push's tasks into registries `names`, as the webhook enqueues them
/// (one batch), each into its own repository: the source's under the
/// namespace `fan-<name>` ([`FAN_RULES`]).
fn one_push(img: &GeneratedImage, names: &[&str]) -> (Vec<Message>, Vec<String>) {
    let repos: Vec<String> = names.iter().map(|n| format!("fan-{n}/{}", img.repository)).collect();
    let batch = names
        .iter()
        .zip(&repos)
        .map(|(name, repo)| {
            let mut t = task(img, repo, &["v1"]);
            t.destination.registry = (*name).into();
            t.id = format!("t-{name}");
            Message { id: t.id.clone(), body: t.encode(), receive_count: 1, ..Default::default() }
        })
        .collect();
    (batch, repos)
}

/// The rules that produce [`one_push`]'s tasks: the worker carries out
/// only what its rules map.
const FAN_RULES: &str = "rules:
  - { name: to-c1, destination: { registry: c1, namespace: fan-c1, flatten: 0 } }
  - { name: to-c2, destination: { registry: c2, namespace: fan-c2, flatten: 0 } }
  - { name: to-c3, destination: { registry: c3, namespace: fan-c3, flatten: 0 } }
";

/// A worker reading `src`, with `c1` and `c2` on the real target and `c3`
/// on `third`, and the rules of [`one_push`]'s tasks.
async fn three_destinations(src: &FakeRegistry, third: &FakeRegistry, worker: &str) -> Worker {
    let target = Stack::load().unwrap().target_url;
    let settings = format!("{worker}{FAN_RULES}");
    worker_into(&src.url, &[("c1", &target, true), ("c2", &target, true), ("c3", &third.url, false)], &settings).await
}

async fn at_real_target(repo: &str) -> Option<String> {
    let found = Stack::load().unwrap().target().get_manifest(repo, "v1").await.unwrap();
    found.map(|(_, bytes)| relay_tests::plain::sha256(&bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_push_into_three_destinations_reads_each_blob_once() {
    let (src, fake_dst) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    let img = push_to(&plain(&src), &unique_repo("fan"), ImageKind::OciImage, 3, 2 * 1024 * 1024).await;
    let w = three_destinations(&src, &fake_dst, "").await;
    src.reset_counts();
    let (batch, repos) = one_push(&img, &["c1", "c2", "c3"]);
    let failures = w.handle_batch(batch, None).await;
    assert!(failures.is_empty(), "{:?}", failures.iter().map(|f| &f.error).collect::<Vec<_>>());

    assert_eq!(src.count(Op::GetBlob), img.blobs.len(), "each blob read from the source once for three destinations");
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&w.stats.source_bytes), img.blob_bytes);
    assert_eq!(load(&w.stats.bytes), 3 * img.blob_bytes, "every destination got every byte");
    for repo in &repos[..2] {
        assert_eq!(at_real_target(repo).await.as_deref(), Some(img.digest.as_str()), "{repo}");
    }
    assert!(fake_dst.has_manifest(&repos[2], "v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_destination_is_detached_and_the_others_go_on() {
    let (src, stalled) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    let img = push_to(&plain(&src), &unique_repo("stall"), ImageKind::OciImage, 3, 16 * 1024 * 1024).await;
    // Stops reading its first large upload for a minute: without the
    // detach, the shared read (and the two others) would wait for it until
    // its upload is given up (20 s after the registry last asked for a
    // byte). Detached, they wait about twice the tee's 3 s hold allowance;
    // the stalled upload is given up then and retried.
    stalled.inject(Op::PutUpload, Fault::Stall(Duration::from_secs(60)), 1);
    let w = three_destinations(&src, &stalled, "worker: { throughput_window_seconds: 20 }\n").await;
    src.reset_counts();
    let (batch, repos) = one_push(&img, &["c1", "c2", "c3"]);
    let started = Instant::now();
    let others = async {
        while at_real_target(&repos[0]).await.is_none() || at_real_target(&repos[1]).await.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started.elapsed()
    };
    let (failures, others_took) = tokio::join!(w.handle_batch(batch, None), others);
    assert!(failures.is_empty(), "{:?}", failures.iter().map(|f| &f.error).collect::<Vec<_>>());
    assert!(others_took < Duration::from_secs(14), "the others waited for the stalled destination: {others_took:?}");
    for repo in &repos[..2] {
        assert_eq!(at_real_target(repo).await.as_deref(), Some(img.digest.as_str()), "{repo}");
    }
    assert!(stalled.has_manifest(&repos[2], "v1"), "the detached destination copied on its own read");
    let reads = src.count(Op::GetBlob);
    // One shared read per blob, and the detached destination's own: its
    // retry, and each blob whose shared read started while it was stalled.
    assert!(
        reads > img.blobs.len() && reads <= 2 * img.blobs.len(),
        "{reads} source reads for {} blobs: shared, plus the detached destination's own",
        img.blobs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_destination_goes_on_from_the_byte_it_reached() {
    let (src, lagging) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    let layer = 16 * 1024 * 1024;
    let img = push_to(&plain(&src), &unique_repo("lag"), ImageKind::OciImage, 1, layer).await;
    // Takes its layer's upload at 256 KiB/s for 8 s, then at full speed:
    // it holds the shared read until detached (about 6 s in), and is
    // still taking bytes then.
    lagging.inject(Op::PutUpload, Fault::Lag(Duration::from_secs(8)), 1);
    let w = three_destinations(&src, &lagging, "").await;
    src.reset_counts();
    let (batch, repos) = one_push(&img, &["c1", "c2", "c3"]);
    let failures = w.handle_batch(batch, None).await;
    assert!(failures.is_empty(), "{:?}", failures.iter().map(|f| &f.error).collect::<Vec<_>>());
    for repo in &repos[..2] {
        assert_eq!(at_real_target(repo).await.as_deref(), Some(img.digest.as_str()), "{repo}");
    }
    assert!(lagging.has_manifest(&repos[2], "v1"));

    // Its upload went on: one upload per blob, and no byte sent twice.
    assert_eq!(lagging.count(Op::PutUpload), img.blobs.len(), "the detached upload started over");
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&w.stats.bytes), 3 * img.blob_bytes, "a destination got bytes twice");
    // The rest of the layer was read alone, from where the upload was (the
    // config too, when the layer came first: its shared read had started).
    let read = load(&w.stats.source_bytes);
    assert!(read > img.blob_bytes, "{read} bytes read: the upload was not detached");
    assert!(
        read < img.blob_bytes + layer as u64,
        "{read} bytes read for a {} byte image: the detached upload read its layer again from byte 0",
        img.blob_bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_source_under_a_shared_read_gives_its_read_back() {
    let (src, third) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    let img = push_to(&plain(&src), &unique_repo("silent"), ImageKind::OciImage, 1, 2 * 1024 * 1024).await;
    // The first blob read answers its headers, then sends nothing for five
    // minutes. The three uploads it feeds are given up at their 2 s
    // window; the shared read, on its own task, must give up too: it holds
    // the worker's one read, which their retries need.
    src.inject(Op::GetBlob, Fault::Hold(Duration::from_secs(300)), 1);
    let w = three_destinations(&src, &third, "worker: { stream_concurrency: 1, throughput_window_seconds: 2 }\n").await;
    let (batch, repos) = one_push(&img, &["c1", "c2", "c3"]);
    let started = Instant::now();
    let failures = tokio::time::timeout(Duration::from_secs(60), w.handle_batch(batch, None))
        .await
        .expect("the retries still wait for the silent read");
    assert!(failures.is_empty(), "{:?}", failures.iter().map(|f| &f.error).collect::<Vec<_>>());
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    for repo in &repos[..2] {
        assert_eq!(at_real_target(repo).await.as_deref(), Some(img.digest.as_str()), "{repo}");
    }
    assert!(third.has_manifest(&repos[2], "v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_budget_first_copy_and_replay() {
    let (src, dst) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    let repo = unique_repo("budget");
    let img = push_to(&plain(&src), &repo, ImageKind::OciImage, 8, 8 * 1024).await;
    let w = worker(&src.url, &dst.url, false).await;
    let t = task(&img, &repo, &["v1"]);
    w.run(&t).await.unwrap();
    let n = img.blobs.len();
    assert_eq!(
        (dst.count(Op::HeadBlob), dst.count(Op::StartUpload), dst.count(Op::PutUpload), dst.mount_requests()),
        (0, n, n, n),
        "2 requests per missing blob: the POST (asking to mount from the repository itself: the check) and the PUT"
    );
    assert_eq!(
        (dst.count(Op::HeadManifest), dst.count(Op::PutManifest)),
        (1, 1),
        "the tag's HEAD, then its PUT: no HEAD by digest for a tag that is missing"
    );
    assert_eq!(src.count(Op::GetBlob), n, "each blob read once");

    // A replay is HEAD-only: the tag at the source and at the destination,
    // nothing else — referrers are listed after a copy, not for a duplicate.
    src.reset_counts();
    dst.reset_counts();
    let started = Instant::now();
    let again = w.run(&t).await.unwrap();
    let took = started.elapsed();
    assert_eq!(again.outcome, Some(Outcome::AlreadyPresent));
    let total: usize = [
        Op::Ping,
        Op::HeadManifest,
        Op::GetManifest,
        Op::PutManifest,
        Op::HeadBlob,
        Op::GetBlob,
        Op::StartUpload,
        Op::PutUpload,
        Op::PatchUpload,
        Op::Referrers,
        Op::Other,
    ]
    .iter()
    .map(|op| src.count(*op) + dst.count(*op))
    .sum();
    assert_eq!(total, src.count(Op::HeadManifest) + dst.count(Op::HeadManifest), "HEAD requests only");
    assert_eq!(total, 2, "the tag's HEAD at the source and at the destination");
    // The figure (under 0.1 s) is measured by `make bench`; here only a sanity bound.
    assert!(took < Duration::from_secs(2), "{took:?}");

    // Into another repository of the same destination: the ledger knows
    // where every blob is, so each is one mount, without a HEAD first.
    dst.reset_counts();
    let other = unique_repo("budget-other");
    let copied = w.run(&task(&img, &other, &["v1"])).await.unwrap();
    assert_eq!(copied.blobs_mounted as usize, n);
    assert_eq!(
        (dst.count(Op::HeadBlob), dst.count(Op::StartUpload), dst.count(Op::PutUpload)),
        (0, n, 0),
        "one mount request per blob"
    );
    assert!(dst.has_manifest(&other, "v1"));
}

/// A first copy sends together what does not depend on an answer: the
/// tag's HEADs at both ends, the blobs' POSTs (each its check in place),
/// their source GETs, and the tag's last check at both ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_copy_sends_independent_requests_together() {
    let (src, dst) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    let repo = unique_repo("rounds");
    let img = push_to(&plain(&src), &repo, ImageKind::OciImage, 2, 4 * 1024).await;
    let w = worker(&src.url, &dst.url, false).await;
    let rounds = relay_tests::fake::Rounds::default();
    src.track_rounds(&rounds, Duration::from_millis(100));
    dst.track_rounds(&rounds, Duration::from_millis(100));
    let mut t = task(&img, &repo, &["v1"]);
    t.options.override_existing = false;
    assert_eq!(w.run(&t).await.unwrap().outcome, Some(Outcome::Copied));
    assert!(dst.has_manifest(&repo, "v1"));
    // tag HEADs; the root's GET; POSTs (the checks in place, whose 202 is
    // the session); source GETs; PUTs; tag HEADs again; the tag's PUT;
    // then the referrers, asked for once the artifact is there (the API,
    // then the tag schema).
    assert_eq!(rounds.deepest(), 9, "requests one after another:\n{}", rounds.trace());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_off_leaves_a_foreign_tag_alone() {
    let (src, dst) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    let repo = unique_repo("keep");
    let img = push_to(&plain(&src), &repo, ImageKind::OciImage, 1, 1024).await;
    let other = image::push(&plain(&dst), &repo, "v1", ImageKind::OciImage, 1, 1024).await.unwrap();
    let w = worker(&src.url, &dst.url, false).await;
    let mut t = task(&img, &repo, &["v1"]);
    t.options.override_existing = false;
    let r = w.run(&t).await.unwrap();
    assert_eq!(r.outcome, Some(Outcome::SkippedNoOverride));
    let (_, bytes) = plain(&dst).get_manifest(&repo, "v1").await.unwrap().unwrap();
    assert_eq!(relay_tests::plain::sha256(&bytes), other.digest, "destination tag untouched");
    t.options.override_existing = true;
    assert_eq!(w.run(&t).await.unwrap().outcome, Some(Outcome::Copied));
    let (_, bytes) = plain(&dst).get_manifest(&repo, "v1").await.unwrap().unwrap();
    assert_eq!(relay_tests::plain::sha256(&bytes), img.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_limit_holds_the_task_to_its_rate() {
    let (src, dst) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    let repo = unique_repo("bw");
    let img = push_to(&plain(&src), &repo, ImageKind::OciImage, 2, 100 * 1024).await;
    let w = worker(&src.url, &dst.url, false).await;
    let mut t = task(&img, &repo, &["v1"]);
    t.options.bandwidth_kbps = Some(8 * 400); // 400 KB/s
    let started = Instant::now();
    w.run(&t).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    let expected = img.blob_bytes as f64 / 400_000.0;
    assert!(secs >= expected * 0.9, "{secs:.2}s for {} bytes at 400 KB/s (≥ {expected:.2}s)", img.blob_bytes);
}

/// A function with a 10 s timeout and the default 15 s margin still copies:
/// the margin is at most a quarter of the time left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_function_timeout_still_copies() {
    let (src, dst) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    let repo = unique_repo("short");
    let img = push_to(&plain(&src), &repo, ImageKind::OciImage, 2, 4096).await;
    let w = worker(&src.url, &dst.url, false).await;
    assert_eq!(w.settings.deadline_margin_seconds, 15);
    let t = task(&img, &repo, &["v1"]);
    let done = w.run_until(&t, Some(Instant::now() + Duration::from_secs(10))).await.unwrap();
    assert_eq!(done.outcome, Some(Outcome::Copied));
    assert!(dst.has_manifest(&repo, "v1"));
}

/// One blob at a time: the first streams at once, the second is held 4 s by
/// the fault registry and is still in flight when the deadline (3 s away)
/// comes. It finishes; the
/// three after it never start. Decided by the fault registry's pacing, not
/// by how fast the machine is: only the first blob and the start of the
/// second must fit in 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_the_deadline_no_new_blob_starts_the_one_in_flight_is_cut_and_progress_is_kept() {
    let (src, dst) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    let repo = unique_repo("deadline");
    let img = push_to(&plain(&src), &repo, ImageKind::OciImage, 4, 64 * 1024).await;
    assert_eq!(img.blobs.len(), 5, "config and four layers");
    // One blob at once: the first at once, the second after 1.5 s, the
    // third held 3 s — in flight when the cut comes.
    src.inject(Op::GetBlob, Fault::Slow(Duration::ZERO), 1);
    src.inject(Op::GetBlob, Fault::Hold(Duration::from_millis(1500)), 1);
    src.inject(Op::GetBlob, Fault::Hold(Duration::from_secs(3)), 1);
    let mut w = worker(&src.url, &dst.url, false).await;
    w.settings.blob_concurrency = 1;
    // Of a 4 s invocation: no blob starts in the last second, and the
    // requests in flight are cut a third of that before the end.
    w.settings.deadline_margin_seconds = 1;
    let t = task(&img, &repo, &["v1"]);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(4);
    let err = w.run_until(&t, Some(deadline)).await.unwrap_err();
    assert!(Instant::now() < deadline, "cut before the deadline, not at Lambda's kill");
    assert!(matches!(err, TaskFailure::Cut { progressed: true, .. }), "{err}");
    assert_eq!(err.disposition(), relay::settle::Disposition::Continue, "progress: a continuation");
    assert!(!dst.has_manifest(&repo, "v1"), "no manifest without all its blobs");
    let copied_before = img.blobs.iter().filter(|b| dst.has_blob(&repo, b)).count();
    assert_eq!(copied_before, 2, "the two blobs done before the cut; the one in flight is not there");

    let done = w.run(&t).await.unwrap();
    assert_eq!(done.outcome, Some(Outcome::Copied));
    assert_eq!(done.blobs_skipped as usize, copied_before, "the next run keeps the progress");
    assert!(dst.has_manifest(&repo, "v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_harbor_api_every_matching_tag_of_the_digest_follows() {
    let (src, dst) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    let repo = unique_repo("alltags");
    let img = push_to(&plain(&src), &repo, ImageKind::OciImage, 1, 1024).await;
    let (_, bytes) = plain(&src).get_manifest(&repo, "v1").await.unwrap().unwrap();
    for tag in ["v1.1", "latest"] {
        plain(&src).put_manifest(&repo, tag, image::OCI_MANIFEST, &bytes).await.unwrap();
    }
    let yaml = format!(
        "source: {{ url: {}, harbor_api: true }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: dst, url: {} }}\nrules:\n  - {{ name: test, filters: {{ tag: {{ pattern: \"v*\" }} }}, destination: {{ registry: dst }} }}\n",
        src.url, dst.url
    );
    Stack::load().unwrap();
    let w = bootstrap::worker(&Config::parse(&yaml).unwrap(), &SecretSource::from_process(None), fast_retry())
        .await
        .unwrap();
    let report = w.run(&task(&img, &repo, &["v1"])).await.unwrap();
    assert_eq!(report.outcome, Some(Outcome::Copied));
    assert_eq!(src.count(Op::HarborArtifact), 1);
    assert!(
        dst.has_manifest(&repo, "v1") && dst.has_manifest(&repo, "v1.1"),
        "the event's tag and Harbor's other matching tag"
    );
    assert!(!dst.has_manifest(&repo, "latest"), "a tag the rule's filter excludes stays behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_all_learn_the_basic_challenge() {
    // Several requests leave a fresh client before any 401 taught it that
    // the registry wants Basic: every one of them must retry with it.
    let stack = Stack::load().unwrap();
    for _ in 0..5 {
        let w = worker(&stack.source_url, &stack.target_url, true).await;
        let client = &w.destinations["dst"].client;
        let repo: relay::RepositoryPath = unique_repo("race").parse().unwrap();
        let heads = (0..8).map(|i| client.head_manifest(&repo, if i % 2 == 0 { "v1" } else { "v2" }));
        for r in futures_util::future::join_all(heads).await {
            assert_eq!(r.unwrap(), None, "authenticated and answered 404");
        }
    }
}

/// A real registry behind the Bearer token flow (distribution 2.8 with
/// `auth.token`, our test issuer as the token service): the copy asks for
/// pull,push on the repository, the result is checked with skopeo through
/// the same token flow, and wrong credentials fail with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_registry_receives_a_copy() {
    let stack = Stack::load().unwrap();
    let issuer = relay_tests::token::TokenIssuer::start(&stack, "relay", &stack.target_password).await.unwrap();
    let token_url = std::env::var("RELAY_TOKEN_TARGET_URL").unwrap();
    let repo = unique_repo("token");
    let img = push_to(&stack.source(), &repo, ImageKind::DockerList { platforms: 2 }, 2, 8192).await;

    // The issuer is plain http on another port than the registry: trusted
    // only because the configuration lists it.
    let issuer_addr = std::env::var("RELAY_TOKEN_ISSUER_ADDR").unwrap();
    let with_realms = |password_env: &str, realms: &str| {
        format!(
            "source: {{ url: {} }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: dst, url: {token_url}, credentials: {{ username: relay, password_env: {password_env} }}{realms} }}\n",
            stack.source_url
        )
    };
    let yaml =
        |password_env: &str| with_realms(password_env, &format!(", token_realms: [\"http://{issuer_addr}/token\"]"));
    let unlisted = bootstrap::worker(
        &Config::parse(&with_realms("CLUSTER1_PASSWORD", "")).unwrap(),
        &SecretSource::from_process(None),
        fast_retry(),
    )
    .await
    .unwrap();
    let refused = unlisted.run(&task(&img, &repo, &["v1"])).await.unwrap_err().to_string();
    assert!(refused.contains(&format!("token realm http://{}", issuer_addr.split(':').next().unwrap())), "{refused}");
    assert!(issuer.scopes().is_empty(), "no token was asked of an unlisted http realm: {:?}", issuer.scopes());
    let w = bootstrap::worker(
        &Config::parse(&yaml("CLUSTER1_PASSWORD")).unwrap(),
        &SecretSource::from_process(None),
        fast_retry(),
    )
    .await
    .unwrap();
    let report = w.run(&task(&img, &repo, &["v1"])).await.unwrap();
    assert_eq!(report.outcome, Some(Outcome::Copied));
    assert!(
        issuer.scopes().iter().any(|s| s == &format!("repository:{repo}:pull,push")),
        "scopes asked: {:?}",
        issuer.scopes()
    );

    let host = token_url.trim_start_matches("http://");
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", "--creds"])
        .arg(format!("relay:{}", stack.target_password))
        .arg(format!("docker://{host}/{repo}:v1"))
        .output()
        .expect("skopeo installed");
    assert!(out.status.success(), "skopeo: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(relay_tests::plain::sha256(&out.stdout), img.digest, "the list's digest, read through the token flow");

    let wrong = bootstrap::worker(
        &Config::parse(&yaml("RELAY_WRONG_PASSWORD")).unwrap(),
        &relay_tests::stack::secrets_with(&[("RELAY_WRONG_PASSWORD", "not-the-password")]),
        fast_retry(),
    )
    .await
    .unwrap();
    let err = wrong.run(&task(&img, &format!("{repo}-other"), &["v1"])).await.unwrap_err();
    assert!(err.to_string().contains("token"), "{err}");
    assert!(!err.to_string().contains("not-the-password"), "{err}");
    assert!(issuer.refused() >= 1);
}

/// Chunked uploads only where needed: a destination behind a request-body
/// limit answers 413 to a whole-blob PUT; the worker switches to PATCH
/// chunks (halving until they fit), never below the registry's
/// `OCI-Chunk-Min-Length`, and the blobs arrive intact (the fake checks
/// each chunk's `Content-Range` and the digest of the whole). Later uploads
/// to that registry go in chunks straight away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_uploads_only_where_needed() {
    let (src, dst) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    let repo = unique_repo("chunks");
    let img = push_to(&plain(&src), &repo, ImageKind::OciImage, 2, 1024 * 1024).await;
    let (limit, min) = (400 * 1024, 300 * 1024);
    dst.limit_uploads(limit, Some(min));
    let w = worker(&src.url, &dst.url, false).await;
    let report = w.run(&task(&img, &repo, &["v1"])).await.unwrap();
    assert_eq!(report.outcome, Some(Outcome::Copied));
    assert!(report.retries >= 1, "the 413s were retried in chunks");
    for b in &img.blobs {
        assert!(dst.has_blob(&repo, b), "{b} intact at the destination");
    }
    assert!(dst.has_manifest(&repo, "v1"));
    let sizes = dst.patch_sizes();
    assert!(sizes.iter().all(|&n| n <= limit), "{sizes:?}");
    let short = sizes.iter().filter(|&&n| n < min).count();
    assert!(short <= img.blobs.len(), "only a blob's last chunk may be under the minimum: {sizes:?}");
    assert!(sizes.iter().filter(|&&n| n == min).count() >= 6, "two 1 MiB layers in 300 KiB chunks: {sizes:?}");

    let other = unique_repo("chunks2");
    let img2 = push_to(&plain(&src), &other, ImageKind::OciImage, 1, 700 * 1024).await;
    let before = dst.patch_sizes().len();
    let again = w.run(&task(&img2, &other, &["v1"])).await.unwrap();
    assert_eq!((again.outcome, again.retries), (Some(Outcome::Copied), 0), "chunks straight away, no 413");
    assert!(dst.patch_sizes().len() >= before + 3, "700 KiB in 300 KiB chunks, plus the config");
    assert!(img2.blobs.iter().all(|b| dst.has_blob(&other, b)));

    // A registry without a limit gets whole blobs, no PATCH.
    let plain_dst = FakeRegistry::start(false).await;
    let w = worker(&src.url, &plain_dst.url, false).await;
    w.run(&task(&img, &repo, &["v1"])).await.unwrap();
    assert_eq!(plain_dst.count(Op::PatchUpload), 0);
    assert_eq!(plain_dst.count(Op::PutUpload), img.blobs.len());
}

/// Starts copying `old` (its blobs trickle from the fake source), waits
/// until every blob is open, runs `meanwhile`, then returns the slow copy's
/// report.
async fn while_held(
    w: std::sync::Arc<Worker>,
    src: &FakeRegistry,
    task: Task,
    blobs: usize,
    meanwhile: impl std::future::Future<Output = ()>,
) -> relay::registry::CopyReport {
    src.reset_counts();
    src.inject(Op::GetBlob, Fault::Slow(Duration::from_millis(150)), blobs);
    let slow = tokio::spawn(async move { w.run(&task).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while src.count(Op::GetBlob) < blobs {
        assert!(Instant::now() < deadline, "the slow copy never opened its blobs");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    meanwhile.await;
    assert!(!slow.is_finished(), "the copy was still held when the tag moved");
    slow.await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_copy_of_an_old_digest_never_moves_a_tag_the_source_moved_on() {
    let stack = Stack::load().unwrap();
    let src = FakeRegistry::start(false).await;
    let repo = unique_repo("stale");
    let old = push_to(&plain(&src), &repo, ImageKind::OciImage, 1, 64 * 1024).await;
    let w = std::sync::Arc::new(worker(&src.url, &stack.target_url, true).await);
    let newer = std::sync::Mutex::new(None);
    let stale = while_held(w.clone(), &src, task(&old, &repo, &["v1"]), old.blobs.len(), async {
        // v1 moves on at the source and its own task copies it first.
        let img = push_to(&plain(&src), &repo, ImageKind::OciImage, 1, 1024).await;
        let r = w.run(&task(&img, &repo, &["v1"])).await.unwrap();
        assert_eq!(r.outcome, Some(Outcome::Copied));
        *newer.lock().unwrap() = Some(img);
    })
    .await;
    let newer = newer.into_inner().unwrap().unwrap();
    assert_eq!(stale.outcome, Some(Outcome::Superseded), "{stale:?}");
    assert!(stale.tags_pushed.is_empty());
    let (_, bytes) = stack.target().get_manifest(&repo, "v1").await.unwrap().unwrap();
    assert_eq!(relay_tests::plain::sha256(&bytes), newer.digest, "the destination ends at the new digest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_override_a_tag_that_appears_during_the_copy_is_left_alone() {
    let stack = Stack::load().unwrap();
    let src = FakeRegistry::start(false).await;
    let repo = unique_repo("appears");
    let img = push_to(&plain(&src), &repo, ImageKind::OciImage, 1, 64 * 1024).await;
    let w = std::sync::Arc::new(worker(&src.url, &stack.target_url, true).await);
    let mut t = task(&img, &repo, &["v1"]);
    t.options.override_existing = false;
    let target = stack.target();
    let by_hand = std::sync::Mutex::new(None);
    let report = while_held(w, &src, t, img.blobs.len(), async {
        let hand = image::push(&target, &repo, "v1", ImageKind::OciImage, 1, 512).await.unwrap();
        *by_hand.lock().unwrap() = Some(hand.digest);
    })
    .await;
    assert_eq!(report.outcome, Some(Outcome::SkippedNoOverride), "{report:?}");
    assert_eq!(report.tags_skipped.iter().map(|t| t.as_str()).collect::<Vec<_>>(), vec!["v1"]);
    let (_, bytes) = target.get_manifest(&repo, "v1").await.unwrap().unwrap();
    assert_eq!(Some(relay_tests::plain::sha256(&bytes)), by_hand.into_inner().unwrap(), "the hand-pushed tag stays");
}
