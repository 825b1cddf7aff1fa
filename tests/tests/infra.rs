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

    // Copy queue → DLQ, encrypted (SQS-managed SSE by default; KmsKeyArn:
    // kms_key_arn_encrypts_what_aws_allows); DLQ keeps messages longer.
    let q = &r["CopyQueue"]["Properties"];
    assert_eq!(q["RedrivePolicy"]["deadLetterTargetArn"], get_att("DeadLetterQueue", "Arn"));
    assert_eq!(resolved(&t, &[])["Resources"]["CopyQueue"]["Properties"]["SqsManagedSseEnabled"], true);
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
    for role in ["WebhookFunctionRole", "WorkerRole", "ReconcileFunctionRole"] {
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
    // Secrets per function: the public webhook reads its auth secret and
    // the source's (Harbor's API), never a destination's; the worker and
    // reconcile read the registries' (README's example, checked below in
    // `each_function_may_read_the_secrets_it_reads`).
    let secrets_of = |role: &str| serde_json::to_string(&r[role]["Properties"]["Policies"]).unwrap();
    assert!(secrets_of("WebhookFunctionRole").contains("{\"Ref\":\"WebhookSecretArns\"}"));
    assert!(
        !secrets_of("WebhookFunctionRole").contains("{\"Ref\":\"SecretArns\"}"),
        "the webhook reads no destination's secret"
    );
    for role in ["WorkerRole", "ReconcileFunctionRole"] {
        assert!(secrets_of(role).contains("{\"Ref\":\"SecretArns\"}"), "{role}");
        assert!(secrets_of(role).contains("{\"Ref\":\"SourceSecretArns\"}"), "{role}");
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
    assert_eq!(
        r["ReconcileFunction"]["Properties"]["ReservedConcurrentExecutions"],
        json!({"Fn::If": ["ReconcileReserved", {"Ref": "ReconcileReservedConcurrency"}, {"Ref": "AWS::NoValue"}]})
    );
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

// ---------------------------------------------------------------------------
// The template as CloudFormation evaluates it for given parameters: the
// conditions worked out, each `Fn::If` replaced by its branch, `AWS::NoValue`
// dropped, resources and outputs whose condition is false removed. Enough of
// CloudFormation for this template's conditions (Equals, Not, And, Or,
// Condition, Join over a list parameter, Ref); it says so when it meets more.

/// Parameter values: the template's defaults, overridden by `given`.
fn parameter_values(t: &Value, given: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    let mut values: std::collections::BTreeMap<String, String> = t["Parameters"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, p)| {
            let default = match &p["Default"] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (name.clone(), default)
        })
        .collect();
    for (name, value) in given {
        assert!(values.contains_key(*name), "{name}: no such template parameter");
        values.insert((*name).to_owned(), (*value).to_owned());
    }
    values
}

/// A condition operand's value: a string, or a list for a list parameter.
fn operand(t: &Value, params: &std::collections::BTreeMap<String, String>, v: &Value) -> Value {
    match v {
        Value::String(_) => v.clone(),
        Value::Number(n) => Value::String(n.to_string()),
        Value::Object(o) if o.contains_key("Ref") => {
            let name = o["Ref"].as_str().unwrap();
            let value = params.get(name).unwrap_or_else(|| panic!("Ref {name} in a condition"));
            if t["Parameters"][name]["Type"] == "CommaDelimitedList" {
                json!(value.split(',').collect::<Vec<_>>())
            } else {
                json!(value)
            }
        }
        Value::Object(o) if o.contains_key("Fn::Join") => {
            let (sep, list) = (o["Fn::Join"][0].as_str().unwrap(), operand(t, params, &o["Fn::Join"][1]));
            let items: Vec<String> = match list {
                Value::Array(a) => a.iter().map(|i| operand(t, params, i).as_str().unwrap().to_owned()).collect(),
                other => panic!("Fn::Join over {other}"),
            };
            json!(items.join(sep))
        }
        other => panic!("condition operand not evaluated here: {other}"),
    }
}

fn condition(t: &Value, params: &std::collections::BTreeMap<String, String>, name: &str) -> bool {
    let c = &t["Conditions"][name];
    assert!(!c.is_null(), "no condition {name}");
    condition_expr(t, params, c)
}

fn condition_expr(t: &Value, params: &std::collections::BTreeMap<String, String>, e: &Value) -> bool {
    let (f, args) = e.as_object().and_then(|o| o.iter().next()).unwrap_or_else(|| panic!("condition {e}"));
    match f.as_str() {
        "Fn::Equals" => operand(t, params, &args[0]) == operand(t, params, &args[1]),
        "Fn::Not" => !condition_expr(t, params, &args[0]),
        "Fn::And" => args.as_array().unwrap().iter().all(|a| condition_expr(t, params, a)),
        "Fn::Or" => args.as_array().unwrap().iter().any(|a| condition_expr(t, params, a)),
        "Condition" => condition(t, params, args.as_str().unwrap()),
        other => panic!("condition function not evaluated here: {other}"),
    }
}

/// `v` with each `Fn::If` replaced by its branch; `None`: `AWS::NoValue`.
fn resolve(t: &Value, params: &std::collections::BTreeMap<String, String>, v: &Value) -> Option<Value> {
    match v {
        Value::Object(o) if o.len() == 1 && o.contains_key("Fn::If") => {
            let branch = if condition(t, params, o["Fn::If"][0].as_str().unwrap()) { 1 } else { 2 };
            resolve(t, params, &o["Fn::If"][branch])
        }
        Value::Object(o) if o.len() == 1 && o.get("Ref") == Some(&json!("AWS::NoValue")) => None,
        Value::Object(o) => {
            Some(Value::Object(o.iter().filter_map(|(k, v)| Some((k.clone(), resolve(t, params, v)?))).collect()))
        }
        Value::Array(a) => Some(Value::Array(a.iter().filter_map(|v| resolve(t, params, v)).collect())),
        other => Some(other.clone()),
    }
}

/// The transformed template with these parameters (the rest at their defaults).
fn resolved(t: &Value, given: &[(&str, &str)]) -> Value {
    let params = parameter_values(t, given);
    let mut out = resolve(t, &params, t).unwrap();
    for section in ["Resources", "Outputs"] {
        let kept = t[section]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| t[section][k.as_str()]["Condition"].as_str().is_none_or(|c| condition(t, &params, c)))
            .map(|k| (k.clone(), out[section][k.as_str()].clone()))
            .collect();
        out[section] = Value::Object(kept);
    }
    out
}

/// Every statement of a role's inline policies.
fn statements(r: &Value, role: &str) -> Vec<Value> {
    let policies = r[role]["Properties"]["Policies"].as_array().unwrap_or_else(|| panic!("{role} has no policies"));
    let mut out = Vec::new();
    for p in policies {
        match &p["PolicyDocument"]["Statement"] {
            Value::Array(a) => out.extend(a.iter().cloned()),
            s => out.push(s.clone()),
        }
    }
    out
}

fn as_list(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    }
}

/// Whether an IAM action pattern (`*` anywhere) matches `action`.
fn action_matches(pattern: &str, action: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern.eq_ignore_ascii_case(action),
        Some((head, tail)) => {
            action.len() >= head.len()
                && action[..head.len()].eq_ignore_ascii_case(head)
                && (0..=action.len() - head.len()).any(|i| action_matches(tail, &action[head.len() + i..]))
        }
    }
}

/// Whether some statement allows `action` on `resource` (a resource as the
/// template writes it: "*", a Ref, a Sub); `"*"` in the statement covers all.
fn allows(statements: &[Value], action: &str, resource: &Value) -> bool {
    statements.iter().any(|s| {
        s["Effect"] == "Allow"
            && as_list(&s["Action"]).iter().any(|a| action_matches(a.as_str().unwrap(), action))
            && as_list(&s["Resource"]).iter().any(|r| r == resource || r == "*")
    })
}

/// The list parameters whose ARNs a role may read with GetSecretValue.
fn secret_parameters(statements: &[Value]) -> Vec<String> {
    statements
        .iter()
        .filter(|s| {
            s["Effect"] == "Allow"
                && as_list(&s["Action"])
                    .iter()
                    .any(|a| action_matches(a.as_str().unwrap(), "secretsmanager:GetSecretValue"))
        })
        .flat_map(|s| as_list(&s["Resource"]))
        .map(|r| {
            r["Ref"].as_str().unwrap_or_else(|| panic!("a secret resource that is not a parameter: {r}")).to_owned()
        })
        .collect()
}

/// The fenced block of `page` (README.md, docs/…) that contains `needle`
/// (its lines unindented): what an operator copies is what the tests run.
fn doc_block(page: &str, needle: &str) -> String {
    let text = std::fs::read_to_string(root().join(page)).unwrap();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim_start().starts_with("```") {
            let block: Vec<&str> = lines.by_ref().take_while(|l| !l.trim_start().starts_with("```")).collect();
            let block = block.iter().map(|l| l.trim_start()).collect::<Vec<_>>().join("\n") + "\n";
            if block.contains(needle) {
                return block;
            }
        }
    }
    panic!("{page} has no fenced block with {needle:?}")
}

/// The rows of the table that follows the heading `heading` of `page`
/// (up to the next heading).
fn doc_table_rows(page: &str, heading: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join(page)).unwrap();
    let section = text
        .split('\n')
        .skip_while(|l| l.trim_start_matches('#').trim() != heading || !l.starts_with('#'))
        .skip(1)
        .take_while(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with("| `"))
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert!(!section.is_empty(), "{page} has no table under {heading:?}");
    section
}

/// The parameters file README's walk-through gives (KEY=VALUE lines).
fn readme_params() -> Vec<(String, String)> {
    doc_block("README.md", "# params.env")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("not KEY=VALUE: {l}"));
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

fn as_refs(params: &[(String, String)]) -> Vec<(&str, &str)> {
    params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// The name in a secret's ARN (`…:secret:<name>-<6 random characters>`).
fn secret_name(arn: &str) -> &str {
    let name = arn.split(":secret:").nth(1).unwrap_or_else(|| panic!("not a secret ARN: {arn}"));
    assert!(name.len() > 7 && name.as_bytes()[name.len() - 7] == b'-', "{arn}: no random suffix");
    &name[..name.len() - 7]
}

/// With the parameters README's walk-through gives and the example
/// configuration it starts from, each function's role may read every
/// secret the function reads (the webhook: its auth values, and the
/// source's credentials and CA for label and resource rules; the worker and
/// reconcile: every registry's), and the webhook no destination's.
#[test]
fn each_function_may_read_the_secrets_it_reads() {
    let t = transformed();
    let given = readme_params();
    let r = resolved(&t, &as_refs(&given))["Resources"].clone();
    let config = relay::Config::parse(&std::fs::read_to_string(root().join("examples/config.lambda.yaml")).unwrap())
        .expect("the example configuration is valid");
    let secret = |c: &Option<relay::config::CredentialsRef>| match c {
        Some(relay::config::CredentialsRef::Secret { secret_id }) => Some(secret_id.clone()),
        _ => None,
    };
    let ca = |c: &Option<relay::registry_kind::CaSource>| match c {
        Some(relay::registry_kind::CaSource::Secret(id)) => Some(id.clone()),
        _ => None,
    };
    let source: Vec<String> =
        [secret(&config.source.credentials), ca(&config.source.ca)].into_iter().flatten().collect();
    let destinations: Vec<String> =
        config.registries.iter().flat_map(|reg| [secret(&reg.credentials), ca(&reg.ca)]).flatten().collect();
    let webhook_auth = match &config.webhook {
        relay::config::WebhookAuthSource::Secret(id) => vec![id.clone()],
        _ => vec![],
    };
    assert!(!source.is_empty() && !destinations.is_empty() && !webhook_auth.is_empty());
    assert!(
        config.source.harbor_api.may_be_on(),
        "the example reads Harbor's API: a label rule added makes the webhook read the source's secret"
    );

    // The secret names each role may read, through the ARNs README gives.
    let readable = |role: &str| -> Vec<String> {
        secret_parameters(&statements(&r, role))
            .iter()
            .flat_map(|p| {
                let value = &given.iter().find(|(k, _)| k == p).unwrap_or_else(|| panic!("README gives no {p}")).1;
                value.split(',').map(|arn| secret_name(arn).to_owned()).collect::<Vec<_>>()
            })
            .collect()
    };
    let (webhook, worker, reconcile) =
        (readable("WebhookFunctionRole"), readable("WorkerRole"), readable("ReconcileFunctionRole"));
    for s in source.iter().chain(&webhook_auth) {
        assert!(webhook.contains(s), "the webhook may not read {s} (it may read {webhook:?})");
    }
    for s in &destinations {
        assert!(!webhook.contains(s), "the public webhook may read the destination secret {s}");
    }
    for s in source.iter().chain(&destinations) {
        assert!(worker.contains(s), "the worker may not read {s} (it may read {worker:?})");
        assert!(reconcile.contains(s), "reconcile may not read {s} (it may read {reconcile:?})");
    }
    for s in &webhook_auth {
        assert!(!worker.contains(s), "the worker may read the webhook's secret {s}");
    }

    // A parameter left empty grants nothing (no statement on an empty ARN).
    let bare = resolved(&t, &[])["Resources"].clone();
    for role in ["WebhookFunctionRole", "WorkerRole", "ReconcileFunctionRole"] {
        assert_eq!(secret_parameters(&statements(&bare, role)), Vec::<String>::new(), "{role}");
    }
}

/// Reconcile HEADs every destination tag (and lists them for rules with
/// deletion): with ECR enabled its role may fetch the token and read the
/// worker's repositories, and assume the roles the worker may.
#[test]
fn reconcile_may_read_ecr_as_the_worker_does() {
    let t = transformed();
    let roles = "arn:aws:iam::210987654321:role/harbor-relay-ecr";
    let r = resolved(&t, &[("EnableEcr", "true"), ("EcrAssumeRoleArns", roles)])["Resources"].clone();
    let (worker, reconcile) = (statements(&r, "WorkerRole"), statements(&r, "ReconcileFunctionRole"));
    let repositories = json!({"Fn::Sub": "arn:${AWS::Partition}:ecr:${AWS::Region}:${AWS::AccountId}:repository/${EcrRepositoryPrefix}*"});
    for s in [&worker, &reconcile] {
        assert!(allows(s, "ecr:GetAuthorizationToken", &json!("*")));
    }
    for action in ["ecr:BatchGetImage", "ecr:DescribeImages", "ecr:ListImages", "ecr:BatchCheckLayerAvailability"] {
        assert!(allows(&reconcile, action, &repositories), "reconcile may not {action} on the repositories");
    }
    for action in ["ecr:BatchGetImage", "ecr:ListImages", "ecr:BatchCheckLayerAvailability"] {
        assert!(allows(&worker, action, &repositories), "the worker may not {action}");
    }
    for action in ["ecr:PutImage", "ecr:CreateRepository", "ecr:BatchDeleteImage", "ecr:InitiateLayerUpload"] {
        assert!(!allows(&reconcile, action, &repositories), "reconcile only reads, yet may {action}");
    }
    let assumable = json!({"Ref": "EcrAssumeRoleArns"});
    assert!(allows(&worker, "sts:AssumeRole", &assumable));
    assert!(allows(&reconcile, "sts:AssumeRole", &assumable), "reconcile may not assume the ECR roles");
    // Off by default: no ECR action and no role to assume.
    let bare = resolved(&t, &[])["Resources"].clone();
    for role in ["WorkerRole", "ReconcileFunctionRole"] {
        let s = statements(&bare, role);
        assert!(!allows(&s, "ecr:GetAuthorizationToken", &json!("*")), "{role}");
        assert!(!allows(&s, "sts:AssumeRole", &assumable), "{role}");
    }
    // The roles a cross-account ECR role must trust are outputs.
    let outputs = &t["Outputs"];
    assert_eq!(outputs["WorkerRoleArn"]["Value"], json!({"Fn::GetAtt": ["WorkerRole", "Arn"]}));
    assert_eq!(outputs["ReconcileRoleArn"]["Value"], json!({"Fn::GetAtt": ["ReconcileFunctionRole", "Arn"]}));
    assert_eq!(r["ReconcileFunction"]["Properties"]["Role"], json!({"Fn::GetAtt": ["ReconcileFunctionRole", "Arn"]}));
}

/// The cross-account ECR policies of docs/deploy.md: the trust policy lets both roles
/// the stack outputs assume the role, and the permission policy allows
/// every ECR action the worker's own role has for ECR.
#[test]
fn documented_cross_account_ecr_policies_match_the_template() {
    let t = transformed();
    let policy = |sid: &str| -> Value {
        let block = doc_block("docs/deploy.md", &format!("\"Sid\": \"{sid}\""));
        serde_json::from_str(&block)
            .unwrap_or_else(|e| panic!("docs/deploy.md's policy {sid} is not JSON: {e}\n{block}"))
    };
    let trust = policy("TrustHarborRelay");
    let trusted = serde_json::to_string(&trust["Statement"]).unwrap();
    assert!(
        trusted.contains("sts:AssumeRole")
            && trusted.contains("<WorkerRoleArn>")
            && trusted.contains("<ReconcileRoleArn>"),
        "the trust policy names both outputs: {trusted}"
    );
    let permissions = policy("HarborRelayEcr");
    let granted: Vec<Value> = permissions["Statement"].as_array().unwrap().clone();
    let worker = resolved(&t, &[("EnableEcr", "true")])["Resources"]["WorkerRole"]["Properties"]["Policies"].clone();
    let ecr =
        worker.as_array().unwrap().iter().find(|p| p["PolicyName"] == "ecr").expect("the worker's ecr policy").clone();
    let reconcile = statements(&resolved(&t, &[("EnableEcr", "true")])["Resources"], "ReconcileFunctionRole");
    let needed = ecr["PolicyDocument"]["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .chain(&reconcile)
        .flat_map(|s| as_list(&s["Action"]));
    for action in needed {
        let action = action.as_str().unwrap();
        if !action.starts_with("ecr:") {
            continue;
        }
        assert!(
            granted.iter().any(|p| p["Effect"] == "Allow"
                && as_list(&p["Action"]).iter().any(|a| action_matches(a.as_str().unwrap(), action))),
            "docs/deploy.md's permission policy lacks {action}"
        );
    }
}

/// A new account's concurrency quota can be 10, where any reservation
/// fails the deploy: with the defaults no function reserves any, and each
/// reservation is a parameter.
#[test]
fn a_fresh_account_reserves_no_concurrency() {
    let t = transformed();
    let bare = resolved(&t, &[])["Resources"].clone();
    for (name, resource) in bare.as_object().unwrap() {
        assert!(
            resource["Properties"].get("ReservedConcurrentExecutions").is_none(),
            "{name} reserves concurrency by default: {}",
            resource["Properties"]["ReservedConcurrentExecutions"]
        );
    }
    let reserving = resolved(&t, &[("WebhookReservedConcurrency", "10"), ("ReconcileReservedConcurrency", "1")])
        ["Resources"]
        .clone();
    assert_eq!(
        reserving["WebhookFunction"]["Properties"]["ReservedConcurrentExecutions"],
        json!({"Ref": "WebhookReservedConcurrency"})
    );
    assert_eq!(
        reserving["ReconcileFunction"]["Properties"]["ReservedConcurrentExecutions"],
        json!({"Ref": "ReconcileReservedConcurrency"})
    );
}

/// A private Harbor: `WebhookInVpc=true` puts the webhook in the VPC's
/// subnets (with the managed policy its network interfaces need); by
/// default, and without subnets, it stays outside.
#[test]
fn the_webhook_runs_in_the_vpc_when_asked() {
    let t = transformed();
    let webhook = |given: &[(&str, &str)]| resolved(&t, given)["Resources"]["WebhookFunction"]["Properties"].clone();
    let subnets = ("VpcSubnetIds", "subnet-0a1b2c3d,subnet-4e5f6a7b");
    for outside in [webhook(&[]), webhook(&[subnets]), webhook(&[("WebhookInVpc", "true")])] {
        assert!(outside.get("VpcConfig").is_none(), "{}", outside["VpcConfig"]);
    }
    let inside = webhook(&[subnets, ("WebhookInVpc", "true")]);
    assert_eq!(inside["VpcConfig"]["SubnetIds"], json!({"Ref": "VpcSubnetIds"}));
    let role = resolved(&t, &[subnets, ("WebhookInVpc", "true")])["Resources"]["WebhookFunctionRole"].clone();
    let managed = serde_json::to_string(&role["Properties"]["ManagedPolicyArns"]).unwrap();
    assert!(managed.contains("AWSLambdaVPCAccessExecutionRole"), "{managed}");
}

/// Writes `lines` to a fresh parameters file.
fn params_file(name: &str, lines: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-infra-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("params.env");
    std::fs::write(&file, lines).unwrap();
    file
}

fn deploy_check(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(tool("python"));
    c.arg(root().join("scripts/deploy-check.py")).args(args).current_dir(root());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn both(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// CloudFormation's Rules cannot compare numbers (their functions test
/// string equality and membership), so `make deploy` refuses a visibility
/// timeout shorter than 6 x the worker's timeout before `sam deploy`: the
/// parameters file's values, else the template's defaults.
#[test]
fn deploy_refuses_a_visibility_timeout_under_six_worker_timeouts() {
    let short = params_file("short", "WorkerTimeoutSeconds=400\n");
    let out = deploy_check(&["check", "--params", short.to_str().unwrap()], &[]);
    assert!(!out.status.success(), "{}", both(&out));
    assert!(
        both(&out).contains("QueueVisibilityTimeoutSeconds is 1800, shorter than 6 x WorkerTimeoutSeconds (400)")
            && both(&out).contains("at least 2400"),
        "{}",
        both(&out)
    );
    let explicit = params_file("explicit", "QueueVisibilityTimeoutSeconds=1000\nWorkerTimeoutSeconds=200\n");
    assert!(!deploy_check(&["check", "--params", explicit.to_str().unwrap()], &[]).status.success());
    let fine = params_file("fine", "QueueVisibilityTimeoutSeconds=2400\nWorkerTimeoutSeconds=400\n");
    let out = deploy_check(&["check", "--params", fine.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", both(&out));
    let out = deploy_check(&["check"], &[]);
    assert!(out.status.success(), "the defaults pass: {}", both(&out));
    // A misspelt parameter is refused, not silently left at its default.
    let typo = params_file("typo", "WorkerTimeoutSecond=400\n");
    let out = deploy_check(&["check", "--params", typo.to_str().unwrap()], &[]);
    assert!(
        !out.status.success() && both(&out).contains("WorkerTimeoutSecond: no such template parameter"),
        "{}",
        both(&out)
    );
    // A guided deploy's saved answers are checked the same way.
    let samconfig = short.with_file_name("samconfig.toml");
    std::fs::write(
        &samconfig,
        "version = 0.1\n[default.deploy.parameters]\nparameter_overrides = \"WorkerTimeoutSeconds=\\\"400\\\" ReconcileSchedule=\\\"rate(6 hours)\\\"\"\n",
    )
    .unwrap();
    let out = deploy_check(&["check", "--samconfig", samconfig.to_str().unwrap()], &[]);
    assert!(!out.status.success() && both(&out).contains("at least 2400"), "{}", both(&out));

    // `make deploy` runs the check before anything is deployed.
    let dry = make_dry(&["deploy", &format!("PARAMS={}", short.display())]);
    let check = dry.find("deploy-check.py check --params").expect("make deploy runs the check");
    let deploy = dry.find("sam deploy").expect("make deploy runs sam deploy");
    assert!(check < deploy, "{dry}");
    let _ = std::fs::remove_dir_all(short.parent().unwrap());
    for f in [explicit, fine, typo] {
        let _ = std::fs::remove_dir_all(f.parent().unwrap());
    }
}

/// Reserving concurrency that would leave the account fewer than 100
/// unreserved executions is warned about before the deploy fails on it
/// (the account's figures from Lambda's GetAccountSettings; here a stub).
#[test]
fn deploy_warns_when_reserved_concurrency_leaves_too_little() {
    let stub = |limit: u32, unreserved: u32| -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(4) {
                use std::io::{BufRead, Write};
                let mut stream = stream.unwrap();
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 2 {
                    request += &line;
                    line.clear();
                }
                let body = if request.starts_with("GET /2016-08-19/account-settings") {
                    format!("{{\"AccountLimit\": {{\"ConcurrentExecutions\": {limit}, \"UnreservedConcurrentExecutions\": {unreserved}, \"CodeSizeUnzipped\": 1, \"CodeSizeZipped\": 1, \"TotalCodeSize\": 1}}, \"AccountUsage\": {{\"FunctionCount\": 0, \"TotalCodeSize\": 0}}}}")
                } else {
                    format!("unexpected request: {request}")
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        format!("http://{addr}")
    };
    let reserving = params_file("reserving", "WebhookReservedConcurrency=10\nReconcileReservedConcurrency=1\n");
    let env = |endpoint: &str| {
        let owned: Vec<(&str, String)> = vec![
            ("AWS_ENDPOINT_URL", endpoint.to_owned()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
            ("AWS_MAX_ATTEMPTS", "1".into()),
        ];
        owned
    };
    let run_with = |endpoint: String| {
        let e = env(&endpoint);
        let refs: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        deploy_check(&["check", "--params", reserving.to_str().unwrap()], &refs)
    };
    // A new account: a quota of 10, nothing can be reserved.
    let out = run_with(stub(10, 10));
    assert!(out.status.success(), "a warning, not a refusal: {}", both(&out));
    assert!(
        both(&out).contains("warning: the account's concurrency quota is 10")
            && both(&out).contains("leaves -1, below the 100 AWS keeps unreserved"),
        "{}",
        both(&out)
    );
    let out = run_with(stub(1000, 1000));
    assert!(out.status.success() && !both(&out).contains("warning"), "{}", both(&out));
    assert!(
        both(&out).contains("reserving WebhookReservedConcurrency=10, ReconcileReservedConcurrency=1"),
        "{}",
        both(&out)
    );
    let _ = std::fs::remove_dir_all(reserving.parent().unwrap());
}

/// `make -n` with these arguments: what `make` would run.
fn make_dry(args: &[&str]) -> String {
    run(Command::new("make").arg("-n").arg("-C").arg(root()).args(args))
}

/// A stand-in executable that records its arguments (NUL-separated, one
/// record per call, in `log`) and exits 0.
fn stand_in(dir: &std::path::Path, name: &str, log: &std::path::Path) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "#!/usr/bin/env bash\n{{ printf '%s\\0' {name} \"$PWD\" \"$@\"; printf '\\n'; }} >> '{}'\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The calls a stand-in recorded: (program, working directory, arguments).
fn recorded(log: &std::path::Path) -> Vec<(String, String, Vec<String>)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .split("\0\n")
        .filter(|r| !r.is_empty())
        .map(|r| {
            let mut f = r.split('\0').map(str::to_owned);
            (f.next().unwrap(), f.next().unwrap(), f.collect())
        })
        .collect()
}

/// `make deploy PARAMS=… CONFIG=…` from a parameters file of KEY=VALUE
/// lines: `sam build`, the check, `relay config-push` into the parameter
/// the file names, then `sam deploy` with no prompt and exactly the file's
/// parameters (as SAM's own parser reads them: a value with spaces, a list
/// of ARNs). `sam` and `relay` are stand-ins that record their arguments;
/// nothing in the tracked tree changes. The guided mode saves its answers
/// in .local/samconfig.toml, which git ignores.
#[test]
fn make_deploy_runs_without_a_prompt_from_a_parameters_file() {
    let scratch = std::env::temp_dir().join(format!("relay-make-deploy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let log = scratch.join("calls");
    let sam = stand_in(&scratch, "sam", &log);
    let relay = stand_in(&scratch, "relay", &log);
    let arns = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:harbor-relay/cluster1-AbCdEf,arn:aws:secretsmanager:eu-west-1:123456789012:secret:harbor-relay/cluster2-GhIjKl";
    let params = scratch.join("params.env");
    std::fs::write(
        &params,
        format!("# the walk-through's file\nConfigParameterName=/relay/test/config\nSecretArns={arns}\n\nReconcileSchedule=\"rate(6 hours)\"\nAlarmEmail=ops@example.com\n"),
    )
    .unwrap();
    let config = scratch.join("config.yaml");
    std::fs::write(&config, "not read by the stand-in\n").unwrap();
    let tracked = || {
        run(Command::new("git")
            .args(["status", "--porcelain", "--", "infra", "Makefile", "scripts"])
            .current_dir(root()))
    };
    let before = tracked();

    let make_deploy = || {
        Command::new("make")
            .arg("-C")
            .arg(root())
            .arg("deploy")
            .arg(format!("SAM={}", sam.display()))
            .arg(format!("RELAY={}", relay.display()))
            .arg(format!("PARAMS={}", params.display()))
            .arg(format!("CONFIG={}", config.display()))
            // No rustup here: `scripts/build.sh tools` would add the arm64 target.
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = make_deploy();
    assert!(out.status.success(), "{}", both(&out));
    let calls = recorded(&log);
    let programs: Vec<String> =
        calls.iter().map(|(p, _, a)| format!("{p} {}", a.first().map_or("", |s| s.as_str()))).collect();
    assert_eq!(programs, ["sam build", "relay config-push", "sam deploy"], "{calls:?}");
    assert_eq!(calls[1].2, ["config-push", config.to_str().unwrap(), "--parameter", "/relay/test/config"]);
    let (_, dir, deploy) = &calls[2];
    assert_eq!(std::path::Path::new(dir), root().join("infra").canonicalize().unwrap());
    for flag in ["--no-confirm-changeset", "--no-fail-on-empty-changeset", "--config-file"] {
        assert!(deploy.iter().any(|a| a == flag), "{flag} missing: {deploy:?}");
    }
    assert!(!deploy.iter().any(|a| a == "--guided"), "{deploy:?}");
    let config_file = &deploy[deploy.iter().position(|a| a == "--config-file").unwrap() + 1];
    let local = root().join(".local/samconfig.toml");
    let expected = if local.exists() { local } else { root().join("infra/samconfig.toml") };
    assert_eq!(std::path::Path::new(config_file), expected.canonicalize().unwrap());
    let overrides = &deploy[deploy.iter().position(|a| a == "--parameter-overrides").expect("overrides") + 1..];
    let parsed = run(Command::new(tool("python"))
        .args([
            "-c",
            "import json, sys\nfrom samcli.cli.types import CfnParameterOverridesType\nprint(json.dumps(CfnParameterOverridesType().convert(tuple(sys.argv[1:]), None, None)))",
        ])
        .args(overrides));
    let parsed: Value = serde_json::from_str(&parsed).unwrap();
    assert_eq!(
        parsed,
        json!({"ConfigParameterName": "/relay/test/config", "SecretArns": arns, "ReconcileSchedule": "rate(6 hours)", "AlarmEmail": "ops@example.com"})
    );
    assert_eq!(tracked(), before, "make deploy changed tracked files");

    // A parameters file the check refuses stops it before anything is deployed.
    std::fs::remove_file(&log).unwrap();
    std::fs::write(&params, "WorkerTimeoutSeconds=900\n").unwrap();
    let out = make_deploy();
    assert!(!out.status.success() && both(&out).contains("at least 5400"), "{}", both(&out));
    let calls: Vec<String> = recorded(&log).iter().map(|(p, _, a)| format!("{p} {}", a[0])).collect();
    assert_eq!(calls, ["sam build"], "nothing pushed or deployed");

    // Guided: SAM's questions, answers saved outside the tracked tree.
    let guided = make_dry(&["deploy", "GUIDED=1"]);
    let local = root().canonicalize().unwrap().join(".local/samconfig.toml");
    assert!(guided.contains(&format!("--config-file {}", local.display())) && guided.contains("--guided"), "{guided}");
    assert!(!guided.contains("--no-confirm-changeset"), "{guided}");
    run(Command::new("git").args(["check-ignore", "-q"]).arg(&local).current_dir(root()));
    let samconfig = std::fs::read_to_string(root().join("infra/samconfig.toml")).unwrap();
    assert!(samconfig.contains("confirm_changeset = false"), "{samconfig}");
    let _ = std::fs::remove_dir_all(&scratch);
}

/// Building for Lambda needs Rust and cargo-lambda, not the test stack:
/// `make build`, `make package` and `make deploy` run no `scripts/stack.sh`,
/// apt or LocalStack; `make package` leaves the three zips and their
/// SHA-256 list (cargo-lambda a stand-in: the real arm64 build takes about
/// half an hour here), with nothing installed.
#[test]
fn build_and_package_need_no_test_tooling() {
    let dry = make_dry(&["build", "package", "deploy"]);
    let script = std::fs::read_to_string(root().join("scripts/build.sh")).unwrap();
    for banned in ["stack.sh", "apt-get", "apt ", "localstack", "moto", "skopeo", "docker", "sudo"] {
        assert!(!dry.to_lowercase().contains(banned), "make build/package/deploy runs {banned}: {dry}");
        let code: String = script.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
        assert!(!code.to_lowercase().contains(banned), "scripts/build.sh runs {banned}");
    }

    let scratch = std::env::temp_dir().join(format!("relay-package-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let bin = scratch.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = scratch.join("forbidden");
    for name in ["apt-get", "apt", "sudo", "uv", "pip", "pip3", "brew", "docker"] {
        stand_in(&bin, name, &log);
    }
    // rustup may add the arm64 target (a Rust component); recorded apart.
    stand_in(&bin, "rustup", &scratch.join("rustup"));
    let cargo_lambda = bin.join("cargo-lambda");
    std::fs::write(
        &cargo_lambda,
        r#"#!/usr/bin/env bash
set -euo pipefail
[ "$1 $2" = "lambda build" ] || { echo "stand-in: unexpected $*" >&2; exit 2; }
shift 2
dir= bins=() release=0 arm64=0 zip=0
while (($#)); do
  case "$1" in
    --release) release=1 ;;
    --arm64) arm64=1 ;;
    --output-format) [ "$2" = zip ] && zip=1; shift ;;
    --lambda-dir) dir=$2; shift ;;
    --bin) bins+=("$2"); shift ;;
    *) echo "stand-in: unexpected argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$release$arm64$zip" = 111 ] || { echo "stand-in: not an arm64 release zip build" >&2; exit 2; }
[ -f Cargo.toml ] || { echo "stand-in: not run in the workspace" >&2; exit 2; }
for b in "${bins[@]}"; do mkdir -p "$dir/$b"; printf 'zip of %s\n' "$b" > "$dir/$b/bootstrap.zip"; done
"#,
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cargo_lambda, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out_dir = scratch.join("package");
    let out = Command::new("make")
        .arg("-C")
        .arg(root())
        .arg("package")
        .arg(format!("PACKAGE_DIR={}", out_dir.display()))
        .env("PATH", format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display()))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", both(&out));
    assert_eq!(std::fs::read_to_string(&log).unwrap_or_default(), "", "make package ran what it must not");
    let sums = std::fs::read_to_string(out_dir.join("SHA256SUMS")).unwrap();
    let mut listed = Vec::new();
    for line in sums.lines() {
        let (hash, file) = line.split_once("  ").unwrap_or_else(|| panic!("not `sha256sum` output: {line}"));
        use sha2::Digest as _;
        let content = std::fs::read(out_dir.join(file)).unwrap();
        assert_eq!(hash, hex::encode(sha2::Sha256::digest(&content)), "{file}");
        assert_eq!(content, format!("zip of {}\n", file.trim_end_matches(".zip")).into_bytes());
        listed.push(file.to_owned());
    }
    assert_eq!(listed, ["webhook.zip", "worker.zip", "reconcile.zip"]);
    let mut left: Vec<String> =
        std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["SHA256SUMS", "reconcile.zip", "webhook.zip", "worker.zip"]);
    let _ = std::fs::remove_dir_all(&scratch);
}

/// `sam package && sam publish` (the Serverless Application Repository)
/// reads the template's application metadata: SAM's own reader accepts it,
/// the files it names exist, and its version is the workspace's.
#[test]
fn template_carries_serverless_repo_metadata() {
    let out = run(Command::new(tool("python"))
        .args([
            "-c",
            "import json, sys\n\
             from samcli.vendor.serverlessrepo.parser import parse_template, get_app_metadata\n\
             m = get_app_metadata(parse_template(open(sys.argv[1]).read()))\n\
             m.validate(['author', 'description', 'name', 'semantic_version'])\n\
             print(json.dumps(m.template_dict))",
        ])
        .arg(root().join("infra/template.yaml")));
    let m: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["Name"], "harbor-relay");
    assert_eq!(m["SpdxLicenseId"], "Apache-2.0");
    assert_eq!(m["SemanticVersion"], env!("CARGO_PKG_VERSION"));
    assert!(m["Description"].as_str().unwrap().len() <= 256, "SAR takes 256 characters");
    assert!(m["SourceCodeUrl"].as_str().unwrap().starts_with("https://"));
    for (field, expected) in [("ReadmeUrl", "README.md"), ("LicenseUrl", "LICENSE")] {
        let path = root().join("infra").join(m[field].as_str().unwrap());
        assert_eq!(path.canonicalize().unwrap(), root().join(expected).canonicalize().unwrap(), "{field}");
    }
    assert!(std::fs::read_to_string(root().join("LICENSE")).unwrap().contains("Apache License"));
}

/// `AlarmEmail` makes a topic with an email subscription, and every alarm
/// notifies it (and `AlarmTopicArn`, when given too); without either, no
/// topic and no action. docs/operations.md says what to do when each alarm fires.
#[test]
fn alarms_reach_the_alarm_email() {
    let t = transformed();
    let alarms: Vec<String> = t["Resources"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v["Type"] == "AWS::CloudWatch::Alarm")
        .map(|(k, _)| k.clone())
        .collect();
    assert!(alarms.len() >= 8, "{alarms:?}");

    let r = resolved(&t, &[("AlarmEmail", "ops@example.com")])["Resources"].clone();
    assert_eq!(r["AlarmTopic"]["Type"], "AWS::SNS::Topic");
    let sub = &r["AlarmEmailSubscription"];
    assert_eq!(sub["Type"], "AWS::SNS::Subscription");
    assert_eq!(sub["Properties"]["Protocol"], "email");
    assert_eq!(sub["Properties"]["Endpoint"], json!({"Ref": "AlarmEmail"}));
    assert_eq!(sub["Properties"]["TopicArn"], json!({"Ref": "AlarmTopic"}));
    for a in &alarms {
        assert_eq!(r[a]["Properties"]["AlarmActions"], json!([{"Ref": "AlarmTopic"}]), "{a}");
    }
    let both_given =
        resolved(&t, &[("AlarmEmail", "ops@example.com"), ("AlarmTopicArn", "arn:aws:sns:us-east-1:1:ops")]);
    for a in &alarms {
        assert_eq!(
            both_given["Resources"][a]["Properties"]["AlarmActions"],
            json!([{"Ref": "AlarmTopicArn"}, {"Ref": "AlarmTopic"}]),
            "{a}"
        );
    }
    assert!(both_given["Outputs"]["AlarmEmailTopicArn"].is_object());
    let bare = resolved(&t, &[]);
    assert!(bare["Resources"].get("AlarmTopic").is_none() && bare["Resources"].get("AlarmEmailSubscription").is_none());
    assert!(bare["Outputs"].get("AlarmEmailTopicArn").is_none());
    for a in &alarms {
        assert_eq!(bare["Resources"][a]["Properties"]["AlarmActions"], json!([]), "{a}");
    }

    // The alarm table of docs/operations.md: each alarm by name, with what to do.
    let rows = doc_table_rows("docs/operations.md", "Alarms");
    for a in &alarms {
        let row = rows
            .iter()
            .find(|l| l.starts_with(&format!("| `{a}` |")))
            .unwrap_or_else(|| panic!("docs/operations.md's alarm table has no row for {a}"));
        assert!(row.split('|').filter(|c| !c.trim().is_empty()).count() >= 3, "{row}");
    }
}

/// The parameter table of docs/deploy.md lists every template parameter,
/// and names none the template lacks.
#[test]
fn docs_list_every_template_parameter() {
    let t = transformed();
    let table = doc_table_rows("docs/deploy.md", "Template parameters");
    let parameters = t["Parameters"].as_object().unwrap();
    for name in parameters.keys() {
        assert!(
            table.iter().any(|row| row.split('|').nth(1).is_some_and(|c| c.contains(&format!("`{name}`")))),
            "docs/deploy.md's parameter table lacks {name}"
        );
    }
    for row in &table {
        let first = row.split('|').nth(1).unwrap_or_default();
        for name in first.split('`').skip(1).step_by(2) {
            assert!(
                parameters.contains_key(name),
                "docs/deploy.md's parameter table names {name}, which the template lacks"
            );
        }
    }
}

/// Issue 27 point 8: without KmsKeyArn every queue has SQS-managed SSE;
/// with it the queues, log groups, the functions' environment and the alarm
/// topic use that key, every role may use it, and reconcile's asynchronous
/// failures have a queue of their own (not the task DLQ `relay dlq` reads).
#[test]
fn kms_key_arn_encrypts_what_aws_allows() {
    let t = transformed();
    let key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let queues = ["CopyQueue", "DeadLetterQueue", "ParkingQueue", "ReconcileFailureQueue"];

    let plain = resolved(&t, &[("AlarmEmail", "ops@example.com")]);
    let r = &plain["Resources"];
    for q in queues {
        assert_eq!(r[q]["Properties"]["SqsManagedSseEnabled"], true, "{q}");
        assert!(r[q]["Properties"]["KmsMasterKeyId"].is_null(), "{q}");
    }
    for f in ["WebhookFunction", "WorkerFunction", "ReconcileFunction"] {
        assert!(r[f]["Properties"]["KmsKeyArn"].is_null(), "{f}");
    }
    assert!(!serde_json::to_string(r).unwrap().contains("kms:"), "a KMS grant without KmsKeyArn");

    let with_key = resolved(&t, &[("AlarmEmail", "ops@example.com"), ("KmsKeyArn", key)]);
    let r = &with_key["Resources"];
    let key_ref = json!({"Ref": "KmsKeyArn"});
    for q in queues {
        assert_eq!(r[q]["Properties"]["KmsMasterKeyId"], key_ref, "{q}");
        assert!(r[q]["Properties"]["SqsManagedSseEnabled"].is_null(), "{q}: both SSE kinds");
    }
    for g in ["WebhookLogGroup", "WorkerLogGroup", "ReconcileLogGroup"] {
        assert_eq!(r[g]["Properties"]["KmsKeyId"], key_ref, "{g}");
    }
    for f in ["WebhookFunction", "WorkerFunction", "ReconcileFunction"] {
        assert_eq!(r[f]["Properties"]["KmsKeyArn"], key_ref, "{f}");
    }
    assert_eq!(r["AlarmTopic"]["Properties"]["KmsMasterKeyId"], key_ref);
    for role in ["WebhookFunctionRole", "WorkerRole", "ReconcileFunctionRole"] {
        let policies = serde_json::to_string(&r[role]["Properties"]["Policies"]).unwrap();
        assert!(
            policies.contains(r#"["kms:Decrypt","kms:GenerateDataKey"]"#)
                && policies.contains(r#"{"Ref":"KmsKeyArn"}"#),
            "{role} may not use the key: {policies}"
        );
    }

    // Reconcile's asynchronous invocations: failures kept in a queue of their own.
    let dlq = &r["ReconcileFunction"]["Properties"]["DeadLetterConfig"]["TargetArn"];
    assert_eq!(*dlq, json!({"Fn::GetAtt": ["ReconcileFailureQueue", "Arn"]}));
}

// ---------------------------------------------------------------------------
// Issue 27, point 1: every AWS call the functions make is allowed by their
// roles. The functions run as deployed (Lambda mode, configuration in SSM,
// every credential in Secrets Manager) with their AWS calls through a
// recording endpoint; each recorded call is then judged by
// relay_tests::iam against the role the transformed template gives that
// function, with the parameters README tells an operator to give.

/// The account LocalStack's default credentials act in.
const LOCAL_ACCOUNT: &str = "000000000000";
/// moto's account: the "other account" of the cross-account ECR registry.
const OTHER_ACCOUNT: &str = "123456789012";

/// A Function URL request event (payload 2.0) carrying `body`.
fn function_url_event(auth: &str, body: &str) -> Value {
    use base64::Engine as _;
    json!({
        "version": "2.0", "routeKey": "$default", "rawPath": "/", "rawQueryString": "",
        "headers": { "content-type": "application/json", "authorization": auth, "host": "x.lambda-url.us-east-1.on.aws" },
        "requestContext": {
            "accountId": "anonymous", "apiId": "x", "domainName": "x.lambda-url.us-east-1.on.aws", "domainPrefix": "x",
            "http": { "method": "POST", "path": "/", "protocol": "HTTP/1.1", "sourceIp": "203.0.113.9", "userAgent": "Harbor" },
            "requestId": format!("req-{:08x}", rand::random::<u32>()), "routeKey": "$default", "stage": "$default",
            "time": "01/Dec/2026:12:00:00 +0000", "timeEpoch": relay_tests::now() * 1000
        },
        "body": base64::engine::general_purpose::STANDARD.encode(body),
        "isBase64Encoded": true
    })
}

/// What the test's stack looks like to IAM: the parameters an operator
/// gives (README's walk-through, with this run's ARNs) and the concrete
/// value of every resource a role's statements name.
struct Deployed {
    params: Vec<(String, String)>,
    copy_queue: String,
    dlq: String,
    parking: String,
    cursor: String,
    /// The record's bucket (RELAY_RECORD_BUCKET).
    bucket: String,
}

impl Deployed {
    fn bindings(&self, t: &Value, given: &[(&str, &str)]) -> relay_tests::iam::Bindings {
        let mut b = relay_tests::iam::Bindings::default();
        for (name, value) in parameter_values(t, given) {
            if t["Parameters"][&name]["Type"] == "CommaDelimitedList" {
                b.lists.push(name.clone());
            }
            b.set(&name, &value);
        }
        b.set("AWS::Region", "us-east-1").set("AWS::AccountId", LOCAL_ACCOUNT).set("AWS::Partition", "aws");
        b.set("AWS::StackName", "harbor-relay").set("ReconcileCursor", &self.cursor);
        let queues = [
            ("CopyQueue", self.copy_queue.as_str()),
            ("DeadLetterQueue", &self.dlq),
            ("ParkingQueue", &self.parking),
            ("ReconcileFailureQueue", "http://127.0.0.1:4566/000000000000/reconcile-failures"),
        ];
        for (logical, url) in queues {
            let name = url.rsplit('/').next().unwrap_or_default();
            b.set(logical, url).att(logical, "QueueName", name);
            b.att(logical, "Arn", &format!("arn:aws:sqs:us-east-1:{LOCAL_ACCOUNT}:{name}"));
        }
        for (logical, function) in
            [("WebhookLogGroup", "webhook"), ("WorkerLogGroup", "worker"), ("ReconcileLogGroup", "reconcile")]
        {
            let group = format!("/aws/lambda/harbor-relay-{function}");
            b.set(logical, &group).att(
                logical,
                "Arn",
                &format!("arn:aws:logs:us-east-1:{LOCAL_ACCOUNT}:log-group:{group}:*"),
            );
        }
        // The record's bucket: the one the functions were given (bucket
        // ARNs carry no account).
        for (logical, resource) in t["Resources"].as_object().unwrap() {
            if resource["Type"] == "AWS::S3::Bucket" {
                let name = &self.bucket;
                b.set(logical, name).att(logical, "Arn", &format!("arn:aws:s3:::{name}"));
            }
        }
        b
    }

    /// Judges each of `calls` (made by this deployment's functions)
    /// against its function's role, outside a VPC and in one: every
    /// verdict goes to `table`, each refusal to `refused`. `calls` by a
    /// role assumed are judged against `assumed` (docs/deploy.md's policy).
    fn judge(
        &self,
        t: &Value,
        calls: &[relay_tests::aws_calls::Call],
        assumed: &[relay_tests::iam::Statement],
        table: &mut std::collections::BTreeSet<String>,
        refused: &mut Vec<String>,
    ) {
        use relay_tests::aws_calls::Principal;
        let vpc =
            [("VpcSubnetIds", "subnet-0a1b2c3d"), ("VpcSecurityGroupIds", "sg-0a1b2c3d"), ("WebhookInVpc", "true")];
        for (variant, extra) in [("outside a VPC", &vpc[..0]), ("in a VPC", &vpc[..])] {
            let mut given = as_refs(&self.params);
            given.extend_from_slice(extra);
            let r = resolved(t, &given)["Resources"].clone();
            let b = self.bindings(t, &given);
            for c in calls {
                // "worker" and "worker (standalone)" run as the worker's role.
                let function = c.function.split_whitespace().next().unwrap_or_default();
                let logical = format!("{}{}Function", function[..1].to_uppercase(), &function[1..]);
                let role = relay_tests::iam::function_role(&r, &logical);
                let statements = match &c.principal {
                    Principal::Role => relay_tests::iam::role_statements(&r, &role, &b),
                    Principal::Assumed(_) => assumed.to_vec(),
                };
                let verdict = relay_tests::iam::evaluate(&statements, &c.action, &c.resource);
                table.insert(format!("{variant}: {c} → {verdict:?}"));
                if verdict != relay_tests::iam::Verdict::Allowed {
                    let by = match &c.principal {
                        Principal::Role => role,
                        Principal::Assumed(_) => "docs/deploy.md's cross-account ECR policy".into(),
                    };
                    refused.push(format!(
                        "{variant}: {} {} on {} ({}): {verdict:?} by {by}",
                        c.function, c.action, c.resource, c.operation
                    ));
                }
            }
        }
    }
}

/// The permission policy docs/deploy.md gives a cross-account ECR role, for
/// that account and region (the page writes 210987654321 and eu-west-1).
fn documented_ecr_role_policy(account: &str, region: &str) -> Vec<relay_tests::iam::Statement> {
    let block = doc_block("docs/deploy.md", "\"Sid\": \"HarborRelayEcr\"")
        .replace("210987654321", account)
        .replace("eu-west-1", region);
    let doc: Value = serde_json::from_str(&block).expect("docs/deploy.md's ECR permission policy is JSON");
    relay_tests::iam::document(
        &doc,
        "docs/deploy.md's cross-account ECR policy",
        &relay_tests::iam::Bindings::default(),
    )
}

/// The webhook and the worker, as Lambda runs them, for one push.
struct Round<'a> {
    recorder: &'a relay_tests::aws_calls::AwsRecorder,
    /// The worker's SQS client as its event source mapping (the worker's role).
    esm: &'a aws_sdk_sqs::Client,
    copy_queue: &'a str,
}

impl Round<'_> {
    /// The webhook takes `event` (202), and the worker copies the
    /// `expected` tasks it enqueued in one batch, none failing.
    async fn event_then_copies(
        &self,
        webhook: &mut relay_tests::runtime_api::KillingRuntime,
        worker: &mut relay_tests::runtime_api::KillingRuntime,
        event: Value,
        expected: usize,
    ) {
        use relay_tests::runtime_api::Ended;
        self.recorder.set_phase("webhook");
        let answer = webhook.invoke(event).await;
        let Ended::Answered(reply) = &answer else { panic!("webhook: {answer:?}\n{}", webhook.output()) };
        assert_eq!(reply["statusCode"], 202, "{reply}\n{}", webhook.output());
        self.copies(worker, expected).await;
    }

    /// The worker takes the `expected` tasks on the copy queue in one batch,
    /// none failing.
    async fn copies(&self, worker: &mut relay_tests::runtime_api::KillingRuntime, expected: usize) {
        let failed = self.batch(worker, expected).await;
        assert_eq!(failed, json!([]), "the worker's last warnings and errors:\n{}", worker.problems(12));
    }

    /// The worker takes the `expected` tasks on the copy queue (a push's in
    /// one bundle) in one batch; the answer's `batchItemFailures`.
    async fn batch(&self, worker: &mut relay_tests::runtime_api::KillingRuntime, expected: usize) -> Value {
        use relay_tests::runtime_api::{deliver, receive_batch, Ended};
        self.recorder.set_phase("worker");
        let (mut batch, mut tasks) = (Vec::new(), 0);
        while tasks < expected {
            let got = receive_batch(self.esm, self.copy_queue, std::time::Duration::from_secs(5)).await;
            assert!(!got.is_empty(), "{tasks} of {expected} tasks enqueued");
            tasks += got.iter().map(|m| relay::bundle::tasks_in(m.body().unwrap_or_default()).len()).sum::<usize>();
            batch.extend(got);
        }
        let delivery = deliver(self.esm, self.copy_queue, worker, &batch).await;
        let Ended::Answered(answer) = &delivery.ended else { panic!("worker: {delivery:?}\n{}", worker.output()) };
        answer["batchItemFailures"].clone()
    }
}

/// Every AWS call each function makes, judged against its role in the
/// SAM-transformed template (relay_tests::iam, whose doc comment says what
/// it ignores: conditions, permission boundaries, SCPs, resource policies),
/// with README's parameters for this run's resources — the secrets' ARNs as
/// Secrets Manager printed them (random suffix), `EnableEcr`,
/// `EcrRepositoryPrefix`, `EcrAssumeRoleArns` — outside a VPC and in one
/// (the webhook too). The functions run in Lambda mode under the killing
/// Runtime API, the configuration in SSM, every credential in Secrets
/// Manager: cold starts; a webhook event whose label rule needs Harbor's
/// API; the worker's batch with one task per destination kind (registry,
/// harbor, ECR in the stack's account, ECR in another account through an
/// assumed role), received and settled as the SQS event source mapping
/// does with the worker's role; a destination password rotated (401, the
/// secret read again); a configuration reload (a new registry); reconcile
/// passes; the record of written tags (RELAY_RECORD_BUCKET: the worker's
/// PutObject after a copy and DeleteObject after a delete, reconcile's
/// GetObject for a tag it would delete); the worker's settling (a task
/// dead-lettered at once, one parked for a registry in maintenance with
/// its probe and release, one backed off by its visibility). Then the
/// standalone webhook (RELAY_LISTEN) and polling worker, for one event and
/// its task and one backed-off task, against queues and a configuration
/// of their own. Calls made with the assumed role are judged against
/// docs/deploy.md's cross-account policy; the ECR stand-in's registry API calls as
/// the IAM actions ECR authorises them by. A call no statement allows fails
/// the test, naming function, action and resource; the list of calls and
/// verdicts is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_aws_call_is_allowed_by_its_functions_role() {
    use relay_tests::aws_calls::{AwsRecorder, Principal};
    use relay_tests::fake::FakeRegistry;
    use relay_tests::harbor::FakeHarbor;
    use relay_tests::runtime_api::{deliver, receive_batch, Ended, KillingRuntime};
    use relay_tests::spawned::SpawnedRegistry;
    use relay_tests::{image, ImageKind, Stack};
    use std::time::{Duration, Instant};

    let stack = Stack::load().unwrap();
    let sdk = relay::bootstrap::aws_config().await;
    let (sqs, sm) = relay::bootstrap::aws_clients().await;
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    let run = format!("relay-iam-{:08x}", rand::random::<u32>());
    let recorder = AwsRecorder::new(LOCAL_ACCOUNT);

    // Secrets as an operator makes them: their ARNs end in a random suffix.
    let secret = |name: &str, value: String| {
        let (sm, name) = (sm.clone(), format!("{run}/{name}"));
        async move {
            let out = sm.create_secret().name(&name).secret_string(value).send().await.expect("create secret");
            out.arn().expect("secret ARN").to_owned()
        }
    };
    let creds = |user: &str, password: &str| json!({"username": user, "password": password}).to_string();
    let webhook_auth = format!("Bearer {:032x}", rand::random::<u128>());
    let source_arn = secret("source-robot", creds("robot$relay", "robot-password-0123")).await;
    let spawned_arn = secret("spawned", creds("relay", "first-password-0123")).await;
    let harbor_arn = secret("dr-harbor", creds(&stack.target_user, &stack.target_password)).await;
    let webhook_arn = secret("webhook-auth", webhook_auth.clone()).await;
    assert!(source_arn.rsplit('-').next().is_some_and(|s| s.len() == 6), "no random suffix: {source_arn}");

    // The source: a Harbor (its API answers), the artifact labelled prod.
    let source = FakeRegistry::start(false).await;
    source.ping_as_harbor();
    let source_host = source.url.trim_start_matches("http://").to_owned();
    let project = run.clone();
    let repo = format!("{project}/app");
    let push = |tag: &'static str| {
        let (source, repo) = (source.clone(), repo.clone());
        async move {
            let plain = relay_tests::PlainRegistry::new(&source.url, None);
            let img = image::push(&plain, &repo, tag, ImageKind::OciImage, 1, 2048).await.unwrap();
            source.set_labels(&repo, &img.digest, &["prod"]);
            img
        }
    };
    // Destinations, one per kind; ECR's data plane is a registry whose
    // password is the token moto hands out, behind recording proxies.
    let spawned = SpawnedRegistry::start(&[("relay", "first-password-0123")]).await.unwrap();
    let harbor = FakeHarbor::start(&stack.target_url, true).await;
    let ecr = aws_sdk_ecr::Client::new(&sdk);
    let mut ecr_users = Vec::new();
    for registry in [None, Some(OTHER_ACCOUNT)] {
        #[allow(deprecated)]
        let token = ecr.get_authorization_token().set_registry_ids(registry.map(|r| vec![r.to_owned()])).send();
        let token = token.await.expect("moto on AWS_ENDPOINT_URL_ECR").authorization_data()[0]
            .authorization_token()
            .unwrap()
            .to_owned();
        use base64::Engine as _;
        let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(token).unwrap()).unwrap();
        let (user, password) = decoded.split_once(':').unwrap();
        ecr_users.push((user.to_owned(), password.to_owned()));
    }
    ecr_users.dedup();
    let users: Vec<(&str, &str)> = ecr_users.iter().map(|(u, p)| (u.as_str(), p.as_str())).collect();
    let ecr_backend = SpawnedRegistry::start(&users).await.unwrap();
    let role_arn = format!("arn:aws:iam::{OTHER_ACCOUNT}:role/{run}-ecr");
    // For the worker's settling: a registry that refuses a manifest (400:
    // retried after a backoff) and one in a maintenance window (503 to
    // everything, `GET /v2/` too: unavailable, so parked). Its
    // `Retry-After: 0` spares the test the client's backoff between its
    // attempts; a closed port would cost two rounds of it (seconds).
    use relay_tests::fake::{Fault, Op};
    let flaky = FakeRegistry::start(false).await;
    flaky.inject(Op::PutManifest, Fault::Status(400, None), 1000);
    let down = FakeRegistry::start(false).await;
    for op in [Op::Ping, Op::HeadManifest, Op::HeadBlob, Op::StartUpload, Op::PutManifest, Op::Other] {
        down.inject(op, Fault::Status(503, Some("0".into())), 1000);
    }
    let own_ecr = recorder.ecr_data_plane(&ecr_backend.url, "us-east-1", LOCAL_ACCOUNT, Principal::Role).await;
    let other_ecr = recorder
        .ecr_data_plane(&ecr_backend.url, "us-east-1", OTHER_ACCOUNT, Principal::Assumed(role_arn.clone()))
        .await;

    // The configuration, in SSM as `make deploy` stores it. The two ECR
    // registries are one stand-in here, so each writes a repository of its
    // own (two accounts never share one): two copies of an image into one
    // distribution repository at once can meet its non-atomic link writes
    // (a manifest refused as naming an unknown blob, seen in CI).
    let config = |late: bool| {
        let mut yaml = format!(
            "source: {{ url: {}, harbor_api: true, credentials: {{ secret_id: {run}/source-robot }} }}\n\
             webhook: {{ auth_secret_id: {run}/webhook-auth }}\n\
             registries:\n\
             \x20 - {{ name: spawned, url: {}, credentials: {{ secret_id: {run}/spawned }} }}\n\
             \x20 - {{ name: dr-harbor, kind: harbor, url: {}, create_projects: true, credentials: {{ secret_id: {run}/dr-harbor }} }}\n\
             \x20 - {{ name: prod-ecr, kind: ecr, url: {own_ecr}, region: us-east-1 }}\n\
             \x20 - {{ name: other-ecr, kind: ecr, url: {other_ecr}, region: us-east-1, registry_id: '{OTHER_ACCOUNT}', role_arn: '{role_arn}' }}\n",
            source.url, spawned.url, harbor.url
        );
        if late {
            yaml.push_str(&format!(
                "\x20 - {{ name: late, url: {}, credentials: {{ secret_id: {run}/dr-harbor }} }}\n\
                 \x20 - {{ name: flaky, url: {} }}\n\
                 \x20 - {{ name: down, url: {} }}\n",
                stack.target_url, flaky.url, down.url
            ));
        }
        yaml.push_str(&format!(
            "rules:\n\
             \x20 - {{ name: labelled, filters: {{ name: \"{project}/**\", label: [prod] }}, destination: {{ registry: spawned }} }}\n\
             \x20 - {{ name: to-harbor, filters: {{ name: \"{project}/**\" }}, destination: {{ registry: dr-harbor }} }}\n\
             \x20 - {{ name: to-ecr, filters: {{ name: \"{project}/**\" }}, destination: {{ registry: prod-ecr, namespace: mirror, flatten: 1 }} }}\n\
             \x20 - {{ name: to-other-ecr, filters: {{ name: \"{project}/**\" }}, destination: {{ registry: other-ecr, namespace: mirror/other, flatten: 1 }} }}\n"
        ));
        if late {
            yaml.push_str(&format!(
                "\x20 - {{ name: late, filters: {{ name: \"{project}/**\" }}, destination: {{ registry: late, namespace: late, flatten: 0 }}, deletion: true }}\n\
                 \x20 - {{ name: to-flaky, filters: {{ name: \"{project}-settle/**\" }}, destination: {{ registry: flaky }} }}\n\
                 \x20 - {{ name: to-down, filters: {{ name: \"{project}-settle/**\" }}, destination: {{ registry: down }} }}\n"
            ));
            // A probe of a registry in maintenance comes round every second.
            yaml.push_str("worker: { probe_seconds: 1 }\n");
        }
        yaml
    };
    let config_name = format!("/{run}/config");
    let put_config = |yaml: String| {
        let (ssm, name) = (ssm.clone(), config_name.clone());
        async move {
            ssm.put_parameter()
                .name(name)
                .value(yaml)
                .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
                .overwrite(true)
                .send()
                .await
                .expect("put the configuration");
        }
    };
    put_config(config(false)).await;
    let cursor = format!("/harbor-relay/{run}/reconcile-cursor");
    ssm.put_parameter()
        .name(&cursor)
        .value("-")
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();
    let (copy_queue, dlq) = relay_tests::stack::create_queue_with_dlq(&sqs, "iam", 5, 120).await.unwrap();
    let parking = relay_tests::stack::create_queue(&sqs, "iam-parking").await.unwrap();
    // The record's bucket, the stack's (the template's RecordBucket).
    let bucket = std::env::var(relay::written::BUCKET_ENV).expect("RELAY_RECORD_BUCKET: load the stack first");

    // The three functions with the template's environment.
    let common = |extra: Vec<(&'static str, String)>| {
        let mut env = vec![("RELAY_CONFIG", format!("ssm:{config_name}")), ("RELAY_QUEUE_URL", copy_queue.clone())];
        env.extend(extra);
        env
    };
    let mut webhook_env = common(recorder.env("webhook").await);
    webhook_env.push(("RELAY_UNTAGGED_DELAY_SECONDS", "0".into()));
    let mut worker_env = common(recorder.env("worker").await);
    worker_env.extend([
        ("RELAY_DLQ_URL", dlq.clone()),
        ("RELAY_PARKING_QUEUE_URL", parking.clone()),
        ("RELAY_RECORD_BUCKET", bucket.clone()),
    ]);
    let mut reconcile_env = common(recorder.env("reconcile").await);
    reconcile_env
        .extend([("RELAY_RECONCILE_CURSOR_PARAMETER", cursor.clone()), ("RELAY_RECORD_BUCKET", bucket.clone())]);
    let timeout = Duration::from_secs(60);
    let mut webhook = KillingRuntime::start("webhook", &webhook_env, timeout).await;
    let mut worker = KillingRuntime::start("worker", &worker_env, timeout).await;
    let mut reconcile = KillingRuntime::start("reconcile", &reconcile_env, timeout).await;
    // The event source mapping polls and deletes with the worker's role.
    let esm_conf = aws_sdk_sqs::config::Builder::from(&sdk).endpoint_url(recorder.endpoint("worker").await).build();
    let esm = aws_sdk_sqs::Client::from_conf(esm_conf);

    // A push: the webhook (cold start, the label read from Harbor's API)
    // enqueues one task per destination; the worker copies them all.
    let event = |tag: &str, digest: &str| {
        let body =
            relay_tests::harbor_push_event("PUSH_ARTIFACT", &source_host, &repo, Some(tag), digest, relay_tests::now());
        function_url_event(&webhook_auth, &body)
    };
    let v1 = push("v1").await;
    let round = Round { recorder: &recorder, esm: &esm, copy_queue: &copy_queue };
    round.event_then_copies(&mut webhook, &mut worker, event("v1", &v1.digest), 4).await;
    let spawned_client = |password: &str| spawned.client("relay", password);
    assert_eq!(spawned_client("first-password-0123").digest_at(&repo, "v1").await.unwrap(), Some(v1.digest.clone()));
    assert_eq!(stack.target().digest_at(&repo, "v1").await.unwrap(), Some(v1.digest.clone()));
    assert_eq!(
        ecr_backend.client(users[0].0, users[0].1).digest_at("mirror/app", "v1").await.unwrap(),
        Some(v1.digest.clone())
    );

    // A rotated password: the registry answers 401, the worker reads the
    // secret again and the copy goes on.
    spawned.set_users(&[("relay", "second-password-0123")]).unwrap();
    sm.put_secret_value()
        .secret_id(&spawned_arn)
        .secret_string(creds("relay", "second-password-0123"))
        .send()
        .await
        .unwrap();
    let v2 = push("v2").await;
    round.event_then_copies(&mut webhook, &mut worker, event("v2", &v2.digest), 4).await;
    assert_eq!(spawned_client("second-password-0123").digest_at(&repo, "v2").await.unwrap(), Some(v2.digest.clone()));

    // A reconcile pass (cold start): every destination in sync.
    let scheduled = json!({"version": "0", "id": "1", "detail-type": "Scheduled Event", "source": "aws.events",
        "account": LOCAL_ACCOUNT, "time": "2026-12-01T12:00:00Z", "region": "us-east-1", "resources": [], "detail": {}});
    recorder.set_phase("reconcile");
    let pass = reconcile.invoke(scheduled.clone()).await;
    let Ended::Answered(summary) = &pass else { panic!("reconcile: {pass:?}\n{}", reconcile.output()) };
    assert_eq!(summary["tasks_enqueued"], 0, "{summary}\n{}", reconcile.output());

    // A configuration reload: a new registry; a task for it makes the
    // worker read the parameter again at once, and the next pass too.
    put_config(config(true)).await;
    let late_config = relay::Config::parse(&config(true)).unwrap();
    let late_task = relay_tests::planned_tasks_on(&late_config, &source_host, "PUSH_ARTIFACT", &repo, "v2", &v2.digest)
        .into_iter()
        .find(|t| t.destination.registry == "late")
        .expect("a task for the new registry");
    sqs.send_message().queue_url(&copy_queue).message_body(late_task.encode()).send().await.unwrap();
    recorder.set_phase("worker");
    let batch = receive_batch(&esm, &copy_queue, Duration::from_secs(5)).await;
    let delivery = deliver(&esm, &copy_queue, &mut worker, &batch).await;
    let Ended::Answered(answer) = &delivery.ended else { panic!("worker: {delivery:?}\n{}", worker.output()) };
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer}\n{}", worker.output());
    assert!(worker.output().contains("configuration changed: read again"), "{}", worker.output());
    recorder.set_phase("reconcile");
    let pass = reconcile.invoke(scheduled.clone()).await;
    let Ended::Answered(summary) = &pass else { panic!("reconcile: {pass:?}\n{}", reconcile.output()) };
    assert_eq!(summary["tasks_enqueued"], 1, "the new registry lacks v1: {summary}\n{}", reconcile.output());
    assert!(reconcile.output().contains("configuration changed: read again"), "{}", reconcile.output());

    // The record of written tags (RELAY_RECORD_BUCKET): the worker notes
    // the tag it copies to the new registry; Harbor deletes v1; the next
    // pass reads the record for the new registry's v1 (its rule deletes),
    // finds the relay wrote it and enqueues its delete; the worker deletes
    // the tag and forgets it.
    round.copies(&mut worker, 1).await;
    let late_repo = format!("late/{repo}");
    assert_eq!(stack.target().digest_at(&late_repo, "v1").await.unwrap(), Some(v1.digest.clone()));
    source.delete_artifact(&repo, &v1.digest);
    recorder.set_phase("reconcile");
    let pass = reconcile.invoke(scheduled.clone()).await;
    let Ended::Answered(summary) = &pass else { panic!("reconcile: {pass:?}\n{}", reconcile.output()) };
    assert_eq!(summary["tasks_enqueued"], 1, "the delete of late v1: {summary}\n{}", reconcile.output());
    round.copies(&mut worker, 1).await;
    assert_eq!(stack.target().digest_at(&late_repo, "v1").await.unwrap(), None, "{}", worker.output());

    // The worker's settling, in one batch: a task for a registry the
    // configuration does not name is dead-lettered at once (RELAY_DLQ_URL);
    // one for a registry in maintenance is parked (the parking queue, a
    // probe on the copy queue); one whose manifest the registry refuses
    // (400) comes back after a backoff (its visibility). Their rules select
    // a repository of its own, pushed now: no webhook event or reconcile
    // pass plans for it.
    let settle_repo = format!("{project}-settle/app");
    let plain = relay_tests::PlainRegistry::new(&source.url, None);
    let s1 = image::push(&plain, &settle_repo, "v1", ImageKind::OciImage, 1, 2048).await.unwrap();
    let planned =
        relay_tests::planned_tasks_on(&late_config, &source_host, "PUSH_ARTIFACT", &settle_repo, "v1", &s1.digest);
    let settled = |registry: &str| {
        let to = if registry == "nowhere" { "flaky" } else { registry };
        let mut t = planned.iter().find(|t| t.destination.registry == to).expect("a task per settling rule").clone();
        t.destination.registry = registry.to_owned();
        t.encode()
    };
    for registry in ["nowhere", "down", "flaky"] {
        sqs.send_message().queue_url(&copy_queue).message_body(settled(registry)).send().await.unwrap();
    }
    let failed = round.batch(&mut worker, 3).await;
    assert_eq!(failed.as_array().map(Vec::len), Some(1), "only the refused manifest's: {failed}\n{}", worker.output());

    // The maintenance ends; the probe (due a second after the parking)
    // finds the registry answering and moves its parked task back to the
    // copy queue (the parking queue read and emptied).
    down.clear_faults();
    let probe = loop {
        let got = receive_batch(&esm, &copy_queue, Duration::from_secs(5)).await;
        assert!(!got.is_empty(), "no probe on the copy queue\n{}", worker.output());
        // A probe's body: `{"probe": "<registry>"}`.
        let is_probe = |m: &aws_sdk_sqs::types::Message| m.body().is_some_and(|b| b.contains(r#""probe""#));
        if got.iter().any(is_probe) {
            break got;
        }
    };
    recorder.set_phase("worker");
    let delivery = deliver(&esm, &copy_queue, &mut worker, &probe).await;
    let Ended::Answered(answer) = &delivery.ended else { panic!("worker: {delivery:?}\n{}", worker.output()) };
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer}\n{}", worker.output());
    assert!(worker.output().contains("its parked tasks are back on the copy queue"), "{}", worker.output());

    // Standalone, as an operator may run them: the webhook on RELAY_LISTEN
    // and the worker polling the queue itself, each through its own
    // recording endpoint, for one event and its task, and a task whose
    // manifest the registry refuses (the poller's own settling). A
    // deployment of their own (queues, configuration parameter), judged
    // below against the same roles.
    let solo_config_name = format!("/{run}/standalone-config");
    let solo_yaml = format!(
        "source: {{ url: {}, credentials: {{ secret_id: {run}/source-robot }} }}\n\
         webhook: {{ auth_secret_id: {run}/webhook-auth }}\n\
         registries:\n\
         \x20 - {{ name: spawned, url: {}, credentials: {{ secret_id: {run}/spawned }} }}\n\
         \x20 - {{ name: flaky, url: {} }}\n\
         rules:\n\
         \x20 - {{ name: to-spawned, filters: {{ name: \"{project}/**\" }}, destination: {{ registry: spawned }} }}\n\
         \x20 - {{ name: to-flaky, filters: {{ name: \"{project}-settle/**\" }}, destination: {{ registry: flaky }} }}\n",
        source.url, spawned.url, flaky.url
    );
    ssm.put_parameter()
        .name(&solo_config_name)
        .value(solo_yaml)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .expect("put the standalone configuration");
    let (solo_queue, solo_dlq) = relay_tests::stack::create_queue_with_dlq(&sqs, "iam-solo", 5, 120).await.unwrap();
    let solo_parking = relay_tests::stack::create_queue(&sqs, "iam-solo-parking").await.unwrap();
    let listen = {
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        free.local_addr().expect("address")
    };
    let solo_common =
        vec![("RELAY_CONFIG", format!("ssm:{solo_config_name}")), ("RELAY_QUEUE_URL", solo_queue.clone())];
    let mut solo_webhook_env = solo_common.clone();
    solo_webhook_env.extend(recorder.env("webhook (standalone)").await);
    solo_webhook_env.extend([("RELAY_LISTEN", listen.to_string()), ("RELAY_UNTAGGED_DELAY_SECONDS", "0".into())]);
    let mut solo_worker_env = solo_common.clone();
    solo_worker_env.extend(recorder.env("worker (standalone)").await);
    solo_worker_env.extend([
        ("RELAY_DLQ_URL", solo_dlq.clone()),
        ("RELAY_PARKING_QUEUE_URL", solo_parking.clone()),
        ("RELAY_RECORD_BUCKET", bucket.clone()),
    ]);
    recorder.set_phase("worker (standalone)");
    let solo_webhook = Standalone::start("webhook", &run, &solo_webhook_env);
    let solo_worker = Standalone::start("worker", &run, &solo_worker_env);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while !http.get(format!("http://{listen}/healthz")).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(Instant::now() < until, "the standalone webhook did not start:\n{}", solo_webhook.output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let v3 = push("v3").await;
    let body = relay_tests::harbor_push_event(
        "PUSH_ARTIFACT",
        &source_host,
        &repo,
        Some("v3"),
        &v3.digest,
        relay_tests::now(),
    );
    let reply = http
        .post(format!("http://{listen}/"))
        .header("content-type", "application/json")
        .header("authorization", &webhook_auth)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 202, "{}", solo_webhook.output());
    sqs.send_message().queue_url(&solo_queue).message_body(settled("flaky")).send().await.unwrap();
    let solo_queue_name = solo_queue.rsplit('/').next().unwrap_or_default().to_owned();
    let until = Instant::now() + Duration::from_secs(15);
    let polled = |action: &str| {
        recorder.calls().iter().any(|c| {
            c.function == "worker (standalone)" && c.action == action && c.resource.ends_with(&solo_queue_name)
        })
    };
    while !(polled("sqs:DeleteMessage") && polled("sqs:ChangeMessageVisibility")) {
        assert!(Instant::now() < until, "the standalone worker did not settle both:\n{}", solo_worker.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        spawned_client("second-password-0123").digest_at(&repo, "v3").await.unwrap(),
        Some(v3.digest.clone()),
        "{}",
        solo_worker.output()
    );
    drop((solo_webhook, solo_worker));

    // The run did what it claims to cover.
    let calls = recorder.calls();
    let queue_name = |url: &str| url.rsplit('/').next().unwrap_or_default().to_owned();
    let deployed_queue = queue_name(&copy_queue);
    let made = |function: &str, action: &str, resource: &str| {
        calls.iter().filter(|c| c.function == function && c.action == action && c.resource.contains(resource)).count()
    };
    assert!(made("webhook", "secretsmanager:GetSecretValue", &source_arn) >= 1, "the label rule reads Harbor's API");
    assert!(made("worker", "secretsmanager:GetSecretValue", &spawned_arn) >= 2, "read again after the 401");
    for function in ["webhook", "worker", "reconcile"] {
        assert!(made(function, "ssm:GetParameter", &config_name) >= 1, "{function} read no configuration");
    }
    for function in ["worker", "reconcile"] {
        assert!(made(function, "sts:AssumeRole", &role_arn) >= 1, "{function} assumed no role");
        assert!(made(function, "ecr:GetAuthorizationToken", "*") >= 1, "{function} fetched no ECR token");
        assert!(made(function, "ecr:BatchGetImage", "repository/mirror/app") >= 1, "{function} read no ECR image");
    }
    assert!(made("worker", "ecr:CreateRepository", "repository/mirror/app") >= 1);
    assert!(made("worker", "ecr:PutImage", "repository/mirror/app") >= 1);
    assert!(made("reconcile", "ssm:PutParameter", &cursor) >= 1, "no cursor written");
    assert!(made("reconcile", "sqs:SendMessage", &deployed_queue) >= 1, "reconcile enqueued nothing");
    let late_record = format!("arn:aws:s3:::{bucket}/late/{late_repo}:v1");
    let covered = [
        ("worker", "sqs:SendMessage", queue_name(&dlq), "dead-lettered nothing"),
        ("worker", "sqs:SendMessage", queue_name(&parking), "parked nothing"),
        ("worker", "sqs:SendMessage", deployed_queue.clone(), "sent no probe"),
        ("worker", "sqs:ReceiveMessage", queue_name(&parking), "released nothing"),
        ("worker", "sqs:DeleteMessage", queue_name(&parking), "released nothing"),
        ("worker", "sqs:ChangeMessageVisibility", deployed_queue.clone(), "backed nothing off"),
        ("worker", "s3:PutObject", late_record.clone(), "noted no tag written"),
        ("worker", "s3:DeleteObject", late_record.clone(), "forgot no tag deleted"),
        ("reconcile", "s3:GetObject", late_record.clone(), "read no record"),
        ("webhook (standalone)", "ssm:GetParameter", solo_config_name.clone(), "read no configuration"),
        ("webhook (standalone)", "secretsmanager:GetSecretValue", webhook_arn.clone(), "read no auth value"),
        ("webhook (standalone)", "sqs:SendMessage", solo_queue_name.clone(), "enqueued nothing"),
        ("worker (standalone)", "ssm:GetParameter", solo_config_name.clone(), "read no configuration"),
        ("worker (standalone)", "sqs:GetQueueAttributes", solo_queue_name.clone(), "read no queue attribute"),
        ("worker (standalone)", "sqs:ReceiveMessage", solo_queue_name.clone(), "received nothing"),
        ("worker (standalone)", "sqs:DeleteMessage", solo_queue_name.clone(), "deleted nothing"),
        ("worker (standalone)", "sqs:ChangeMessageVisibility", solo_queue_name.clone(), "backed nothing off"),
        ("worker (standalone)", "secretsmanager:GetSecretValue", spawned_arn.clone(), "read no credentials"),
        ("worker (standalone)", "s3:PutObject", format!("{bucket}/spawned/{repo}:v3"), "noted no tag written"),
    ];
    for (function, action, resource, what) in covered {
        assert!(made(function, action, &resource) >= 1, "{function} {what}: no {action} on {resource}");
    }
    assert!(calls.iter().all(|c| !c.action.contains("Unknown") && !c.action.starts_with("unsigned")), "{calls:#?}");

    // Each call judged against its function's role, for README's
    // parameters with this run's ARNs, outside a VPC and in one; the
    // standalone functions' with their own queues and configuration.
    let t = transformed();
    let params = |config: &str| {
        vec![
            ("ConfigParameterName".into(), config.to_owned()),
            ("SourceSecretArns".into(), source_arn.clone()),
            ("SecretArns".into(), format!("{spawned_arn},{harbor_arn}")),
            ("WebhookSecretArns".into(), webhook_arn.clone()),
            ("EnableEcr".into(), "true".into()),
            ("EcrRepositoryPrefix".into(), "mirror/".into()),
            ("EcrAssumeRoleArns".into(), role_arn.clone()),
        ]
    };
    let deployed = Deployed {
        params: params(&config_name),
        copy_queue,
        dlq,
        parking,
        cursor: cursor.clone(),
        bucket: bucket.clone(),
    };
    let standalone = Deployed {
        params: params(&solo_config_name),
        copy_queue: solo_queue,
        dlq: solo_dlq,
        parking: solo_parking,
        cursor,
        bucket,
    };
    let readme_names: Vec<String> = readme_params().into_iter().map(|(k, _)| k).collect();
    for name in ["SourceSecretArns", "SecretArns", "WebhookSecretArns", "EnableEcr", "EcrRepositoryPrefix"] {
        assert!(readme_names.iter().any(|n| n == name), "README's parameters file gives no {name}");
    }
    let assumed = documented_ecr_role_policy(OTHER_ACCOUNT, "us-east-1");
    let mut refused = Vec::new();
    let mut table = std::collections::BTreeSet::new();
    let (solo_calls, lambda_calls): (Vec<_>, Vec<_>) =
        calls.into_iter().partition(|c| c.function.contains("standalone"));
    deployed.judge(&t, &lambda_calls, &assumed, &mut table, &mut refused);
    standalone.judge(&t, &solo_calls, &assumed, &mut table, &mut refused);
    println!("{}", table.into_iter().collect::<Vec<_>>().join("\n"));
    refused.sort();
    refused.dedup();
    assert!(refused.is_empty(), "calls the deployed roles would refuse:\n{}", refused.join("\n"));
}

/// A function's binary run standalone (no Runtime API), its output in a
/// file; killed (its own process) when dropped.
struct Standalone {
    child: std::process::Child,
    log: PathBuf,
}

impl Standalone {
    fn start(name: &str, run: &str, envs: &[(&str, String)]) -> Standalone {
        let log = std::env::temp_dir().join(format!("{run}-standalone-{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(relay_tests::workspace_binary(name))
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("start the standalone binary");
        Standalone { child, log }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
