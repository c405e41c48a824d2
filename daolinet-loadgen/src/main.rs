//! daolinet-loadgen: a cbench-style OpenFlow 1.3 load generator.
//!
//! N fake switches connect to a controller, complete the handshake as a
//! switch would, then punt PACKET_INs of new flows (IPv4 between two
//! containers of the same host, every pair a distinct flow) and count the
//! FLOW_MODs that answer them.
//!
//! - `run --mode throughput`: a window of PACKET_INs in flight per switch;
//!   answered PACKET_INs per second after a warm-up.
//! - `run --mode latency`: one PACKET_IN in flight per switch; the round trip
//!   PACKET_IN -> answering FLOW_MOD, p50/p99.
//! - `register`: registers the fake hosts and containers with a DaoliNet
//!   controller's REST API, so its policy answers the PACKET_INs.
//! - `reference`: a floor-reference controller (table lookup, same answers).
//! - `plan`: prints the container table (JSON) for a third-party app.
//!
//! On stdout `run` prints `MEASURING` and `MEASURED` when the measurement
//! starts and ends, then `RESULT key=value ...`, for tools.

mod plan;
mod reference;
mod register;
mod run;
mod switch;
mod window;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// A window of PACKET_INs in flight per switch; answers per second.
    Throughput,
    /// One PACKET_IN in flight per switch; round-trip percentiles.
    Latency,
}

#[derive(Parser)]
#[command(
    name = "daolinet-loadgen",
    version,
    about = "cbench-style OpenFlow 1.3 load generator: fake switches punting new flows to a controller"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone, Copy)]
struct Topo {
    /// Number of fake switches (one TCP connection and one DaoliNet host each), 1..=250.
    #[arg(long, default_value_t = 16)]
    switches: usize,
    /// Containers per switch, 2..=240; each switch cycles through its n*(n-1)/2 pairs.
    #[arg(long, default_value_t = 32)]
    containers: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// Connect the fake switches and measure.
    Run {
        /// Controller address (HOST:PORT).
        #[arg(long)]
        connect: String,
        #[command(flatten)]
        topo: Topo,
        /// Throughput or latency.
        #[arg(long, value_enum, default_value_t = Mode::Throughput)]
        mode: Mode,
        /// PACKET_INs in flight per switch in throughput mode (latency mode uses 1).
        #[arg(long, default_value_t = 64)]
        window: usize,
        /// Seconds of load before measuring.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Seconds measured.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Worker threads of the generator (1 leaves the other cores to the controller).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Seconds to wait for the controller to accept and handshake every switch.
        #[arg(long, default_value_t = 20.0)]
        connect_timeout: f64,
        /// A PACKET_IN unanswered for this many seconds counts as lost and frees
        /// its window slot [default: 1 in latency mode, 30 in throughput mode,
        /// where a slow controller may queue a whole window].
        #[arg(long)]
        lost_after: Option<f64>,
    },
    /// Register the fake hosts, the network and the containers with a DaoliNet controller.
    Register {
        /// REST API base URL (e.g. http://127.0.0.1:8080).
        #[arg(long)]
        api: String,
        /// File holding the bearer token (the controller's `api-token`).
        #[arg(long)]
        token_file: PathBuf,
        #[command(flatten)]
        topo: Topo,
    },
    /// Serve a floor-reference controller (no policy, no store: table lookup
    /// and the same answers as daolinet-controller) until killed.
    Reference {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:6653")]
        listen: String,
        #[command(flatten)]
        topo: Topo,
        /// Worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Print the container table (JSON) the os-ken comparison app reads.
    Plan {
        #[command(flatten)]
        topo: Topo,
    },
}

fn secs(what: &str, s: f64) -> anyhow::Result<Duration> {
    if !(s.is_finite() && (0.0..=3600.0).contains(&s)) {
        anyhow::bail!("{what} must be between 0 and 3600 seconds, got {s}");
    }
    Ok(Duration::from_secs_f64(s))
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let res = (|| -> anyhow::Result<()> {
        match cli.cmd {
            Cmd::Run {
                connect,
                topo,
                mode,
                window,
                warmup,
                seconds,
                threads,
                connect_timeout,
                lost_after,
            } => {
                let plan = plan::Plan::new(topo.switches, topo.containers)?;
                if mode == Mode::Throughput && (window == 0 || window > plan.pairs_per_switch()) {
                    anyhow::bail!(
                        "--window must be 1..={} (the pairs per switch), got {window}",
                        plan.pairs_per_switch()
                    );
                }
                if threads == 0 || threads > 64 {
                    anyhow::bail!("--threads must be 1..=64, got {threads}");
                }
                let measured = secs("--seconds", seconds)?;
                if measured.is_zero() {
                    anyhow::bail!("--seconds must be more than 0");
                }
                let cfg = run::RunConfig {
                    connect,
                    plan,
                    mode,
                    window: if mode == Mode::Latency { 1 } else { window },
                    warmup: secs("--warmup", warmup)?,
                    seconds: measured,
                    threads,
                    connect_timeout: secs("--connect-timeout", connect_timeout)?,
                    lost_after: secs(
                        "--lost-after",
                        lost_after.unwrap_or(match mode {
                            Mode::Latency => 1.0,
                            Mode::Throughput => 30.0,
                        }),
                    )?
                    .max(Duration::from_millis(10)),
                };
                let report = run::run(&cfg)?;
                eprint!("{}", report.human(&cfg));
                println!("{}", report.result_line(&cfg));
                if report.answered == 0 {
                    anyhow::bail!(
                        "no PACKET_IN was answered by a FLOW_MOD matching it during the measurement"
                    );
                }
                Ok(())
            }
            Cmd::Register {
                api,
                token_file,
                topo,
            } => {
                let plan = plan::Plan::new(topo.switches, topo.containers)?;
                register::register(&api, &token_file, &plan)
            }
            Cmd::Reference {
                listen,
                topo,
                threads,
            } => {
                let plan = plan::Plan::new(topo.switches, topo.containers)?;
                reference::run(&listen, &plan, threads)
            }
            Cmd::Plan { topo } => {
                let plan = plan::Plan::new(topo.switches, topo.containers)?;
                println!("{}", serde_json::to_string_pretty(&plan.to_json())?);
                Ok(())
            }
        }
    })();
    if let Err(e) = res {
        eprintln!("daolinet-loadgen: error: {e:#}");
        std::process::exit(1);
    }
}
