//! A TCP relay the test can cut, to partition a process from a service
//! (a controller from etcd) without touching the rest of its network.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::netns::in_netns;

#[derive(Debug, Default)]
struct Shared {
    cut: AtomicBool,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
}

impl Shared {
    fn close_all(&self) {
        if let Ok(mut v) = self.conns.lock() {
            for c in v.drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Relays TCP connections from its own address to `target`. [`TcpProxy::cut`]
/// closes every relayed connection and refuses new ones until
/// [`TcpProxy::restore`]. Stopped on drop.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// A relay listening on `127.0.0.1:0` inside namespace `netns` (its
    /// connections to `target` are made from there too).
    #[track_caller]
    pub fn start(netns: &str, target: SocketAddr) -> TcpProxy {
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let (addr, thread) = in_netns(netns, move || {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            listener.set_nonblocking(true)?;
            let addr = listener.local_addr()?;
            // Threads started from here stay in the namespace.
            let thread = std::thread::spawn(move || accept_loop(&listener, target, &sh));
            Ok((addr, thread))
        })
        .unwrap_or_else(|e| panic!("cannot start a TCP proxy in {netns}: {e}"));
        TcpProxy {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    /// The address to connect to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.close_all();
    }

    /// Relays again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.close_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, target: SocketAddr, sh: &Arc<Shared>) {
    while !sh.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                if sh.cut.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                if let (Ok(c3), Ok(s3), Ok(mut v)) =
                    (client.try_clone(), server.try_clone(), sh.conns.lock())
                {
                    v.push(c3);
                    v.push(s3);
                }
                std::thread::spawn(move || pipe(client, server));
                std::thread::spawn(move || pipe(s2, c2));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Nothing to accept: look again shortly (also for `stop`).
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Copies `from` to `to` until either side closes, then closes both.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
