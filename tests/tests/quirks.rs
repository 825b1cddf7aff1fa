//! Registry quirks end to end: what a registry does not do the standard
//! way is learnt from its answer, the copy goes on without it, and the
//! clients a configuration reload builds keep what was learnt.

use relay::secrets::SecretSource;
use relay::task::Task;
use relay::worker::Worker;
use relay::{bootstrap, Config};
use relay_tests::app::{fast_retry, unique_repo};
use relay_tests::fake::{FakeRegistry, Op};
use relay_tests::{image, GeneratedImage, ImageKind, PlainRegistry};

/// The answer of a registry that does not mount across repositories.
const UNSUPPORTED: &str = r#"{"errors":[{"code":"UNSUPPORTED","message":"cross-repository mount is not supported"}]}"#;

/// The configuration of a worker reading `source` into `dst` at
/// `destination`, one blob at a time (so the first refusal is known
/// before the next blob asks).
fn config(source: &str, destination: &str) -> Config {
    let yaml = format!(
        "source: {{ url: {source} }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: dst, url: {destination} }}\nworker: {{ blob_concurrency: 1 }}\n"
    );
    Config::parse(&yaml).unwrap()
}

/// A worker built from `config`, as at start and on every reload.
async fn worker(config: &Config) -> Worker {
    bootstrap::worker(config, &SecretSource::from_process(None), fast_retry()).await.unwrap()
}

fn task(img: &GeneratedImage, dst_repo: &str) -> Task {
    relay_tests::app::copy_task(img, "dst", dst_repo)
}

/// The digests of the manifest and blobs of `repo:v1` at `fake`.
async fn digests_at(fake: &FakeRegistry, repo: &str, img: &GeneratedImage) -> (String, Vec<bool>) {
    let (_, bytes) = PlainRegistry::new(&fake.url, None).get_manifest(repo, "v1").await.unwrap().unwrap();
    let blobs = img.blobs.iter().map(|b| fake.has_blob(repo, b)).collect();
    (relay_tests::plain::sha256(&bytes), blobs)
}

/// A destination that refuses cross-repository mounts (405 `UNSUPPORTED`):
/// the copy that would mount uploads instead and succeeds, with the
/// source's digests; the mount is asked once, not for the next blob nor
/// the next copy, nor by the worker a configuration reload builds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_refusing_mounts_is_asked_once_and_uploaded_to() {
    let (src, dst) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    let repo = unique_repo("mounts");
    let img =
        image::push(&PlainRegistry::new(&src.url, None), &repo, "v1", ImageKind::OciImage, 3, 16 * 1024).await.unwrap();
    dst.refuse_mounts(405, UNSUPPORTED);
    let config = config(&src.url, &dst.url);
    let w = worker(&config).await;
    // The first blob's check in place (a mount from the repository itself)
    // is the one refused: learnt there.
    let first = w.run(&task(&img, &repo)).await.unwrap();
    assert_eq!((first.blobs_copied as usize, dst.mount_requests()), (img.blobs.len(), 1));

    // Another repository of the destination: every blob would be mounted.
    let other = unique_repo("other");
    let second =
        w.run(&task(&img, &other)).await.expect("a refused mount uploads the blob: no failure, no dead letter");
    assert_eq!((second.blobs_mounted, second.blobs_copied as usize), (0, img.blobs.len()));
    assert_eq!(second.bytes, img.blob_bytes);
    assert_eq!(dst.mount_requests(), 1, "the mount is asked once");
    let (manifest, blobs) = digests_at(&dst, &other, &img).await;
    assert_eq!(manifest, img.digest, "the destination's manifest is the source's");
    assert!(blobs.iter().all(|&b| b), "every blob of the source is at the destination: {blobs:?}");

    let third_repo = unique_repo("third");
    w.run(&task(&img, &third_repo)).await.unwrap();
    assert_eq!(dst.mount_requests(), 1, "not asked again by the same worker");

    // A configuration reload builds the clients again (and a new worker,
    // whose ledger learns the blobs' repositories afresh: its second copy
    // would mount): what was learnt stays.
    drop(w);
    let reloaded = worker(&config).await;
    let uploads_before = dst.count(Op::PutUpload);
    for name in ["fourth", "fifth"] {
        let repo = unique_repo(name);
        let report = reloaded.run(&task(&img, &repo)).await.unwrap();
        assert_eq!((report.blobs_mounted, report.blobs_copied as usize), (0, img.blobs.len()), "{name}");
        assert_eq!(digests_at(&dst, &repo, &img).await.0, img.digest, "{name}");
    }
    assert_eq!(dst.count(Op::PutUpload) - uploads_before, 2 * img.blobs.len());
    assert_eq!(dst.mount_requests(), 1, "not asked again after a reload");
}
