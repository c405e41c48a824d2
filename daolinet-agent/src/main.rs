//! `daolinet-agent`: the per-host DaoliNet switch.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use daolinet_agent::conn::ConnConfig;
use daolinet_agent::control::{request, Request};
use daolinet_agent::datapath::{BpfObject, Datapath, UplinkMode};
use daolinet_agent::engine::Engine;
use daolinet_agent::host::Host;
use daolinet_agent::hostsetup::NatOut;
use daolinet_agent::ofswitch::{FailMode, Switch, SwitchSettings};
use daolinet_agent::oftable::FlowTable;
use daolinet_agent::register::Registrar;
use daolinet_agent::table::RuleTable;
use daolinet_common::PortKind;

#[derive(Parser)]
#[command(
    name = "daolinet-agent",
    version,
    about = "DaoliNet per-host switch with an eBPF datapath"
)]
struct Cli {
    /// Directory for the control socket (agent.sock).
    #[arg(long, global = true, default_value = "/run/daolinet")]
    state_dir: PathBuf,
    /// Where bpffs is (mounted if needed). Maps are pinned under
    /// `<bpffs>/daolinet/<state-dir>` so rules survive an agent restart.
    /// Note: `ip netns exec` gives the process a private /sys, so an agent
    /// started that way needs a bpffs outside /sys to keep its pins.
    #[arg(long, global = true, default_value = daolinet_agent::datapath::BPFFS)]
    bpffs: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the datapath, attach the uplink and ports, act as an OpenFlow 1.3 switch
    /// (controllers, passive listener) and serve the control socket until SIGINT/SIGTERM.
    Run(Box<RunArgs>),
    /// Manage ports of the running agent.
    Port {
        #[command(subcommand)]
        cmd: PortCmd,
    },
    /// List the running agent's ports with counters.
    Ports,
    /// Print the rule table with counters (like `ovs-ofctl dump-flows`).
    Flows,
    /// What is wrong, in words (a controller unreachable, the program not
    /// attached on a port, a map full, the punt rate limited), the switch
    /// counters and the last sampled drops (reason, port, headers).
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// What the running agent is: host name and API it registered with,
    /// state directory, datapath id (what runtimes' integrations read).
    Info,
    /// Install or remove rules in the running agent.
    Rule {
        #[command(subcommand)]
        cmd: RuleCmd,
    },
}

/// Options of `run`.
#[derive(clap::Args)]
struct RunArgs {
    /// The physical NIC (TC or XDP ingress program; table misses go to the host stack).
    #[arg(long)]
    uplink: String,
    /// Container ports: host side of a veth, optionally with its OpenFlow port number.
    #[arg(long = "port", value_name = "IFACE[=OFPORT]")]
    ports: Vec<String>,
    /// OpenFlow port number of the uplink. Kept below 0xff00 so that
    /// Open vSwitch tools (16-bit port space) can show it.
    #[arg(long, default_value_t = daolinet_agent::DEFAULT_UPLINK_OFPORT)]
    uplink_ofport: u32,
    /// How to attach the uplink program.
    #[arg(long, value_enum, default_value = "tc")]
    uplink_mode: UplinkMode,
    /// A BPF object file to load instead of the one built into this binary
    /// (default: $DAOLINET_BPF_OBJECT if set, else the embedded object).
    #[arg(long, value_name = "PATH")]
    bpf_object: Option<PathBuf>,
    /// OpenFlow 1.3 controller to connect to, `tcp:IP[:PORT]`, or
    /// `ssl:IP[:PORT]` for TLS with mutual authentication (needs
    /// --tls-ca/--tls-cert/--tls-key); default port 6653. Repeat for
    /// several (the controllers elect one master among themselves).
    /// Reconnects with backoff, echo keepalive.
    #[arg(long, value_name = "tcp|ssl:IP[:PORT]")]
    controller: Vec<String>,
    /// CA certificate (PEM) the controllers' certificates must chain to
    /// (`ovs-pki`: `controllerca/cacert.pem`).
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// This switch's certificate (PEM), bound to its datapath id: the
    /// first word of its common name (`ovs-pki req+sign DPID switch`).
    #[arg(long, value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// This switch's private key (PEM).
    #[arg(long, value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// Passive OpenFlow listener for tools (`ovs-ofctl -O OpenFlow13 ... tcp:127.0.0.1:PORT`).
    /// Binds 127.0.0.1 unless an address is given: it has no authentication.
    #[arg(long, value_name = "ptcp:PORT[:IP]")]
    listen: Option<String>,
    /// Datapath id in hex (default: from the uplink's MAC address).
    #[arg(long, value_name = "HEX")]
    datapath_id: Option<String>,
    /// Without a reachable controller: `secure` keeps the flows and drops
    /// table misses; `standalone` also forwards misses by L2 learning.
    #[arg(long, value_enum, default_value = "secure")]
    fail_mode: FailMode,
    /// PACKET_INs per second allowed per ingress port (0 = unlimited).
    #[arg(long, default_value_t = 1000)]
    packet_in_rate: u32,
    /// PACKET_IN burst allowed per port above the rate.
    #[arg(long, default_value_t = 200)]
    packet_in_burst: u32,
    /// Answer containers' ARP requests locally with this (gateway) MAC,
    /// without a controller round trip. Off by default.
    #[arg(long, value_name = "MAC")]
    arp_responder: Option<String>,
    /// After sending PACKET_INs, busy-wait up to this many microseconds for the
    /// controller's answer and handle it at once, instead of sleeping until it
    /// arrives (waking a thread costs tens of microseconds on virtual machines).
    /// Spinning only follows a PACKET_IN, stops at the answer, and uses at most 10%
    /// of one CPU over time; an idle agent does not spin. 0 turns it off.
    #[arg(long, value_name = "US", default_value_t = 200)]
    reply_spin_us: u64,
    /// Have punts wake the agent through a TAP device (`dlbellN`) that the
    /// datapath sends a copy of the packet to, instead of the punt ring's own
    /// wake-up, an interrupt that costs about 10 µs more on virtual machines.
    /// Only when the agent had read every punt before; `false`: the ring's
    /// wake-up only.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    punt_bell: bool,
    /// The controller's physical pool (`--physical-pool`), e.g.
    /// `172.31.0.0/16`: the agent sets its host up for NAT-out
    /// (forwarding, the pool masqueraded out of the uplink in nftables
    /// table `ip daolinet`, the pool routed to the LOCAL port) and
    /// undoes it when it stops. With `--api` and without this option,
    /// the pool is read from the API (asked again with backoff until it
    /// answers). `none` sets nothing up.
    #[arg(long, env = "DAOLI_NAT_POOL", value_name = "CIDR|none")]
    nat_pool: Option<String>,
    /// Most flows the switch holds (the datapath maps are sized for it at
    /// load; memory follows the flows installed, but for the hash table's
    /// bucket array, 16 bytes per flow of this number). Default: from the
    /// host's memory (a sixteenth of it at 1 KiB per flow, 65,536 to
    /// 1,048,576). Maps pinned by an earlier run keep their size.
    #[arg(long, value_name = "N")]
    max_flows: Option<u32>,
    /// Metrics and drop reports.
    #[command(flatten)]
    observe: Box<ObserveArgs>,
    /// Self-registration with the controller's REST API.
    #[command(flatten)]
    register: Box<RegisterArgs>,
}

/// Metrics and drop report options of `run`.
#[derive(clap::Args)]
struct ObserveArgs {
    /// Serve Prometheus metrics on `IP:PORT` (`GET /metrics`): drops by
    /// reason and port, port counters, flows, punts and PACKET_INs,
    /// first-packet handling latency, controller connections, map use.
    /// Read when scraped; port 0 picks a free port (logged). No
    /// authentication: bind it where only your Prometheus reaches it.
    #[arg(long, value_name = "IP:PORT")]
    metrics: Option<std::net::SocketAddr>,
    /// Dropped packets the datapath reports (their headers, for `daolictl
    /// observe`), at most this many per second per CPU (up to 1000000);
    /// 0 reports none. Every drop is counted either way.
    #[arg(
        long,
        value_name = "N",
        default_value_t = daolinet_common::drop_sample::DEFAULT_SAMPLE_RATE,
        value_parser = clap::value_parser!(u32)
            .range(0..=i64::from(daolinet_common::drop_sample::MAX_SAMPLE_RATE))
    )]
    drop_sample_rate: u32,
    /// Burst of drop reports per CPU above the rate.
    #[arg(long, value_name = "N", default_value_t = daolinet_common::drop_sample::DEFAULT_SAMPLE_BURST)]
    drop_sample_burst: u32,
}

/// Self-registration options of `run`.
#[derive(clap::Args)]
struct RegisterArgs {
    /// The controller's REST API, e.g. `http://10.0.0.1:8080`: the agent
    /// registers its host there (datapath id, the uplink's IPv4 address
    /// and MAC, uplink port, LOCAL MAC) on start and after each
    /// reconnection to a controller. A conflicting registration (the name
    /// taken by another datapath id...) stops the agent.
    #[arg(long, env = "DAOLI_API", value_name = "URL")]
    api: Option<String>,
    /// File holding the API token (with --api).
    #[arg(
        long,
        env = "DAOLI_TOKEN_FILE",
        value_name = "FILE",
        default_value = "/var/lib/daolinet/api-token"
    )]
    api_token_file: PathBuf,
    /// Name to register the host under (with --api; default: the host name).
    #[arg(long, value_name = "NAME")]
    host_name: Option<String>,
    /// With --api: how long the agent may wait at start for an OpenFlow
    /// controller to answer at --controller and for the API to take its
    /// registration, before it stops with an error having changed nothing
    /// on the host (0: wait for ever, e.g. when the agent may boot before
    /// the controller). An address that answers but is not the
    /// controller's (OpenFlow or API) stops it at once. Once joined, the
    /// agent rides out controller outages, registering again each time
    /// it reconnects.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    join_timeout: u64,
}

#[derive(Subcommand)]
enum PortCmd {
    /// Attach a container port.
    Add {
        /// Interface (host side of the container's veth).
        iface: String,
        /// OpenFlow port number (next free one when omitted).
        #[arg(long)]
        ofport: Option<u32>,
    },
    /// Detach a port.
    Del {
        /// Interface.
        iface: String,
    },
}

#[derive(Subcommand)]
enum RuleCmd {
    /// Install a rule in ovs-ofctl syntax, e.g. `priority=10,in_port=1,ip actions=output:2`.
    Add {
        /// The flow.
        flow: String,
    },
    /// Remove the rules with this cookie (hex with 0x, or decimal).
    Del {
        /// Cookie.
        cookie: String,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = dispatch(cli) {
        eprintln!("daolinet-agent: error: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    let dir = cli.state_dir;
    let print = |v: serde_json::Value| -> Result<()> {
        println!("{}", serde_json::to_string_pretty(&v)?);
        Ok(())
    };
    match cli.cmd {
        Cmd::Run(run_args) => {
            let RunArgs {
                uplink,
                uplink_ofport,
                ports,
                uplink_mode,
                bpf_object,
                controller,
                tls_ca,
                tls_cert,
                tls_key,
                listen,
                datapath_id,
                fail_mode,
                packet_in_rate,
                packet_in_burst,
                arp_responder,
                reply_spin_us,
                punt_bell,
                nat_pool,
                max_flows,
                observe,
                register,
            } = *run_args;
            let ObserveArgs {
                metrics,
                drop_sample_rate,
                drop_sample_burst,
            } = *observe;
            let nat_pool = match nat_pool.as_deref() {
                None => NatPool::FromApi,
                Some("none") => NatPool::Off,
                Some(p) => {
                    NatPool::Given(p.parse().map_err(|e: String| anyhow!("--nat-pool: {e}"))?)
                }
            };
            let max_flows = match max_flows {
                Some(n) if n == 0 || n > daolinet_agent::datapath::MAX_FLOWS_LIMIT => bail!(
                    "--max-flows {n}: expected 1 to {}",
                    daolinet_agent::datapath::MAX_FLOWS_LIMIT
                ),
                Some(n) => n,
                None => daolinet_agent::datapath::default_max_flows(
                    daolinet_agent::datapath::mem_total().unwrap_or(0),
                ),
            };
            let controllers = controller
                .iter()
                .map(|c| daolinet_agent::runtime::parse_active(c))
                .collect::<Result<Vec<_>>>()?;
            // TLS files are read and checked before anything starts.
            let tls = if controllers.iter().any(|c| c.ssl) {
                let (Some(ca), Some(cert), Some(key)) = (tls_ca, tls_cert, tls_key) else {
                    bail!("an ssl: --controller needs --tls-ca, --tls-cert and --tls-key");
                };
                Some(daolinet_tls::client_config(&daolinet_tls::TlsFiles {
                    ca,
                    cert,
                    key,
                })?)
            } else if tls_ca.is_some() || tls_cert.is_some() || tls_key.is_some() {
                bail!("--tls-ca/--tls-cert/--tls-key are for ssl: controllers: none is given");
            } else {
                None
            };
            let listen = listen
                .as_deref()
                .map(daolinet_agent::runtime::parse_passive)
                .transpose()?;
            let dpid = datapath_id
                .as_deref()
                .map(|h| {
                    u64::from_str_radix(h.trim_start_matches("0x"), 16)
                        .map_err(|_| anyhow!("bad --datapath-id {h:?}: expected hex"))
                })
                .transpose()?;
            let arp = arp_responder
                .as_deref()
                .map(|m| {
                    m.parse::<daolinet_openflow::MacAddr>()
                        .map(|m| m.0)
                        .map_err(|e| anyhow!("--arp-responder: {e}"))
                })
                .transpose()?;
            let settings = SwitchSettings {
                datapath_id: dpid.unwrap_or(0),
                packet_in_rate,
                packet_in_burst,
                arp_responder: arp,
                fail_mode,
            };
            run(
                &dir,
                &cli.bpffs,
                (&uplink, uplink_ofport),
                &ports,
                uplink_mode,
                bpf_object,
                Net {
                    controllers,
                    tls,
                    listen,
                    settings,
                    dpid_given: dpid.is_some(),
                    spin: daolinet_agent::fastpath::ReplySpin::micros(reply_spin_us),
                    punt_bell,
                    nat_pool,
                    max_flows,
                    metrics,
                    sampling: (drop_sample_rate, drop_sample_burst),
                    register: {
                        let RegisterArgs {
                            api,
                            api_token_file,
                            host_name,
                            join_timeout,
                        } = *register;
                        api.map(|api| Register {
                            api,
                            token_file: api_token_file,
                            name: host_name,
                            join_timeout: (join_timeout > 0)
                                .then(|| std::time::Duration::from_secs(join_timeout)),
                        })
                    },
                },
            )
        }
        Cmd::Port {
            cmd: PortCmd::Add { iface, ofport },
        } => print(request(&dir, &Request::PortAdd { iface, ofport })?),
        Cmd::Port {
            cmd: PortCmd::Del { iface },
        } => print(request(&dir, &Request::PortDel { iface })?),
        Cmd::Ports => print(request(&dir, &Request::Ports)?),
        Cmd::Status { json: true } => print(request(&dir, &Request::Status)?),
        Cmd::Status { json: false } => {
            print!(
                "{}",
                daolinet_agent::status::text(&request(&dir, &Request::Status)?)
            );
            Ok(())
        }
        Cmd::Info => print(request(&dir, &Request::Info)?),
        Cmd::Flows => {
            let v = request(&dir, &Request::Flows)?;
            for line in v.as_array().into_iter().flatten() {
                println!(" {}", line.as_str().unwrap_or_default());
            }
            Ok(())
        }
        Cmd::Rule {
            cmd: RuleCmd::Add { flow },
        } => print(request(&dir, &Request::RuleAdd { flow })?),
        Cmd::Rule {
            cmd: RuleCmd::Del { cookie },
        } => {
            let c = match cookie.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => cookie.parse(),
            }
            .map_err(|_| anyhow!("bad cookie {cookie:?}"))?;
            print(request(
                &dir,
                &Request::RuleDel {
                    cookie: c,
                    mask: None,
                },
            )?)
        }
    }
}

fn parse_port(spec: &str) -> Result<(String, Option<u32>)> {
    match spec.split_once('=') {
        None => Ok((spec.to_string(), None)),
        Some((i, n)) => Ok((
            i.to_string(),
            Some(
                n.parse()
                    .map_err(|_| anyhow!("bad OpenFlow port number in --port {spec}"))?,
            ),
        )),
    }
}

/// Where the NAT-out pool comes from.
enum NatPool {
    /// `--nat-pool CIDR`.
    Given(daolinet_natout::Pool),
    /// From the API with `--api`, else no NAT-out set-up.
    FromApi,
    /// `--nat-pool none`.
    Off,
}

/// The OpenFlow side of `run`.
struct Net {
    controllers: Vec<daolinet_agent::runtime::Target>,
    tls: Option<std::sync::Arc<daolinet_tls::rustls::ClientConfig>>,
    listen: Option<std::net::SocketAddr>,
    settings: SwitchSettings,
    dpid_given: bool,
    spin: daolinet_agent::fastpath::ReplySpin,
    /// `--punt-bell`.
    punt_bell: bool,
    nat_pool: NatPool,
    max_flows: u32,
    metrics: Option<std::net::SocketAddr>,
    /// Drop samples per second per CPU, and burst.
    sampling: (u32, u32),
    register: Option<Register>,
}

/// Self-registration options of `run` (with `--api`).
struct Register {
    api: String,
    token_file: PathBuf,
    name: Option<String>,
    /// `--join-timeout` (`None`: for ever).
    join_timeout: Option<std::time::Duration>,
}

impl Register {
    /// Everything checked before the agent touches anything: the token,
    /// the name, the uplink's IPv4 address.
    fn registrar(self, uplink: &str, uplink_port: u32, dpid: u64) -> Result<Registrar> {
        if !(self.api.starts_with("http://") || self.api.starts_with("https://")) {
            bail!("--api {:?}: expected http://HOST:PORT", self.api);
        }
        let token = daolinet_agent::register::read_token(&self.token_file)?;
        let name = match self.name {
            Some(n) => n,
            None => daolinet_agent::register::hostname()?,
        };
        let r = Registrar {
            api: self.api,
            token,
            name,
            uplink: uplink.to_string(),
            uplink_port,
            dpid,
        };
        r.record()?;
        Ok(r)
    }
}

fn run(
    dir: &Path,
    bpffs: &Path,
    (uplink, uplink_ofport): (&str, u32),
    ports: &[String],
    uplink_mode: UplinkMode,
    bpf_object: Option<PathBuf>,
    mut net: Net,
) -> Result<()> {
    daolinet_agent::datapath::check_privileges()?;
    let specs: Vec<(String, Option<u32>)> =
        ports.iter().map(|p| parse_port(p)).collect::<Result<_>>()?;
    // Check every interface before touching anything.
    daolinet_agent::datapath::ifindex(uplink).context("--uplink")?;
    for (iface, _) in &specs {
        daolinet_agent::datapath::ifindex(iface).context("--port")?;
    }
    // Bound before anything is touched: a busy address changes nothing.
    let metrics = match net.metrics {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr)
                .with_context(|| format!("--metrics: listening on {addr}"))?;
            let at = l.local_addr()?;
            tracing::info!(addr = %at, "metrics on http://{at}/metrics");
            Some(l)
        }
        None => None,
    };
    let object = BpfObject::choose(bpf_object);
    let object_bytes = object.bytes()?;
    if !net.dpid_given {
        let (mac, _) = daolinet_agent::netdev::iface_info(uplink);
        net.settings.datapath_id = mac
            .map(|m| m.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b)))
            .unwrap_or(1);
    }
    let token_file = net.register.as_ref().map(|r| r.token_file.clone());
    let join_timeout = net.register.as_ref().and_then(|r| r.join_timeout);
    let datapath_id = net.settings.datapath_id;
    let registrar = net
        .register
        .take()
        .map(|r| r.registrar(uplink, uplink_ofport, net.settings.datapath_id))
        .transpose()?;
    let sock = dir.join("agent.sock");
    if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
        bail!(
            "another agent is running with --state-dir {}",
            dir.display()
        );
    }
    let pin_dir = bpffs.join("daolinet").join(pin_name(dir));
    if uplink_mode == UplinkMode::Tc {
        daolinet_agent::datapath::refuse_served_uplink(uplink, &pin_dir)?;
    }
    // Joined before anything changes on the host: a wrong address or a
    // refused registration stops the agent with the host as it was. A
    // record this run created goes again if the start fails after it.
    let mut withdraw = None;
    if let Some(r) = &registrar {
        if r.join(&net.controllers, join_timeout)? {
            withdraw = Some(Withdraw(Some(r.clone())));
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let _ = std::fs::remove_file(&sock);
    daolinet_agent::datapath::ensure_bpffs(bpffs)?;
    let mut dp = Datapath::load(&object_bytes, &pin_dir, net.max_flows)?;
    drop(object_bytes);
    tracing::info!(%object, pins = %pin_dir.display(), "datapath loaded");
    let saved = dp.saved_rules()?;
    if !saved.rules.is_empty() {
        tracing::info!(
            restored = saved.rules.len(),
            "rules kept in the pinned maps from the previous run"
        );
    }
    let flows = FlowTable::new(
        RuleTable::restore(&saved.subtables, saved.rules).with_limit(dp.capacity()),
        daolinet_agent::engine::now_ns(),
    );
    tracing::info!(
        datapath_id = format!("{:016x}", net.settings.datapath_id),
        fail_mode = ?net.settings.fail_mode,
        max_flows = dp.capacity(),
        "OpenFlow 1.3 switch"
    );
    let mut host = Host::new(dp, uplink_mode, net.punt_bell);
    if let Err(e) = host.set_drop_sampling(net.sampling.0, net.sampling.1) {
        tracing::warn!("drop sampling not set: {e:#}");
    }
    let mut eng = Engine::new(
        host,
        Switch::new(flows, net.settings),
        ConnConfig::default(),
    );
    // Attach everything or nothing: on error, dropping the engine detaches
    // what was attached (links are owned).
    eng.add_port(uplink, Some(uplink_ofport), PortKind::Uplink)?;
    for (iface, ofport) in &specs {
        eng.add_port(iface, *ofport, PortKind::Container)?;
    }
    let book = attach_kept_ports(dir, &specs, &mut eng);
    let local_dev = eng.dp.attach_local()?;
    let nat = match (net.nat_pool, &local_dev, &registrar) {
        (NatPool::Off, _, _) | (NatPool::FromApi, _, None) => None,
        (_, None, _) => {
            tracing::warn!("NAT-out not set up: no LOCAL device");
            None
        }
        (NatPool::Given(p), Some(dev), _) => Some(NatOut::now(p, uplink, dev)?),
        (NatPool::FromApi, Some(dev), Some(r)) => {
            Some(NatOut::from_api(&r.api, &r.token, uplink, dev)?)
        }
    };
    let listen = match net.listen {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr)
                .with_context(|| format!("listening on {addr}"))?;
            tracing::info!(%addr, "OpenFlow listener (passive)");
            Some(l)
        }
        None => None,
    };
    for c in &net.controllers {
        tracing::info!(controller = %c, "OpenFlow controller (active)");
    }
    let control =
        UnixListener::bind(&sock).with_context(|| format!("binding {}", sock.display()))?;
    // What runtimes' integrations ask the control socket for; the queue
    // of deregistrations they could not do drains on a thread of its own.
    let (drainer, drain_thread) = daolinet_agent::delqueue::prepare(
        dir,
        registrar
            .as_ref()
            .map(|r| daolinet_attach::api::Api::new(&r.api, &r.token)),
    );
    let control_ctx = daolinet_agent::control::ControlState {
        info: daolinet_agent::control::Info {
            host: registrar.as_ref().map(|r| r.name.clone()),
            api: registrar.as_ref().map(|r| r.api.clone()),
            api_token_file: registrar
                .as_ref()
                .and(token_file)
                .map(|p| std::path::absolute(&p).unwrap_or(p)),
            state_dir: std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()),
            datapath_id: format!("{datapath_id:016x}"),
        },
        book: Some(book),
        drainer,
    };
    // The registrar (blocking HTTP) runs on a thread of its own; the event
    // loop tells it when a controller connection comes up.
    let (connected_tx, connected_rx) = std::sync::mpsc::channel::<()>();
    // One thread owns everything else: the switch, the datapath, every
    // socket.
    let mut lp = daolinet_agent::runtime::EventLoop::new(
        eng,
        daolinet_agent::runtime::Net {
            controllers: net.controllers,
            tls: net.tls,
            listen,
            control: Some(control),
            spin: net.spin,
            signals: true,
            metrics,
            on_connect: registrar.is_some().then(|| {
                Box::new(move || {
                    let _ = connected_tx.send(());
                }) as Box<dyn FnMut() + Send>
            }),
            control_ctx,
        },
    )?;
    if let Some(d) = drain_thread {
        d.spawn()?;
    }
    if let Some(r) = registrar {
        let stop = lp.stop_handle();
        std::thread::Builder::new()
            .name("register".into())
            .spawn(move || {
                if let Some(e) = r.run(connected_rx) {
                    stop.fail(e);
                }
            })
            .context("starting the registration thread")?;
    }
    // Started: from here on the registration stays whatever happens.
    if let Some(w) = withdraw.take() {
        w.keep();
    }
    tracing::info!(socket = %sock.display(), "agent running; SIGINT/SIGTERM to stop");
    let res = lp.run();
    if res.is_ok() {
        // A clean stop: the datapath keeps forwarding (pinned programs and
        // maps) until the agent is back.
        lp.engine().dp.keep_datapath();
        tracing::info!("stopping: the datapath keeps forwarding (pinned programs and maps)");
    } else {
        tracing::info!("stopping on an error: detaching the programs this run attached");
    }
    let _ = std::fs::remove_file(&sock);
    // Before the LOCAL device goes (with the engine): its route and
    // sysctl are undone while it exists.
    if let Some(g) = nat {
        match g.release() {
            Ok(()) => tracing::info!("NAT-out set-up undone"),
            Err(e) => tracing::error!("undoing the NAT-out set-up: {e}"),
        }
    }
    drop(lp);
    res
}

/// The registration this run created, withdrawn on drop unless kept: a
/// start that fails after the join leaves no record behind.
struct Withdraw(Option<Registrar>);

impl Withdraw {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r.unregister();
        }
    }
}

/// Attach again the ports a previous run attached through the control
/// socket (kept in `<state-dir>/ports.json`), unless `--port` names them
/// now; ports whose interface is gone, or that cannot be attached, are
/// forgotten. The book, for the control socket to keep up to date.
fn attach_kept_ports<D: daolinet_agent::engine::Dataplane>(
    dir: &Path,
    specs: &[(String, Option<u32>)],
    eng: &mut Engine<D>,
) -> daolinet_agent::portbook::PortBook {
    let mut book = daolinet_agent::portbook::PortBook::load(dir);
    let mut forget = Vec::new();
    for (iface, ofport) in book.ports().clone() {
        if specs.iter().any(|(i, _)| *i == iface) {
            continue;
        }
        if daolinet_agent::datapath::ifindex(&iface).is_err() {
            tracing::info!(iface, ofport, "kept port forgotten: its interface is gone");
            forget.push(iface);
            continue;
        }
        match eng.add_port(&iface, Some(ofport), PortKind::Container) {
            Ok(_) => tracing::info!(iface, ofport, "port of the previous run attached again"),
            Err(e) => {
                tracing::warn!(iface, ofport, "kept port not attached again: {e:#}");
                forget.push(iface);
            }
        }
    }
    if let Err(e) = book.remove(&forget) {
        tracing::warn!("updating the kept ports: {e:#}");
    }
    book
}

/// A bpffs directory name derived from the state directory, so several
/// agents (one per namespace in tests) do not share maps.
fn pin_name(dir: &Path) -> String {
    let s = dir.to_string_lossy();
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect::<String>()
        .trim_matches('_')
        .to_string()
}
