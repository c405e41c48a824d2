//! Container runtimes in a host namespace, each with state of its own, as
//! the tests of the runtime integrations need them: a Docker daemon
//! ([`Dockerd`]), podman with the CNI backend ([`Podman`]), and an image
//! made from busybox-static ([`busybox_image`]; no registry is reached).
//!
//! Both run in the host namespace's network only (`nsenter --net`), not in
//! `ip netns exec`'s mount namespace: that one mounts a fresh /sys, which
//! hides the cgroup hierarchy the runtimes need. Storage is `vfs` (plain
//! directories, no overlay mounts to leave behind); whatever a runtime
//! still has mounted under its directory when the guard drops (a killed
//! daemon's network namespaces) is unmounted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::cmd::{self, Proc, Ran};
use crate::fs::TempDir;
use crate::lab::Lab;
use crate::netns::Netns;

/// Programs a Docker test needs (list them in the lab's needs).
pub const DOCKER_PROGRAMS: [&str; 6] = [
    "dockerd",
    "docker",
    "containerd",
    "runc",
    "nsenter",
    "unshare",
];

/// Programs a podman test needs (list them in the lab's needs).
pub const PODMAN_PROGRAMS: [&str; 4] = ["podman", "conmon", "runc", "nsenter"];

/// A rootfs tarball in `dir` (`busybox.tar`): `/bin/busybox` from
/// busybox-static and one symlink per applet, `/etc/passwd` and
/// `/etc/group` with root. `docker import` and `podman import` take it.
#[track_caller]
pub fn busybox_image(dir: &Path) -> PathBuf {
    let root = dir.join("busybox-rootfs");
    let bin = root.join("bin");
    let etc = root.join("etc");
    for d in [&bin, &etc, &root.join("tmp")] {
        std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or_else(|| panic!("busybox-static is not installed (cargo xtask setup)"));
    crate::fs::copy_executable(Path::new(busybox), &bin.join("busybox"));
    for applet in cmd::sh(&[busybox, "--list"]).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
    }
    std::fs::write(etc.join("passwd"), "root:x:0:0:root:/:/bin/sh\n")
        .unwrap_or_else(|e| panic!("writing passwd: {e}"));
    std::fs::write(etc.join("group"), "root:x:0:\n")
        .unwrap_or_else(|e| panic!("writing group: {e}"));
    let tar = dir.join("busybox.tar");
    cmd::sh(&[
        "tar",
        "-C",
        &root.to_string_lossy(),
        "-cf",
        &tar.to_string_lossy(),
        ".",
    ]);
    tar
}

/// Unmount everything mounted under `dir` (deepest first, lazily).
pub fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p) {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// A command running `args` in namespace `ns`'s network (only).
fn in_net(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}")).args(args);
    c
}

/// `c` run in a new mount namespace where `plugins` is bind-mounted on
/// Docker's plugin directory.
fn private_plugins(c: Command, plugins: &Path) -> Command {
    let target = "/run/docker/plugins";
    std::fs::create_dir_all(target).unwrap_or_else(|e| panic!("creating {target}: {e}"));
    let mut u = Command::new("unshare");
    u.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!("mount --bind \"$0\" {target} && exec \"$@\""))
        .arg(plugins)
        .arg(c.get_program())
        .args(c.get_args());
    u
}

/// A Docker daemon of one host namespace, with its own data root, exec
/// root, socket, containerd namespaces (it starts its own containerd) and
/// `vfs` storage; no iptables, forwarding or default bridge of its own
/// (user-defined bridge networks still work). Stopped on drop with every
/// container removed.
#[derive(Debug)]
pub struct Dockerd {
    proc: Option<Proc>,
    host: String,
    dir: PathBuf,
    sock: PathBuf,
    _lab_dir: Arc<TempDir>,
}

impl Dockerd {
    /// Start a daemon in `host` and wait until it answers.
    #[track_caller]
    pub fn start(lab: &Lab, host: &Netns) -> Dockerd {
        Dockerd::start_with_plugins(lab, host, None)
    }

    /// Start a daemon in `host` that finds its plugins (sockets such as
    /// `daolinet.sock`) in `plugins` instead of the machine's
    /// `/run/docker/plugins`: it runs in a mount namespace of its own where
    /// `plugins` is bind-mounted there, so that each host's daemon talks to
    /// its own host's driver.
    #[track_caller]
    pub fn start_with_plugins(lab: &Lab, host: &Netns, plugins: Option<&Path>) -> Dockerd {
        let dir = lab.subdir(&format!("docker-{host}"));
        let sock = dir.join("docker.sock");
        let ns = lab.name("d");
        let mut c = in_net(
            host,
            &[
                "dockerd",
                "--data-root",
                &dir.join("root").to_string_lossy(),
                "--exec-root",
                &dir.join("exec").to_string_lossy(),
                "-H",
                &format!("unix://{}", sock.display()),
                "--pidfile",
                &dir.join("docker.pid").to_string_lossy(),
                "--containerd-namespace",
                &ns,
                "--containerd-plugins-namespace",
                &format!("{ns}p"),
                "--storage-driver",
                "vfs",
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
                "--userland-proxy=false",
                "--log-level",
                "warn",
            ],
        );
        if let Some(plugins) = plugins {
            c = private_plugins(c, plugins);
        }
        let log = dir.join("dockerd.log");
        let proc = Proc::spawn(&mut c, &format!("dockerd in {host}"), Some(&log));
        let mut d = Dockerd {
            proc: Some(proc),
            host: host.to_string(),
            dir,
            sock,
            _lab_dir: lab.dir_arc(),
        };
        crate::wait_poll(
            &format!("dockerd in {host} to answer"),
            Duration::from_secs(60),
            || {
                if d.docker(&["version", "--format", "{{.Server.Version}}"]).ok {
                    return crate::Poll::Ready(());
                }
                if let Some(st) = d.proc.as_mut().and_then(Proc::exited) {
                    panic!(
                        "dockerd in {} exited with {st}:\n{}",
                        d.host,
                        std::fs::read_to_string(d.dir.join("dockerd.log")).unwrap_or_default()
                    );
                }
                crate::Poll::Pending(String::new())
            },
        );
        d
    }

    /// Its API socket.
    pub fn socket(&self) -> &Path {
        &self.sock
    }

    /// The host namespace it runs in.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// A `docker` client command against this daemon, run in its host
    /// namespace (the CLI itself needs no network; `docker run` prints
    /// what the daemon says).
    pub fn command(&self, args: &[&str]) -> Command {
        let host = format!("unix://{}", self.sock.display());
        let mut full = vec!["docker", "-H", &host];
        full.extend_from_slice(args);
        in_net(&self.host, &full)
    }

    /// `docker ARGS`; what it did.
    pub fn docker(&self, args: &[&str]) -> Ran {
        run_cli("docker", self.command(args), args)
    }

    /// `docker ARGS`, which must succeed; its stdout, trimmed.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        stdout_if_ok("docker", &self.host, args, self.docker(args))
    }

    /// Import `tarball` as image `name`.
    #[track_caller]
    pub fn import(&self, tarball: &Path, name: &str) {
        self.ok(&["import", &tarball.to_string_lossy(), name]);
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- last lines of dockerd in {} ---\n{}",
                self.host,
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
        let ids = self.docker(&["ps", "-aq"]).stdout;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend_from_slice(&ids);
            let _ = self.docker(&args);
        }
        if let Some(mut p) = self.proc.take() {
            p.terminate(Duration::from_secs(20));
        }
        unmount_under(&self.dir);
    }
}

/// podman of one host namespace with the CNI backend, its own storage
/// (`vfs`), run root, temporary directory, file locks (no lock segment
/// shared with other podman instances), CNI configuration directory and
/// plugin directories. Every container is removed on drop.
#[derive(Debug)]
pub struct Podman {
    host: String,
    dir: PathBuf,
    conf: PathBuf,
    _lab_dir: Arc<TempDir>,
}

impl Podman {
    /// podman for `host`, finding CNI plugins in `plugin_dirs`.
    #[track_caller]
    pub fn new(lab: &Lab, host: &Netns, plugin_dirs: &[&Path]) -> Podman {
        let dir = lab.subdir(&format!("podman-{host}"));
        let cni = dir.join("cni");
        std::fs::create_dir_all(&cni).unwrap_or_else(|e| panic!("creating {}: {e}", cni.display()));
        // podman raises these limits to a million unless told, which a
        // process without CAP_SYS_RESOURCE (a test container) cannot; even
        // the caller's own hard limits can fail in the container's init
        // (runc sets them with prlimit after conmon lowered them), so
        // modest values, at most the caller's: lowering always works.
        let limit = |r, want: u64| {
            let mut l = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: valid out pointer.
            unsafe { libc::getrlimit(r, &mut l) };
            l.rlim_max.min(want)
        };
        let (nofile, nproc) = (
            limit(libc::RLIMIT_NOFILE, 1024),
            limit(libc::RLIMIT_NPROC, 4096),
        );
        let dirs: Vec<String> = plugin_dirs
            .iter()
            .map(|d| format!("{:?}", d.display().to_string()))
            .collect();
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[containers]\n\
                 default_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n\
                 [engine]\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n\
                 runtime = \"runc\"\n\
                 lock_type = \"file\"\n\
                 [network]\n\
                 network_backend = \"cni\"\n\
                 network_config_dir = {:?}\n\
                 cni_plugin_dirs = [{}]\n",
                cni.display().to_string(),
                dirs.join(", ")
            ),
        )
        .unwrap_or_else(|e| panic!("writing {}: {e}", conf.display()));
        Podman {
            host: host.to_string(),
            dir,
            conf,
            _lab_dir: lab.dir_arc(),
        }
    }

    /// Where its CNI network configurations live.
    pub fn cni_config_dir(&self) -> PathBuf {
        self.dir.join("cni")
    }

    /// The host namespace it runs in.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// A `podman` command with this instance's storage and configuration,
    /// in its host namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let d = |s: &str| self.dir.join(s).to_string_lossy().into_owned();
        let (root, run, tmp) = (d("root"), d("run"), d("tmp"));
        let mut full = vec![
            "podman",
            "--root",
            &root,
            "--runroot",
            &run,
            "--tmpdir",
            &tmp,
            "--storage-driver",
            "vfs",
        ];
        full.extend_from_slice(args);
        let mut c = in_net(&self.host, &full);
        c.env("CONTAINERS_CONF", &self.conf);
        c
    }

    /// `podman ARGS`; what it did.
    pub fn podman(&self, args: &[&str]) -> Ran {
        run_cli("podman", self.command(args), args)
    }

    /// `podman ARGS`, which must succeed; its stdout, trimmed.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        stdout_if_ok("podman", &self.host, args, self.podman(args))
    }

    /// Import `tarball` as image `name`.
    #[track_caller]
    pub fn import(&self, tarball: &Path, name: &str) {
        self.ok(&["import", &tarball.to_string_lossy(), name]);
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-af", "-t", "0"]);
        unmount_under(&self.dir);
    }
}

/// dockerd of a cluster host with DaoliNet's `daolinet-docker` driver
/// serving it through a private plugin directory (the daemon declared
/// first: stopped before the driver).
pub struct DockerHost {
    /// The host's dockerd.
    pub d: Dockerd,
    _driver: Proc,
}

impl DockerHost {
    /// Start `daolinet-docker` (talking to `h`'s agent) and a dockerd that
    /// finds it, then import `image` as `name`.
    pub fn start(lab: &Lab, h: &crate::ClusterHost, image: &Path, name: &str) -> DockerHost {
        let dir = lab.subdir(&format!("dkdrv-{}", h.ns));
        let plugins = dir.join("plugins");
        std::fs::create_dir_all(&plugins)
            .unwrap_or_else(|e| panic!("creating {}: {e}", plugins.display()));
        let sock = plugins.join("daolinet.sock");
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", h.ns))
            .arg(crate::workspace_bin("daolinet-docker"))
            .arg("--socket")
            .arg(&sock)
            .arg("--agent-socket")
            .arg(h.agent_socket())
            .arg("--state-file")
            .arg(dir.join("state.json"));
        let driver = Proc::spawn(
            &mut c,
            &format!("daolinet-docker in {}", h.ns),
            Some(&dir.join("driver.log")),
        );
        assert!(
            crate::eventually(crate::DEADLINE, || sock.exists()),
            "the driver did not listen"
        );
        let d = Dockerd::start_with_plugins(lab, &h.ns, Some(&plugins));
        d.import(image, name);
        DockerHost { d, _driver: driver }
    }
}

impl Podman {
    /// Write `<network>.conflist` in its CNI directory: DaoliNet network
    /// `network` through `daolinet-cni` and the agent at `agent_socket`,
    /// with `extra` keys added to the plugin's configuration.
    pub fn daolinet_network(&self, network: &str, agent_socket: &Path, extra: serde_json::Value) {
        let mut plugin = serde_json::json!({
            "type": "daolinet-cni",
            "network": network,
            "agentSocket": agent_socket.to_string_lossy(),
            "capabilities": {"ips": true, "mac": true},
        });
        if let (Some(m), Some(e)) = (plugin.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        let list = serde_json::json!({"cniVersion": "1.0.0", "name": network, "plugins": [plugin]});
        let path = self.cni_config_dir().join(format!("{network}.conflist"));
        std::fs::write(&path, format!("{list:#}"))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

/// `TOOL ARGS` run through `command` (a runtime's CLI): what it did.
fn run_cli(tool: &str, mut command: Command, args: &[&str]) -> Ran {
    cmd::output_of(&mut command, &format!("{tool} {}", args.join(" ")))
}

/// The trimmed stdout of `TOOL ARGS` run in namespace `host`, which must
/// have succeeded; else the test fails with the command and its output.
#[track_caller]
fn stdout_if_ok(tool: &str, host: &str, args: &[&str], r: Ran) -> String {
    assert!(
        r.ok,
        "{tool} {} (in {host}) failed: {}{}",
        args.join(" "),
        r.stderr,
        r.stdout
    );
    r.stdout.trim().to_string()
}
