//! The `relay` binary against the local stack (`make test` starts it).

use std::process::{Command, Output};

use relay_tests::app::unique_repo;
use relay_tests::stack::{create_queue, create_queue_with_dlq, queue_depth};
use relay_tests::{image, ImageKind, Stack};

fn relay(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_relay"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("relay runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn config_file(stack: &Stack, rules: &str) -> tempfile_path::Path {
    tempfile_path::Path::write(&stack.config_yaml(rules))
}

/// A config file that removes itself.
mod tempfile_path {
    pub struct Path(pub std::path::PathBuf);
    impl Path {
        pub fn write(content: &str) -> Path {
            let p = std::env::temp_dir().join(format!("relay-cli-{:x}.yaml", rand::random::<u64>()));
            std::fs::write(&p, content).unwrap();
            Path(p)
        }
        pub fn as_str(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }
    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

const ALL: &str = "  - name: all\n    destination: { registry: cluster1-registry }\n";

#[tokio::test]
async fn check_tests_every_registry_and_shows_no_secret() {
    let stack = Stack::load().unwrap();
    let config = config_file(&stack, ALL);
    let ok = relay(&["check", "--config", config.as_str()], &[]);
    let out = text(&ok);
    assert!(ok.status.success(), "{out}");
    assert!(out.contains("ok      source") && out.contains("ok      cluster1-registry"), "{out}");
    assert!(out.contains("push to harbor-relay-check: upload started and cancelled"), "{out}");
    assert!(out.contains("accepted Authorization values: 1 readable"), "{out}");
    assert!(!out.contains(&stack.target_password));
    // The same for programs.
    let json = relay(&["check", "--config", config.as_str(), "--output", "json"], &[]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON on stdout");
    assert_eq!(report["ok"], true);
    let checks = report["checks"].as_array().unwrap();
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "cluster1-registry" && c["what"] == "push to harbor-relay-check" && c["ok"] == true),
        "{report}"
    );

    let bad = relay(&["check", "--config", config.as_str()], &[("CLUSTER1_PASSWORD", "not-the-password-xyz")]);
    let out = text(&bad);
    assert!(!bad.status.success(), "{out}");
    assert!(out.contains("FAILED  cluster1-registry") && out.contains("401"), "{out}");
    assert!(!out.contains("not-the-password-xyz"), "the password must not be printed");

    let invalid = config_file(&stack, "  - name: x\n    destination: { registry: nope }\n");
    let out = relay(&["check", "--config", invalid.as_str()], &[]);
    assert_eq!(out.status.code(), Some(2), "an invalid configuration: exit 2");
    assert!(text(&out).contains("rules[0].destination.registry"), "{}", text(&out));
}

/// Each secret a client is built from is read with the AWS credentials in
/// use and named on its own line: one readable, one absent (exit 1), and
/// the values are never printed.
#[tokio::test]
async fn check_reads_each_secret_and_names_the_one_it_cannot() {
    let stack = Stack::load().unwrap();
    let sm = aws_sdk_secretsmanager::Client::new(&relay::bootstrap::aws_config().await);
    let id = format!("harbor-relay/test/check-{:x}", rand::random::<u32>());
    let value = serde_json::json!({"username": stack.target_user, "password": stack.target_password}).to_string();
    sm.create_secret().name(&id).secret_string(value).send().await.unwrap();
    let from_env = format!("credentials: {{ username: {}, password_env: CLUSTER1_PASSWORD }}", stack.target_user);
    let yaml = stack.config_yaml(ALL).replace(&from_env, &format!("credentials: {{ secret_id: {id} }}")).replace(
        "rules:\n",
        &format!(
            "  - {{ name: cluster2, url: {}, credentials: {{ secret_id: {id}-absent }} }}\nrules:\n",
            stack.target_url
        ),
    );
    let config = tempfile_path::Path::write(&yaml);
    let out = relay(&["check", "--config", config.as_str()], &[]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(&format!("ok      cluster1-registry        read credentials from secret {id}\n")), "{said}");
    assert!(
        said.contains(&format!("FAILED  cluster2                 read credentials from secret {id}-absent")),
        "{said}"
    );
    assert!(
        said.contains("push to harbor-relay-check: upload started and cancelled"),
        "the secret's credentials work: {said}"
    );
    assert!(!said.contains(&stack.target_password), "{said}");
}

/// The push right is probed by starting an upload and cancelling it; a
/// destination that refuses uploads fails the check (exit 1), naming it.
/// (Two runtime threads: the fakes answer while the test waits for relay.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_probes_the_push_right_without_writing() {
    use relay_tests::fake::{FakeRegistry, Fault, Op};
    let stack = Stack::load().unwrap();
    let pushable = FakeRegistry::start(false).await;
    let refusing = FakeRegistry::start(false).await;
    refusing.inject(Op::StartUpload, Fault::Status(403, None), 10);
    let yaml = stack.config_yaml("  - name: a\n    filters: { name: 'team/**' }\n    destination: { registry: pushable }\n  - name: b\n    destination: { registry: refusing, namespace: mirror }\n").replace(
        "rules:\n",
        &format!("  - {{ name: pushable, url: {} }}\n  - {{ name: refusing, url: {} }}\nrules:\n", pushable.url, refusing.url),
    );
    let config = tempfile_path::Path::write(&yaml);
    let out = relay(&["check", "--config", config.as_str()], &[]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("push to team/harbor-relay-check: upload started and cancelled"), "{said}");
    assert!(
        said.contains("FAILED  refusing") && said.contains("push to mirror/harbor-relay-check") && said.contains("403"),
        "{said}"
    );
    assert_eq!(pushable.count(Op::StartUpload), 1);
    assert_eq!(pushable.count(Op::Other), 1, "the upload was cancelled (DELETE)");
    assert_eq!(pushable.count(Op::PutUpload) + pushable.count(Op::PutManifest), 0, "nothing written");
}

#[tokio::test]
async fn replicate_plans_and_enqueues_what_the_rules_match() {
    let stack = Stack::load().unwrap();
    let sqs = stack.sqs().await;
    let queue = create_queue(&sqs, "cli").await.unwrap();
    let repo = unique_repo("one");
    let project = repo.split('/').next().unwrap().to_owned();
    let other = format!("{project}/two");
    image::push(&stack.source(), &repo, "v1", ImageKind::OciImage, 1, 1024).await.unwrap();
    image::push(&stack.source(), &repo, "v2", ImageKind::OciImage, 1, 1024).await.unwrap();
    image::push(&stack.source(), &other, "latest", ImageKind::OciImage, 1, 1024).await.unwrap();
    let rules = "  - name: not-latest\n    filters: { tag: { pattern: latest, decoration: excludes } }\n    destination: { registry: cluster1-registry }\n";
    let config = config_file(&stack, rules);

    let glob = format!("{project}/**");
    let dry = relay(&["replicate", "--config", config.as_str(), "--dry-run", &glob], &[]);
    let out = text(&dry);
    assert!(dry.status.success(), "{out}");
    assert!(out.contains("2 tasks planned (dry run)"), "latest is excluded by the rule: {out}");
    assert!(!out.contains("repositories 2/2"), "piped: the result only, no progress: {out}");
    // On a terminal (`script` gives it one) the listing shows its progress.
    let command = format!("{} replicate --config {} --dry-run '{glob}'", env!("CARGO_BIN_EXE_relay"), config.as_str());
    let tty = Command::new("script").args(["-qec", &command, "/dev/null"]).output().expect("script runs");
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(shown.contains("repositories 2/2, 3 artifacts, 2 to replicate\r\n"), "{shown:?}");
    assert_eq!(queue_depth(&sqs, &queue).await.unwrap(), (0, 0, 0), "a dry run enqueues nothing");

    let real = relay(&["replicate", "--config", config.as_str(), "--queue-url", &queue, &format!("{repo}:v2")], &[]);
    assert!(real.status.success(), "{}", text(&real));
    assert!(text(&real).contains("1 tasks enqueued"));
    assert_eq!(queue_depth(&sqs, &queue).await.unwrap().0, 1);
}

#[tokio::test]
async fn dlq_list_redrive_and_status() {
    let stack = Stack::load().unwrap();
    let sqs = stack.sqs().await;
    let (queue, dlq) = create_queue_with_dlq(&sqs, "cli", 3, 30).await.unwrap();
    sqs.send_message().queue_url(&dlq).message_body("{\"version\": 7}").send().await.unwrap();
    sqs.send_message().queue_url(&dlq).message_body("not json").send().await.unwrap();
    // As the worker dead-letters a task on its last attempt: with the error.
    let attr = |t: &str, v: &str| {
        aws_sdk_sqs::types::MessageAttributeValue::builder().data_type(t).string_value(v).build().unwrap()
    };
    let config = relay::Config::parse(&stack.config_yaml(ALL)).unwrap();
    let digest = format!("sha256:{}", "ab".repeat(32));
    let task = relay_tests::planned_tasks(&config, &stack, "PUSH_ARTIFACT", "proj/app", "v1", &digest).remove(0);
    sqs.send_message()
        .queue_url(&dlq)
        .message_body(task.encode())
        .message_attributes(
            relay::dead_letter::LAST_ERROR,
            attr("String", "cluster1-registry: /v2/x/manifests/v1: HTTP 500"),
        )
        .message_attributes(relay::dead_letter::ATTEMPTS, attr("Number", "5"))
        .send()
        .await
        .unwrap();

    let list = relay(&["dlq", "--list", "--queue-url", &queue], &[]);
    let out = text(&list);
    assert!(list.status.success(), "{out}");
    assert!(out.contains("3 messages in the dead-letter queue"), "{out}");
    assert!(out.contains("version 7 is not supported"), "{out}");
    assert!(out.contains(&format!("received 5×  task {}", task.id)), "{out}");
    assert!(out.contains("last error: cluster1-registry: /v2/x/manifests/v1: HTTP 500"), "{out}");

    let status = relay(&["status", "--queue-url", &queue], &[]);
    let out = text(&status);
    assert!(out.contains("copy queue: 0 waiting") && out.contains("dead-letter queue: 3 messages"), "{out}");
    let json = relay(&["status", "--queue-url", &queue, "--output", "json"], &[]);
    let status: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON on stdout");
    assert_eq!((status["copy_queue"]["waiting"].as_u64(), status["dead_letter_queue"].as_u64()), (Some(0), Some(3)));
    let json = relay(&["dlq", "--list", "--queue-url", &queue, "--output", "json"], &[]);
    let letters: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON on stdout");
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 3);
    assert!(letters.iter().any(|l| l["task"]["id"] == task.id.as_str() && l["receive_count"] == 5), "{letters:?}");

    let redrive = relay(&["dlq", "--redrive", "--queue-url", &queue], &[]);
    assert!(text(&redrive).contains("3 messages moved back"), "{}", text(&redrive));
    assert_eq!(queue_depth(&sqs, &dlq).await.unwrap(), (0, 0, 0));
    assert_eq!(queue_depth(&sqs, &queue).await.unwrap().0, 3);
}

/// `relay config-push` validates, then stores the file in SSM where the
/// functions read it; a file over 4 KB goes to the Advanced tier when
/// `--tier advanced` allows it; an invalid file is refused and the
/// parameter keeps what it had.
#[tokio::test]
async fn config_push_validates_and_stores_where_the_functions_read() {
    let stack = Stack::load().unwrap();
    let ssm = aws_sdk_ssm::Client::new(&relay::bootstrap::aws_config().await);
    let name = format!("/harbor-relay/test/push-{:x}", rand::random::<u32>());
    let good = config_file(&stack, ALL);
    let out = relay(&["config-push", good.as_str(), "--parameter", &name], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Standard tier"), "{}", text(&out));
    let stored = ssm.get_parameter().name(&name).with_decryption(true).send().await.unwrap();
    assert_eq!(stored.parameter().unwrap().value().unwrap(), std::fs::read_to_string(&good.0).unwrap());
    // What the functions do at cold start with RELAY_CONFIG=ssm:<name>.
    let check = relay(&["check", "--config", &format!("ssm:{name}")], &[]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains(&format!("ok      configuration            read SSM parameter {name}")),
        "{}",
        text(&check)
    );
    let absent = relay(&["check", "--config", &format!("ssm:{name}-absent")], &[]);
    assert_eq!(absent.status.code(), Some(2), "{}", text(&absent));
    assert!(text(&absent).contains(&format!("{name}-absent")), "the parameter is named: {}", text(&absent));

    // Many rules: over SSM's 4 KB Standard limit.
    let rules: String = (0..60)
        .map(|i| format!("  - name: rule-{i:03}\n    destination: {{ registry: cluster1-registry }}\n"))
        .collect();
    let large = config_file(&stack, &rules);
    assert!(std::fs::metadata(&large.0).unwrap().len() > 4096);
    let out = relay(&["config-push", large.as_str(), "--parameter", &name, "--tier", "advanced"], &[]);
    assert!(out.status.success() && text(&out).contains("Advanced tier"), "{}", text(&out));
    let described = ssm
        .describe_parameters()
        .parameter_filters(
            aws_sdk_ssm::types::ParameterStringFilter::builder().key("Name").values(&name).build().unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(described.parameters()[0].tier(), Some(&aws_sdk_ssm::types::ParameterTier::Advanced));

    let invalid = config_file(&stack, "  - name: x\n    destination: { registry: nope }\n");
    let out = relay(&["config-push", invalid.as_str(), "--parameter", &name], &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("rules[0].destination.registry"), "{}", text(&out));
    let kept = ssm.get_parameter().name(&name).with_decryption(true).send().await.unwrap();
    assert_eq!(kept.parameter().unwrap().value().unwrap(), std::fs::read_to_string(&large.0).unwrap());
}

/// A configuration larger than its SSM tier holds (4096 bytes Standard,
/// 8192 Advanced) is refused before AWS is called, naming the limit and
/// its size, and nothing is stored; one too large only with its comments
/// is stored without them, and says so.
#[tokio::test]
async fn config_push_refuses_what_the_tier_cannot_hold() {
    let stack = Stack::load().unwrap();
    let ssm = aws_sdk_ssm::Client::new(&relay::bootstrap::aws_config().await);
    let name = format!("/harbor-relay/test/size-{:x}", rand::random::<u32>());
    let rules = |n: usize, comment: usize| -> String {
        (0..n)
            .map(|i| {
                let c = if comment > 0 { format!("  # {}\n", "c".repeat(comment)) } else { String::new() };
                format!("{c}  - name: rule-{i:03}\n    destination: {{ registry: cluster1-registry }}\n")
            })
            .collect()
    };
    let not_stored = |name: String| {
        let ssm = ssm.clone();
        async move {
            let err = ssm.get_parameter().name(&name).send().await.expect_err("nothing stored");
            assert!(err.into_service_error().is_parameter_not_found(), "{name} was written");
        }
    };

    // Over Standard's 4096 bytes, without comments to drop.
    let over_standard = config_file(&stack, &rules(60, 0));
    let size = std::fs::metadata(&over_standard.0).unwrap().len();
    assert!(size > 4096 && size <= 8192, "{size}");
    let out = relay(&["config-push", over_standard.as_str(), "--parameter", &name], &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("{size} bytes")), "the size is named: {}", text(&out));
    assert!(text(&out).contains("over the 4096 bytes"), "the limit is named: {}", text(&out));
    assert!(text(&out).contains("--tier advanced") && text(&out).contains("nothing was stored"), "{}", text(&out));
    not_stored(name.clone()).await;
    // Refused before any AWS call: the same answer with AWS unreachable.
    let out = relay(
        &["config-push", over_standard.as_str(), "--parameter", &name],
        &[("AWS_ENDPOINT_URL", "http://127.0.0.1:9"), ("AWS_MAX_ATTEMPTS", "1")],
    );
    assert!(!out.status.success() && text(&out).contains("over the 4096 bytes"), "{}", text(&out));

    // Over Advanced's 8192 bytes: nothing SSM can hold.
    let over_advanced = config_file(&stack, &rules(120, 0));
    let size = std::fs::metadata(&over_advanced.0).unwrap().len();
    assert!(size > 8192, "{size}");
    let out = relay(&["config-push", over_advanced.as_str(), "--parameter", &name, "--tier", "advanced"], &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{size} bytes")) && text(&out).contains("over the 8192 bytes"),
        "{}",
        text(&out)
    );
    not_stored(name.clone()).await;

    // Too large only with its comments: stored without them, in Standard.
    let commented = config_file(&stack, &rules(20, 150));
    let content = std::fs::read_to_string(&commented.0).unwrap();
    assert!(content.len() > 4096, "{}", content.len());
    let out = relay(&["config-push", commented.as_str(), "--parameter", &name], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("comments removed") && text(&out).contains("Standard tier"), "{}", text(&out));
    let stored = ssm.get_parameter().name(&name).with_decryption(true).send().await.unwrap();
    let stored = stored.parameter().unwrap().value().unwrap().to_owned();
    assert!(stored.len() <= 4096 && !stored.contains('#'), "{stored}");
    let original = relay::Config::parse(&content).unwrap();
    assert_eq!(format!("{:?}", relay::Config::parse(&stored).unwrap()), format!("{original:?}"));
}

#[tokio::test]
async fn configuration_from_an_ssm_parameter() {
    let stack = Stack::load().unwrap();
    let shared = relay::bootstrap::aws_config().await;
    let ssm = aws_sdk_ssm::Client::new(&shared);
    let name = format!("/harbor-relay/test/{:x}", rand::random::<u32>());
    ssm.put_parameter()
        .name(&name)
        .value(stack.config_yaml(ALL))
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    let out = relay(&["check", "--config", &format!("ssm:{name}")], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("ok      cluster1-registry"));
    let missing = relay(&["check", "--config", "ssm:/harbor-relay/does-not-exist"], &[]);
    assert!(!missing.status.success());
    assert!(text(&missing).contains("cannot read SSM parameter /harbor-relay/does-not-exist"), "{}", text(&missing));
}

#[tokio::test]
async fn reconcile_enqueues_only_what_is_missing() {
    let stack = Stack::load().unwrap();
    let sqs = stack.sqs().await;
    let queue = create_queue(&sqs, "cli-rec").await.unwrap();
    let repo = unique_repo("rec");
    let project = repo.split('/').next().unwrap().to_owned();
    image::push(&stack.source(), &repo, "v1", ImageKind::OciImage, 1, 1024).await.unwrap();
    image::push(&stack.source(), &repo, "v2", ImageKind::OciImage, 1, 1024).await.unwrap();
    let rules = format!(
        "  - name: p\n    filters: {{ name: \"{project}/**\" }}\n    destination: {{ registry: cluster1-registry }}\n"
    );
    let config = config_file(&stack, &rules);
    let out = relay(&["reconcile", "--config", config.as_str(), "--queue-url", &queue], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1 repositories, 2 tags checked, 0 in sync, 2 tasks enqueued"), "{}", text(&out));
    assert_eq!(queue_depth(&sqs, &queue).await.unwrap().0, 2);
}

#[test]
fn version_is_the_crate_version() {
    let out = relay(&["--version"], &[]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("relay {}", env!("CARGO_PKG_VERSION")));
}
