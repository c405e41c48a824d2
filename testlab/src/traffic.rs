//! Traffic through the datapath: iperf3 transfers (ping is
//! [`crate::Netns::ping`]).

use std::time::Duration;

use crate::Netns;

/// iperf3's default port; the server listens inside the lab's namespace.
const IPERF3_PORT: u16 = 5201;

/// What an iperf3 transfer did.
#[derive(Debug)]
pub struct Transfer {
    /// Whether the client reported success.
    pub ok: bool,
    /// The client's stdout and stderr.
    pub output: String,
}

/// Send `bytes` (iperf3 syntax: `4M`) over TCP with iperf3 from namespace
/// `client` to a one-off server bound to `server_ip` in namespace `server`,
/// started and awaited (listening) first.
#[track_caller]
pub fn iperf3(server: &Netns, client: &Netns, server_ip: &str, bytes: &str) -> Transfer {
    let port = IPERF3_PORT.to_string();
    let _srv = server.spawn(&["iperf3", "-s", "-1", "-B", server_ip, "-p", &port]);
    server.wait_tcp_listening(IPERF3_PORT, Duration::from_secs(30));
    let r = client.output(&[
        "iperf3",
        "-c",
        server_ip,
        "-p",
        &port,
        "-n",
        bytes,
        "--connect-timeout",
        "5000",
    ]);
    Transfer {
        ok: r.ok,
        output: format!("{}{}", r.stdout, r.stderr),
    }
}
