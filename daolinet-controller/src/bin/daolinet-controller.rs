//! `daolinet-controller run`: the DaoliNet controller daemon: the OpenFlow
//! 1.3 server the switches connect to, and the REST API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use daolinet_controller::api::{self, auth, AppState};
use daolinet_controller::election::{self, Election, ElectionConfig};
use daolinet_controller::generation::SetTag;
use daolinet_controller::ofserver::{self, ConnConfig, Role, Server, ServerConfig};
use daolinet_controller::service::Controller;
use daolinet_controller::store::{EtcdConfig, EtcdStore, RedbStore, Store};
use daolinet_policy::addr::{Ipv4Net, MacAddr};
use daolinet_policy::Config;

#[derive(Parser, Debug)]
#[command(
    name = "daolinet-controller",
    version,
    about = "DaoliNet controller: OpenFlow 1.3 server, policy, store, REST API"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the controller.
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// OpenFlow 1.3 listen address for switches (daolinet-agent, Open vSwitch
    /// bridges): `[tcp:]IP:PORT`, or `ssl:IP:PORT` for TLS with mutual
    /// authentication (needs --tls-ca/--tls-cert/--tls-key). Repeat for
    /// several. Port 0 picks a free port; each address is printed on stdout
    /// as `openflow: ADDR` or `openflow: ssl:ADDR` (after the `api:` line).
    #[arg(long, default_value = "tcp:0.0.0.0:6653", value_parser = parse_listen)]
    listen: Vec<Listen>,
    /// CA certificate (PEM) switch certificates must chain to (`ovs-pki`:
    /// `switchca/cacert.pem`).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// This controller's certificate (PEM; `ovs-pki req+sign NAME
    /// controller`), for `ssl:` listeners and --api-tls.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// This controller's private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Serve the REST API over HTTPS with --tls-cert/--tls-key (clients
    /// still authenticate with the bearer token).
    #[arg(long)]
    api_tls: bool,
    /// Probe a silent switch with ECHO_REQUEST after this many seconds; it is
    /// disconnected when the echo stays unanswered three times as long.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    echo_interval: u64,
    /// Tokio worker threads (default: one per CPU).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// REST API listen address (port 0 picks a free port; the chosen address
    /// is printed on stdout as `api: http://ADDR`).
    #[arg(long, default_value = "127.0.0.1:8080")]
    api: SocketAddr,
    /// Store: a redb file (created if missing; the API token file lives in
    /// the same directory unless --token-file is given), or
    /// `etcd:http://A:2379[,http://B:2379...]`, an etcd cluster several
    /// controllers share (the API token is then shared through etcd and
    /// written to --token-file, default /var/lib/daolinet/api-token).
    #[arg(long, default_value = "/var/lib/daolinet/controller.redb")]
    store: String,
    /// API bearer token file (created 0600 with a random token if missing).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// With an etcd store: the leader election's lease TTL in seconds
    /// (default 2). A leader that dies is replaced about TTL - 1 s after
    /// its last keep-alive (1 s leases: when the lease expires, up to 1.5 s);
    /// etcd raises TTLs below 1.5 of its election timeout.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=60))]
    lease_ttl: Option<u64>,
    /// With an etcd store: the key prefix of this controller set (default
    /// /daolinet/). Controllers on one cluster with different prefixes are
    /// separate sets, each with its own model and leader; a switch is
    /// mastered by one set only (the other sets leave it alone).
    #[arg(long)]
    etcd_prefix: Option<String>,
    /// Pool of physical IPs handed to containers.
    #[arg(long, default_value = "172.31.0.0/16")]
    physical_pool: Ipv4Net,
    /// Gateway MAC that answers containers' ARP requests: unicast, not
    /// zero, outside 02:da:10:00:00:00-02:da:1f:ff:ff:ff (the MACs given to
    /// containers that do not ask for one).
    #[arg(long, default_value = "02:da:00:00:00:01")]
    gateway_mac: MacAddr,
    /// Idle timeout of hot-plug flows, seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..))]
    idle_timeout: u16,
    /// Hard timeout of drop flows installed after a denial, seconds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    deny_timeout: u16,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => run(a),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("daolinet-controller: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// An OpenFlow listen address.
#[derive(Debug, Clone, Copy)]
struct Listen {
    addr: SocketAddr,
    tls: bool,
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    let (tls, rest) = match s.split_once(':') {
        Some(("ssl", r)) => (true, r),
        Some(("tcp", r)) => (false, r),
        _ => (false, s),
    };
    rest.parse()
        .map(|addr| Listen { addr, tls })
        .map_err(|_| format!("expected [tcp:]IP:PORT or ssl:IP:PORT, not {s:?}"))
}

/// Where the model is kept.
enum StoreSpec {
    File(PathBuf),
    Etcd(EtcdConfig),
}

impl StoreSpec {
    fn parse(s: &str) -> anyhow::Result<StoreSpec> {
        match EtcdConfig::parse(s) {
            Some(r) => Ok(StoreSpec::Etcd(r.map_err(anyhow::Error::msg)?)),
            None => Ok(StoreSpec::File(PathBuf::from(s))),
        }
    }
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    // Before anything is created or started.
    a.gateway_mac.check_gateway()?;
    let spec = StoreSpec::parse(&a.store)?;
    // TLS files are read and checked before anything starts.
    let want_of_tls = a.listen.iter().any(|l| l.tls);
    let of_tls = if want_of_tls {
        let (Some(ca), Some(cert), Some(key)) = (&a.tls_ca, &a.tls_cert, &a.tls_key) else {
            anyhow::bail!("an ssl: --listen needs --tls-ca, --tls-cert and --tls-key");
        };
        Some(daolinet_tls::server_config(&daolinet_tls::TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        })?)
    } else {
        if a.tls_ca.is_some() && !a.api_tls {
            anyhow::bail!("--tls-ca is for ssl: listeners: none is given (--listen ssl:IP:PORT)");
        }
        None
    };
    let api_tls = if a.api_tls {
        let (Some(cert), Some(key)) = (&a.tls_cert, &a.tls_key) else {
            anyhow::bail!("--api-tls needs --tls-cert and --tls-key");
        };
        Some(daolinet_tls::api_server_config(cert, key)?)
    } else {
        None
    };
    if a.lease_ttl.is_some() && matches!(spec, StoreSpec::File(_)) {
        anyhow::bail!("--lease-ttl needs an etcd store (--store etcd:URL,...): a controller on a file store is alone");
    }
    let spec = match (spec, &a.etcd_prefix) {
        (StoreSpec::File(_), Some(_)) => {
            anyhow::bail!("--etcd-prefix needs an etcd store (--store etcd:URL,...)")
        }
        (StoreSpec::Etcd(mut cfg), Some(p)) => {
            EtcdConfig::check_prefix(p)
                .map_err(|why| anyhow::anyhow!("--etcd-prefix {p:?}: {why}"))?;
            cfg.prefix = p.clone();
            StoreSpec::Etcd(cfg)
        }
        (spec, None) => spec,
    };
    let mut shared: Option<(Arc<EtcdStore>, SetTag)> = None;
    let (store, token, created, token_path): (Arc<dyn Store>, String, bool, PathBuf) = match spec {
        StoreSpec::File(path) => {
            let dir = path
                .parent()
                .map(|p| {
                    if p.as_os_str().is_empty() {
                        PathBuf::from(".")
                    } else {
                        p.to_path_buf()
                    }
                })
                .unwrap_or_else(|| PathBuf::from("."));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let store = RedbStore::open(&path)
                .with_context(|| format!("opening store {}", path.display()))?;
            tracing::info!(path = %path.display(), "store opened");
            let token_path = a
                .token_file
                .clone()
                .unwrap_or_else(|| dir.join("api-token"));
            let (token, created) = auth::load_or_create_token(&token_path)
                .with_context(|| format!("token file {}", token_path.display()))?;
            (Arc::new(store), token, created, token_path)
        }
        StoreSpec::Etcd(cfg) => {
            let endpoints = cfg.endpoints.join(",");
            let store = EtcdStore::connect(cfg)?;
            tracing::info!(%endpoints, "etcd store connected");
            let token_path = a
                .token_file
                .clone()
                .unwrap_or_else(|| PathBuf::from("/var/lib/daolinet/api-token"));
            if let Some(dir) = token_path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let (token, created) = auth::load_or_share_token(&token_path, |t| {
                store
                    .create_or_get("api-token", t)
                    .map_err(std::io::Error::other)
            })
            .with_context(|| format!("token file {}", token_path.display()))?;
            let tag = store.set_tag()?;
            tracing::info!(%tag, prefix = %store.config().prefix, "controller set (generation ids carry its tag)");
            let store = Arc::new(store);
            shared = Some((store.clone(), tag));
            (store, token, created, token_path)
        }
    };
    if created {
        tracing::info!(path = %token_path.display(), "created API token file");
    } else {
        tracing::info!(path = %token_path.display(), "using API token file");
    }
    let cfg = Config {
        gateway_mac: a.gateway_mac,
        idle_timeout: a.idle_timeout,
        deny_timeout: a.deny_timeout,
        table: 0,
        physical_pool: a.physical_pool,
    };
    let ctl = Arc::new(Controller::open(store, cfg)?);
    ctl.follow().context("starting the store follower")?;
    let snap = ctl.snapshot()?;
    tracing::info!(
        hosts = snap.model.hosts.len(),
        networks = snap.model.networks.len(),
        containers = snap.model.containers.len(),
        "model loaded"
    );
    raise_fd_limit();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = a.threads {
        rt.worker_threads(usize::from(n));
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async move {
        let mut of_listeners = Vec::new();
        let mut of_lines = Vec::new();
        for l in &a.listen {
            let sock = ofserver::bind(l.addr)
                .with_context(|| format!("binding OpenFlow address {}", l.addr))?;
            let at = sock.local_addr()?;
            tracing::info!(addr = %at, tls = l.tls, "OpenFlow 1.3 server listening");
            of_lines.push(if l.tls {
                format!("ssl:{at}")
            } else {
                at.to_string()
            });
            of_listeners.push((sock, if l.tls { of_tls.clone() } else { None }));
        }
        let of_addr = of_lines.join(" ");
        let listener = tokio::net::TcpListener::bind(a.api)
            .await
            .with_context(|| format!("binding API address {}", a.api))?;
        let addr = listener.local_addr()?;
        let scheme = if api_tls.is_some() { "https" } else { "http" };
        tracing::info!(%addr, scheme, "REST API listening");
        println!("api: {scheme}://{addr}");
        for line in &of_lines {
            println!("openflow: {line}");
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let conn = ConnConfig {
            echo_interval: Duration::from_secs(a.echo_interval),
            echo_timeout: Duration::from_secs(a.echo_interval.saturating_mul(3)),
            ..ConnConfig::default()
        };
        let scfg = ServerConfig {
            conn,
            ..ServerConfig::default()
        };
        // Several controllers on etcd: the elected one is the switches'
        // master, the others their slaves.
        let election = shared.as_ref().map(|(etcd, tag)| {
            let id = format!(
                "{} pid {} openflow {of_addr} api {scheme}://{addr}",
                hostname(),
                std::process::id()
            );
            Election::start(
                etcd,
                ElectionConfig {
                    ttl: election::ttl_secs(a.lease_ttl.unwrap_or(2)),
                    id,
                    tag: *tag,
                },
            )
        });
        let server = match (&election, &shared) {
            (Some(e), Some((_, tag))) => {
                tokio::spawn(watch_role(e.role(), ctl.clone()));
                Server::with_role(ctl.clone(), scfg, e.role(), *tag)
            }
            _ => Server::new(ctl.clone(), scfg),
        };
        let of_task = tokio::spawn(server.clone().run_all(of_listeners, stop_rx.clone()));
        let app = api::router(AppState {
            ctl,
            token: token.into(),
            switches: Some(server),
        });
        let mut api_stop = stop_rx.clone();
        let api_task = tokio::spawn(async move {
            let stop = async move {
                let _ = api_stop.wait_for(|s| *s).await;
            };
            match api_tls {
                Some(cfg) => {
                    axum::serve(api::tls::TlsListener::new(listener, cfg)?, app)
                        .with_graceful_shutdown(stop)
                        .await
                }
                None => {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(stop)
                        .await
                }
            }
        });
        shutdown().await;
        if let Some(e) = election {
            // Hand over first: another controller becomes master while
            // this one's connections are still open.
            e.resign(Duration::from_secs(1)).await;
        }
        let _ = stop_tx.send(true);
        let _ = of_task.await;
        api_task.await??;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

/// Logs and exports this controller's role as the election changes it.
async fn watch_role(mut role: tokio::sync::watch::Receiver<Role>, ctl: Arc<Controller>) {
    loop {
        let r = *role.borrow_and_update();
        ctl.metrics.set_role(r);
        if role.changed().await.is_err() {
            return;
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// One socket per switch: lift the soft limit on open files to the hard
/// limit so that thousands of switches can connect.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open files limit"),
            Err(e) => tracing::warn!(error = %e, soft, "cannot raise the open files limit"),
        },
        Ok((soft, _)) => tracing::debug!(limit = soft, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read the open files limit"),
    }
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = i.recv() => tracing::info!("SIGINT: shutting down"),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
