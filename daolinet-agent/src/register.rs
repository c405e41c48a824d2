//! Self-registration: the agent tells the controller's REST API which host
//! it is (`PUT /api/hosts/{name}`: datapath id, the uplink's IPv4 address
//! and MAC, the uplink's OpenFlow port, the LOCAL port's MAC) when it
//! starts and again each time a controller connection comes up (a
//! controller that comes back may have lost or changed the record). The
//! API's upsert is idempotent, so registering again changes nothing when
//! nothing changed.
//!
//! Errors the agent cannot fix by waiting end it (see [`Verdict`]): a
//! conflicting registration (the name belongs to another datapath id, or
//! the datapath id, IP or MAC to another host), a refused token, a record
//! the API calls invalid. Everything else (controller unreachable, store
//! unavailable) is retried with backoff.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::sync::mpsc::Receiver;

/// First retry delay; doubles up to [`MAX_RETRY`].
pub const MIN_RETRY: Duration = Duration::from_millis(500);
/// Longest retry delay.
pub const MAX_RETRY: Duration = Duration::from_secs(8);
/// Time allowed for one API request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and as whom to register.
#[derive(Debug, Clone)]
pub struct Registrar {
    /// API base URL, e.g. `http://10.0.0.1:8080`.
    pub api: String,
    /// Bearer token.
    pub token: String,
    /// Host name to register under.
    pub name: String,
    /// Uplink interface (its IPv4 address and MAC are read at each
    /// registration).
    pub uplink: String,
    /// OpenFlow port of the uplink.
    pub uplink_port: u32,
    /// Datapath id.
    pub dpid: u64,
}

/// The body of `PUT /api/hosts/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostRecord {
    /// Datapath id, 16 hex digits.
    pub dpid: String,
    /// The uplink's IPv4 address.
    pub ip: Ipv4Addr,
    /// The uplink's MAC.
    pub mac: String,
    /// The uplink's OpenFlow port.
    pub uplink_port: u32,
    /// The LOCAL port's MAC. On an agent the LOCAL port is the uplink's
    /// host stack, so it is the uplink's MAC.
    pub local_mac: String,
}

impl HostRecord {
    /// The record of an agent host.
    pub fn new(dpid: u64, ip: Ipv4Addr, mac: [u8; 6], uplink_port: u32) -> Self {
        let mac = mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        HostRecord {
            dpid: format!("{dpid:016x}"),
            ip,
            local_mac: mac.clone(),
            mac,
            uplink_port,
        }
    }
}

/// What an answer of the API means for the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Registered (created, updated or unchanged).
    Done {
        /// A new record (201) rather than an update or no change.
        created: bool,
    },
    /// Worth trying again later (controller starting, store unavailable).
    Retry(String),
    /// Waiting will not help: the agent must stop.
    Fatal(String),
}

/// Classifies an HTTP answer (status and body) of the registration request.
///
/// DaoliNet's API answers JSON: a host record, or `{"error": ...}`. A
/// server that answers otherwise at the address is not the API (a wrong
/// `--api`), which waiting does not fix, but for the 5xx answers a proxy
/// in front of a restarting controller gives.
pub fn verdict(status: u16, body: &str) -> Verdict {
    let json = serde_json::from_str::<serde_json::Value>(body).ok();
    let error = json
        .as_ref()
        .and_then(|v| v["error"].as_str().map(str::to_string));
    let snippet = || -> String { body.trim().chars().take(120).collect() };
    match (status, &json, error) {
        (200 | 201, Some(v), _) if v.is_object() => Verdict::Done {
            created: status == 201,
        },
        (200..=299, _, _) => Verdict::Fatal(format!(
            "not a DaoliNet controller's API: HTTP {status} without a host record ({})",
            snippet()
        )),
        (401, _, e) => Verdict::Fatal(format!(
            "the API refused the token ({})",
            e.unwrap_or_else(snippet)
        )),
        (400..=499, _, Some(e)) => Verdict::Fatal(format!("{e} [HTTP {status}]")),
        (400..=499, _, None) => Verdict::Fatal(format!(
            "not a DaoliNet controller's API: HTTP {status} ({})",
            snippet()
        )),
        (_, _, e) => Verdict::Retry(format!("{} [HTTP {status}]", e.unwrap_or_else(snippet))),
    }
}

/// Whether the first bytes a server sent are an OpenFlow header of a
/// HELLO (any version from 1.0 to 1.5; OpenFlow servers say HELLO first).
pub fn is_openflow_hello(hdr: &[u8; 8]) -> bool {
    let len = u16::from_be_bytes([hdr[2], hdr[3]]);
    (1..=6).contains(&hdr[0]) && hdr[1] == 0 && len >= 8
}

/// Why an OpenFlow controller address did not do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Nothing answers (yet): worth trying again until the join deadline.
    Unreachable(String),
    /// Something answers, but it is not an OpenFlow controller.
    NotOpenFlow(String),
}

/// Whether an OpenFlow controller answers at `target`: it accepts the
/// connection and says HELLO first (over TLS only the connection is
/// checked: the handshake needs the switch's certificate).
pub fn probe_openflow(target: &crate::runtime::Target, timeout: Duration) -> Result<(), Probe> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect_timeout(&target.addr, timeout)
        .map_err(|e| Probe::Unreachable(format!("no OpenFlow controller at {target}: {e}")))?;
    if target.ssl {
        return Ok(());
    }
    let _ = s.set_read_timeout(Some(timeout));
    let mut hdr = [0u8; 8];
    match s.read_exact(&mut hdr) {
        Ok(()) if is_openflow_hello(&hdr) => Ok(()),
        Ok(()) => Err(Probe::NotOpenFlow(format!(
            "{target} is not an OpenFlow controller (it did not say HELLO)"
        ))),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(Probe::NotOpenFlow(format!(
                "{target} is not an OpenFlow controller (it accepts connections but said \
                 no HELLO within {} s)",
                timeout.as_secs()
            )))
        }
        Err(e) => Err(Probe::NotOpenFlow(format!(
            "{target} is not an OpenFlow controller (no HELLO: {e})"
        ))),
    }
}

/// Reads an API token file (whitespace trimmed); one clear error if it is
/// missing, unreadable or empty.
pub fn read_token(path: &Path) -> Result<String> {
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("no API token: cannot read {}", path.display()))?;
    let t = t.trim();
    if t.is_empty() {
        bail!("no API token: {} is empty", path.display());
    }
    Ok(t.to_string())
}

/// The primary IPv4 address of an interface (`SIOCGIFADDR`), if it has one.
pub fn iface_ipv4(name: &str) -> Option<Ipv4Addr> {
    // SAFETY: a plain datagram socket used only for the ioctl, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: ifreq is plain old data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s as libc::c_char;
    }
    // SAFETY: valid fd and ifreq.
    let ok = unsafe { libc::ioctl(fd, libc::SIOCGIFADDR, &mut req) } == 0;
    // SAFETY: we own fd.
    unsafe { libc::close(fd) };
    if !ok {
        return None;
    }
    // SAFETY: the kernel filled ifru_addr with a sockaddr_in.
    let sa = unsafe { req.ifr_ifru.ifru_addr };
    if i32::from(sa.sa_family) != libc::AF_INET {
        return None;
    }
    // sockaddr_in: family (2), port (2), address (4).
    let b = sa.sa_data;
    Some(Ipv4Addr::new(
        b[2] as u8, b[3] as u8, b[4] as u8, b[5] as u8,
    ))
}

/// This machine's host name (`gethostname`).
pub fn hostname() -> Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: valid buffer of the given length.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("gethostname");
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

impl Registrar {
    /// The record to send, from the uplink as it is now.
    pub fn record(&self) -> Result<HostRecord> {
        let (mac, _) = crate::netdev::iface_info(&self.uplink);
        let mac = mac.ok_or_else(|| anyhow!("uplink {} has no MAC address", self.uplink))?;
        let ip = iface_ipv4(&self.uplink).ok_or_else(|| {
            anyhow!(
                "uplink {} has no IPv4 address (the controller needs it as the host's underlay address)",
                self.uplink
            )
        })?;
        Ok(HostRecord::new(self.dpid, ip, mac, self.uplink_port))
    }

    fn url(&self) -> String {
        // Names are restricted to [A-Za-z0-9._-] by the API; anything else
        // is encoded and refused there with a clear error.
        let name: String = self
            .name
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        format!("{}/api/hosts/{name}", self.api.trim_end_matches('/'))
    }

    /// One registration attempt (blocking).
    pub fn register_once(&self) -> Verdict {
        let rec = match self.record() {
            Ok(r) => r,
            Err(e) => return Verdict::Retry(format!("{e:#}")),
        };
        let body = match serde_json::to_string(&rec) {
            Ok(b) => b,
            Err(e) => return Verdict::Fatal(format!("encoding the host record: {e}")),
        };
        let agent = ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT).build();
        let res = agent
            .put(&self.url())
            .set("Authorization", &format!("Bearer {}", self.token))
            .set("Content-Type", "application/json")
            .send_string(&body);
        match res {
            Ok(r) => {
                let status = r.status();
                verdict(status, &r.into_string().unwrap_or_default())
            }
            Err(ureq::Error::Status(status, r)) => {
                verdict(status, &r.into_string().unwrap_or_default())
            }
            Err(ureq::Error::Transport(t)) => match t.kind() {
                // Bytes that are no HTTP answer (ureq reports some as an I/O
                // error of kind InvalidInput or InvalidData).
                ureq::ErrorKind::BadStatus | ureq::ErrorKind::BadHeader => Verdict::Fatal(format!(
                    "not a DaoliNet controller's API (it does not speak HTTP: {t})"
                )),
                ureq::ErrorKind::Io if garbled(&t) => Verdict::Fatal(format!(
                    "not a DaoliNet controller's API (it does not speak HTTP: {t})"
                )),
                ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme => {
                    Verdict::Fatal(format!("bad API address: {t}"))
                }
                _ => Verdict::Retry(format!("cannot reach the API: {t}")),
            },
        }
    }

    /// The first registration of this run, before the agent changes
    /// anything on its host: an OpenFlow controller must answer at one of
    /// `controllers` (one that answers but is not OpenFlow is an error at
    /// once), then the API must take the record. Unreachable addresses are
    /// tried again with backoff until `within` has passed (`None`: for
    /// ever). Whether the record was new (`true`: this run created it).
    pub fn join(
        &self,
        controllers: &[crate::runtime::Target],
        within: Option<Duration>,
    ) -> Result<bool> {
        let start = std::time::Instant::now();
        let mut backoff = Backoff::new(start, within, "cannot join yet, trying again");
        while !controllers.is_empty() {
            // Every address is checked: one that answers something else
            // than OpenFlow is a mistake even when another one answers.
            let (mut answered, mut unreachable) = (false, Vec::new());
            for t in controllers {
                match probe_openflow(t, PROBE_TIMEOUT) {
                    Ok(()) => answered = true,
                    Err(Probe::NotOpenFlow(why)) => bail!("joining as host {:?}: {why}", self.name),
                    Err(Probe::Unreachable(why)) => unreachable.push(why),
                }
            }
            if answered {
                break;
            }
            let why = unreachable.join("; ");
            if !backoff.wait(&why) {
                bail!(
                    "joining as host {:?}: no OpenFlow controller answered {}: {why}",
                    self.name,
                    backoff.waited()
                );
            }
        }
        self.register_with(Backoff::new(start, within, "cannot join yet, trying again"))
    }

    /// Removes the host's record (a start that failed after [`join`]
    /// created it); best effort.
    ///
    /// [`join`]: Registrar::join
    pub fn unregister(&self) {
        let agent = ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT).build();
        match agent
            .delete(&self.url())
            .set("Authorization", &format!("Bearer {}", self.token))
            .call()
        {
            Ok(_) => tracing::info!(host = %self.name, "registration withdrawn"),
            Err(e) => tracing::warn!(host = %self.name, "withdrawing the registration: {e}"),
        }
    }

    /// Registers, retrying with `backoff` until it gives up, or until the
    /// API refuses for good (blocking); whether the record was new.
    fn register_with(&self, mut backoff: Backoff) -> Result<bool> {
        let api = self.api.trim_end_matches('/');
        loop {
            match self.register_once() {
                Verdict::Done { created } => {
                    tracing::info!(
                        host = %self.name,
                        dpid = format!("{:016x}", self.dpid),
                        created,
                        "registered with the controller"
                    );
                    return Ok(created);
                }
                Verdict::Fatal(why) => {
                    bail!("registering host {:?} at {api}: {why}", self.name)
                }
                Verdict::Retry(why) => {
                    if !backoff.wait(&why) {
                        bail!(
                            "registering host {:?}: the controller's API at {api} did not answer {}: {why}",
                            self.name,
                            backoff.waited()
                        );
                    }
                }
            }
        }
    }

    /// After [`Registrar::join`]: registers again each time a message
    /// comes on `connected` (a controller connection came up), retrying
    /// with backoff for as long as it takes; blocks, for a thread of its
    /// own. Returns the reason when registration failed for good, `None`
    /// when no connection can come up any more (the sender is gone).
    pub fn run(self, connected: Receiver<()>) -> Option<anyhow::Error> {
        loop {
            if connected.recv().is_err() {
                return None;
            }
            // Connections that come up while registering are folded into
            // this round.
            while connected.try_recv().is_ok() {}
            let backoff = Backoff::new(
                std::time::Instant::now(),
                None,
                "registration failed, retrying",
            );
            if let Err(e) = self.register_with(backoff) {
                return Some(e);
            }
        }
    }
}

/// Whether a transport error is an answer that is not HTTP (rather than
/// a connection that failed or broke).
fn garbled(t: &ureq::Transport) -> bool {
    let mut e: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(t);
    while let Some(err) = e {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
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

/// Time allowed for one OpenFlow probe (connect, then HELLO).
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Backoff between registration attempts ([`MIN_RETRY`] doubling to
/// [`MAX_RETRY`]), bounded by a deadline (the join's) or not (registering
/// again once joined).
struct Backoff {
    start: std::time::Instant,
    within: Option<Duration>,
    delay: Duration,
    /// What the log says before each retry's reason (a warning the first
    /// time, debug after).
    what: &'static str,
    warned: bool,
}

impl Backoff {
    fn new(start: std::time::Instant, within: Option<Duration>, what: &'static str) -> Self {
        Backoff {
            start,
            within,
            delay: MIN_RETRY,
            what,
            warned: false,
        }
    }

    /// How long it tried, for an error once it gave up.
    fn waited(&self) -> String {
        match self.within {
            Some(w) => format!("within {} s (--join-timeout)", w.as_secs()),
            None => "yet".to_string(),
        }
    }

    /// Sleeps before the next attempt; false when the deadline has passed
    /// (the sleep is cut short to end at it).
    fn wait(&mut self, why: &str) -> bool {
        let mut d = self.delay;
        if let Some(w) = self.within {
            let left = w.saturating_sub(self.start.elapsed());
            if left.is_zero() {
                return false;
            }
            d = d.min(left);
        }
        if !self.warned {
            tracing::warn!("{}: {why}", self.what);
            self.warned = true;
        } else {
            tracing::debug!("{}: {why}", self.what);
        }
        std::thread::sleep(d);
        self.delay = (self.delay * 2).min(MAX_RETRY);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_is_what_the_api_expects() {
        let r = HostRecord::new(
            0x0002_0000_0000_00a1,
            Ipv4Addr::new(192, 168, 0, 9),
            [2, 0, 0, 0, 0, 0xa1],
            65000,
        );
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({
                "dpid": "00020000000000a1",
                "ip": "192.168.0.9",
                "mac": "02:00:00:00:00:a1",
                "uplink_port": 65000,
                "local_mac": "02:00:00:00:00:a1",
            })
        );
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(verdict(201, "{}"), Verdict::Done { created: true });
        assert_eq!(verdict(200, "{}"), Verdict::Done { created: false });
        let conflict = verdict(
            409,
            r#"{"error":"dpid: host \"h1\" is registered with datapath id 0000000000000001, not 0000000000000002","field":"dpid"}"#,
        );
        assert_eq!(
            conflict,
            Verdict::Fatal(
                "dpid: host \"h1\" is registered with datapath id 0000000000000001, not 0000000000000002 [HTTP 409]"
                    .into()
            )
        );
        assert!(
            matches!(verdict(401, r#"{"error":"bad token"}"#), Verdict::Fatal(m) if m.contains("refused the token"))
        );
        assert!(matches!(verdict(400, "{}"), Verdict::Fatal(_)));
        assert!(
            matches!(verdict(503, r#"{"error":"store unavailable"}"#), Verdict::Retry(m) if m.contains("store unavailable"))
        );
        assert!(
            matches!(verdict(502, "<html>bad gateway</html>"), Verdict::Retry(m) if m.contains("bad gateway"))
        );
    }

    #[test]
    fn answers_that_are_not_the_api_are_fatal() {
        // Another web server, or a proxy's page: not worth waiting for.
        for (status, body) in [
            (404, "<html>Not Found</html>"),
            (405, ""),
            (200, "<html>welcome</html>"),
            (204, ""),
        ] {
            assert!(
                matches!(verdict(status, body), Verdict::Fatal(m) if m.contains("not a DaoliNet controller's API")),
                "{status} {body}"
            );
        }
        // DaoliNet's own error of a 4xx keeps its words.
        assert_eq!(
            verdict(404, r#"{"error":"no such host"}"#),
            Verdict::Fatal("no such host [HTTP 404]".into())
        );
    }

    #[test]
    fn only_an_openflow_hello_header_is_a_controller() {
        assert!(is_openflow_hello(&[4, 0, 0, 16, 0, 0, 0, 1]));
        assert!(is_openflow_hello(&[1, 0, 0, 8, 0, 0, 0, 0]));
        // HTTP, a FEATURES_REQUEST, an impossible length.
        assert!(!is_openflow_hello(b"HTTP/1.1"));
        assert!(!is_openflow_hello(&[4, 5, 0, 8, 0, 0, 0, 1]));
        assert!(!is_openflow_hello(&[4, 0, 0, 4, 0, 0, 0, 1]));
    }

    #[test]
    fn token_files_must_hold_a_token() {
        let dir = std::env::temp_dir().join(format!("jn-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("t");
        std::fs::write(&f, "  abc\n").unwrap();
        assert_eq!(read_token(&f).unwrap(), "abc");
        std::fs::write(&f, "\n").unwrap();
        assert!(read_token(&f).unwrap_err().to_string().contains("is empty"));
        let missing = dir.join("missing");
        assert!(format!("{:#}", read_token(&missing).unwrap_err()).contains("cannot read"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn loopback_has_an_ipv4_address() {
        assert_eq!(iface_ipv4("lo"), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(iface_ipv4("jn-no-such-if"), None);
    }
}
