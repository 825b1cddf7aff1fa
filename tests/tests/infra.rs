//! The SAM template: cfn-lint and `sam validate --lint` pass offline, and
//! the transformed CloudFormation wires what matters. The tools live in
//! .local/venv-infra (`make test` installs them).

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn tool(name: &str) -> PathBuf {
    let p = root().join(".local/venv-infra/bin").join(name);
    assert!(p.exists(), "{} missing: `make test` installs it (scripts/stack.sh install)", p.display());
    p
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.env("AWS_REGION", "us-east-1").env("SAM_CLI_TELEMETRY", "0").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn transformed() -> Value {
    let out = run(Command::new(tool("python"))
        .arg(root().join("infra/transform.py"))
        .arg(root().join("infra/template.yaml")));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn template_passes_cfn_lint_and_sam_validate() {
    run(Command::new(tool("cfn-lint")).arg(root().join("infra/template.yaml")));
    let out = run(Command::new(tool("sam")).args(["validate", "--lint"]).current_dir(root().join("infra")));
    assert!(out.contains("is a valid SAM Template"), "{out}");
}

#[test]
fn transformed_template_wires_queue_worker_and_webhook() {
    let t = transformed();
    let r = &t["Resources"];
    let get_att = |res: &str, att: &str| json!({"Fn::GetAtt": [res, att]});

    // Worker ← copy queue, with partial batch responses.
    let esm = r
        .as_object()
        .unwrap()
        .values()
        .find(|v| v["Type"] == "AWS::Lambda::EventSourceMapping")
        .expect("event source mapping");
    assert_eq!(esm["Properties"]["EventSourceArn"], get_att("CopyQueue", "Arn"));
    assert_eq!(esm["Properties"]["FunctionName"], json!({"Ref": "WorkerFunction"}));
    assert_eq!(esm["Properties"]["FunctionResponseTypes"], json!(["ReportBatchItemFailures"]));
    assert!(esm["Properties"]["ScalingConfig"]["MaximumConcurrency"].is_object());

    // Copy queue → DLQ, encrypted; DLQ keeps messages longer.
    let q = &r["CopyQueue"]["Properties"];
    assert_eq!(q["RedrivePolicy"]["deadLetterTargetArn"], get_att("DeadLetterQueue", "Arn"));
    assert_eq!(q["SqsManagedSseEnabled"], true);
    assert_eq!(r["DeadLetterQueue"]["Properties"]["MessageRetentionPeriod"], 1209600);
    let params = &t["Parameters"];
    assert!(
        params["QueueVisibilityTimeoutSeconds"]["Default"].as_u64().unwrap()
            >= 6 * params["WorkerTimeoutSeconds"]["Default"].as_u64().unwrap()
    );

    // Functions: arm64, provided.al2023, JSON logs.
    for f in ["WebhookFunction", "WorkerFunction"] {
        let p = &r[f]["Properties"];
        assert_eq!(p["Architectures"], json!(["arm64"]), "{f}");
        assert_eq!(p["Runtime"], "provided.al2023", "{f}");
        assert_eq!(p["LoggingConfig"]["LogFormat"], "JSON", "{f}");
    }

    // Webhook: a Function URL without IAM auth (the function checks Harbor's header).
    let url = &r["WebhookFunctionUrl"]["Properties"];
    assert_eq!(url["AuthType"], "NONE");
    assert_eq!(url["TargetFunctionArn"], json!({"Ref": "WebhookFunction"}));

    // IAM: SQS only on the copy queue, secrets only the named ones, nothing
    // on "*" but ECR's GetAuthorizationToken (it has no resource).
    for role in ["WebhookFunctionRole", "WorkerRole"] {
        let policies = serde_json::to_string(&r[role]["Properties"]["Policies"]).unwrap();
        let on_star = serde_json::to_string(&r[role]["Properties"]["Policies"])
            .unwrap()
            .replace("{\"Action\":\"ecr:GetAuthorizationToken\",\"Effect\":\"Allow\",\"Resource\":\"*\"}", "");
        assert!(!on_star.contains("\"Resource\":\"*\""), "{role} grants on *: {policies}");
        assert!(policies.contains("\"secretsmanager:GetSecretValue\""), "{role}");
        assert!(policies.contains("CopyQueue"), "{role} is scoped to the copy queue");
        assert!(
            !serde_json::to_string(&r[role]["Properties"]).unwrap().contains("AWSLambdaSQSQueueExecutionRole"),
            "{role}: no all-queues managed policy"
        );
    }
    // Secrets per function: the public webhook reads only its auth secret,
    // the worker and reconcile only registry credentials.
    let secrets_of = |role: &str| serde_json::to_string(&r[role]["Properties"]["Policies"]).unwrap();
    assert!(secrets_of("WebhookFunctionRole").contains("{\"Ref\":\"WebhookSecretArns\"}"));
    assert!(
        !secrets_of("WebhookFunctionRole").contains("{\"Ref\":\"SecretArns\"}"),
        "the webhook reads no registry secret"
    );
    for role in ["WorkerRole", "ReconcileFunctionRole"] {
        assert!(secrets_of(role).contains("{\"Ref\":\"SecretArns\"}"), "{role}");
    }
    assert!(!secrets_of("WorkerRole").contains("WebhookSecretArns"), "the worker reads no webhook secret");
    // Reconcile reads it only when it keeps Harbor's webhook policies.
    let reconcile_policies = r["ReconcileFunctionRole"]["Properties"]["Policies"].as_array().unwrap();
    for p in reconcile_policies.iter().filter(|p| p.to_string().contains("WebhookSecretArns")) {
        assert_eq!(p["Fn::If"][0], "KeepWebhooksWithSecrets", "{p}");
    }
    // A flood at the public URL cannot take the worker's concurrency.
    assert_eq!(
        r["WebhookFunction"]["Properties"]["ReservedConcurrentExecutions"],
        json!({"Fn::If": ["WebhookReserved", {"Ref": "WebhookReservedConcurrency"}, {"Ref": "AWS::NoValue"}]})
    );
    // Worker and reconcile can run in the operator's VPC.
    for f in ["WorkerFunction", "ReconcileFunction"] {
        let vpc = &r[f]["Properties"]["VpcConfig"]["Fn::If"];
        assert_eq!(vpc[0], "InVpc", "{f}");
        assert_eq!(vpc[1]["SubnetIds"], json!({"Ref": "VpcSubnetIds"}), "{f}");
    }
    for out in ["WebhookFunctionName", "WorkerFunctionName", "ReconcileFunctionName", "WorkerLogGroupName"] {
        assert!(t["Outputs"][out].is_object(), "output {out}");
    }
    // `relay history --stack S` reads these two groups by name.
    for (group, function) in [("WebhookLogGroup", "webhook"), ("WorkerLogGroup", "worker")] {
        let name = &r[group]["Properties"]["LogGroupName"]["Fn::Sub"];
        assert_eq!(name, &json!(format!("/aws/lambda/${{AWS::StackName}}-{function}")), "{group}");
    }
    let worker_sqs = serde_json::to_string(&r["WorkerRole"]["Properties"]["Policies"][0]).unwrap();
    assert!(
        worker_sqs.contains("sqs:ReceiveMessage") && worker_sqs.contains("{\"Fn::GetAtt\":[\"CopyQueue\",\"Arn\"]}")
    );
    let dlq_statement = &r["WorkerRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][1];
    assert_eq!(dlq_statement["Action"], "sqs:SendMessage", "the worker dead-letters with the error");
    assert_eq!(dlq_statement["Resource"], get_att("DeadLetterQueue", "Arn"), "only to the DLQ");
    let requeue = &r["WorkerRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][2];
    assert_eq!(requeue["Action"], "sqs:SendMessage", "continued tasks, probes and released tasks are re-enqueued");
    assert_eq!(requeue["Resource"], get_att("CopyQueue", "Arn"), "only to the copy queue");
    // The parking lot: the worker parks, sweeps and releases there, and
    // the queue keeps a message longer than the longest parking allowed.
    let parking = &r["WorkerRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][3];
    assert_eq!(parking["Resource"], get_att("ParkingQueue", "Arn"));
    assert_eq!(
        parking["Action"],
        json!(["sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"])
    );
    assert_eq!(r["ParkingQueue"]["Properties"]["MessageRetentionPeriod"], 1209600, "14 days");
    let env = &r["WorkerFunction"]["Properties"]["Environment"]["Variables"];
    assert_eq!(env["RELAY_PARKING_QUEUE_URL"], json!({"Ref": "ParkingQueue"}));
    assert_eq!(env["RELAY_DLQ_URL"], json!({"Ref": "DeadLetterQueue"}));
    assert_eq!(env["RELAY_QUEUE_URL"], json!({"Ref": "CopyQueue"}), "Globals merged");
    assert_eq!(r["WorkerFunction"]["Properties"]["Role"], get_att("WorkerRole", "Arn"));

    // ECR (opt-in): the token on *, the copy's actions on the prefix only.
    let ecr = &r["WorkerRole"]["Properties"]["Policies"][4];
    assert_eq!(ecr["Fn::If"][0], "EcrEnabled");
    let statements = &ecr["Fn::If"][1]["PolicyDocument"]["Statement"];
    assert_eq!(statements[0], json!({"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"}));
    let actions: Vec<&str> = statements[1]["Action"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    for needed in [
        "ecr:CreateRepository",
        "ecr:InitiateLayerUpload",
        "ecr:CompleteLayerUpload",
        "ecr:PutImage",
        "ecr:BatchGetImage",
    ] {
        assert!(actions.contains(&needed), "{needed} missing: {actions:?}");
    }
    assert!(!actions.iter().any(|a| a.ends_with('*') || *a == "ecr:DeleteRepository"), "{actions:?}");
    let scoped = serde_json::to_string(&statements[1]["Resource"]).unwrap();
    assert!(scoped.contains("repository/${EcrRepositoryPrefix}*"), "{scoped}");
    let cross = &r["WorkerRole"]["Properties"]["Policies"][5]["Fn::If"][1]["PolicyDocument"]["Statement"][0];
    assert_eq!(cross["Action"], "sts:AssumeRole");
    assert_eq!(cross["Resource"], json!({"Ref": "EcrAssumeRoleArns"}));

    // Reconcile: an EventBridge schedule from the parameter, one sweep at a time.
    let sweep = &r["ReconcileFunctionSweep"]["Properties"];
    assert_eq!(sweep["ScheduleExpression"], json!({"Ref": "ReconcileSchedule"}));
    assert_eq!(sweep["Targets"][0]["Arn"], get_att("ReconcileFunction", "Arn"));
    assert_eq!(r["ReconcileFunction"]["Properties"]["ReservedConcurrentExecutions"], 1);
    let rec = serde_json::to_string(&r["ReconcileFunctionRole"]["Properties"]["Policies"]).unwrap();
    assert!(
        rec.contains("ssm:PutParameter") && rec.contains("ReconcileCursor") && rec.contains("sqs:SendMessage"),
        "{rec}"
    );

    // Opt-in: reconcile keeps Harbor's webhook policies pointed at the
    // Function URL, and only then may read the webhook's secret.
    let env = &r["ReconcileFunction"]["Properties"]["Environment"]["Variables"];
    assert_eq!(
        env["RELAY_HARBOR_WEBHOOKS_ENDPOINT"],
        json!({"Fn::If": ["KeepWebhooks", get_att("WebhookFunctionUrl", "FunctionUrl"), {"Ref": "AWS::NoValue"}]})
    );
    assert!(rec.contains("KeepWebhooksWithSecrets") && rec.contains("WebhookSecretArns"), "{rec}");

    // Observability: the alarms and the saved queries exist.
    let alarms: Vec<&str> = r
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v["Type"] == "AWS::CloudWatch::Alarm")
        .map(|(k, _)| k.as_str())
        .collect();
    for a in [
        "DeadLetterAlarm",
        "OldestTaskAlarm",
        "WorkerErrorsAlarm",
        "Webhook5xxAlarm",
        "WebhookErrorsAlarm",
        "WebhookUrl5xxAlarm",
        "ReconcileErrorsAlarm",
        "FinalFailuresAlarm",
    ] {
        assert!(alarms.contains(&a), "{a} missing");
    }
    // Final failures, not attempts: the metric the settler writes once per
    // dead-lettered task.
    assert_eq!(r["FinalFailuresAlarm"]["Properties"]["MetricName"], "FinalFailures");
    assert_eq!(r["Dashboard"]["Type"], "AWS::CloudWatch::Dashboard");
    // The dashboard is JSON once the stack's names are in, and shows each
    // destination and rule (a search over the sliced dimension sets, since
    // their names live in the configuration) and the reconcile passes.
    let body = r["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"].as_str().unwrap();
    let body = with_names_substituted(body);
    let dashboard: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("dashboard JSON: {e}\n{body}"));
    let widgets = serde_json::to_string(&dashboard["widgets"]).unwrap();
    for needed in [
        "{HarborRelay,Function,Outcome,Registry} MetricName=\\\"Tasks\\\"",
        "{HarborRelay,Function,Outcome,Registry} MetricName=\\\"BytesCopied\\\"",
        "{HarborRelay,Function,Registry} MetricName=\\\"FinalFailures\\\"",
        "{HarborRelay,Function,Outcome,Rule} MetricName=\\\"Tasks\\\"",
        "\"DriftFound\",\"Function\",\"reconcile\"",
    ] {
        assert!(widgets.contains(needed), "{needed} not on the dashboard: {widgets}");
    }
    assert_eq!(r["FailedTasksQuery"]["Type"], "AWS::Logs::QueryDefinition");
    for o in ["WebhookUrl", "CopyQueueUrl", "DeadLetterQueueUrl", "ParkingQueueUrl"] {
        assert!(t["Outputs"][o].is_object(), "output {o}");
    }
}

/// `body` with every `${…}` of `Fn::Sub` replaced by a plain name.
fn with_names_substituted(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed ${") + start;
        out.push_str("substituted");
        rest = &rest[end + 1..];
    }
    out + rest
}

/// `sam build` as `make build` runs it, with one part replaced: a stand-in
/// for cargo-lambda (a full arm64 release build of three binaries takes
/// about half an hour on this machine). SAM's own steps all run — it reads
/// the template, resolves each function's `rust-cargolambda` build through
/// cargo metadata, calls `cargo lambda build` in its `CodeUri` and copies
/// `target/lambda/<binary>/bootstrap` into the artifact — so a template
/// change that breaks the build (a wrong `CodeUri`, `BuildMethod`, binary
/// name or architecture) fails here. The stand-in accepts only the
/// arguments SAM passes for an arm64 release build, refuses a binary the
/// package in `CodeUri` does not have, and puts the host build of that
/// binary where cargo-lambda would. What it cannot catch, the
/// cross-compilation itself, only `make build` shows.
#[test]
fn sam_build_builds_every_function_from_its_package() {
    let scratch = std::env::temp_dir().join(format!("relay-sam-build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let bin_dir = scratch.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let record = scratch.join("built.txt");
    let stand_in = bin_dir.join("cargo-lambda");
    std::fs::write(
        &stand_in,
        r#"#!/usr/bin/env bash
set -euo pipefail
[ "${1:-}" = lambda ] && [ "${2:-}" = build ] || { echo "stand-in: unexpected command: $*" >&2; exit 2; }
shift 2
bin= release=0 arm64=0
while (($#)); do
  case "$1" in
    --release) release=1 ;;
    --arm64) arm64=1 ;;
    --bin) bin=$2; shift ;;
    *) echo "stand-in: unexpected argument $1" >&2; exit 2 ;;
  esac
  shift
done
target=$(cargo metadata --no-deps --format-version 1 --locked | python3 -c '
import json, os, sys
bin, manifest = sys.argv[1], os.path.realpath(sys.argv[2])
meta = json.load(sys.stdin)
pkg = [p for p in meta["packages"] if os.path.realpath(p["manifest_path"]) == manifest]
if not pkg:
    sys.exit("stand-in: no package at " + manifest)
bins = [t["name"] for t in pkg[0]["targets"] if "bin" in t["kind"]]
if bin not in bins:
    sys.exit("stand-in: package " + pkg[0]["name"] + " has no binary " + repr(bin) + ", only " + repr(bins))
print(meta["target_directory"])
' "$bin" "$PWD/Cargo.toml")
mkdir -p "$target/lambda/$bin"
cp "$target/debug/$bin" "$target/lambda/$bin/bootstrap"
echo "$bin release=$release arm64=$arm64" >>"$RELAY_STAND_IN_RECORD"
"#,
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();

    let path = format!(
        "{}:{}:{}",
        bin_dir.display(),
        root().join(".local/venv-infra/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let build_dir = scratch.join("build");
    run(Command::new(tool("sam"))
        .args(["build", "--build-dir"])
        .arg(&build_dir)
        .current_dir(root().join("infra"))
        .env("PATH", path)
        .env("RELAY_STAND_IN_RECORD", &record)
        .stdin(std::process::Stdio::null()));

    let mut built: Vec<String> = std::fs::read_to_string(&record).unwrap().lines().map(str::to_owned).collect();
    built.sort();
    assert_eq!(built, ["reconcile release=1 arm64=1", "webhook release=1 arm64=1", "worker release=1 arm64=1"]);
    for (function, binary) in
        [("WebhookFunction", "webhook"), ("WorkerFunction", "worker"), ("ReconcileFunction", "reconcile")]
    {
        let artifact = std::fs::read(build_dir.join(function).join("bootstrap"))
            .unwrap_or_else(|e| panic!("{function}: no bootstrap in its artifact: {e}"));
        assert!(
            artifact == std::fs::read(relay_tests::workspace_binary(binary)).unwrap(),
            "{function} is not {binary}"
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
