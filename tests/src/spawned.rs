//! A registry of a test's own: a real `docker-registry` on a free loopback
//! port, with htpasswd users the test can change (distribution reads the
//! file again when it changes, so a password rotates without a restart, as
//! on a real registry) and, optionally, TLS with a certificate from a CA the
//! test makes. Stopped and removed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct SpawnedRegistry {
    pub url: String,
    dir: PathBuf,
    child: Child,
}

impl SpawnedRegistry {
    /// Starts with htpasswd `users` (name, password) and waits until it
    /// answers 401.
    pub async fn start(users: &[(&str, &str)]) -> anyhow::Result<SpawnedRegistry> {
        Self::start_with(users, false).await
    }

    /// As [`SpawnedRegistry::start`]; with `tls`, served over https with a
    /// certificate for 127.0.0.1 signed by a fresh CA ([`SpawnedRegistry::ca_file`]).
    pub async fn start_with(users: &[(&str, &str)], tls: bool) -> anyhow::Result<SpawnedRegistry> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("relay-spawned-{port}-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(dir.join("data"))?;
        let tls_config = if tls {
            make_certificates(&dir)?;
            format!(
                ", tls: {{ certificate: {}, key: {} }}",
                dir.join("server.pem").display(),
                dir.join("server.key").display()
            )
        } else {
            String::new()
        };
        let config = format!(
            "version: 0.1\nlog: {{ level: warn, accesslog: {{ disabled: true }} }}\n\
             storage: {{ filesystem: {{ rootdirectory: {data} }}, delete: {{ enabled: true }} }}\n\
             http: {{ addr: 127.0.0.1:{port}{tls_config} }}\n\
             auth: {{ htpasswd: {{ realm: relay-spawned, path: {file} }} }}\n",
            data = dir.join("data").display(),
            file = dir.join("htpasswd").display(),
        );
        std::fs::write(dir.join("config.yml"), config)?;
        let scheme = if tls { "https" } else { "http" };
        let mut registry = SpawnedRegistry {
            url: format!("{scheme}://127.0.0.1:{port}"),
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
        let mut http = reqwest::Client::builder();
        if tls {
            let ca = std::fs::read(registry.ca_file())?;
            http = http.tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca)?);
        }
        let http = http.build()?;
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
        let basic = Some((user.to_owned(), password.to_owned()));
        if !self.url.starts_with("https:") {
            return crate::PlainRegistry::new(&self.url, basic);
        }
        let ca = std::fs::read(self.ca_file()).expect("the test CA");
        let certs = reqwest::Certificate::from_pem_bundle(&ca).expect("PEM");
        let http = reqwest::Client::builder().tls_certs_only(certs).build().expect("client");
        crate::PlainRegistry::with_http(&self.url, basic, http)
    }

    /// The PEM of the CA that signed a TLS registry's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

/// A CA and a certificate for 127.0.0.1 it signs (P-256, two days).
fn make_certificates(dir: &std::path::Path) -> anyhow::Result<()> {
    let openssl = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("openssl").args(args).current_dir(dir).output()?;
        anyhow::ensure!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-days", "2", "-subj", "/CN=relay test CA", "-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat(),
    )?;
    openssl(&[&["req"][..], &ec, &["-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr"]].concat())?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ])
}

impl Drop for SpawnedRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
