//! Referrers follow their artifact: cosign-style tags and OCI 1.1's
//! fallback index between real registries (distribution 2.8 has no
//! referrers API), and the referrers API from a source that has it (the fake
//! registry) into a destination that has it and one that does not.

use relay::registry::Outcome;
use relay::secrets::SecretSource;
use relay::worker::Worker;
use relay::{bootstrap, Config};
use relay_tests::app::{fast_retry, unique_repo, ALL_TO_CLUSTER1};
use relay_tests::fake::FakeRegistry;
use relay_tests::image::{push_fallback_index, push_referrer};
use relay_tests::{image, planned_tasks, ImageKind, PlainRegistry, Stack};

const COSIGN: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const SPDX: &str = "application/spdx+json";

fn tag_of(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_schema_referrers_follow_between_real_registries() {
    let stack = Stack::load().unwrap();
    let (source, target) = (stack.source(), stack.target());
    let repo = unique_repo("referrers");
    let img = image::push(&source, &repo, "v1", ImageKind::OciImage, 1, 4096).await.unwrap();
    let sig_tag = format!("{}.sig", tag_of(&img.digest));
    push_referrer(&source, &repo, &img.digest, COSIGN, b"signature", Some(&sig_tag)).await.unwrap();
    // An SBOM by digest, listed in the OCI 1.1 fallback index, itself signed.
    let sbom = push_referrer(&source, &repo, &img.digest, SPDX, b"{\"spdxVersion\":\"SPDX-2.3\"}", None).await.unwrap();
    push_fallback_index(&source, &repo, &img.digest, std::slice::from_ref(&sbom)).await.unwrap();
    let sbom_sig_tag = format!("{}.sig", tag_of(&sbom.0));
    push_referrer(&source, &repo, &sbom.0, COSIGN, b"sbom signature", Some(&sbom_sig_tag)).await.unwrap();
    // Another image's signature in the same repository stays behind.
    let other = image::push(&source, &repo, "v2", ImageKind::OciImage, 1, 4096).await.unwrap();
    let other_sig = format!("{}.sig", tag_of(&other.digest));
    push_referrer(&source, &repo, &other.digest, COSIGN, b"other", Some(&other_sig)).await.unwrap();

    let config = Config::parse(&stack.config_yaml(ALL_TO_CLUSTER1)).unwrap();
    let worker = bootstrap::worker(&config, &SecretSource::from_process(None), fast_retry()).await.unwrap();
    let task = planned_tasks(&config, &stack, "PUSH_ARTIFACT", &repo, "v1", &img.digest).remove(0);
    let report = worker.run(&task).await.unwrap();
    assert_eq!(report.outcome, Some(Outcome::Copied));
    assert_eq!(report.referrers_copied, 3, "the .sig tag, the fallback index, the SBOM's .sig tag");

    for reference in ["v1".to_owned(), sig_tag, tag_of(&img.digest), sbom_sig_tag, sbom.0.clone()] {
        let want = source.digest_at(&repo, &reference).await.unwrap();
        assert!(want.is_some());
        assert_eq!(target.digest_at(&repo, &reference).await.unwrap(), want, "{reference}");
    }
    assert_eq!(
        target.tree(&repo, &tag_of(&img.digest)).await.unwrap(),
        source.tree(&repo, &tag_of(&img.digest)).await.unwrap()
    );
    assert!(target.digest_at(&repo, &other_sig).await.unwrap().is_none(), "another subject's signature");

    let again = worker.run(&task).await.unwrap();
    assert_eq!((again.outcome, again.referrers_copied, again.bytes), (Some(Outcome::AlreadyPresent), 0, 0));

    // A signature added later to an artifact already replicated: a
    // duplicate event stays HEAD-only, the next reconcile pass lists the new
    // tag and brings it.
    let att_tag = format!("{}.att", tag_of(&img.digest));
    push_referrer(&source, &repo, &img.digest, "application/vnd.in-toto+json", b"{}", Some(&att_tag)).await.unwrap();
    assert_eq!(worker.run(&task).await.unwrap().referrers_copied, 0);
    let prefix = repo.split('/').next().unwrap().to_owned();
    let rules = format!("  - name: mirror\n    filters: {{ name: \"{prefix}/**\" }}\n    destination: {{ registry: cluster1-registry }}\n");
    let config = Config::parse(&stack.config_yaml(&rules)).unwrap();
    let pass = relay::reconcile::Reconciler::new(&config, &worker, 1000).pass(None, None).await.unwrap();
    for t in &pass.tasks {
        worker.run(t).await.unwrap();
    }
    assert_eq!(target.digest_at(&repo, &att_tag).await.unwrap(), source.digest_at(&repo, &att_tag).await.unwrap());
    assert!(target.digest_at(&repo, &att_tag).await.unwrap().is_some());
}

async fn fake_worker(source: &str, destination: &str, real: Option<&Stack>) -> Worker {
    let creds = real
        .map(|s| format!(", credentials: {{ username: {}, password_env: CLUSTER1_PASSWORD }}", s.target_user))
        .unwrap_or_default();
    let yaml = format!(
        "source: {{ url: {source} }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: dst, url: {destination}{creds} }}\n"
    );
    bootstrap::worker(&Config::parse(&yaml).unwrap(), &SecretSource::from_process(None), fast_retry()).await.unwrap()
}

fn task(repo: &str, digest: &str) -> relay::Task {
    serde_json::from_value(serde_json::json!({
        "version": relay::task::TASK_VERSION, "id": "t", "action": "copy",
        "source": { "repository": repo, "digest": digest, "tags": ["v1"] },
        "destination": { "registry": "dst", "repository": repo, "tags": ["v1"] },
        "rules": ["test"], "options": { "override": true, "bandwidth_kbps": null },
        "event": { "key": "k", "occurred_at": 0, "operator": "admin" }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_api_into_registries_with_and_without_it() {
    let stack = Stack::load().unwrap();
    let src = FakeRegistry::start(false).await;
    src.enable_referrers_api();
    let source = PlainRegistry::new(&src.url, None);
    let repo = unique_repo("refapi");
    let img = image::push(&source, &repo, "v1", ImageKind::OciImage, 1, 4096).await.unwrap();
    let sbom = push_referrer(&source, &repo, &img.digest, SPDX, b"{\"sbom\":1}", None).await.unwrap();
    let sig = push_referrer(&source, &repo, &sbom.0, COSIGN, b"signed sbom", None).await.unwrap();
    let task = task(&repo, &img.digest);

    // A destination with the API indexes the subjects itself: no fallback tag.
    let with_api = FakeRegistry::start(false).await;
    with_api.enable_referrers_api();
    let report = fake_worker(&src.url, &with_api.url, None).await.run(&task).await.unwrap();
    assert_eq!(report.referrers_copied, 2, "the SBOM and its signature");
    assert!(with_api.has_manifest(&repo, &sbom.0) && with_api.has_manifest(&repo, &sig.0));
    assert!(!with_api.has_manifest(&repo, &tag_of(&img.digest)), "no fallback index where the API exists");

    // distribution 2.8 has no API: the fallback indexes are written there.
    let target = stack.target();
    let worker = fake_worker(&src.url, &stack.target_url, Some(&stack)).await;
    let report = worker.run(&task).await.unwrap();
    assert_eq!(report.referrers_copied, 2);
    for d in [&sbom.0, &sig.0] {
        assert_eq!(target.digest_at(&repo, d).await.unwrap().as_deref(), Some(d.as_str()));
    }
    let (_, index) = target.get_manifest(&repo, &tag_of(&img.digest)).await.unwrap().expect("fallback index");
    let index: serde_json::Value = serde_json::from_slice(&index).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(index["manifests"][0]["digest"], sbom.0.as_str());
    assert_eq!(index["manifests"][0]["artifactType"], SPDX);
    assert_eq!(index["manifests"][0]["size"], sbom.1.len());
    let (_, index) = target.get_manifest(&repo, &tag_of(&sbom.0)).await.unwrap().expect("the SBOM's fallback index");
    let index: serde_json::Value = serde_json::from_slice(&index).unwrap();
    assert_eq!(index["manifests"][0]["digest"], sig.0.as_str());

    let again = worker.run(&task).await.unwrap();
    assert_eq!((again.referrers_copied, again.manifests_pushed), (0, 0), "nothing pushed twice");

    // `worker.referrers: false`: the artifact only.
    let off = FakeRegistry::start(false).await;
    let mut w = fake_worker(&src.url, &off.url, None).await;
    w.settings.referrers = false;
    let report = w.run(&task).await.unwrap();
    assert_eq!((report.outcome, report.referrers_copied), (Some(Outcome::Copied), 0));
    assert!(off.has_manifest(&repo, "v1") && !off.has_manifest(&repo, &sbom.0));
}
