//! The functions in their Lambda mode, against cargo-lambda's Runtime API
//! emulator (`cargo lambda watch --only-lambda-apis`, from the
//! `cargo-lambda` PyPI package `make test` installs into .local/venv-infra):
//! the emulator serves the Runtime API the function polls, takes
//! invocations (`/2015-03-31/functions/_/invocations`) and turns plain HTTP
//! requests into Function URL events (`/lambda-url/_/…`). Each emulator
//! serves one function, the default one (`_`), on a loopback port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running emulator; stopped on drop.
pub struct Emulator {
    child: Child,
    pub port: u16,
}

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Emulator {
    /// Starts an emulator on a free loopback port and waits until it listens.
    pub async fn start() -> Emulator {
        let bin = root().join(".local/venv-infra/bin/cargo-lambda");
        assert!(bin.exists(), "{} missing: `make test` installs it (scripts/stack.sh install)", bin.display());
        let port = free_port();
        let child = Command::new(bin)
            .args(["lambda", "watch", "--only-lambda-apis", "--ignore-changes", "-q"])
            .args(["-A", "127.0.0.1", "-P", &port.to_string()])
            // It reads the workspace's metadata at start.
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cargo lambda watch");
        let emulator = Emulator { child, port };
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "the emulator did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        emulator
    }

    /// `AWS_LAMBDA_RUNTIME_API` for a function served by this emulator.
    pub fn runtime_api(&self) -> String {
        format!("http://127.0.0.1:{}/.rt", self.port)
    }

    /// Starts the workspace binary `name` in its Lambda mode against this
    /// emulator, with `envs` on top of the test's environment; its output
    /// goes to a file the returned [`Function`] reads.
    pub fn spawn(&self, name: &str, envs: &[(&str, String)]) -> Function {
        let log = std::env::temp_dir().join(format!("relay-lambda-{name}-{}-{}.log", self.port, crate::now()));
        let out = std::fs::File::create(&log).unwrap();
        let mut c = Command::new(crate::workspace_binary(name));
        c.env("AWS_LAMBDA_RUNTIME_API", self.runtime_api())
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (k, v) in envs {
            c.env(k, v);
        }
        Function { child: c.spawn().unwrap(), log }
    }

    /// Invokes the function with `event` (RequestResponse); the emulator's
    /// status and the function's answer, or the error it reported.
    pub async fn invoke(&self, event: &serde_json::Value) -> (u16, serde_json::Value) {
        let url = format!("http://127.0.0.1:{}/2015-03-31/functions/_/invocations", self.port);
        let resp = reqwest::Client::new()
            .post(url)
            .json(event)
            .timeout(Duration::from_secs(180))
            .send()
            .await
            .expect("invoke through the emulator");
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap();
        let value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()));
        (status, value)
    }

    /// The function's Function URL, as the emulator serves it.
    pub fn function_url(&self) -> String {
        format!("http://127.0.0.1:{}/lambda-url/_/", self.port)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A function process in Lambda mode; killed on drop.
pub struct Function {
    child: Child,
    log: PathBuf,
}

impl Function {
    /// Everything the process wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to `within`) for the process to exit; its exit code.
    pub async fn exited(&mut self, within: Duration) -> Option<i32> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(started.elapsed() < within, "the function did not exit: {}", self.output());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
