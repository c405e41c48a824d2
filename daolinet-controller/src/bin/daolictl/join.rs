//! `daolictl host join-ovs` / `leave-ovs`: an Open vSwitch host joins a
//! DaoliNet cluster in one command, run on that host.
//!
//! Join: check everything first (nothing changed on a refusal), then
//! 1. one OVSDB transaction: the bridge (created, or configured if it
//!    exists) with OpenFlow 1.3, `fail_mode=secure`, the controller, the
//!    uplink as a port (OpenFlow port 65000 when added), and a record of
//!    what the join did (`external_ids:daolinet-join`, read by leave);
//! 2. the host registered with the controller (`PUT /api/hosts/NAME`:
//!    datapath id, the uplink's IPv4 address and MAC, uplink port, LOCAL
//!    MAC), so the switch gets its base flows as soon as it connects;
//! 3. once the switch is connected and has its base flows, the host's IPv4
//!    addresses and routes move from the uplink to the bridge's LOCAL
//!    port; on the userspace (netdev) datapath the kernel is kept off the
//!    uplink (ARP off, and an nftables ingress chain that drops what the
//!    kernel would otherwise receive a second time: Open vSwitch reads the
//!    uplink through a packet socket, which sees frames before that hook);
//! 4. NAT-out (`daolinet-natout`): forwarding on the bridge, the
//!    controller's physical pool (`GET /api/settings`) masqueraded out of
//!    the bridge in table `ip daolinet` and routed back into it; what it
//!    changed goes into the join record;
//! 5. the registration is sent again through the bridge: the host reaches
//!    the controller through its new path.
//!
//! Any failure undoes what was done, in reverse order. Leave undoes a join
//! from its record.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::hostnet::{self, Addr, Route};
use crate::{Client, Failure};

/// OpenFlow port number given to an uplink the join adds to the bridge (as
/// on agents).
pub const UPLINK_OFPORT: u32 = 65000;
/// The `external_ids` key holding the join record.
pub const RECORD_KEY: &str = "daolinet-join";
/// How long the switch may take to connect and get its flows, and the
/// host to reach the controller again through the bridge.
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);

/// The datapath of a bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DatapathType {
    /// Open vSwitch's userspace datapath.
    Netdev,
    /// The kernel datapath (openvswitch module).
    System,
}

impl DatapathType {
    fn as_str(self) -> &'static str {
        match self {
            DatapathType::Netdev => "netdev",
            DatapathType::System => "system",
        }
    }
}

/// What `join-ovs` was asked.
#[derive(Debug, Clone)]
pub struct JoinArgs {
    /// Bridge name.
    pub bridge: String,
    /// Uplink interface.
    pub uplink: String,
    /// `tcp:IP[:PORT]`.
    pub controller: String,
    /// Host name (default: the machine's).
    pub name: Option<String>,
    /// Datapath (default: the existing bridge's, else system).
    pub datapath: Option<DatapathType>,
    /// OVSDB address (`unix:PATH`); Open vSwitch's default when absent.
    pub ovs_db: Option<String>,
}

/// What `leave-ovs` was asked.
#[derive(Debug, Clone)]
pub struct LeaveArgs {
    /// Bridge (default: the one bridge joined).
    pub bridge: Option<String>,
    /// OVSDB address.
    pub ovs_db: Option<String>,
    /// Keep the host registered with the controller.
    pub keep_host: bool,
}

/// The settings of a bridge that existed before the join, restored by
/// leave.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrevBridge {
    /// `protocols`.
    pub protocols: Vec<String>,
    /// `fail_mode`.
    pub fail_mode: Option<String>,
    /// Controller targets.
    pub controllers: Vec<String>,
    /// Whether its LOCAL interface was up.
    pub was_up: bool,
}

/// What a join did: kept in the bridge's `external_ids` so that leave can
/// undo it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRecord {
    /// Host name registered.
    pub name: String,
    /// Bridge.
    pub bridge: String,
    /// Uplink.
    pub uplink: String,
    /// Datapath.
    pub datapath: DatapathType,
    /// The settings of the bridge before, when it existed (`None`: the
    /// join created it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<PrevBridge>,
    /// Whether the join added the uplink to the bridge.
    pub port_added: bool,
    /// Addresses moved from the uplink to the bridge.
    pub addrs: Vec<Addr>,
    /// Routes moved from the uplink to the bridge.
    pub routes: Vec<Route>,
    /// Whether the uplink had ARP on before (netdev turns it off).
    pub arp_was_on: bool,
    /// The nftables table (family netdev) keeping the kernel off the uplink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nft_table: Option<String>,
    /// What the NAT-out set-up changed (forwarding, pool route, the
    /// `ip daolinet` table), undone by leave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<daolinet_natout::Applied>,
}

// --- running commands ---

/// Runs `argv` (with `stdin` if given): its stdout, or one line saying
/// what failed.
fn run_cmd(argv: &[String], stdin: Option<&str>) -> Result<String, String> {
    let Some((prog, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    let mut c = Command::new(prog);
    c.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = c.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("{prog} not found (is it installed? `cargo xtask setup` installs it)")
        } else {
            format!("cannot run {prog}: {e}")
        }
    })?;
    if let (Some(input), Some(mut w)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        let _ = w.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {prog}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no error message");
        Err(format!("`{}` failed: {first}", argv.join(" ")))
    }
}

fn sv(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// `ovs-vsctl` and `ovs-ofctl` against one Open vSwitch.
#[derive(Debug, Clone)]
struct Ovs {
    db: Option<String>,
}

impl Ovs {
    fn vsctl_argv(&self, args: &[String]) -> Vec<String> {
        let mut a = vec!["ovs-vsctl".to_string()];
        if let Some(db) = &self.db {
            a.push(format!("--db={db}"));
        }
        a.push("--timeout=30".into());
        a.extend(args.iter().cloned());
        a
    }

    fn vsctl(&self, args: &[&str]) -> Result<String, String> {
        run_cmd(&self.vsctl_argv(&sv(args)), None)
    }

    /// `ovs-ofctl` target of a bridge: its management socket next to the
    /// database socket (Open vSwitch keeps both in its run directory).
    fn mgmt(&self, br: &str) -> String {
        match self
            .db
            .as_deref()
            .and_then(|d| d.strip_prefix("unix:"))
            .and_then(|p| std::path::Path::new(p).parent())
        {
            Some(dir) => format!("unix:{}/{br}.mgmt", dir.display()),
            None => br.to_string(),
        }
    }

    fn dump_flows(&self, br: &str) -> Result<String, String> {
        run_cmd(
            &sv(&[
                "ovs-ofctl",
                "-O",
                "OpenFlow13",
                "dump-flows",
                &self.mgmt(br),
            ]),
            None,
        )
    }

    /// Rows of `ovs-vsctl list TABLE` with `columns`, as JSON values.
    fn list(
        &self,
        table: &str,
        columns: &str,
        record: Option<&str>,
    ) -> Result<Vec<Vec<Value>>, String> {
        let cols = format!("--columns={columns}");
        let mut a = vec!["--format=json", "--data=json", &cols, "list", table];
        if let Some(r) = record {
            a.push(r);
        }
        let out = self.vsctl(&a)?;
        let v: Value = serde_json::from_str(&out).map_err(|e| format!("ovs-vsctl list: {e}"))?;
        Ok(v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_array().cloned())
            .collect())
    }
}

/// The members of an OVSDB set in JSON (`["set", [...]]` or one atom).
fn ovs_set(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) if a.first() == Some(&json!("set")) => a
            .get(1)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        Value::String(s) => vec![s.clone()],
        _ => vec![],
    }
}

/// The value of `key` in an OVSDB map in JSON (`["map", [[k, v]...]]`).
fn ovs_map_get(v: &Value, key: &str) -> Option<String> {
    v.get(1)?
        .as_array()?
        .iter()
        .find(|kv| kv.get(0).and_then(Value::as_str) == Some(key))
        .and_then(|kv| kv.get(1))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// The join records of every bridge (bridge name, record).
fn join_records(ovs: &Ovs) -> Result<Vec<(String, JoinRecord)>, String> {
    let mut out = Vec::new();
    for row in ovs.list("bridge", "name,external_ids", None)? {
        let (Some(name), Some(ids)) = (row.first().and_then(Value::as_str), row.get(1)) else {
            continue;
        };
        if let Some(text) = ovs_map_get(ids, RECORD_KEY) {
            let rec: JoinRecord = serde_json::from_str(&text)
                .map_err(|e| format!("bridge {name}: unreadable {RECORD_KEY} record ({e})"))?;
            out.push((name.to_string(), rec));
        }
    }
    Ok(out)
}

// --- the OVSDB transactions (pure) ---

/// The one OVSDB transaction of a join.
fn join_txn(
    rec: &JoinRecord,
    controller: &str,
    dpid: Option<&str>,
    hwaddr: Option<&str>,
) -> Result<Vec<String>, String> {
    let br = rec.bridge.as_str();
    let mut a: Vec<String> = Vec::new();
    if rec.prev.is_none() {
        a.extend(sv(&["--", "add-br", br]));
        a.extend(sv(&[
            "--",
            "set",
            "bridge",
            br,
            &format!("datapath_type={}", rec.datapath.as_str()),
        ]));
        if let Some(d) = dpid {
            a.push(format!("other_config:datapath-id={d}"));
        }
        if let Some(m) = hwaddr {
            a.push(format!("other_config:hwaddr=\"{m}\""));
        }
    }
    let quoted = record_quoted(rec)?;
    a.extend(sv(&[
        "--",
        "set",
        "bridge",
        br,
        "protocols=OpenFlow13",
        "fail_mode=secure",
        &format!("external_ids:{RECORD_KEY}={quoted}"),
    ]));
    a.extend(sv(&["--", "set-controller", br, controller]));
    if rec.port_added {
        a.extend(sv(&[
            "--",
            "add-port",
            br,
            &rec.uplink,
            "--",
            "set",
            "interface",
            &rec.uplink,
            &format!("ofport_request={UPLINK_OFPORT}"),
        ]));
    }
    Ok(a)
}

/// The OVSDB transaction undoing a join: the bridge deleted if the join
/// created it, otherwise its settings restored and the uplink taken out if
/// the join put it in.
fn undo_txn(rec: &JoinRecord) -> Vec<String> {
    let br = rec.bridge.as_str();
    let Some(prev) = &rec.prev else {
        return sv(&["--", "--if-exists", "del-br", br]);
    };
    let mut a: Vec<String> = Vec::new();
    if rec.port_added {
        a.extend(sv(&["--", "--if-exists", "del-port", br, &rec.uplink]));
    }
    if prev.protocols.is_empty() {
        a.extend(sv(&["--", "clear", "bridge", br, "protocols"]));
    } else {
        a.extend(sv(&[
            "--",
            "set",
            "bridge",
            br,
            &format!("protocols={}", prev.protocols.join(",")),
        ]));
    }
    match &prev.fail_mode {
        Some(m) => a.extend(sv(&["--", "set", "bridge", br, &format!("fail_mode={m}")])),
        None => a.extend(sv(&["--", "clear", "bridge", br, "fail_mode"])),
    }
    if prev.controllers.is_empty() {
        a.extend(sv(&["--", "del-controller", br]));
    } else {
        a.extend(sv(&["--", "set-controller", br]));
        a.extend(prev.controllers.iter().cloned());
    }
    a.extend(sv(&[
        "--",
        "remove",
        "bridge",
        br,
        "external_ids",
        RECORD_KEY,
    ]));
    a
}

/// The commands giving the uplink back: the OVSDB transaction undoing the
/// join, then ARP on again if the join turned it off. ARP comes last:
/// Open vSwitch writes the uplink's interface flags back from its own copy
/// when it lets the port go, and a copy taken before ARP came back on
/// would turn it off again (seen in the tests).
fn release_uplink(ovs: &Ovs, rec: &JoinRecord) -> Vec<Vec<String>> {
    let mut cs = vec![ovs.vsctl_argv(&undo_txn(rec))];
    if rec.arp_was_on {
        cs.push(sv(&["ip", "link", "set", &rec.uplink, "arp", "on"]));
    }
    cs
}

/// The nftables table keeping the kernel off a netdev uplink.
fn nft_table_name(bridge: &str) -> String {
    let clean: String = bridge
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("daolinet_join_{clean}")
}

/// The nftables script of that table: drop everything the uplink receives
/// before the kernel's stack sees it (packet sockets, Open vSwitch's,
/// see it before the ingress hook).
fn nft_script(table: &str, uplink: &str) -> String {
    format!(
        "table netdev {table} {{\n  chain uplink_in {{\n    type filter hook ingress device \"{uplink}\" priority 0; policy drop;\n  }}\n}}\n"
    )
}

/// The join record as an OVSDB string atom in JSON syntax.
fn record_quoted(rec: &JoinRecord) -> Result<String, String> {
    let text = serde_json::to_string(rec).map_err(|e| format!("join record: {e}"))?;
    serde_json::to_string(&text).map_err(|e| format!("join record: {e}"))
}

/// The controller's physical pool (`GET /api/settings`).
fn nat_pool(client: &Client) -> Result<daolinet_natout::Pool, String> {
    match client.request("GET", "/api/settings", None) {
        Ok((200, v)) => v["physical_pool"]
            .as_str()
            .ok_or_else(|| format!("GET /api/settings: no physical_pool in {v}"))?
            .parse()
            .map_err(|e| format!("GET /api/settings: physical_pool {e}")),
        Ok((s, v)) => Err(format!("GET /api/settings: HTTP {s} {v}")),
        Err(Failure(m, _)) => Err(m),
    }
}

/// NAT-out on an Open vSwitch host: the bridge's LOCAL interface is the
/// host's way in and out (it holds the host's address after the join), so
/// the pool is masqueraded out of it, forwarded on it, and routed back
/// into it through the dummy next hop whose neighbour entry is the
/// bridge's own MAC (the flows rewrite it).
fn nat_plan(pool: daolinet_natout::Pool, bridge: &str, local_mac: &str) -> daolinet_natout::Plan {
    daolinet_natout::Plan {
        pool,
        out_dev: bridge.to_string(),
        forward_devs: vec![bridge.to_string()],
        route: daolinet_natout::PoolRoute::Via {
            dev: bridge.to_string(),
            lladdr: local_mac.to_string(),
        },
    }
}

// --- undo ---

/// One thing to undo.
#[derive(Debug, Clone)]
enum Undo {
    /// Run a command (errors reported).
    Cmd(Vec<String>),
    /// Run commands in order (errors reported).
    Cmds(Vec<Vec<String>>),
    /// Run commands, ignoring errors (undoing a move that may be partial).
    Tolerant(Vec<Vec<String>>),
    /// Unregister the host.
    DeleteHost(String),
    /// Undo the NAT-out set-up.
    NatOut(daolinet_natout::Applied),
}

/// What was done so far, undone in reverse order on failure.
struct Rollback<'a> {
    client: &'a Client,
    undo: Vec<Undo>,
}

impl Rollback<'_> {
    fn push(&mut self, u: Undo) {
        self.undo.push(u);
    }

    /// Undo everything; the failures of the undo, if any.
    fn run(&mut self) -> Vec<String> {
        let mut errs = Vec::new();
        while let Some(u) = self.undo.pop() {
            match u {
                Undo::Cmd(c) => {
                    if let Err(e) = run_cmd(&c, None) {
                        errs.push(e);
                    }
                }
                Undo::Cmds(cs) => {
                    for c in cs {
                        if let Err(e) = run_cmd(&c, None) {
                            errs.push(e);
                        }
                    }
                }
                Undo::Tolerant(cs) => {
                    for c in cs {
                        let _ = run_cmd(&c, None);
                    }
                }
                Undo::NatOut(a) => {
                    if let Err(e) = daolinet_natout::undo(&a) {
                        errs.push(format!("undoing NAT-out: {e}"));
                    }
                }
                Undo::DeleteHost(name) => {
                    match self.client.request(
                        "DELETE",
                        &format!("/api/hosts/{}", crate::enc(&name)),
                        None,
                    ) {
                        Ok((s, _)) if s < 300 || s == 404 => {}
                        Ok((s, v)) => errs.push(format!("unregistering {name}: HTTP {s} {v}")),
                        Err(Failure(m, _)) => errs.push(format!("unregistering {name}: {m}")),
                    }
                }
            }
        }
        errs
    }

    /// The failure `why`, after undoing everything.
    fn fail(&mut self, why: String) -> Failure {
        let errs = self.run();
        if errs.is_empty() {
            Failure(format!("{why} (changes undone)"), 1)
        } else {
            Failure(format!("{why} (undo incomplete: {})", errs.join("; ")), 1)
        }
    }
}

// --- checks ---

/// `tcp:IP[:PORT]` (default port 6653).
pub fn parse_controller(spec: &str) -> Result<SocketAddr, String> {
    let bad = || format!("--controller {spec:?}: expected tcp:IP[:PORT]");
    let rest = spec.strip_prefix("tcp:").ok_or_else(bad)?;
    if let Ok(a) = rest.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip: std::net::IpAddr = rest.parse().map_err(|_| bad())?;
    Ok(SocketAddr::new(ip, 6653))
}

/// Whether an OpenFlow controller answers at `addr`: it says HELLO first.
fn probe_controller(addr: SocketAddr) -> Result<(), String> {
    let t = Duration::from_secs(3);
    let mut s = TcpStream::connect_timeout(&addr, t)
        .map_err(|e| format!("no OpenFlow controller at tcp:{addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(t));
    let mut hdr = [0u8; 8];
    match s.read_exact(&mut hdr) {
        Ok(()) if (1..=6).contains(&hdr[0]) && hdr[1] == 0 => Ok(()),
        _ => Err(format!(
            "tcp:{addr} is not an OpenFlow controller (no HELLO)"
        )),
    }
}

fn hostname() -> Result<String, String> {
    let out = run_cmd(&sv(&["hostname"]), None)?;
    Ok(out.trim().to_string())
}

fn ip_json(args: &[&str]) -> Result<String, String> {
    let mut a = sv(&["ip", "-j"]);
    a.extend(sv(args));
    run_cmd(&a, None)
}

/// The datapath id text of an uplink MAC (`aa:bb:...` -> 16 hex digits).
fn dpid_of_mac(mac: &str) -> String {
    format!("0000{}", mac.replace(':', "").to_ascii_lowercase())
}

/// Registers the host: `(status, answer)`.
fn register(client: &Client, name: &str, body: &Value) -> Result<(u16, Value), Failure> {
    client.request(
        "PUT",
        &format!("/api/hosts/{}", crate::enc(name)),
        Some(body.clone()),
    )
}

fn poll<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `daolictl host join-ovs`.
pub fn join(client: &Client, a: &JoinArgs) -> Result<(String, Value), Failure> {
    let bad = |m: String| Failure(m, 1);
    // --- checks: nothing is changed until they all pass ---
    let of_addr = parse_controller(&a.controller).map_err(bad)?;
    let controller = format!("tcp:{of_addr}");
    let ovs = Ovs {
        db: a.ovs_db.clone(),
    };
    ovs.vsctl(&["show"]).map_err(|e| {
        bad(format!(
            "cannot reach the Open vSwitch database{}: {e}",
            a.ovs_db
                .as_deref()
                .map(|d| format!(" at {d}"))
                .unwrap_or_default()
        ))
    })?;
    let link = ip_json(&["link", "show", "dev", &a.uplink])
        .map_err(|_| bad(format!("no interface {:?} (--uplink)", a.uplink)))?;
    let uplink_mac = hostnet::parse_mac(&link).map_err(bad)?;
    let arp_was_on = hostnet::parse_arp_on(&link);
    for (br, rec) in join_records(&ovs).map_err(bad)? {
        if br == a.bridge || rec.uplink == a.uplink {
            return Err(bad(format!(
                "already joined: bridge {br} with uplink {} as host {:?} \
                 (`daolictl host leave-ovs --bridge {br}` undoes it)",
                rec.uplink, rec.name
            )));
        }
    }
    let in_bridge = ovs
        .vsctl(&["port-to-br", &a.uplink])
        .ok()
        .map(|s| s.trim().to_string());
    if let Some(other) = in_bridge.as_deref().filter(|b| *b != a.bridge) {
        return Err(bad(format!(
            "{} is already a port of bridge {other}",
            a.uplink
        )));
    }
    let exists = ovs.vsctl(&["br-exists", &a.bridge]).is_ok();
    let (prev, datapath) = if exists {
        let rows = ovs
            .list(
                "bridge",
                "protocols,fail_mode,datapath_type",
                Some(&a.bridge),
            )
            .map_err(bad)?;
        let row = rows.first().cloned().unwrap_or_default();
        let col = |i: usize| row.get(i).cloned().unwrap_or(Value::Null);
        let have = match ovs_set(&col(2)).first().map(String::as_str) {
            Some("netdev") => DatapathType::Netdev,
            _ => DatapathType::System,
        };
        if let Some(want) = a.datapath.filter(|w| *w != have) {
            return Err(bad(format!(
                "bridge {} exists on the {} datapath, not {}",
                a.bridge,
                have.as_str(),
                want.as_str()
            )));
        }
        let controllers = ovs
            .vsctl(&["get-controller", &a.bridge])
            .map_err(bad)?
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        let was_up = ip_json(&["link", "show", "dev", &a.bridge])
            .map(|j| j.contains("\"UP\""))
            .unwrap_or(false);
        (
            Some(PrevBridge {
                protocols: ovs_set(&col(0)),
                fail_mode: ovs_set(&col(1)).into_iter().next(),
                controllers,
                was_up,
            }),
            have,
        )
    } else {
        (None, a.datapath.unwrap_or(DatapathType::System))
    };
    let addrs =
        hostnet::parse_addrs(&ip_json(&["-4", "addr", "show", "dev", &a.uplink]).map_err(bad)?)
            .map_err(bad)?;
    let routes =
        hostnet::parse_routes(&ip_json(&["-4", "route", "show", "dev", &a.uplink]).map_err(bad)?)
            .map_err(bad)?;
    // The host's address: the uplink's, or the bridge's when the uplink
    // already is its port and the address already moved.
    let host_ip = match addrs.first() {
        Some(x) => x.cidr.split('/').next().unwrap_or_default().to_string(),
        None => {
            let on_bridge = if in_bridge.is_some() {
                ip_json(&["-4", "addr", "show", "dev", &a.bridge])
                    .ok()
                    .and_then(|j| hostnet::parse_addrs(&j).ok())
                    .unwrap_or_default()
            } else {
                vec![]
            };
            match on_bridge.first() {
                Some(x) => x.cidr.split('/').next().unwrap_or_default().to_string(),
                None => {
                    return Err(bad(format!(
                        "uplink {} has no IPv4 address (the host's underlay address must be on it)",
                        a.uplink
                    )))
                }
            }
        }
    };
    let name = match &a.name {
        Some(n) => n.clone(),
        None => hostname().map_err(bad)?,
    };
    probe_controller(of_addr).map_err(bad)?;
    let dpid = if exists {
        ovs.vsctl(&["get", "bridge", &a.bridge, "datapath_id"])
            .ok()
            .map(|s| s.trim().trim_matches('"').to_string())
            .filter(|s| s.len() == 16)
    } else {
        Some(dpid_of_mac(&uplink_mac))
    };
    match client.request("GET", &format!("/api/hosts/{}", crate::enc(&name)), None)? {
        (200, h) => {
            if let (Some(have), Some(want)) = (h["dpid"].as_str(), dpid.as_deref()) {
                if have != want {
                    return Err(bad(format!(
                        "host {name:?} is registered with datapath id {have}, not {want} \
                         (another machine with the same name? remove the host first)"
                    )));
                }
            }
        }
        (404, _) => {}
        (401, v) => {
            return Err(bad(format!(
                "the API refused the token: {}",
                v["error"].as_str().unwrap_or("unauthorized")
            )))
        }
        (s, v) => return Err(bad(format!("GET /api/hosts/{name}: HTTP {s} {v}"))),
    }
    let netdev = datapath == DatapathType::Netdev;
    let rec = JoinRecord {
        name: name.clone(),
        bridge: a.bridge.clone(),
        uplink: a.uplink.clone(),
        datapath,
        prev,
        port_added: in_bridge.is_none(),
        addrs,
        routes,
        arp_was_on: arp_was_on && netdev,
        nft_table: netdev.then(|| nft_table_name(&a.bridge)),
        nat: None,
    };
    let pool = nat_pool(client).map_err(bad)?;

    // --- changes, each undone on a later failure ---
    let mut rb = Rollback {
        client,
        undo: Vec::new(),
    };
    let txn = join_txn(
        &rec,
        &controller,
        dpid.as_deref().filter(|_| !exists),
        (!exists).then_some(uplink_mac.as_str()),
    )
    .map_err(bad)?;
    // Undo first: a transaction that fails half-applied cannot happen
    // (OVSDB), but one that applied and then timed out waiting can.
    rb.push(Undo::Cmds(release_uplink(&ovs, &rec)));
    if let Err(e) = run_cmd(&ovs.vsctl_argv(&txn), None) {
        return Err(rb.fail(e));
    }
    // What Open vSwitch made of it.
    let ofport = ovs
        .vsctl(&["get", "interface", &a.uplink, "ofport"])
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .filter(|p| *p > 0);
    let Some(ofport) = ofport else {
        let why = ovs
            .vsctl(&["get", "interface", &a.uplink, "error"])
            .unwrap_or_default();
        let why = why
            .trim()
            .trim_matches(|c| c == '"' || c == '[' || c == ']');
        let why = if why.is_empty() {
            format!("is the {} datapath available?", datapath.as_str())
        } else {
            why.to_string()
        };
        return Err(rb.fail(format!(
            "Open vSwitch could not add {} to {} ({why})",
            a.uplink, a.bridge
        )));
    };
    let Some(dpid) = ovs
        .vsctl(&["get", "bridge", &a.bridge, "datapath_id"])
        .ok()
        .map(|s| s.trim().trim_matches('"').to_string())
        .filter(|s| s.len() == 16)
    else {
        return Err(rb.fail(format!("bridge {} has no datapath id", a.bridge)));
    };
    let local_mac =
        match ip_json(&["link", "show", "dev", &a.bridge]).and_then(|j| hostnet::parse_mac(&j)) {
            Ok(m) => m,
            Err(e) => return Err(rb.fail(format!("no LOCAL interface {} ({e})", a.bridge))),
        };
    let body = json!({
        "dpid": dpid,
        "ip": host_ip,
        "mac": uplink_mac,
        "uplink_port": ofport,
        "local_mac": local_mac,
    });
    match register(client, &name, &body) {
        Ok((201, _)) => rb.push(Undo::DeleteHost(name.clone())),
        Ok((200, _)) => {}
        Ok((s, v)) => {
            let msg = v["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            return Err(rb.fail(format!("registering host {name:?}: {msg} [HTTP {s}]")));
        }
        Err(Failure(m, _)) => return Err(rb.fail(format!("registering host {name:?}: {m}"))),
    }
    // The switch connects and gets its base flows (uplink <-> LOCAL).
    let want = format!("in_port={ofport} actions=LOCAL");
    let served = poll(CONNECT_DEADLINE, || {
        let connected = ovs
            .vsctl(&["get", "controller", &a.bridge, "is_connected"])
            .is_ok_and(|s| s.trim() == "true");
        (connected && ovs.dump_flows(&a.bridge).is_ok_and(|f| f.contains(&want))).then_some(())
    });
    if served.is_none() {
        return Err(rb.fail(format!(
            "bridge {} did not connect to the controller at {controller} and get its flows within {} s",
            a.bridge,
            CONNECT_DEADLINE.as_secs()
        )));
    }
    // The host's addresses and routes move to the bridge.
    let up = sv(&["ip", "link", "set", &a.bridge, "up"]);
    if let Err(e) = run_cmd(&up, None) {
        return Err(rb.fail(e));
    }
    if rec.prev.as_ref().is_some_and(|p| !p.was_up) {
        rb.push(Undo::Cmd(sv(&["ip", "link", "set", &a.bridge, "down"])));
    }
    rb.push(Undo::Tolerant(hostnet::move_commands(
        &rec.addrs,
        &rec.routes,
        &a.bridge,
        &a.uplink,
    )));
    for c in hostnet::move_commands(&rec.addrs, &rec.routes, &a.uplink, &a.bridge) {
        if let Err(e) = run_cmd(&c, None) {
            return Err(rb.fail(e));
        }
    }
    if netdev {
        if rec.arp_was_on {
            if let Err(e) = run_cmd(&sv(&["ip", "link", "set", &a.uplink, "arp", "off"]), None) {
                return Err(rb.fail(e));
            }
            rb.push(Undo::Cmd(sv(&[
                "ip", "link", "set", &a.uplink, "arp", "on",
            ])));
        }
        if let Some(t) = &rec.nft_table {
            if let Err(e) = run_cmd(&sv(&["nft", "-f", "-"]), Some(&nft_script(t, &a.uplink))) {
                return Err(rb.fail(e));
            }
            rb.push(Undo::Cmd(sv(&["nft", "delete", "table", "netdev", t])));
        }
    }
    // NAT-out: forwarding on the bridge, the pool masqueraded out of it
    // and routed back into it (see daolinet-natout); recorded for leave.
    let plan = nat_plan(pool, &a.bridge, &local_mac);
    let nat = match daolinet_natout::apply(&plan) {
        Ok(n) => n,
        Err(e) => return Err(rb.fail(format!("setting up NAT-out: {e}"))),
    };
    rb.push(Undo::NatOut(nat.clone()));
    let mut rec = rec;
    rec.nat = Some(nat);
    match record_quoted(&rec) {
        Ok(q) => {
            let set = ovs.vsctl_argv(&sv(&[
                "set",
                "bridge",
                &a.bridge,
                &format!("external_ids:{RECORD_KEY}={q}"),
            ]));
            if let Err(e) = run_cmd(&set, None) {
                return Err(rb.fail(e));
            }
        }
        Err(e) => return Err(rb.fail(e)),
    }
    // Through the bridge now: the host reaches the controller again.
    let again = poll(CONNECT_DEADLINE, || {
        matches!(register(client, &name, &body), Ok((200 | 201, _))).then_some(())
    });
    if again.is_none() {
        return Err(rb.fail(format!(
            "the host did not reach the controller's API through bridge {} within {} s",
            a.bridge,
            CONNECT_DEADLINE.as_secs()
        )));
    }
    let summary = format!(
        "host {name} joined: bridge {} ({}), uplink {} (port {ofport}), {host_ip}, datapath id {dpid}, controller {controller}",
        a.bridge,
        datapath.as_str(),
        a.uplink
    );
    let mut out = body;
    out["name"] = json!(name);
    out["bridge"] = json!(a.bridge);
    out["datapath"] = json!(datapath.as_str());
    Ok((summary, out))
}

/// `daolictl host leave-ovs`.
pub fn leave(client: &Client, a: &LeaveArgs) -> Result<(String, Value), Failure> {
    let bad = |m: String| Failure(m, 1);
    let ovs = Ovs {
        db: a.ovs_db.clone(),
    };
    ovs.vsctl(&["show"])
        .map_err(|e| bad(format!("cannot reach the Open vSwitch database: {e}")))?;
    let records = join_records(&ovs).map_err(bad)?;
    let rec = match &a.bridge {
        Some(b) => records
            .into_iter()
            .find(|(br, _)| br == b)
            .map(|(_, r)| r)
            .ok_or_else(|| bad(format!("bridge {b} was not joined by `daolictl host join-ovs` (no {RECORD_KEY} record)")))?,
        None => {
            let mut it = records.into_iter();
            match (it.next(), it.next()) {
                (Some((_, r)), None) => r,
                (None, _) => return Err(bad("no bridge was joined by `daolictl host join-ovs`".into())),
                (Some((b1, _)), Some((b2, _))) => {
                    return Err(bad(format!(
                        "several joined bridges ({b1}, {b2}...): say which with --bridge"
                    )))
                }
            }
        }
    };
    if !a.keep_host {
        match client.request(
            "DELETE",
            &format!("/api/hosts/{}", crate::enc(&rec.name)),
            None,
        )? {
            (s, _) if s < 300 || s == 404 => {}
            (s, v) => {
                let msg = v["error"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                return Err(bad(format!(
                    "unregistering host {:?}: {msg} [HTTP {s}] (nothing changed; --keep-host leaves it registered)",
                    rec.name
                )));
            }
        }
    }
    let mut errs = Vec::new();
    if let Some(n) = &rec.nat {
        if let Err(e) = daolinet_natout::undo(n) {
            errs.push(format!("undoing NAT-out: {e}"));
        }
    }
    let mut try_run = |c: Vec<String>, stdin: Option<&str>| {
        if let Err(e) = run_cmd(&c, stdin) {
            errs.push(e);
        }
    };
    if let Some(t) = &rec.nft_table {
        try_run(sv(&["nft", "delete", "table", "netdev", t]), None);
    }
    for c in hostnet::move_commands(&rec.addrs, &rec.routes, &rec.bridge, &rec.uplink) {
        try_run(c, None);
    }
    for c in release_uplink(&ovs, &rec) {
        try_run(c, None);
    }
    if !errs.is_empty() {
        return Err(Failure(
            format!(
                "left bridge {} incompletely: {}",
                rec.bridge,
                errs.join("; ")
            ),
            1,
        ));
    }
    let summary = format!(
        "host {} left: bridge {} {}, addresses back on {}",
        rec.name,
        rec.bridge,
        if rec.prev.is_none() {
            "deleted"
        } else {
            "restored"
        },
        rec.uplink
    );
    let v = serde_json::to_value(&rec).unwrap_or(Value::Null);
    Ok((summary, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(prev: Option<PrevBridge>) -> JoinRecord {
        JoinRecord {
            name: "ovs1".into(),
            bridge: "br-jn".into(),
            uplink: "up0".into(),
            datapath: DatapathType::Netdev,
            prev,
            port_added: true,
            addrs: vec![Addr {
                cidr: "192.168.90.2/24".into(),
                broadcast: None,
            }],
            routes: vec![],
            arp_was_on: true,
            nft_table: Some("daolinet_join_br_jn".into()),
            nat: None,
        }
    }

    #[test]
    fn a_new_bridge_is_made_in_one_transaction_and_deleted_on_undo() {
        let r = rec(None);
        let t = join_txn(
            &r,
            "tcp:192.168.90.1:6653",
            Some("0000020000009002"),
            Some("02:00:00:00:90:02"),
        )
        .unwrap();
        let text = t.join(" ");
        assert!(text.starts_with("-- add-br br-jn -- set bridge br-jn datapath_type=netdev other_config:datapath-id=0000020000009002 other_config:hwaddr=\"02:00:00:00:90:02\" -- set bridge br-jn protocols=OpenFlow13 fail_mode=secure external_ids:daolinet-join=\""), "{text}");
        assert!(text.ends_with("-- set-controller br-jn tcp:192.168.90.1:6653 -- add-port br-jn up0 -- set interface up0 ofport_request=65000"), "{text}");
        // The record goes in as a JSON string atom and comes back whole.
        let atom = t
            .iter()
            .find_map(|a| a.strip_prefix("external_ids:daolinet-join="))
            .unwrap();
        let back: JoinRecord =
            serde_json::from_str(&serde_json::from_str::<String>(atom).unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!(undo_txn(&r).join(" "), "-- --if-exists del-br br-jn");
    }

    #[test]
    fn an_existing_bridge_gets_its_settings_back() {
        let r = rec(Some(PrevBridge {
            protocols: vec!["OpenFlow10".into(), "OpenFlow13".into()],
            fail_mode: None,
            controllers: vec!["tcp:10.0.0.9:6633".into()],
            was_up: true,
        }));
        let t = join_txn(&r, "tcp:192.168.90.1:6653", None, None)
            .unwrap()
            .join(" ");
        assert!(!t.contains("add-br") && !t.contains("datapath_type"), "{t}");
        assert_eq!(
            undo_txn(&r).join(" "),
            "-- --if-exists del-port br-jn up0 -- set bridge br-jn protocols=OpenFlow10,OpenFlow13 \
             -- clear bridge br-jn fail_mode -- set-controller br-jn tcp:10.0.0.9:6633 \
             -- remove bridge br-jn external_ids daolinet-join"
        );
        let mut r2 = r.clone();
        r2.port_added = false;
        r2.prev = Some(PrevBridge::default());
        assert_eq!(
            undo_txn(&r2).join(" "),
            "-- clear bridge br-jn protocols -- clear bridge br-jn fail_mode -- del-controller br-jn \
             -- remove bridge br-jn external_ids daolinet-join"
        );
    }

    #[test]
    fn ovsdb_json_values_and_names() {
        assert_eq!(ovs_set(&json!(["set", []])), Vec::<String>::new());
        assert_eq!(ovs_set(&json!("secure")), vec!["secure"]);
        assert_eq!(
            ovs_set(&json!(["set", ["OpenFlow10", "OpenFlow13"]])),
            vec!["OpenFlow10", "OpenFlow13"]
        );
        let ids = json!(["map", [["a", "1"], [RECORD_KEY, "{}"]]]);
        assert_eq!(ovs_map_get(&ids, RECORD_KEY).as_deref(), Some("{}"));
        assert_eq!(ovs_map_get(&ids, "b"), None);
        assert_eq!(dpid_of_mac("02:00:00:00:90:0A"), "000002000000900a");
        assert_eq!(nft_table_name("br-jn.0"), "daolinet_join_br_jn_0");
        assert!(nft_script("t", "up0").contains("hook ingress device \"up0\""));
        assert_eq!(
            parse_controller("tcp:10.0.0.1").unwrap(),
            "10.0.0.1:6653".parse().unwrap()
        );
        assert_eq!(
            parse_controller("tcp:10.0.0.1:7").unwrap(),
            "10.0.0.1:7".parse().unwrap()
        );
        assert!(parse_controller("10.0.0.1:6653").is_err());
        assert!(parse_controller("tcp:controller:6653").is_err());
    }
}
