//! A loopback TCP proxy that a test can cut or silence, for faults the real
//! servers do not make on their own: SQS (LocalStack) unreachable or hanging
//! for a while, and
//! connections reset in the middle of a response (a blob) from the real
//! source registry.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Default)]
struct State {
    cut: AtomicBool,
    /// New connections are accepted and then left without a byte.
    silent: AtomicBool,
    held: Mutex<Vec<TcpStream>>,
    /// Connections still to be reset once they carried `reset_after` bytes
    /// towards the client.
    resets_armed: AtomicUsize,
    reset_after: AtomicU64,
    resets_done: AtomicUsize,
    live: Mutex<Vec<AbortHandle>>,
}

/// A proxy on 127.0.0.1 (port 0) to `upstream`; stops with the runtime.
#[derive(Clone)]
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State::default());
        let s = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if s.cut.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                if s.silent.load(Ordering::SeqCst) {
                    s.held.lock().unwrap().push(client);
                    continue;
                }
                let conn = tokio::spawn(relay_connection(client, upstream, s.clone()));
                let mut live = s.live.lock().unwrap();
                live.retain(|h| !h.is_finished());
                live.push(conn.abort_handle());
            }
        });
        Proxy { addr, state }
    }

    /// A proxy to the host and port of `url` (`localhost` taken as 127.0.0.1).
    pub async fn to(url: &str) -> anyhow::Result<Proxy> {
        use anyhow::Context;
        let u = url::Url::parse(url)?;
        let host = u.host_str().context("host")?;
        let host = if host == "localhost" { "127.0.0.1" } else { host };
        Ok(Proxy::start(format!("{host}:{}", u.port_or_known_default().context("port")?).parse()?).await)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops every open connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        for h in self.state.live.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    /// Accepts new connections and never answers them (a peer that hangs
    /// rather than refuses) until [`Proxy::restore`].
    pub fn silence(&self) {
        self.state.silent.store(true, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
        self.state.silent.store(false, Ordering::SeqCst);
        self.state.held.lock().unwrap().clear();
    }

    /// The next `n` connections that carry more than `after_bytes` towards
    /// the client are broken at that point (mid-response).
    pub fn reset_next(&self, n: usize, after_bytes: u64) {
        self.state.reset_after.store(after_bytes, Ordering::SeqCst);
        self.state.resets_armed.store(n, Ordering::SeqCst);
    }

    /// Connections broken by [`Proxy::reset_next`] so far.
    pub fn resets_done(&self) -> usize {
        self.state.resets_done.load(Ordering::Relaxed)
    }
}

async fn relay_connection(client: TcpStream, upstream: SocketAddr, state: Arc<State>) {
    let Ok(server) = TcpStream::connect(upstream).await else { return };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Client → server; once the client stops sending, only the answer matters.
    let upstream_bound = async {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
        std::future::pending::<()>().await
    };
    let downstream = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut carried = 0u64;
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            carried += n as u64;
            if carried > state.reset_after.load(Ordering::SeqCst)
                && state.resets_armed.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |a| a.checked_sub(1)).is_ok()
            {
                // Half of this piece, then the connection is gone.
                let _ = client_write.write_all(&buf[..n / 2]).await;
                state.resets_done.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    // The connection ends with the server's side (or the reset): both
    // sockets are dropped here.
    tokio::select! {
        _ = upstream_bound => {}
        _ = downstream => {}
    }
}
