//! Registry kinds against real servers: a TLS registry behind a private CA,
//! a Harbor destination whose projects are created on first push (Harbor's
//! project API in front of a real registry), and Amazon ECR — its control
//! plane served by moto, its data plane a real registry whose password is
//! the token moto hands out.

use relay::registry::Outcome;
use relay::secrets::SecretSource;
use relay::settle::Disposition;
use relay::{bootstrap, Config};
use relay_tests::app::{fast_retry, unique_repo};
use relay_tests::harbor::FakeHarbor;
use relay_tests::spawned::SpawnedRegistry;
use relay_tests::{image, planned_tasks, ImageKind, Stack};

/// A worker replicating everything from the stack's source to one
/// destination, described by `registry` (YAML flow mapping fields).
async fn worker(stack: &Stack, registry: &str) -> (Config, relay::worker::Worker) {
    let yaml = format!(
        "source: {{ url: {} }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: dst, {registry} }}\nrules:\n  - {{ name: all, destination: {{ registry: dst }} }}\n",
        stack.source_url
    );
    let config = Config::parse(&yaml).unwrap();
    let (_, sm) = bootstrap::aws_clients().await;
    let w = bootstrap::worker(&config, &stack.secrets(Some(sm)), fast_retry()).await.unwrap();
    (config, w)
}

async fn pushed(stack: &Stack, name: &str) -> (String, relay_tests::GeneratedImage) {
    let repo = unique_repo(name);
    let img = image::push(&stack.source(), &repo, "v1", ImageKind::OciImage, 2, 4096).await.unwrap();
    (repo, img)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_is_refused_without_ca_file_and_trusted_with_it() {
    let stack = Stack::load().unwrap().with_vars(&[("RELAY_TLS_TEST_PASSWORD", "tls-password-0123")]);
    let registry = SpawnedRegistry::start_with(&[("relay", "tls-password-0123")], true).await.unwrap();
    let creds = "credentials: { username: relay, password_env: RELAY_TLS_TEST_PASSWORD }";
    let (repo, img) = pushed(&stack, "private-ca").await;

    let (config, w) = worker(&stack, &format!("url: {}, {creds}", registry.url)).await;
    let task = planned_tasks(&config, &stack, "PUSH_ARTIFACT", &repo, "v1", &img.digest).remove(0);
    let err = w.run(&task).await.unwrap_err();
    assert!(err.to_string().contains("invalid peer certificate") && err.to_string().contains("ca_file"), "{err}");
    assert!(!matches!(err, relay::worker::TaskFailure::Parked(_)), "a certificate is no outage: {err}");

    let ca = registry.ca_file().display().to_string();
    let (config, w) = worker(&stack, &format!("url: {}, {creds}, ca_file: {ca}", registry.url)).await;
    let task = planned_tasks(&config, &stack, "PUSH_ARTIFACT", &repo, "v1", &img.digest).remove(0);
    assert_eq!(w.run(&task).await.unwrap().outcome, Some(Outcome::Copied));
    let dest = registry.client("relay", "tls-password-0123");
    assert_eq!(dest.digest_at(&repo, "v1").await.unwrap(), Some(img.digest.clone()));
    assert_eq!(dest.tree(&repo, "v1").await.unwrap(), stack.source().tree(&repo, "v1").await.unwrap());
}

fn target_credentials(stack: &Stack) -> String {
    format!("credentials: {{ username: {}, password_env: CLUSTER1_PASSWORD }}", stack.target_user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_harbor_destination_gets_its_project_created_before_the_first_push() {
    let stack = Stack::load().unwrap();
    let harbor = FakeHarbor::start(&stack.target_url, true).await;
    let (repo, img) = pushed(&stack, "harbor-dst").await;
    let project = repo.split('/').next().unwrap().to_owned();
    let fields = format!(
        "kind: harbor, url: {}, {}, create_projects: true, storage_limit: 1073741824",
        harbor.url,
        target_credentials(&stack)
    );
    let (config, w) = worker(&stack, &fields).await;
    let task = planned_tasks(&config, &stack, "PUSH_ARTIFACT", &repo, "v1", &img.digest).remove(0);
    assert_eq!(w.run(&task).await.unwrap().outcome, Some(Outcome::Copied));

    assert!(harbor.has_project(&project));
    assert_eq!(
        harbor.created(),
        vec![
            serde_json::json!({ "project_name": project, "metadata": { "public": "false" }, "storage_limit": 1073741824 })
        ]
    );
    let log = harbor.log();
    let created_at = log.iter().position(|l| l == "POST /api/v2.0/projects").expect("created");
    let first_write = log.iter().position(|l| l.starts_with("POST /v2/") || l.starts_with("PUT /v2/")).expect("pushed");
    assert!(created_at < first_write, "{log:?}");
    assert_eq!(stack.target().digest_at(&repo, "v1").await.unwrap(), Some(img.digest.clone()));

    // The next image into the same project asks nothing more of the API.
    let img2 = image::push(&stack.source(), &repo, "v2", ImageKind::OciImage, 1, 4096).await.unwrap();
    let task = planned_tasks(&config, &stack, "PUSH_ARTIFACT", &repo, "v2", &img2.digest).remove(0);
    w.run(&task).await.unwrap();
    assert_eq!(harbor.log().iter().filter(|l| l.contains("/api/")).count(), 2, "one HEAD, one POST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_harbor_robot_without_the_right_fails_once_naming_the_permission() {
    let stack = Stack::load().unwrap();
    let harbor = FakeHarbor::start(&stack.target_url, false).await;
    let (repo, img) = pushed(&stack, "harbor-denied").await;
    let fields = format!("kind: harbor, url: {}, {}, create_projects: true", harbor.url, target_credentials(&stack));
    let (config, w) = worker(&stack, &fields).await;
    let task = planned_tasks(&config, &stack, "PUSH_ARTIFACT", &repo, "v1", &img.digest).remove(0);
    let err = w.run(&task).await.unwrap_err();
    assert!(err.to_string().contains("Project: Create"), "{err}");
    assert_eq!(err.disposition(), Disposition::Permanent, "no retry gives the robot the right");
    let log = harbor.log();
    assert_eq!(log.iter().filter(|l| *l == "POST /api/v2.0/projects").count(), 1, "{log:?}");
    assert!(!log.iter().any(|l| l.contains("/blobs/")), "no blob tried: {log:?}");
}

/// moto's account and the password its `GetAuthorizationToken` hands out.
const MOTO_ACCOUNT: &str = "123456789012";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ecr_destination_gets_its_token_and_repository_from_the_control_plane() {
    use base64::Engine as _;
    let stack = Stack::load().unwrap();
    // The data plane's password is what the control plane hands out.
    let sdk = bootstrap::aws_config().await;
    let ecr = aws_sdk_ecr::Client::new(&sdk);
    let token = ecr.get_authorization_token().send().await.expect("moto on AWS_ENDPOINT_URL_ECR");
    let token = token.authorization_data()[0].authorization_token().unwrap().to_owned();
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(token).unwrap()).unwrap();
    let (user, password) = decoded.split_once(':').unwrap();
    assert_eq!(user, "AWS");
    let registry = SpawnedRegistry::start(&[(user, password)]).await.unwrap();

    let (repo, img) = pushed(&stack, "ecr-dst").await;
    let fields = format!(
        "kind: ecr, url: {}, region: us-east-1, registry_id: '{MOTO_ACCOUNT}', role_arn: 'arn:aws:iam::{MOTO_ACCOUNT}:role/relay-ecr', tag_mutability: IMMUTABLE, scan_on_push: true, encryption: KMS, kms_key: alias/relay",
        registry.url
    );
    let (config, w) = worker(&stack, &fields).await;
    let task = planned_tasks(&config, &stack, "PUSH_ARTIFACT", &repo, "v1", &img.digest).remove(0);
    assert_eq!(w.run(&task).await.unwrap().outcome, Some(Outcome::Copied));

    let dest = registry.client(user, password);
    assert_eq!(dest.digest_at(&repo, "v1").await.unwrap(), Some(img.digest.clone()));
    assert_eq!(dest.tree(&repo, "v1").await.unwrap(), stack.source().tree(&repo, "v1").await.unwrap());
    let described = ecr.describe_repositories().repository_names(&repo).send().await.unwrap();
    let r = &described.repositories()[0];
    assert_eq!(r.image_tag_mutability().map(|m| m.as_str()), Some("IMMUTABLE"));
    assert_eq!(r.image_scanning_configuration().map(|c| c.scan_on_push()), Some(true));
    let enc = r.encryption_configuration().unwrap();
    assert_eq!((enc.encryption_type().as_str(), enc.kms_key()), ("KMS", Some("alias/relay")));

    // A second image into the same repository: created once, not again.
    let img2 = image::push(&stack.source(), &repo, "v2", ImageKind::OciImage, 1, 4096).await.unwrap();
    let task = planned_tasks(&config, &stack, "PUSH_ARTIFACT", &repo, "v2", &img2.digest).remove(0);
    assert_eq!(w.run(&task).await.unwrap().outcome, Some(Outcome::Copied));
    assert_eq!(dest.digest_at(&repo, "v2").await.unwrap(), Some(img2.digest));
}

/// What ECR answers a manifest `PUT` onto a tag of an `IMMUTABLE`
/// repository that points elsewhere.
const ECR_IMMUTABLE: &str = r#"{"errors":[{"code":"TAG_INVALID","message":"The image tag 'v1' already exists in the 'e2e/immutable' repository and cannot be overwritten because the repository is immutable."}]}"#;

/// An immutable tag that already points elsewhere is kept, as with
/// `override: false`: the outcome says so, nothing fails or retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immutable_tag_that_points_elsewhere_is_skipped_not_failed() {
    use relay_tests::fake::{FakeRegistry, Fault, Op};
    let (src, dst) = (FakeRegistry::start(false).await, FakeRegistry::start(false).await);
    let repo = unique_repo("immutable");
    let img = image::push(&relay_tests::PlainRegistry::new(&src.url, None), &repo, "v1", ImageKind::OciImage, 1, 1024)
        .await
        .unwrap();
    dst.inject(Op::PutManifest, Fault::Answer(400, ECR_IMMUTABLE), 1);
    let yaml = format!(
        "source: {{ url: {} }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: dst, url: {} }}\nrules:\n  - {{ name: all, destination: {{ registry: dst }} }}\n",
        src.url, dst.url
    );
    let config = Config::parse(&yaml).unwrap();
    let w = bootstrap::worker(&config, &SecretSource::from_process(None), fast_retry()).await.unwrap();
    let mut task = relay_tests::planned_tasks_on(
        &config,
        src.url.trim_start_matches("http://"),
        "PUSH_ARTIFACT",
        &repo,
        "v1",
        &img.digest,
    )
    .remove(0);
    task.options.override_existing = true;
    let report = w.run(&task).await.unwrap();
    assert_eq!(report.outcome, Some(Outcome::SkippedNoOverride));
    assert_eq!(report.tags_skipped.iter().map(|t| t.as_str()).collect::<Vec<_>>(), ["v1"]);
    assert!(!dst.has_manifest(&repo, "v1"));
}

/// A private Harbor: its events name the external address (`source.url`,
/// here one that does not even resolve), and the functions reach it at the
/// internal one (`source.api_url`). The event is accepted for its host and
/// the copy reads the source where it can be reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_harbor_is_reached_at_its_internal_address() {
    let stack = Stack::load().unwrap();
    let external = "harbor.relay-test.invalid:5001";
    let yaml = format!(
        "source: {{ url: 'http://{external}', api_url: {} }}\nwebhook: {{ auth_values_env: RELAY_WEBHOOK_AUTH }}\nregistries:\n  - {{ name: dst, url: {}, credentials: {{ username: {}, password_env: CLUSTER1_PASSWORD }} }}\nrules:\n  - {{ name: all, destination: {{ registry: dst }} }}\n",
        stack.source_url, stack.target_url, stack.target_user
    );
    let config = Config::parse(&yaml).unwrap();
    let w = relay::bootstrap::worker(&config, &relay::secrets::SecretSource::from_process(None), fast_retry())
        .await
        .unwrap();
    let repo = unique_repo("private-harbor");
    let img = image::push(&stack.source(), &repo, "v1", ImageKind::OciImage, 1, 1024).await.unwrap();
    let tasks = relay_tests::planned_tasks_on(&config, external, "PUSH_ARTIFACT", &repo, "v1", &img.digest);
    assert_eq!(tasks.len(), 1, "the event names the external host: accepted");
    assert_eq!(w.run(&tasks[0]).await.unwrap().outcome, Some(relay::registry::Outcome::Copied));
    assert_eq!(stack.target().digest_at(&repo, "v1").await.unwrap().as_deref(), Some(img.digest.as_str()));
}
