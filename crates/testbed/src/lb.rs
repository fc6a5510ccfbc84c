//! A TCP load balancer in front of the testbed's kube-apiservers.
//!
//! Real HA control planes sit behind a load balancer (haproxy, kube-vip, a cloud LB), so a
//! client keeps working while one apiserver restarts during an upgrade. The testbed does the
//! same: the kubeconfig it writes points here, and each connection goes to the first backend
//! (round-robin start) that accepts it. TLS passes through untouched; the serving certificate
//! names 127.0.0.1, so it verifies whatever port the client dialled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::Error;

/// A load balancer running on its own thread; stopped when dropped.
#[derive(Debug)]
pub struct LoadBalancer {
    /// The address clients connect to.
    pub addr: SocketAddr,
    _thread: ServerThread,
}

impl LoadBalancer {
    /// Listens on `listen` and forwards to `backends`.
    pub fn start(listen: SocketAddr, backends: Vec<SocketAddr>) -> Result<LoadBalancer, Error> {
        let thread = ServerThread::start("load-balancer", listen, move |l| serve(l, backends))?;
        Ok(LoadBalancer { addr: thread.addr, _thread: thread })
    }
}

/// A server's accept loop on its own thread and single-threaded runtime, stopped (and
/// joined) when dropped: the in-process form of the servers the sandbox runs detached (this
/// load balancer, the package repository).
#[derive(Debug)]
pub(crate) struct ServerThread {
    /// The bound address (the real port when 0 was asked for).
    pub(crate) addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    /// Binds `listen` here (so a bind error is returned, not lost on the thread) and runs
    /// `serve(listener)` there until dropped.
    pub(crate) fn start<F, Fut>(name: &str, listen: SocketAddr, serve: F) -> Result<ServerThread, Error>
    where
        F: FnOnce(TcpListener) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let err = |detail: String| Error::Process { name: name.into(), detail };
        let std_listener =
            std::net::TcpListener::bind(listen).map_err(|e| err(format!("bind {listen}: {e}")))?;
        std_listener.set_nonblocking(true).map_err(|e| err(e.to_string()))?;
        let addr = std_listener.local_addr().map_err(|e| err(e.to_string()))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("testbed-{name}"))
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                    return;
                };
                rt.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(std_listener) else { return };
                    tokio::select! {
                        _ = serve(listener) => {}
                        _ = rx => {}
                    }
                });
            })
            .map_err(|e| err(e.to_string()))?;
        Ok(ServerThread { addr, shutdown: Some(tx), thread: Some(thread) })
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves forever (the sandbox runs this in its own detached process).
pub async fn serve(listener: TcpListener, backends: Vec<SocketAddr>) {
    let next = Arc::new(AtomicUsize::new(0));
    let backends = Arc::new(backends);
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let next = next.clone();
        let backends = backends.clone();
        tokio::spawn(async move {
            let start = next.fetch_add(1, Ordering::Relaxed);
            for i in 0..backends.len() {
                let Some(&backend) = backends.get((start + i) % backends.len()) else { continue };
                let connect = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(backend)).await;
                if let Ok(Ok(mut upstream)) = connect {
                    let mut client = client;
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    return;
                }
            }
            // No backend accepted: dropping the client closes it, as an LB with no healthy
            // backend would.
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn forwards_to_the_first_backend_that_accepts() {
        // One dead backend (bound then released) and one echo server.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let echo_addr = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in echo.incoming().take(4) {
                let mut s = stream.unwrap();
                let mut buf = [0u8; 5];
                s.read_exact(&mut buf).unwrap();
                s.write_all(&buf).unwrap();
            }
        });
        let lb = LoadBalancer::start("127.0.0.1:0".parse().unwrap(), vec![dead, echo_addr]).unwrap();
        for _ in 0..4 {
            let mut c = std::net::TcpStream::connect(lb.addr).unwrap();
            c.write_all(b"hello").unwrap();
            let mut buf = [0u8; 5];
            c.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"hello");
        }
    }
}
