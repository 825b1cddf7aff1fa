//! Fixtures for the end-to-end tests and the demo: the local stack's
//! endpoints, a minimal independent registry client to push generated
//! images and to compare source and destination, Harbor payloads, and SQS
//! helpers. Deliberately separate from the code under test, so a test does
//! not check the relay with the relay.

pub mod app;
pub mod aws_calls;
pub mod fake;
pub mod harbor;
pub mod harbor_replication;
pub mod iam;
pub mod image;
pub mod lambda;
pub mod plain;
pub mod proxy;
pub mod runtime_api;
pub mod soak;
pub mod spawned;
pub mod stack;
pub mod token;

pub use image::{GeneratedImage, ImageKind};
pub use plain::PlainRegistry;
pub use stack::Stack;

/// A file in the temporary directory (a configuration, a log to read
/// back), removed when dropped: also when the test that wrote it fails.
pub struct TempFile(std::path::PathBuf);

impl TempFile {
    /// `relay-NAME-RANDOM.EXT` holding `contents`.
    pub fn new(name: &str, ext: &str, contents: impl AsRef<[u8]>) -> TempFile {
        let path = std::env::temp_dir().join(format!("relay-{name}-{:08x}.{ext}", rand::random::<u32>()));
        std::fs::write(&path, contents).expect("write a temporary file");
        TempFile(path)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// The path as an argument or environment value.
    pub fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl AsRef<std::path::Path> for TempFile {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A Harbor `PUSH_ARTIFACT` (Default format) as Harbor sends it: by tag, or
/// by digest (`tag` holds the digest, `resource_url` uses `@`).
pub fn harbor_push_event(
    kind: &str,
    host: &str,
    repository: &str,
    tag: Option<&str>,
    digest: &str,
    occur_at: i64,
) -> String {
    let (namespace, name) = repository.split_once('/').expect("Harbor repositories have a project");
    let (tag, resource_url) = match tag {
        Some(t) => (t.to_owned(), format!("{host}/{repository}:{t}")),
        None => (digest.to_owned(), format!("{host}/{repository}@{digest}")),
    };
    serde_json::json!({
        "type": kind,
        "occur_at": occur_at,
        "operator": "admin",
        "event_data": {
            "resources": [{ "digest": digest, "tag": tag, "resource_url": resource_url }],
            "repository": {
                "date_created": occur_at,
                "name": name,
                "namespace": namespace,
                "repo_full_name": repository,
                "repo_type": "private"
            }
        }
    })
    .to_string()
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The tasks the rules of `config` plan for a Harbor event (Default format)
/// about `repo:tag` = `digest` on the stack's source, as the webhook would.
pub fn planned_tasks(
    config: &relay::Config,
    stack: &Stack,
    kind: &str,
    repo: &str,
    tag: &str,
    digest: &str,
) -> Vec<relay::Task> {
    planned_tasks_on(config, stack.source_host(), kind, repo, tag, digest)
}

/// [`planned_tasks`] for a source at `source_host` (`host:port`).
pub fn planned_tasks_on(
    config: &relay::Config,
    source_host: &str,
    kind: &str,
    repo: &str,
    tag: &str,
    digest: &str,
) -> Vec<relay::Task> {
    let body = harbor_push_event(kind, source_host, repo, Some(tag), digest, now());
    let event = relay::event::HarborEvent::parse(relay::event::Format::Default, body.as_bytes(), source_host).unwrap();
    let mut n = 0;
    relay::plan::plan(config, &event, None, &mut || {
        n += 1;
        format!("task-{:08x}-{n}", rand::random::<u32>())
    })
    .tasks
}

/// Path of a workspace binary built by `cargo build --workspace --bins`
/// (`make test` runs it first: `cargo test` builds another package's
/// binaries only for that package's own integration tests). Cargo only exposes `CARGO_BIN_EXE_*` for binaries of
/// the test's own package, and the target directory may be moved by
/// `CARGO_TARGET_DIR`, `CARGO_BUILD_TARGET_DIR` or a cargo config file, so
/// look next to the running test executable first (`<target>/debug/deps/…`)
/// and then ask `cargo metadata`, which knows every such setting.
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let beside_test =
        std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.parent()?.join(name))).filter(|p| p.exists());
    if let Some(path) = beside_test {
        return path;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata output");
    let target = meta["target_directory"].as_str().expect("target_directory in cargo metadata");
    let path = std::path::Path::new(target).join("debug").join(name);
    assert!(path.exists(), "{} not built: run `cargo build --workspace --bins` first (make test does)", path.display());
    path
}

/// What of the stack's secrets appears in `logs`: the registry password raw
/// and inside its Basic header, the webhook's accepted value, any `extra`
/// value (e.g. one a test presented), an `Authorization` field, and any
/// `Basic …`/`Bearer …` credential at all (a token a registry issued is
/// unknown to the test, but it never follows those words in a log line;
/// a challenge's `Bearer realm="…"` does not count).
pub fn leaked_secrets(logs: &str, stack: &Stack, extra: &[&str]) -> Vec<String> {
    use base64::Engine;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", stack.target_user, stack.target_password));
    let mut found = Vec::new();
    let known = [
        ("the registry password", stack.target_password.as_str()),
        ("the registry's Basic header", basic.as_str()),
        ("the webhook auth value", stack.webhook_auth.trim_start_matches("Bearer ")),
    ];
    for (what, secret) in known.into_iter().chain(extra.iter().map(|e| ("a presented value", *e))) {
        if logs.contains(secret) {
            found.push(what.to_owned());
        }
    }
    if logs.to_ascii_lowercase().contains("\"authorization\"") {
        found.push("an Authorization field".to_owned());
    }
    for scheme in ["Basic ", "Bearer "] {
        for (at, _) in logs.match_indices(scheme) {
            let credential = logs[at + scheme.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "-._~+/=".contains(*c))
                .count();
            if credential >= 8 {
                found.push(format!("a {}credential", scheme.to_ascii_lowercase()));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    #[test]
    fn leaked_secrets_finds_headers_and_tokens_but_not_challenges() {
        let stack = crate::Stack {
            source_url: "http://127.0.0.1:1".into(),
            target_url: "http://127.0.0.1:2".into(),
            target_user: "relay".into(),
            target_password: "pw-0123456789".into(),
            webhook_auth: "Bearer hook-0123456789".into(),
            environment: Default::default(),
        };
        let clean = r#"{"message":"challenge","detail":"Bearer realm=\"https://auth\",service=\"r\""}"#;
        assert!(super::leaked_secrets(clean, &stack, &[]).is_empty());
        for leak in [
            "pw-0123456789",
            "cmVsYXk6cHctMDEyMzQ1Njc4OQ==",
            "hook-0123456789",
            r#""Authorization":"x""#,
            "sent Bearer eyJhbGciOiJSUzI1NiJ9.payload",
            "sent Basic dXNlcjpvdGhlcg==",
        ] {
            assert!(!super::leaked_secrets(leak, &stack, &[]).is_empty(), "{leak}");
        }
    }
}
