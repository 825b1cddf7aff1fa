//! A small IAM evaluator for the roles of the SAM-transformed template, so
//! a test can say whether the deployed role would allow a call the function
//! really made ([`crate::aws_calls`]): LocalStack and moto do not enforce
//! IAM (DESIGN §9).
//!
//! It takes a template whose conditions are already resolved (every
//! `Fn::If` replaced by its branch) and makes each statement concrete with
//! [`Bindings`]: `Ref`, `Fn::GetAtt`, `Fn::Sub` (with or without its
//! variable map), `Fn::Join`, list parameters split into one ARN each. Then
//! the usual order: an explicit `Deny` wins, else any `Allow` whose action
//! and resource patterns (`*` and `?`, actions case-insensitive) match.
//!
//! What it ignores, each of which can only make a real account stricter
//! than this verdict: `Condition` blocks (a conditional `Allow` counts as an
//! `Allow`), permission boundaries, service control policies, session
//! policies, resource policies (a secret's, a queue's, a KMS key's), and
//! the contents of AWS-managed policies other than the two Lambda
//! execution policies below. `NotAction` and `NotResource` are refused
//! (panic) rather than guessed.

use std::collections::HashMap;

use serde_json::Value;

/// The concrete value of everything a role's statements refer to.
#[derive(Debug, Clone, Default)]
pub struct Bindings {
    /// Template parameters (list parameters comma-separated) and pseudo
    /// parameters (`AWS::Region`, `AWS::AccountId`, `AWS::Partition`,
    /// `AWS::StackName`).
    pub refs: HashMap<String, String>,
    /// `Fn::GetAtt` values: (`LogicalId`, `Attribute`) → value. A
    /// resource's `Ref` is in `refs` under its logical ID.
    pub atts: HashMap<(String, String), String>,
    /// Names of the template's list parameters (split into one value each).
    pub lists: Vec<String>,
}

impl Bindings {
    pub fn set(&mut self, name: &str, value: &str) -> &mut Self {
        self.refs.insert(name.to_owned(), value.to_owned());
        self
    }

    pub fn att(&mut self, logical: &str, attribute: &str, value: &str) -> &mut Self {
        self.atts.insert((logical.to_owned(), attribute.to_owned()), value.to_owned());
        self
    }

    fn reference(&self, name: &str) -> Vec<String> {
        let value = self.refs.get(name).unwrap_or_else(|| panic!("no binding for Ref {name}"));
        match self.lists.iter().any(|l| l == name) {
            true => value.split(',').filter(|v| !v.is_empty()).map(str::to_owned).collect(),
            false => vec![value.clone()],
        }
    }

    fn get_att(&self, logical: &str, attribute: &str) -> String {
        self.atts
            .get(&(logical.to_owned(), attribute.to_owned()))
            .unwrap_or_else(|| panic!("no binding for Fn::GetAtt {logical}.{attribute}"))
            .clone()
    }

    /// `s` with each `${Name}` / `${Logical.Attribute}` replaced.
    fn sub(&self, s: &str, vars: &HashMap<String, String>) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(at) = rest.find("${") {
            out.push_str(&rest[..at]);
            let end = rest[at..].find('}').map(|e| at + e).unwrap_or_else(|| panic!("unclosed ${{ in {s}"));
            let name = &rest[at + 2..end];
            let value = match (vars.get(name), name.split_once('.')) {
                (Some(v), _) => v.clone(),
                (None, Some((logical, attribute))) if !name.starts_with("AWS::") => self.get_att(logical, attribute),
                (None, _) => self.reference(name).join(","),
            };
            out.push_str(&value);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        out
    }

    /// Every concrete string `v` stands for.
    pub fn concrete(&self, v: &Value) -> Vec<String> {
        match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items.iter().flat_map(|i| self.concrete(i)).collect(),
            Value::Object(o) if o.len() == 1 => {
                let (f, args) = o.iter().next().expect("one key");
                match f.as_str() {
                    "Ref" => self.reference(args.as_str().expect("Ref names a string")),
                    "Fn::GetAtt" => {
                        let (logical, attribute) = match args {
                            Value::Array(a) => (a[0].as_str().unwrap_or_default(), a[1].as_str().unwrap_or_default()),
                            Value::String(s) => s.split_once('.').expect("Logical.Attribute"),
                            other => panic!("Fn::GetAtt {other}"),
                        };
                        vec![self.get_att(logical, attribute)]
                    }
                    "Fn::Sub" => {
                        let (template, vars) = match args {
                            Value::String(s) => (s.as_str(), HashMap::new()),
                            Value::Array(a) => {
                                let vars = a[1]
                                    .as_object()
                                    .map(|m| m.iter().map(|(k, v)| (k.clone(), self.concrete(v).join(","))).collect())
                                    .unwrap_or_default();
                                (a[0].as_str().expect("Fn::Sub string"), vars)
                            }
                            other => panic!("Fn::Sub {other}"),
                        };
                        vec![self.sub(template, &vars)]
                    }
                    "Fn::Join" => {
                        let sep = args[0].as_str().expect("Fn::Join separator");
                        vec![self.concrete(&args[1]).join(sep)]
                    }
                    other => panic!("{other} not evaluated here: {v}"),
                }
            }
            other => panic!("not a policy value: {other}"),
        }
    }
}

/// One statement with its patterns made concrete.
#[derive(Debug, Clone)]
pub struct Statement {
    pub allow: bool,
    pub actions: Vec<String>,
    pub resources: Vec<String>,
    /// Where it came from (the policy's name), for messages.
    pub from: String,
}

/// What IAM would answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// No statement allows it.
    NotAllowed,
    /// A statement denies it (the policy named).
    Denied(String),
}

/// The two AWS-managed policies SAM and the template attach for Lambda:
/// their statements, as AWS publishes them.
fn managed(arn: &str) -> Vec<Statement> {
    let statement = |actions: &[&str]| Statement {
        allow: true,
        actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        resources: vec!["*".into()],
        from: arn.rsplit('/').next().unwrap_or(arn).to_owned(),
    };
    match arn.rsplit('/').next() {
        Some("AWSLambdaBasicExecutionRole") => {
            vec![statement(&["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"])]
        }
        Some("AWSLambdaVPCAccessExecutionRole") => vec![statement(&[
            "logs:CreateLogGroup",
            "logs:CreateLogStream",
            "logs:PutLogEvents",
            "ec2:CreateNetworkInterface",
            "ec2:DescribeNetworkInterfaces",
            "ec2:DescribeSubnets",
            "ec2:DeleteNetworkInterface",
            "ec2:AssignPrivateIpAddresses",
            "ec2:UnassignPrivateIpAddresses",
        ])],
        _ => panic!("managed policy {arn} not known here: add its statements"),
    }
}

fn strings(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        Value::Null => vec![],
        other => vec![other.clone()],
    }
}

/// The statements of a policy document.
pub fn document(doc: &Value, from: &str, b: &Bindings) -> Vec<Statement> {
    strings(&doc["Statement"])
        .iter()
        .map(|s| {
            for unsupported in ["NotAction", "NotResource", "NotPrincipal"] {
                assert!(s.get(unsupported).is_none(), "{from}: {unsupported} is not evaluated here");
            }
            Statement {
                allow: s["Effect"] == "Allow",
                actions: strings(&s["Action"]).iter().flat_map(|a| b.concrete(a)).collect(),
                resources: strings(&s["Resource"]).iter().flat_map(|r| b.concrete(r)).collect(),
                from: from.to_owned(),
            }
        })
        .collect()
}

/// Every statement of `role` (a logical ID of the resolved template's
/// `Resources`): inline policies and the managed ones it attaches.
pub fn role_statements(resources: &Value, role: &str, b: &Bindings) -> Vec<Statement> {
    let props = &resources[role]["Properties"];
    assert!(!props.is_null(), "no role {role} in the template");
    let mut out: Vec<Statement> = strings(&props["ManagedPolicyArns"])
        .iter()
        .flat_map(|arn| b.concrete(arn))
        .flat_map(|arn| managed(&arn))
        .collect();
    for p in strings(&props["Policies"]) {
        let name = p["PolicyName"].as_str().unwrap_or("?");
        out.extend(document(&p["PolicyDocument"], &format!("{role}/{name}"), b));
    }
    out
}

/// The role a function of the resolved template runs as (its `Role`).
pub fn function_role(resources: &Value, function: &str) -> String {
    let role = &resources[function]["Properties"]["Role"]["Fn::GetAtt"];
    role[0].as_str().unwrap_or_else(|| panic!("{function}: no Role GetAtt")).to_owned()
}

/// `pattern` (`*`: any run, `?`: any one character) against `value`.
pub fn wildcard(pattern: &str, value: &str, ignore_case: bool) -> bool {
    let (p, v): (Vec<char>, Vec<char>) = match ignore_case {
        true => (pattern.to_lowercase().chars().collect(), value.to_lowercase().chars().collect()),
        false => (pattern.chars().collect(), value.chars().collect()),
    };
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < v.len() {
        if i < p.len() && (p[i] == '?' || p[i] == v[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// IAM's answer for `action` on `resource` under `statements`.
pub fn evaluate(statements: &[Statement], action: &str, resource: &str) -> Verdict {
    let matching = |s: &&Statement| {
        s.actions.iter().any(|a| wildcard(a, action, true)) && s.resources.iter().any(|r| wildcard(r, resource, false))
    };
    if let Some(deny) = statements.iter().filter(|s| !s.allow).find(matching) {
        return Verdict::Denied(deny.from.clone());
    }
    match statements.iter().filter(|s| s.allow).any(|s| matching(&s)) {
        true => Verdict::Allowed,
        false => Verdict::NotAllowed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wildcards_match_as_iam_does() {
        assert!(wildcard(
            "arn:aws:secretsmanager:r:1:secret:a/b-??????",
            "arn:aws:secretsmanager:r:1:secret:a/b-AbCdEf",
            false
        ));
        assert!(!wildcard(
            "arn:aws:secretsmanager:r:1:secret:a/b-??????",
            "arn:aws:secretsmanager:r:1:secret:a/b-AbCdE",
            false
        ));
        assert!(wildcard("sqs:SendMessage*", "SQS:sendmessage", true));
        assert!(wildcard("arn:aws:ecr:r:1:repository/mirror/*", "arn:aws:ecr:r:1:repository/mirror/a/b", false));
        assert!(!wildcard("arn:aws:ecr:r:1:repository/mirror/*", "arn:aws:ecr:r:1:repository/other", false));
        assert!(!wildcard("arn:aws:sqs:r:1:copy", "arn:aws:sqs:r:1:COPY", false), "resources are case-sensitive");
    }

    #[test]
    fn statements_become_concrete_and_a_deny_wins() {
        let mut b = Bindings::default();
        b.set("AWS::Region", "r").set("AWS::AccountId", "1").set("AWS::Partition", "aws");
        b.set("Secrets", "arn:s1,arn:s2").att("Queue", "QueueName", "copy");
        b.lists.push("Secrets".into());
        let doc = json!({"Statement": [
            {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": {"Ref": "Secrets"}},
            {"Effect": "Allow", "Action": ["sqs:SendMessage*"], "Resource": {"Fn::Sub": ["arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:${q}", {"q": {"Fn::GetAtt": ["Queue", "QueueName"]}}]}},
            {"Effect": "Deny", "Action": "secretsmanager:*", "Resource": "arn:s2"}
        ]});
        let s = document(&doc, "test", &b);
        assert_eq!(evaluate(&s, "sqs:SendMessage", "arn:aws:sqs:r:1:copy"), Verdict::Allowed);
        assert_eq!(evaluate(&s, "sqs:SendMessage", "arn:aws:sqs:r:1:other"), Verdict::NotAllowed);
        assert_eq!(evaluate(&s, "secretsmanager:GetSecretValue", "arn:s1"), Verdict::Allowed);
        assert_eq!(evaluate(&s, "secretsmanager:GetSecretValue", "arn:s2"), Verdict::Denied("test".into()));
    }
}
