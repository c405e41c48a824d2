//! Network namespace and root-namespace veth guards, and running commands
//! or opening sockets inside a namespace.

use std::fmt;
use std::process::Command;
use std::time::Duration;

use crate::cmd::{self, Proc, Ran};

/// A network namespace (`ip netns add`), deleted on drop with every
/// interface in it. Derefs to its name, so `&ns` goes where a `&str` does.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Create namespace `name` (it must not exist: names come from
    /// [`crate::Lab::name`]) with `lo` up.
    #[track_caller]
    pub fn create(name: &str) -> Netns {
        cmd::sh(&["ip", "netns", "add", name]);
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS`, which must succeed; its stdout.
    #[track_caller]
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        cmd::sh(&full)
    }

    fn exec_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut full = vec!["ip", "netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        full
    }

    /// Run `args` in the namespace, which must succeed; its stdout.
    #[track_caller]
    pub fn run(&self, args: &[&str]) -> String {
        cmd::sh(&self.exec_args(args))
    }

    /// Run `args` in the namespace; what it did.
    #[track_caller]
    pub fn output(&self, args: &[&str]) -> Ran {
        cmd::output(&self.exec_args(args))
    }

    /// Run `args` in the namespace; whether it succeeded.
    pub fn ok(&self, args: &[&str]) -> bool {
        cmd::succeeds(&self.exec_args(args))
    }

    /// A `Command` running `args` in the namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        cmd::command(&self.exec_args(args))
    }

    /// Start `args` in the namespace (output discarded), stopped when the
    /// returned guard drops.
    #[track_caller]
    pub fn spawn(&self, args: &[&str]) -> Proc {
        let mut c = self.command(args);
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Proc::spawn(
            &mut c,
            &format!("`{}` in {}", args.join(" "), self.name),
            None,
        )
    }

    /// `sysctl -qw KEY=VALUE` in the namespace (namespaced sysctls only).
    #[track_caller]
    pub fn sysctl(&self, setting: &str) {
        self.run(&["sysctl", "-qw", setting]);
    }

    /// `ping -n -c COUNT -i 0.2 -W WAIT IP`; its success (some reply came
    /// back: ping fails only when none did).
    pub fn ping(&self, ip: &str, count: u32, wait_secs: u32) -> bool {
        self.ok(&[
            "ping",
            "-n",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            &wait_secs.to_string(),
            ip,
        ])
    }

    /// Add `ip` (with prefix length) to `dev` and bring it up.
    #[track_caller]
    pub fn addr(&self, dev: &str, ip_cidr: &str) {
        self.ip(&["addr", "add", ip_cidr, "dev", dev]);
        self.ip(&["link", "set", dev, "up"]);
    }

    /// A veth pair `a` (here) <-> `b` in namespace `other`, both up. It goes
    /// with the namespaces.
    #[track_caller]
    pub fn veth_to(&self, a: &str, other: &Netns, b: &str) {
        self.ip(&[
            "link",
            "add",
            a,
            "type",
            "veth",
            "peer",
            "name",
            b,
            "netns",
            &other.name,
        ]);
        self.ip(&["link", "set", a, "up"]);
        other.ip(&["link", "set", b, "up"]);
    }

    /// A veth pair `a` <-> `b`, both in this namespace and up.
    #[track_caller]
    pub fn veth(&self, a: &str, b: &str) {
        self.ip(&["link", "add", "name", a, "type", "veth", "peer", "name", b]);
        self.ip(&["link", "set", a, "up"]);
        self.ip(&["link", "set", b, "up"]);
    }

    /// Run `f` on a short-lived thread inside the namespace: sockets it
    /// creates stay in the namespace when used from any thread.
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        in_netns(&self.name, f)
    }

    /// A TCP connection opened from inside the namespace.
    pub fn connect(&self, addr: &str) -> std::io::Result<std::net::TcpStream> {
        let addr = addr.to_string();
        self.enter(move || std::net::TcpStream::connect(addr))
    }

    /// A UDP socket bound inside the namespace.
    pub fn udp(&self, addr: &str) -> std::io::Result<std::net::UdpSocket> {
        let addr = addr.to_string();
        self.enter(move || std::net::UdpSocket::bind(addr))
    }

    /// A TCP listener bound inside the namespace.
    pub fn listen(&self, addr: &str) -> std::io::Result<std::net::TcpListener> {
        let addr = addr.to_string();
        self.enter(move || std::net::TcpListener::bind(addr))
    }

    /// Whether something listens on TCP `port` in the namespace.
    pub fn tcp_listening(&self, port: u16) -> bool {
        let r = self.output(&["ss", "-Hltn", &format!("sport = :{port}")]);
        r.ok && !r.stdout.trim().is_empty()
    }

    /// Wait (polling) until something listens on TCP `port` here.
    #[track_caller]
    pub fn wait_tcp_listening(&self, port: u16, within: Duration) {
        crate::wait_until(
            &format!("a TCP listener on port {port} in {}", self.name),
            within,
            || self.tcp_listening(port),
        );
    }
}

/// Run `f` on a short-lived thread that entered namespace `name`.
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path)?;
        // SAFETY: setns on a namespace file we opened; it affects this
        // short-lived thread only.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")))
}

impl std::ops::Deref for Netns {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl AsRef<str> for Netns {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

impl AsRef<std::ffi::OsStr> for Netns {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.name.as_ref()
    }
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = cmd::output(&["ip", "netns", "del", &self.name]);
    }
}

/// A veth pair in the root namespace (names from [`crate::Lab::name`]),
/// deleted on drop (deleting one end deletes both).
#[derive(Debug)]
pub struct Veth {
    a: String,
    b: String,
}

impl Veth {
    /// Create the pair `a` <-> `b`, both up.
    #[track_caller]
    pub fn create(a: &str, b: &str) -> Veth {
        cmd::sh(&[
            "ip", "link", "add", "name", a, "type", "veth", "peer", "name", b,
        ]);
        let v = Veth {
            a: a.to_string(),
            b: b.to_string(),
        };
        cmd::sh(&["ip", "link", "set", a, "up"]);
        cmd::sh(&["ip", "link", "set", b, "up"]);
        v
    }

    /// The first end.
    pub fn a(&self) -> &str {
        &self.a
    }

    /// The second end.
    pub fn b(&self) -> &str {
        &self.b
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = cmd::output(&["ip", "link", "del", &self.a]);
    }
}

/// Runs the calling thread in a fresh, anonymous network namespace until
/// dropped (then back where it was). Nothing to name, nothing to collide
/// with; the namespace goes with its last user. Children the thread spawns
/// inherit it.
#[derive(Debug)]
pub struct ThreadNetns {
    orig: std::fs::File,
}

impl ThreadNetns {
    /// Enter a new network namespace on this thread.
    #[track_caller]
    pub fn enter() -> ThreadNetns {
        let orig = std::fs::File::open("/proc/thread-self/ns/net")
            .unwrap_or_else(|e| panic!("opening this thread's netns: {e}"));
        // SAFETY: unshare(2) affects only the calling thread here.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        }
        ThreadNetns { orig }
    }
}

impl Drop for ThreadNetns {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid netns fd; back to where the thread started.
        unsafe { libc::setns(self.orig.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}
