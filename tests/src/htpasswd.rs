//! A registry of its own for tests that change its users: a real
//! `docker-registry` with htpasswd auth on a free loopback port, stopped and
//! removed when dropped. distribution reads its htpasswd file again when
//! the file changes, so a password rotates without a restart — as it does
//! on a real registry.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct HtpasswdRegistry {
    pub url: String,
    dir: PathBuf,
    child: Child,
}

impl HtpasswdRegistry {
    /// Starts with `users` (name, password) and waits until it answers 401.
    pub async fn start(users: &[(&str, &str)]) -> anyhow::Result<HtpasswdRegistry> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("relay-htpasswd-{port}-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(dir.join("data"))?;
        let config = format!(
            "version: 0.1\nlog: {{ level: warn, accesslog: {{ disabled: true }} }}\n\
             storage: {{ filesystem: {{ rootdirectory: {data} }}, delete: {{ enabled: true }} }}\n\
             http: {{ addr: 127.0.0.1:{port} }}\n\
             auth: {{ htpasswd: {{ realm: relay-rotation, path: {file} }} }}\n",
            data = dir.join("data").display(),
            file = dir.join("htpasswd").display(),
        );
        std::fs::write(dir.join("config.yml"), config)?;
        let mut registry = HtpasswdRegistry {
            url: format!("http://127.0.0.1:{port}"),
            child: Command::new("docker-registry")
                .arg("serve")
                .arg(dir.join("config.yml"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
            dir,
        };
        registry.set_users(users)?;
        let limit = Instant::now() + Duration::from_secs(15);
        let http = reqwest::Client::new();
        loop {
            if let Ok(r) = http.get(format!("{}/v2/", registry.url)).send().await {
                anyhow::ensure!(r.status() == 401, "{} answered {} without credentials", registry.url, r.status());
                return Ok(registry);
            }
            if let Some(status) = registry.child.try_wait()? {
                anyhow::bail!("docker-registry exited: {status}");
            }
            anyhow::ensure!(Instant::now() < limit, "docker-registry on {} did not start", registry.url);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Replaces the users (bcrypt lines from the stack's `htpasswd -B`).
    pub fn set_users(&self, users: &[(&str, &str)]) -> anyhow::Result<()> {
        let mut lines = String::new();
        for (name, password) in users {
            let out = Command::new("htpasswd").args(["-Bbn", name, password]).output()?;
            anyhow::ensure!(out.status.success(), "htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
            lines.push_str(String::from_utf8(out.stdout)?.trim());
            lines.push('\n');
        }
        let file = self.dir.join("htpasswd");
        let tmp = self.dir.join("htpasswd.new");
        std::fs::write(&tmp, lines)?;
        std::fs::rename(tmp, file)?;
        Ok(())
    }

    pub fn client(&self, user: &str, password: &str) -> crate::PlainRegistry {
        crate::PlainRegistry::new(&self.url, Some((user.to_owned(), password.to_owned())))
    }
}

impl Drop for HtpasswdRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
