//! Shared helpers of the agent's privileged tests: namespaces with a
//! cleanup guard, a running agent, command helpers.

#![allow(clippy::expect_used)] // test helpers: a failed expect is a failed test
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// True when running as root; otherwise prints a loud SKIP line.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("*** SKIP {test}: needs root (network namespaces, BPF) ***");
    }
    root
}

/// Run a command, asserting success.
pub fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect("spawn");
    assert!(st.success(), "{args:?} failed");
}

/// Run a command in namespace `n`; true when it succeeded.
pub fn ns(n: &str, args: &[&str]) -> bool {
    Command::new("ip")
        .args(["netns", "exec", n])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A bpffs outside /sys (which `ip netns exec` replaces), shared by the
/// tests; mounted by the first one that needs it.
pub const TEST_BPFFS: &str = "/run/daolinet-test-bpffs";

fn ensure_test_bpffs() {
    let mounted = std::fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(TEST_BPFFS)))
        .unwrap_or(false);
    if !mounted {
        std::fs::create_dir_all(TEST_BPFFS).expect("mkdir test bpffs");
        sh(&["mount", "-t", "bpf", "bpf", TEST_BPFFS]);
    }
}

/// The bpffs directory the agent pins its maps in for `state_dir` (the
/// agent's own naming: every non-alphanumeric character becomes `_`).
pub fn pin_dir(state_dir: &std::path::Path) -> String {
    let name: String = state_dir
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{TEST_BPFFS}/daolinet/{}", name.trim_matches('_'))
}

/// Namespaces (and agents running in them), removed on drop even when the
/// test fails.
pub struct Lab {
    /// Unique prefix of every namespace name.
    pub tag: String,
    namespaces: Vec<String>,
    agents: Vec<(String, PathBuf, Option<Child>)>,
    children: Vec<Child>,
}

impl Lab {
    /// A new lab; `name` is a short test name.
    pub fn new(name: &str) -> Lab {
        Lab {
            tag: format!("dl{name}{}", std::process::id() % 100000),
            namespaces: Vec::new(),
            agents: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Create namespace `<tag><suffix>` and return its name.
    pub fn netns(&mut self, suffix: &str) -> String {
        let n = format!("{}{suffix}", self.tag);
        sh(&["ip", "netns", "add", &n]);
        self.namespaces.push(n.clone());
        sh(&["ip", "-n", &n, "link", "set", "lo", "up"]);
        n
    }

    /// A container namespace behind host `host`: veth `port` (host side) to
    /// `eth0` with `ip/24` and `mac`; a static neighbour entry sends every
    /// other address of the subnet to `gw_mac`.
    pub fn container(
        &mut self,
        host: &str,
        suffix: &str,
        port: &str,
        ip: &str,
        mac: &str,
    ) -> String {
        let c = self.netns(suffix);
        sh(&[
            "ip", "-n", host, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns",
            &c,
        ]);
        sh(&["ip", "-n", &c, "link", "set", "eth0", "address", mac]);
        sh(&[
            "ip",
            "-n",
            &c,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &c, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", host, "link", "set", port, "up"]);
        c
    }

    fn state_dir(&self, host: &str) -> PathBuf {
        PathBuf::from(format!("/tmp/{host}-state"))
    }

    /// Start `daolinet-agent run ARGS` in `host` and wait for its socket.
    pub fn start_agent(&mut self, host: &str, args: &[&str]) {
        ensure_test_bpffs();
        let state = self.state_dir(host);
        let child = Command::new("ip")
            .args(["netns", "exec", host, env!("CARGO_BIN_EXE_daolinet-agent")])
            .args(["--bpffs", TEST_BPFFS, "--state-dir"])
            .arg(&state)
            .arg("run")
            .args(args)
            .spawn()
            .expect("start agent");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !state.join("agent.sock").exists() {
            assert!(Instant::now() < deadline, "agent in {host} did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        match self.agents.iter_mut().find(|a| a.0 == host) {
            Some(a) => a.2 = Some(child),
            None => self.agents.push((host.to_string(), state, Some(child))),
        }
    }

    /// SIGTERM the agent of `host` and wait for it.
    pub fn stop_agent(&mut self, host: &str) {
        if let Some(a) = self.agents.iter_mut().find(|a| a.0 == host) {
            if let Some(mut c) = a.2.take() {
                // SAFETY: kill(2) on our own child.
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
                let st = c.wait().expect("wait agent");
                assert!(st.success(), "agent exited with {st}");
            }
        }
    }

    /// Run an agent CLI command against the agent of `host`; its stdout.
    pub fn agent_cmd(&self, host: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", host, env!("CARGO_BIN_EXE_daolinet-agent")])
            .args(["--bpffs", TEST_BPFFS, "--state-dir"])
            .arg(self.state_dir(host))
            .args(args)
            .output()
            .expect("agent cli");
        assert!(
            out.status.success(),
            "agent {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Lab {
    /// Start a helper process in namespace `n`, killed when the lab goes.
    pub fn spawn_in(&mut self, n: &str, args: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", n])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn helper");
        self.children.push(child);
    }

    /// Whether the agent of `host` is still running.
    pub fn agent_running(&mut self, host: &str) -> bool {
        self.agents
            .iter_mut()
            .find(|a| a.0 == host)
            .and_then(|a| a.2.as_mut())
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

/// Run `args` in namespace `n`: (success, stdout, stderr).
pub fn ns_out(n: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", n])
        .args(args)
        .output()
        .expect("spawn");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run `f` on a short-lived thread that entered namespace `n`: sockets it
/// creates keep that namespace when used from the test's own threads.
fn in_netns<T: Send + 'static>(
    n: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{n}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path)?;
        // SAFETY: setns on a namespace file we opened; affects this
        // short-lived thread only.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .expect("namespace thread")
}

/// Open a TCP connection from inside namespace `n`.
pub fn connect_in(n: &str, addr: &str) -> std::io::Result<std::net::TcpStream> {
    let addr = addr.to_string();
    in_netns(n, move || std::net::TcpStream::connect(addr))
}

/// Bind a UDP socket inside namespace `n`.
pub fn udp_in(n: &str, addr: &str) -> std::io::Result<std::net::UdpSocket> {
    let addr = addr.to_string();
    in_netns(n, move || std::net::UdpSocket::bind(addr))
}

/// Bind a TCP listener inside namespace `n`.
pub fn listen_in(n: &str, addr: &str) -> std::io::Result<std::net::TcpListener> {
    let addr = addr.to_string();
    in_netns(n, move || std::net::TcpListener::bind(addr))
}

/// Send 4 MB over TCP with iperf3 from namespace `client` to a one-off
/// server bound to `server_ip` in namespace `server`: whether the transfer
/// succeeded, and what the client printed.
pub fn iperf3_transfer(server: &str, client: &str, server_ip: &str) -> (bool, String) {
    let mut srv = Command::new("ip")
        .args([
            "netns", "exec", server, "iperf3", "-s", "-1", "-B", server_ip,
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(1000));
    let out = Command::new("ip")
        .args(["netns", "exec", client, "iperf3", "-c", server_ip])
        .args(["-n", "4M", "--connect-timeout", "3000"])
        .output()
        .expect("iperf3");
    let _ = srv.kill();
    let _ = srv.wait();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SIGTERM first, so helpers such as ovs-testcontroller remove
            // their control sockets; SIGKILL if they linger.
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let hosts: Vec<String> = self.agents.iter().map(|a| a.0.clone()).collect();
        for (_, _, child) in &mut self.agents {
            if let Some(c) = child {
                // SAFETY: kill(2) on our own child.
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
                let _ = c.wait();
            }
        }
        for n in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        for h in hosts {
            let state = self.state_dir(&h);
            let _ = std::fs::remove_dir_all(pin_dir(&state));
            let _ = std::fs::remove_dir_all(state);
        }
    }
}
