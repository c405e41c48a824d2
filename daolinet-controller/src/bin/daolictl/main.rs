//! `daolictl`: the DaoliNet command line, over the controller's REST API.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

mod hostnet;
mod join;

#[derive(Parser, Debug)]
#[command(
    name = "daolictl",
    version,
    about = "Manage a DaoliNet cluster through the controller's REST API"
)]
struct Cli {
    /// Controller API URL.
    #[arg(
        long,
        global = true,
        env = "DAOLI_API",
        default_value = "http://127.0.0.1:8080"
    )]
    api: String,
    /// API token (overrides --token-file).
    #[arg(long, global = true, env = "DAOLI_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the API token.
    #[arg(
        long,
        global = true,
        env = "DAOLI_TOKEN_FILE",
        default_value = "/var/lib/daolinet/api-token"
    )]
    token_file: PathBuf,
    /// CA certificate (PEM) the API's certificate must chain to, for an
    /// `https://` --api (a controller run with --api-tls; `ovs-pki`:
    /// `controllerca/cacert.pem`).
    #[arg(long, global = true, env = "DAOLI_CA")]
    ca: Option<PathBuf>,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Groups of networks (members may talk to each other).
    #[command(subcommand)]
    Group(GroupCmd),
    /// Allow two containers to talk, whatever their networks: `connect A:B`.
    Connect {
        /// `A:B`, container ids or names.
        pair: String,
    },
    /// Forbid two containers to talk, whatever their networks: `disconnect A:B`.
    Disconnect {
        /// `A:B`, container ids or names.
        pair: String,
    },
    /// Pair policies set by connect/disconnect.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Firewall (ingress) rules.
    #[command(subcommand)]
    Firewall(FirewallCmd),
    /// Containers.
    #[command(subcommand)]
    Container(ContainerCmd),
    /// Hosts (datapaths).
    #[command(subcommand)]
    Host(HostCmd),
    /// Flows the controller has installed.
    Flows {
        /// Only this host.
        #[arg(long)]
        host: Option<String>,
    },
    /// Would SRC reach DST, and how: the policy verdict and why (networks,
    /// group, pair policy, NAT), each host's flow (installed, or installed
    /// on the first packet) with its rewrites and output, and the end
    /// (delivered or the drop reason). Nothing is sent, unless --live.
    ///
    /// With --live the controller also sends a real probe (the traced
    /// packet) into the source host's switch at SRC's port, through the
    /// flows the host holds (a pair without flows is first decided and
    /// installed, as for a real first packet), and reports each host's
    /// flow counter before and after and where the probe ended: delivered,
    /// dropped by the policy's drop flow, or not delivered within the
    /// timeout and where it was last seen (exit status 1 unless
    /// delivered). The destination container receives the probe.
    Trace {
        /// Source container (id or name).
        src: String,
        /// Destination container (id or name) or IPv4 address.
        dst: String,
        /// Protocol.
        #[arg(long, value_enum, default_value_t = TraceProto::Icmp)]
        proto: TraceProto,
        /// Destination port (tcp, udp; default 80 and 53).
        #[arg(long)]
        dport: Option<u16>,
        /// Send a real probe through the switches and report what they did.
        #[arg(long)]
        live: bool,
        /// How long the probe may take to arrive, in seconds (with --live;
        /// default 3, at most 20).
        #[arg(long, requires = "live")]
        timeout: Option<f64>,
    },
    /// Recent PACKET_IN decisions (verdict and reason), oldest first; with
    /// --follow, new ones as they come (Ctrl-C stops). `-o json`: one JSON
    /// object per line.
    Observe {
        /// Only packets from or to this container.
        #[arg(long)]
        container: Option<String>,
        /// Only packets of containers of this network.
        #[arg(long)]
        network: Option<String>,
        /// Only forwarded or dropped packets.
        #[arg(long, value_parser = ["forwarded", "dropped"])]
        verdict: Option<String>,
        /// Keep following new decisions.
        #[arg(long)]
        follow: bool,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TraceProto {
    Icmp,
    Tcp,
    Udp,
}

#[derive(Subcommand, Debug)]
enum NetworkCmd {
    /// Create a network.
    Create {
        /// Name.
        name: String,
        /// Subnet, e.g. 10.0.0.0/24 (may overlap other tenants' subnets).
        #[arg(long)]
        subnet: String,
        /// Gateway (default: first address).
        #[arg(long)]
        gateway: Option<String>,
        /// Tenant label.
        #[arg(long)]
        tenant: Option<String>,
        /// Forbid reaching outside destinations (NAT-out).
        #[arg(long)]
        no_nat_out: bool,
    },
    /// Delete a network (it must have no containers).
    Delete {
        /// Name.
        name: String,
    },
    /// Show one or all networks.
    Show {
        /// Name.
        name: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum GroupCmd {
    /// Create a group.
    Create {
        /// Name.
        name: String,
        /// Member networks.
        networks: Vec<String>,
    },
    /// Delete a group.
    Delete {
        /// Name.
        name: String,
    },
    /// Show one or all groups.
    Show {
        /// Name.
        name: Option<String>,
    },
    /// Add a network to a group.
    Add {
        /// Group.
        group: String,
        /// Network.
        network: String,
    },
    /// Remove a network from a group.
    Remove {
        /// Group.
        group: String,
        /// Network.
        network: String,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Show pair policies.
    Show,
    /// Remove the pair policy of `A:B` (networks and groups decide again).
    Delete {
        /// `A:B`.
        pair: String,
    },
}

#[derive(Subcommand, Debug)]
enum FirewallCmd {
    /// Create a firewall: traffic to the host's IP on HOSTPORT goes to the container's PORT.
    Create {
        /// Name.
        name: String,
        /// Container id or name.
        #[arg(long)]
        container: String,
        /// `HOSTPORT:PORT[/tcp|/udp]`, repeatable.
        #[arg(long = "rule", required = true)]
        rules: Vec<String>,
    },
    /// Show one or all firewalls.
    Show {
        /// Name.
        name: Option<String>,
    },
    /// Delete a firewall.
    Delete {
        /// Name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum ContainerCmd {
    /// Show one or all containers.
    Show {
        /// Id or name.
        id: Option<String>,
    },
    /// Register a container (normally done by the runtime plugin).
    Create {
        /// Id.
        id: String,
        /// Name (default: the id).
        #[arg(long)]
        name: Option<String>,
        /// Network.
        #[arg(long)]
        network: String,
        /// Host.
        #[arg(long)]
        host: String,
        /// OpenFlow port on the host.
        #[arg(long)]
        port: u32,
        /// Logical IP (default: allocated).
        #[arg(long)]
        ip: Option<String>,
        /// MAC (default: derived).
        #[arg(long)]
        mac: Option<String>,
    },
    /// Unregister a container.
    Delete {
        /// Id or name.
        id: String,
    },
    /// Move a container to another host; it keeps its IP and MAC.
    Move {
        /// Id or name.
        id: String,
        /// New host.
        #[arg(long)]
        host: String,
        /// OpenFlow port on the new host.
        #[arg(long)]
        port: u32,
    },
}

#[derive(Subcommand, Debug)]
enum HostCmd {
    /// Show one or all hosts.
    Show {
        /// Name.
        name: Option<String>,
    },
    /// Register a host by hand (agents register themselves, OVS hosts with join-ovs).
    Add {
        /// Name.
        name: String,
        /// Datapath id (hex).
        #[arg(long)]
        dpid: String,
        /// Underlay IP.
        #[arg(long)]
        ip: String,
        /// Underlay MAC.
        #[arg(long)]
        mac: String,
        /// Uplink OpenFlow port.
        #[arg(long)]
        uplink_port: u32,
        /// MAC of the LOCAL port if not --mac.
        #[arg(long)]
        local_mac: Option<String>,
    },
    /// Unregister a host (it must run no container).
    Delete {
        /// Name.
        name: String,
    },
    /// Join this Open vSwitch host to the cluster (run on the host): the
    /// bridge (created or configured: OpenFlow 1.3, fail_mode=secure, the
    /// controller), the uplink in it, the host's IPv4 addresses and routes
    /// moved to the bridge, the host registered. Undone if a step fails.
    JoinOvs {
        /// The bridge.
        #[arg(long)]
        bridge: String,
        /// The uplink (physical NIC) carrying the host's IPv4 address.
        #[arg(long)]
        uplink: String,
        /// The controller's OpenFlow address, `tcp:IP[:PORT]`.
        #[arg(long, value_name = "tcp:IP[:PORT]")]
        controller: String,
        /// Host name to register (default: this machine's host name).
        #[arg(long)]
        name: Option<String>,
        /// Datapath of a new bridge (default: system; an existing bridge keeps its own).
        #[arg(long, value_enum)]
        datapath: Option<join::DatapathType>,
        /// The Open vSwitch database, e.g. `unix:/var/run/openvswitch/db.sock`.
        #[arg(long, value_name = "unix:PATH")]
        ovs_db: Option<String>,
    },
    /// Undo `host join-ovs`: the host unregistered, its addresses and routes
    /// back on the uplink, the bridge deleted (or its settings restored).
    LeaveOvs {
        /// The bridge (default: the one joined).
        #[arg(long)]
        bridge: Option<String>,
        /// The Open vSwitch database.
        #[arg(long, value_name = "unix:PATH")]
        ovs_db: Option<String>,
        /// Keep the host registered with the controller.
        #[arg(long)]
        keep_host: bool,
    },
}

/// A failed command: message and exit code.
pub(crate) struct Failure(pub(crate) String, pub(crate) u8);

pub(crate) struct Client {
    api: String,
    /// The token, or why there is none (reported at the first call).
    token: Result<String, String>,
    agent: ureq::Agent,
}

impl Client {
    /// `METHOD PATH`: the status and the answer (JSON, or a JSON string),
    /// whatever the status; an error only when the API cannot be reached
    /// or there is no token.
    pub(crate) fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), Failure> {
        let token = self.token.as_ref().map_err(|e| Failure(e.clone(), 1))?;
        let url = format!("{}{path}", self.api.trim_end_matches('/'));
        let req = self
            .agent
            .request(method, &url)
            .set("Authorization", &format!("Bearer {token}"));
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) if not_http(&t) => {
                return Err(Failure(
                    format!(
                        "{} is not a DaoliNet controller's API (it does not speak HTTP: {t})",
                        self.api
                    ),
                    2,
                ))
            }
            Err(e) => {
                return Err(Failure(
                    format!("cannot reach the controller at {}: {e}", self.api),
                    2,
                ))
            }
        };
        let status = resp.status();
        let text = resp
            .into_string()
            .map_err(|e| Failure(format!("reading the answer: {e}"), 2))?;
        let v: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, v))
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Failure> {
        let (status, v) = self.request(method, path, body)?;
        if status < 300 {
            return Ok(v);
        }
        let msg = v["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        let field = v["field"]
            .as_str()
            .map(|f| format!(" (field: {f})"))
            .unwrap_or_default();
        Err(Failure(format!("{msg}{field} [HTTP {status}]"), 1))
    }
}

/// Whether a transport error is an answer that is not HTTP (a wrong
/// `--api`, e.g. the OpenFlow port) rather than a connection that failed.
fn not_http(t: &ureq::Transport) -> bool {
    if matches!(
        t.kind(),
        ureq::ErrorKind::BadStatus | ureq::ErrorKind::BadHeader
    ) {
        return true;
    }
    // ureq reports some garbled answers as I/O errors of these kinds.
    let mut e: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(t);
    while let Some(err) = e {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            // A TLS failure (an untrusted certificate...) is not a wrong
            // protocol: it says why the connection failed.
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<daolinet_tls::rustls::Error>())
            {
                return false;
            }
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
            ) {
                return true;
            }
        }
        e = err.source();
    }
    false
}

fn split_pair(pair: &str) -> Result<(&str, &str), Failure> {
    match pair.split_once(':') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(':') => Ok((a, b)),
        _ => Err(Failure(
            format!("expected A:B (two container ids or names), got {pair:?}"),
            1,
        )),
    }
}

pub(crate) fn enc(s: &str) -> String {
    // Path segments: names are restricted to [A-Za-z0-9._-] by the API; encode the rest.
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// A table column: header and how to render a row's cell.
type Column<'a> = (&'a str, &'a dyn Fn(&Value) -> String);

fn table(rows: &[Value], cols: &[Column<'_>]) -> String {
    let mut cells: Vec<Vec<String>> = vec![cols.iter().map(|(h, _)| h.to_string()).collect()];
    for r in rows {
        cells.push(cols.iter().map(|(_, f)| f(r)).collect());
    }
    let widths: Vec<usize> = (0..cols.len())
        .map(|i| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in cells {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn field(name: &'static str) -> impl Fn(&Value) -> String {
    move |v: &Value| text(&v[name])
}

fn rows(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        Value::Null => vec![],
        other => vec![other.clone()],
    }
}

enum Kind {
    Network,
    Group,
    Policy,
    Firewall,
    Container,
    Host,
    Flows,
    Trace,
    Done(String),
}

fn render(kind: &Kind, v: &Value) -> String {
    let r = rows(v);
    match kind {
        Kind::Network => table(
            &r,
            &[
                ("NAME", &field("name")),
                ("SUBNET", &field("subnet")),
                ("GATEWAY", &field("gateway")),
                ("TENANT", &field("tenant")),
                ("NAT-OUT", &field("nat_out")),
            ],
        ),
        Kind::Group => table(
            &r,
            &[("NAME", &field("name")), ("NETWORKS", &field("networks"))],
        ),
        Kind::Policy => table(
            &r,
            &[
                ("A", &field("a")),
                ("B", &field("b")),
                ("ACTION", &field("action")),
            ],
        ),
        Kind::Firewall => table(
            &r,
            &[
                ("NAME", &field("name")),
                ("CONTAINER", &field("container")),
                ("RULES", &|v: &Value| {
                    v["rules"]
                        .as_array()
                        .map(|rs| {
                            rs.iter()
                                .map(|r| {
                                    format!(
                                        "{}:{}/{}",
                                        text(&r["host_port"]),
                                        text(&r["container_port"]),
                                        text(&r["proto"])
                                    )
                                })
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default()
                }),
            ],
        ),
        Kind::Container => table(
            &r,
            &[
                ("ID", &field("id")),
                ("NAME", &field("name")),
                ("NETWORK", &field("network")),
                ("IP", &field("ip")),
                ("MAC", &field("mac")),
                ("HOST", &field("host")),
                ("PORT", &field("port")),
                ("PHYSICAL-IP", &field("physical_ip")),
            ],
        ),
        Kind::Host => table(
            &r,
            &[
                ("NAME", &field("name")),
                ("DPID", &field("dpid")),
                ("IP", &field("ip")),
                ("MAC", &field("mac")),
                ("UPLINK", &field("uplink_port")),
            ],
        ),
        Kind::Flows => {
            let mut out = String::new();
            for h in &r {
                out.push_str(&format!(
                    "host {} (dpid {})\n",
                    text(&h["host"]),
                    text(&h["dpid"])
                ));
                for f in h["flows"].as_array().into_iter().flatten() {
                    out.push_str(&format!("  {}\n", flow_line(f)));
                }
            }
            out
        }
        Kind::Trace => trace_text(v),
        Kind::Done(msg) => format!("{msg}\n"),
    }
}

/// `daolictl observe`: pages of `GET /api/events`, printed as they come.
fn observe(
    c: &Client,
    container: Option<String>,
    network: Option<String>,
    verdict: Option<String>,
    follow: bool,
    output: Output,
) -> Result<String, Failure> {
    let mut filter = String::new();
    for (k, v) in [
        ("container", container),
        ("network", network),
        ("verdict", verdict),
    ] {
        if let Some(v) = v {
            filter.push_str(&format!("&{k}={}", enc(&v)));
        }
    }
    let mut since: Option<u64> = None;
    let mut header = output == Output::Table;
    loop {
        let path = match since {
            Some(s) => format!("/api/events?since={s}{filter}"),
            None => format!("/api/events?{}", filter.trim_start_matches('&')),
        };
        let page = c.call("GET", &path, None)?;
        let mut out = String::new();
        if page["lost"].as_u64().unwrap_or(0) > 0 {
            eprintln!(
                "daolictl: {} events were overwritten before they were read",
                page["lost"]
            );
        }
        for e in page["events"].as_array().into_iter().flatten() {
            match output {
                Output::Json => out.push_str(&format!("{e}\n")),
                Output::Table => {
                    if header {
                        out.push_str("SEQ  HOST  PORT  SRC  DST  PACKET  VERDICT  REASON  BY\n");
                        header = false;
                    }
                    out.push_str(&format!(
                        "{}  {}  {}  {}  {}  {}  {}  {}  {}\n",
                        text(&e["seq"]),
                        text(&e["host"]),
                        text(&e["in_port"]),
                        text(&e["src"]),
                        text(&e["dst"]),
                        text(&e["packet"]),
                        text(&e["verdict"]),
                        text(&e["reason"]),
                        text(&e["by"]),
                    ));
                }
            }
        }
        if !follow {
            return Ok(out);
        }
        let mut o = std::io::stdout().lock();
        if o.write_all(out.as_bytes())
            .and_then(|()| o.flush())
            .is_err()
        {
            return Ok(String::new());
        }
        since = page["next"].as_u64().or(since);
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// An end of a trace: `name (network, ip) on host port N`.
fn end_text(e: &Value) -> String {
    format!(
        "{} ({}, {}) on {} port {}",
        text(&e["container"]),
        text(&e["network"]),
        text(&e["ip"]),
        text(&e["host"]),
        text(&e["port"])
    )
}

/// `daolictl trace` as text.
fn trace_text(v: &Value) -> String {
    let verdict = match &v["verdict"] {
        Value::Object(o) => o
            .iter()
            .map(|(k, r)| format!("{k} ({})", text(r)))
            .collect::<Vec<_>>()
            .join(","),
        other => text(other),
    };
    let to = if v["dst"].is_null() {
        text(&v["dst_ip"])
    } else {
        end_text(&v["dst"])
    };
    let port = v["dport"]
        .as_u64()
        .map(|p| format!(" port {p}"))
        .unwrap_or_default();
    let r = &v["result"];
    let result = match r["kind"].as_str() {
        Some("delivered") => format!(
            "delivered to {} on {} port {}",
            text(&r["container"]),
            text(&r["host"]),
            text(&r["port"])
        ),
        Some("outside") => format!("leaves through the stack of host {}", text(&r["host"])),
        Some("dropped") => format!("dropped: {}", text(&r["reason"])),
        _ => text(r),
    };
    let mut out = format!(
        "from     {}\nto       {to} ({}{port})\nverdict  {verdict}\nwhy      {}\nresult   {result}\n",
        end_text(&v["src"]),
        text(&v["proto"]),
        text(&v["reason"]),
    );
    for h in v["hops"].as_array().into_iter().flatten() {
        let source = match h["source"].as_str() {
            Some("installed") => "installed",
            _ => "installed by the controller on the first packet",
        };
        out.push_str(&format!(
            "\nhost {} (dpid {}), in on port {}\n",
            text(&h["host"]),
            text(&h["dpid"]),
            port_text(&h["in_port"])
        ));
        if h["flow"].is_null() {
            out.push_str("  no flow matches\n");
            continue;
        }
        out.push_str(&format!("  flow ({source}): {}\n", flow_line(&h["flow"])));
        match h["output"].as_u64() {
            Some(p) => out.push_str(&format!(
                "  out {} -> {} (eth_dst {}) on port {}\n",
                text(&h["out_src"]),
                text(&h["out_dst"]),
                text(&h["out_eth_dst"]),
                port_text(&json!(p))
            )),
            None => out.push_str("  dropped here\n"),
        }
    }
    if !v["live"].is_null() {
        out.push_str(&live_text(&v["live"]));
    }
    out
}

/// Where a live probe ended, in words.
fn live_result_text(r: &Value) -> String {
    match r["kind"].as_str() {
        Some("delivered") => format!(
            "delivered to {} on {} port {}",
            text(&r["container"]),
            text(&r["host"]),
            text(&r["port"])
        ),
        Some("outside") => format!("left through the stack of host {}", text(&r["host"])),
        Some("dropped") => format!(
            "not delivered: dropped on {} by a drop flow ({})",
            text(&r["host"]),
            text(&r["reason"])
        ),
        Some("not_delivered") => text(&r["reason"]),
        _ => text(r),
    }
}

/// The live part of `daolictl trace --live` as text.
fn live_text(l: &Value) -> String {
    let first = if l["decided_first"].as_bool() == Some(true) {
        "; the pair had no flows: the probe was decided and its flows installed first"
    } else {
        ""
    };
    let mut out = format!(
        "\nlive     {} (after {} ms; timeout {} ms{first})\n",
        live_result_text(&l["result"]),
        text(&l["waited_ms"]),
        text(&l["timeout_ms"]),
    );
    for h in l["hops"].as_array().into_iter().flatten() {
        let flow = match h["cookie"].as_u64() {
            Some(c) => format!(
                "flow cookie={c:#x} packets {} -> {}",
                text(&h["packets_before"]),
                text(&h["packets_after"])
            ),
            None => "no flow".into(),
        };
        out.push_str(&format!(
            "  {} {} ({}): {flow}: {}\n",
            if h["seen"].as_bool() == Some(true) {
                "seen    "
            } else {
                "not seen"
            },
            text(&h["host"]),
            text(&h["switch"]),
            text(&h["note"])
        ));
    }
    out
}

/// Why a live trace's probe did not arrive (`None`: delivered, left
/// through the host stack as traced, or not a live trace).
fn live_failure(v: &Value) -> Option<String> {
    let r = &v["live"]["result"];
    match r["kind"].as_str() {
        None | Some("delivered" | "outside") => None,
        Some(_) => Some(format!("live probe: {}", live_result_text(r))),
    }
}

/// A port number as `ovs-ofctl dump-flows` shows it: reserved ports by
/// their OpenFlow name (`LOCAL`, `CONTROLLER`, `IN_PORT`...), others as
/// the number.
fn port_text(v: &Value) -> String {
    match v.as_u64().and_then(|p| u32::try_from(p).ok()) {
        Some(p) => daolinet_openflow::flow_syntax::fmt_port(p),
        None => text(v),
    }
}

/// One action as `ovs-ofctl dump-flows` shows it: `output:2`, `LOCAL`,
/// `IN_PORT`, `CONTROLLER`, `drop`, `set_eth_dst:...`.
fn action_text(a: &Value) -> String {
    let kind = text(&a["type"]);
    match (kind.as_str(), a.get("value")) {
        ("output", Some(v)) => {
            let port = port_text(v);
            if port.bytes().all(|b| b.is_ascii_digit()) {
                format!("output:{port}")
            } else {
                port
            }
        }
        ("local", None) => "LOCAL".into(),
        ("in_port", None) => "IN_PORT".into(),
        ("controller", None) => "CONTROLLER".into(),
        (_, Some(v)) => format!("{kind}:{}", text(v)),
        (_, None) => kind,
    }
}

/// One flow in ovs-ofctl-like syntax.
fn flow_line(f: &Value) -> String {
    let mut m = vec![
        format!("cookie={:#x}", f["cookie"].as_u64().unwrap_or(0)),
        format!("priority={}", text(&f["priority"])),
    ];
    for t in ["idle_timeout", "hard_timeout"] {
        if f[t].as_u64().unwrap_or(0) > 0 {
            m.push(format!("{t}={}", text(&f[t])));
        }
    }
    if let Some(obj) = f["match"].as_object() {
        for (k, v) in obj {
            let val = match (k.as_str(), v) {
                ("ipv4_src" | "ipv4_dst", Value::Object(o)) => {
                    let p = o.get("prefix").and_then(Value::as_u64).unwrap_or(32);
                    let a = o.get("addr").map(text).unwrap_or_default();
                    if p == 32 {
                        a
                    } else {
                        format!("{a}/{p}")
                    }
                }
                ("eth_type", Value::Number(n)) => format!("{:#06x}", n.as_u64().unwrap_or(0)),
                ("in_port", v) => port_text(v),
                _ => text(v),
            };
            m.push(format!("{k}={val}"));
        }
    }
    let acts: Vec<String> = f["actions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(action_text)
        .collect();
    let acts = if acts.is_empty() {
        "drop".to_string()
    } else {
        acts.join(",")
    };
    format!("{} actions={acts}", m.join(", "))
}

/// The HTTP client for `api`: HTTPS verified against `ca` for an
/// `https://` URL (which needs it), plain HTTP otherwise.
fn http_agent(api: &str, ca: Option<&std::path::Path>) -> Result<ureq::Agent, Failure> {
    let b = ureq::AgentBuilder::new().timeout(Duration::from_secs(30));
    let https = api.starts_with("https://");
    match (https, ca) {
        (true, Some(ca)) => {
            let cfg = daolinet_tls::api_client_config(ca).map_err(|e| Failure(e.to_string(), 1))?;
            Ok(b.tls_config(cfg).build())
        }
        (true, None) => Err(Failure(
            format!("{api} is HTTPS: pass --ca FILE (or DAOLI_CA), the CA certificate the controller's certificate chains to"),
            1,
        )),
        (false, Some(_)) => Err(Failure(
            format!("--ca is for an https:// --api, and {api} is not one"),
            1,
        )),
        (false, None) => Ok(b.build()),
    }
}

fn run(cli: Cli) -> Result<String, Failure> {
    if let Cmd::Completions { shell } = &cli.cmd {
        let mut buf = Vec::new();
        clap_complete::generate(*shell, &mut Cli::command(), "daolictl", &mut buf);
        return Ok(String::from_utf8_lossy(&buf).into_owned());
    }
    let token = match &cli.token {
        Some(t) => Ok(t.trim().to_string()),
        None => std::fs::read_to_string(&cli.token_file)
            .map(|t| t.trim().to_string())
            .map_err(|e| {
                format!(
                    "no API token: pass --token, set DAOLI_TOKEN, or make {} readable ({e})",
                    cli.token_file.display()
                )
            }),
    };
    // Every command but leaving while keeping the registration needs it:
    // say so before doing anything.
    if !matches!(
        cli.cmd,
        Cmd::Host(HostCmd::LeaveOvs {
            keep_host: true,
            ..
        })
    ) {
        if let Err(e) = &token {
            return Err(Failure(e.clone(), 1));
        }
    }
    let c = Client {
        api: cli.api.clone(),
        token,
        agent: http_agent(&cli.api, cli.ca.as_deref())?,
    };
    let one_or_all = |base: &str, name: &Option<String>| match name {
        Some(n) => format!("{base}/{}", enc(n)),
        None => base.to_string(),
    };
    let (kind, v) = match cli.cmd {
        Cmd::Network(NetworkCmd::Create {
            name,
            subnet,
            gateway,
            tenant,
            no_nat_out,
        }) => {
            let mut b = json!({ "name": name, "subnet": subnet });
            if let Some(g) = gateway {
                b["gateway"] = json!(g);
            }
            if let Some(t) = tenant {
                b["tenant"] = json!(t);
            }
            if no_nat_out {
                b["nat_out"] = json!(false);
            }
            (Kind::Network, c.call("POST", "/api/networks", Some(b))?)
        }
        Cmd::Network(NetworkCmd::Delete { name }) => {
            c.call("DELETE", &format!("/api/networks/{}", enc(&name)), None)?;
            (
                Kind::Done(format!("network {name} deleted")),
                json!({"deleted": name}),
            )
        }
        Cmd::Network(NetworkCmd::Show { name }) => (
            Kind::Network,
            c.call("GET", &one_or_all("/api/networks", &name), None)?,
        ),
        Cmd::Group(GroupCmd::Create { name, networks }) => (
            Kind::Group,
            c.call(
                "POST",
                "/api/groups",
                Some(json!({"name": name, "networks": networks})),
            )?,
        ),
        Cmd::Group(GroupCmd::Delete { name }) => {
            c.call("DELETE", &format!("/api/groups/{}", enc(&name)), None)?;
            (
                Kind::Done(format!("group {name} deleted")),
                json!({"deleted": name}),
            )
        }
        Cmd::Group(GroupCmd::Show { name }) => (
            Kind::Group,
            c.call("GET", &one_or_all("/api/groups", &name), None)?,
        ),
        Cmd::Group(GroupCmd::Add { group, network }) => (
            Kind::Group,
            c.call(
                "POST",
                &format!("/api/groups/{}/networks", enc(&group)),
                Some(json!({"network": network})),
            )?,
        ),
        Cmd::Group(GroupCmd::Remove { group, network }) => (
            Kind::Group,
            c.call(
                "DELETE",
                &format!("/api/groups/{}/networks/{}", enc(&group), enc(&network)),
                None,
            )?,
        ),
        Cmd::Connect { pair } => {
            let (a, b) = split_pair(&pair)?;
            (
                Kind::Policy,
                c.call(
                    "POST",
                    "/api/policies",
                    Some(json!({"a": a, "b": b, "action": "connect"})),
                )?,
            )
        }
        Cmd::Disconnect { pair } => {
            let (a, b) = split_pair(&pair)?;
            (
                Kind::Policy,
                c.call(
                    "POST",
                    "/api/policies",
                    Some(json!({"a": a, "b": b, "action": "disconnect"})),
                )?,
            )
        }
        Cmd::Policy(PolicyCmd::Show) => (Kind::Policy, c.call("GET", "/api/policies", None)?),
        Cmd::Policy(PolicyCmd::Delete { pair }) => {
            let (a, b) = split_pair(&pair)?;
            c.call(
                "DELETE",
                &format!("/api/policies/{}/{}", enc(a), enc(b)),
                None,
            )?;
            (
                Kind::Done(format!("policy {pair} deleted")),
                json!({"deleted": pair}),
            )
        }
        Cmd::Firewall(FirewallCmd::Create {
            name,
            container,
            rules,
        }) => (
            Kind::Firewall,
            c.call(
                "POST",
                "/api/firewalls",
                Some(json!({"name": name, "container": container, "rules": rules})),
            )?,
        ),
        Cmd::Firewall(FirewallCmd::Show { name }) => (
            Kind::Firewall,
            c.call("GET", &one_or_all("/api/firewalls", &name), None)?,
        ),
        Cmd::Firewall(FirewallCmd::Delete { name }) => {
            c.call("DELETE", &format!("/api/firewalls/{}", enc(&name)), None)?;
            (
                Kind::Done(format!("firewall {name} deleted")),
                json!({"deleted": name}),
            )
        }
        Cmd::Container(ContainerCmd::Show { id }) => (
            Kind::Container,
            c.call("GET", &one_or_all("/api/containers", &id), None)?,
        ),
        Cmd::Container(ContainerCmd::Create {
            id,
            name,
            network,
            host,
            port,
            ip,
            mac,
        }) => {
            let mut b = json!({"id": id, "network": network, "host": host, "port": port});
            for (k, v) in [("name", name), ("ip", ip), ("mac", mac)] {
                if let Some(v) = v {
                    b[k] = json!(v);
                }
            }
            (Kind::Container, c.call("POST", "/api/containers", Some(b))?)
        }
        Cmd::Container(ContainerCmd::Delete { id }) => {
            c.call("DELETE", &format!("/api/containers/{}", enc(&id)), None)?;
            (
                Kind::Done(format!("container {id} deleted")),
                json!({"deleted": id}),
            )
        }
        Cmd::Container(ContainerCmd::Move { id, host, port }) => (
            Kind::Container,
            c.call(
                "POST",
                &format!("/api/containers/{}/move", enc(&id)),
                Some(json!({"host": host, "port": port})),
            )?,
        ),
        Cmd::Host(HostCmd::Show { name }) => (
            Kind::Host,
            c.call("GET", &one_or_all("/api/hosts", &name), None)?,
        ),
        Cmd::Host(HostCmd::Add {
            name,
            dpid,
            ip,
            mac,
            uplink_port,
            local_mac,
        }) => {
            let mut b = json!({"name": name, "dpid": dpid, "ip": ip, "mac": mac, "uplink_port": uplink_port});
            if let Some(m) = local_mac {
                b["local_mac"] = json!(m);
            }
            (Kind::Host, c.call("POST", "/api/hosts", Some(b))?)
        }
        Cmd::Host(HostCmd::Delete { name }) => {
            c.call("DELETE", &format!("/api/hosts/{}", enc(&name)), None)?;
            (
                Kind::Done(format!("host {name} deleted")),
                json!({"deleted": name}),
            )
        }
        Cmd::Host(HostCmd::JoinOvs {
            bridge,
            uplink,
            controller,
            name,
            datapath,
            ovs_db,
        }) => {
            let (line, v) = join::join(
                &c,
                &join::JoinArgs {
                    bridge,
                    uplink,
                    controller,
                    name,
                    datapath,
                    ovs_db,
                },
            )?;
            (Kind::Done(line), v)
        }
        Cmd::Host(HostCmd::LeaveOvs {
            bridge,
            ovs_db,
            keep_host,
        }) => {
            let (line, v) = join::leave(
                &c,
                &join::LeaveArgs {
                    bridge,
                    ovs_db,
                    keep_host,
                },
            )?;
            (Kind::Done(line), v)
        }
        Cmd::Flows { host } => {
            let path = match &host {
                Some(h) => format!("/api/flows?host={}", enc(h)),
                None => "/api/flows".into(),
            };
            (Kind::Flows, c.call("GET", &path, None)?)
        }
        Cmd::Observe {
            container,
            network,
            verdict,
            follow,
        } => return observe(&c, container, network, verdict, follow, cli.output),
        Cmd::Trace {
            src,
            dst,
            proto,
            dport,
            live,
            timeout,
        } => {
            let proto = match proto {
                TraceProto::Icmp => "icmp",
                TraceProto::Tcp => "tcp",
                TraceProto::Udp => "udp",
            };
            let mut body = json!({"src": src, "dst": dst, "proto": proto});
            if let Some(p) = dport {
                body["dport"] = json!(p);
            }
            if live {
                body["live"] = json!(true);
            }
            if let Some(t) = timeout {
                if !(t > 0.0 && t <= 20.0) {
                    return Err(Failure(
                        format!("--timeout {t}: give more than 0 and at most 20 seconds"),
                        2,
                    ));
                }
                body["timeout_ms"] = json!((t * 1000.0).ceil() as u64);
            }
            let v = c.call("POST", "/api/trace", Some(body))?;
            if let Some(why) = live_failure(&v) {
                // The report, then why it failed (exit status 1).
                let out = match cli.output {
                    Output::Json => {
                        format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default())
                    }
                    Output::Table => trace_text(&v),
                };
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(out.as_bytes());
                let _ = o.flush();
                return Err(Failure(why, 1));
            }
            (Kind::Trace, v)
        }
        Cmd::Completions { .. } => return Ok(String::new()),
    };
    Ok(match cli.output {
        Output::Json => format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default()),
        Output::Table => render(&kind, &v),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(out) => {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(out.as_bytes());
            let _ = o.flush();
            ExitCode::SUCCESS
        }
        Err(Failure(msg, code)) => {
            eprintln!("daolictl: {msg}");
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_print_by_name_like_ovs_ofctl() {
        let f = json!({
            "cookie": 16,
            "priority": 100,
            "idle_timeout": 10,
            "match": {"in_port": 4294967294u32, "eth_type": 2048},
            "actions": [
                {"type": "set_ipv4_dst", "value": "10.1.0.2"},
                {"type": "output", "value": 3},
                {"type": "output", "value": 4294967293u32},
                {"type": "output", "value": 4294967288u32},
                {"type": "local"},
                {"type": "in_port"},
                {"type": "controller"},
            ],
        });
        assert_eq!(
            flow_line(&f),
            "cookie=0x10, priority=100, idle_timeout=10, eth_type=0x0800, in_port=LOCAL \
             actions=set_ipv4_dst:10.1.0.2,output:3,CONTROLLER,IN_PORT,LOCAL,IN_PORT,CONTROLLER"
        );
        let plain = json!({"cookie": 0, "priority": 1, "match": {"in_port": 7}, "actions": []});
        assert_eq!(
            flow_line(&plain),
            "cookie=0x0, priority=1, in_port=7 actions=drop"
        );
        for (p, name) in [
            (0xfffffffcu32, "ALL"),
            (0xfffffffb, "FLOOD"),
            (0xfffffff9, "TABLE"),
            (0xffffffff, "ANY"),
        ] {
            assert_eq!(port_text(&json!(p)), name);
        }
    }
}
