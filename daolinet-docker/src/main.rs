//! `daolinet-docker`: DaoliNet's Docker network and IPAM driver. Run it on
//! every Docker host next to `daolinet-agent` (started with `--api`); it
//! listens on `/run/docker/plugins/daolinet.sock`, where Docker finds it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use daolinet_docker::driver::Driver;

/// DaoliNet's Docker network and IPAM driver (both named `daolinet`).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The socket Docker calls (its name is the driver's name).
    #[arg(long, default_value = "/run/docker/plugins/daolinet.sock")]
    socket: PathBuf,
    /// The host agent's control socket.
    #[arg(long, default_value = "/run/daolinet/agent.sock")]
    agent_socket: PathBuf,
    /// Where the driver keeps which Docker network is which DaoliNet
    /// network.
    #[arg(long, default_value = "/var/lib/daolinet/docker-driver.json")]
    state_file: PathBuf,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if let Err(e) = run(Args::parse()) {
        eprintln!("daolinet-docker: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    if let Some(d) = args.state_file.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let driver = Driver::new(args.agent_socket, args.state_file).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    rt.block_on(async move {
        if let Some(d) = args.socket.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        match std::fs::remove_file(&args.socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", args.socket.display())),
        }
        let listener = tokio::net::UnixListener::bind(&args.socket)
            .with_context(|| format!("listening on {}", args.socket.display()))?;
        tracing::info!(socket = %args.socket.display(), "daolinet Docker driver listening");
        let app = daolinet_docker::server::router(driver);
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        let _ = std::fs::remove_file(&args.socket);
        served.context("serving")
    })
}
