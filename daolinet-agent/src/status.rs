//! `daolinet-agent status`: what is wrong, in words, from the same
//! [`Scrape`] the metrics are rendered from, plus the last sampled drops
//! (reason, port, headers). Pure: the event loop collects, this judges and
//! formats.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde_json::{json, Value};

use crate::dpstats::Dropped;
use crate::metrics::{LinkState, Scrape};

/// A map this full (percent) is reported before it is full.
const NEARLY_FULL_PCT: u64 = 90;

/// What is wrong, one sentence each; empty when nothing is.
pub fn problems(s: &Scrape) -> Vec<String> {
    let mut out = Vec::new();
    for c in &s.controllers {
        if c.state != LinkState::Up {
            let why = c
                .last_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            out.push(format!(
                "controller {} is unreachable ({} for {} s){why}",
                c.target,
                c.state.as_str(),
                c.for_secs
            ));
        }
    }
    for p in &s.telemetry.ports {
        if !p.attached {
            out.push(format!(
                "the BPF program is not attached on port {} ({} {}): its traffic bypasses the datapath",
                p.ofport, p.kind, p.name
            ));
        }
    }
    let t = &s.telemetry;
    for (what, used, cap) in [
        ("flow table", s.flows, t.flow_capacity),
        ("match mask table", s.subtables, t.subtable_capacity),
        ("port table", t.ports.len() as u64, t.port_capacity),
    ] {
        if cap > 0 && used >= cap {
            out.push(format!(
                "the {what} is full ({used} of {cap}): new entries are refused"
            ));
        } else if cap > 0 && used * 100 >= cap * NEARLY_FULL_PCT {
            out.push(format!("the {what} is nearly full ({used} of {cap})"));
        }
    }
    if s.switch.packet_in_rate_limited > 0 {
        out.push(format!(
            "the punt rate is limited: {} PACKET_INs were not sent (of {}; --packet-in-rate)",
            s.switch.packet_in_rate_limited,
            s.switch.packet_in + s.switch.packet_in_rate_limited
        ));
    }
    if s.switch.punt_no_controller > 0 && !s.controllers.iter().any(|c| c.state == LinkState::Up) {
        out.push(format!(
            "{} table misses found no controller to ask",
            s.switch.punt_no_controller
        ));
    }
    for e in &t.errors {
        out.push(format!("reading the datapath failed: {e}"));
    }
    out
}

/// A dropped packet's headers in one line: `MAC > MAC, IP > IP proto`.
pub fn headers(data: &[u8]) -> String {
    let mac = |b: &[u8]| {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let (Some(dst), Some(src), Some(et)) = (data.get(0..6), data.get(6..12), data.get(12..14))
    else {
        return format!("{} bytes", data.len());
    };
    let et = u16::from_be_bytes([et[0], et[1]]);
    let mut s = format!("{} > {}", mac(src), mac(dst));
    match (et, data.get(14..34)) {
        (0x0800, Some(ip)) => {
            let a = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let b = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let ports = data
                .get(14 + ihl..14 + ihl + 4)
                .filter(|_| matches!(ip[9], 6 | 17))
                .map(|p| {
                    (
                        u16::from_be_bytes([p[0], p[1]]),
                        u16::from_be_bytes([p[2], p[3]]),
                    )
                });
            let proto = match ip[9] {
                1 => "icmp".to_string(),
                6 => "tcp".to_string(),
                17 => "udp".to_string(),
                n => format!("proto {n}"),
            };
            match ports {
                Some((sp, dp)) => {
                    let _ = write!(s, ", {a}:{sp} > {b}:{dp} {proto}");
                }
                None => {
                    let _ = write!(s, ", {a} > {b} {proto}");
                }
            }
        }
        (0x0806, _) => s.push_str(", arp"),
        (0x86dd, _) => s.push_str(", ipv6"),
        (other, _) => {
            let _ = write!(s, ", ethertype {other:#06x}");
        }
    }
    s
}

/// One sampled drop as JSON.
pub fn drop_json(d: &Dropped) -> Value {
    json!({
        "timestamp_ns": d.timestamp_ns,
        "in_port": d.in_port,
        "reason": d.reason.map_or_else(|| format!("code {}", d.reason_code), |r| r.name().to_string()),
        "len": d.pkt_len,
        "headers": headers(&d.data),
    })
}

/// The status answer: counters, controllers, problems, recent drops.
pub fn answer<'a>(s: &Scrape, recent: impl Iterator<Item = &'a Dropped>) -> Value {
    let problems = problems(s);
    json!({
        "ok": problems.is_empty(),
        "problems": problems,
        "datapath_id": format!("{:016x}", s.datapath_id),
        "flows": s.flows,
        "flow_capacity": s.telemetry.flow_capacity,
        // Connections up: the active ones and those the listener accepted.
        "controllers": s.controllers.iter().filter(|c| c.state == LinkState::Up).count() as u64
            + s.passive,
        "controller_links": s.controllers,
        "generation_id": s.generation_id,
        "ports": s.telemetry.ports.iter().map(|p| json!({
            "name": p.name, "ofport": p.ofport, "kind": p.kind, "attached": p.attached,
        })).collect::<Vec<_>>(),
        "counters": s.switch,
        "recent_drops": recent.map(drop_json).collect::<Vec<_>>(),
    })
}

/// The status answer as text for people.
pub fn text(v: &Value) -> String {
    let mut out = String::new();
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let _ = writeln!(
        out,
        "datapath {}: {} flows of {}, {} controller(s) up",
        v["datapath_id"].as_str().unwrap_or("?"),
        n("flows"),
        n("flow_capacity"),
        n("controllers")
    );
    for c in v["controller_links"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "controller {}: {}{}",
            c["target"].as_str().unwrap_or("?"),
            c["state"].as_str().unwrap_or("?"),
            c["role"]
                .as_str()
                .map(|r| format!(", {r}"))
                .unwrap_or_default()
        );
    }
    match v["generation_id"].as_u64() {
        Some(g) => {
            let _ = writeln!(out, "generation id {g}");
        }
        None => out.push_str("no generation id (no controller asked for master or slave)\n"),
    }
    let problems: Vec<&str> = v["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if problems.is_empty() {
        out.push_str("no problems\n");
    } else {
        out.push_str("problems:\n");
        for p in problems {
            let _ = writeln!(out, "  - {p}");
        }
    }
    if let Some(c) = v["counters"].as_object() {
        let line: Vec<String> = c.iter().map(|(k, x)| format!("{k} {x}")).collect();
        let _ = writeln!(out, "counters: {}", line.join(", "));
    }
    let drops = v["recent_drops"].as_array().cloned().unwrap_or_default();
    if !drops.is_empty() {
        let _ = writeln!(out, "recent drops (sampled, oldest first):");
        for d in drops {
            let _ = writeln!(
                out,
                "  port {} {}: {} ({} bytes)",
                d["in_port"],
                d["reason"].as_str().unwrap_or("?"),
                d["headers"].as_str().unwrap_or(""),
                d["len"]
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{ControllerLink, PortTelemetry, Role, Telemetry};
    use crate::ofswitch::SwitchCounters;
    use daolinet_common::DropReason;

    fn healthy() -> Scrape {
        Scrape {
            datapath_id: 1,
            telemetry: Telemetry {
                ports: vec![PortTelemetry {
                    name: "pa".into(),
                    ofport: 1,
                    kind: "container",
                    attached: true,
                    ..Default::default()
                }],
                flow_capacity: 100,
                port_capacity: 1024,
                subtable_capacity: 32,
                ..Default::default()
            },
            flows: 5,
            subtables: 1,
            controllers: vec![ControllerLink {
                target: "tcp:10.0.0.1:6653".into(),
                state: LinkState::Up,
                role: Some(Role::Equal),
                connects: 1,
                last_error: None,
                for_secs: 3,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_healthy_agent_has_no_problems() {
        let s = healthy();
        assert_eq!(problems(&s), Vec::<String>::new());
        let v = answer(&s, std::iter::empty());
        assert_eq!(v["ok"], true);
        let t = text(&v);
        assert!(t.contains("no problems"), "{t}");
        assert!(
            t.contains("controller tcp:10.0.0.1:6653: up, equal\n"),
            "{t}"
        );
        assert!(t.contains("no generation id"), "{t}");
    }

    #[test]
    fn each_controllers_role_and_the_generation_id_are_shown() {
        let mut s = healthy();
        s.generation_id = Some(42);
        s.controllers[0].role = Some(Role::Master);
        s.controllers.push(ControllerLink {
            target: "ssl:10.0.0.2:6653".into(),
            state: LinkState::Up,
            role: Some(Role::Slave),
            connects: 2,
            last_error: None,
            for_secs: 1,
        });
        s.controllers.push(ControllerLink {
            target: "tcp:10.0.0.3:6653".into(),
            state: LinkState::Backoff,
            role: None,
            connects: 0,
            last_error: None,
            for_secs: 1,
        });
        let v = answer(&s, std::iter::empty());
        assert_eq!(v["generation_id"], 42);
        assert_eq!(v["controller_links"][0]["role"], "master");
        assert_eq!(v["controller_links"][1]["role"], "slave");
        assert!(v["controller_links"][2]["role"].is_null());
        let t = text(&v);
        for want in [
            "controller tcp:10.0.0.1:6653: up, master\n",
            "controller ssl:10.0.0.2:6653: up, slave\n",
            "controller tcp:10.0.0.3:6653: backoff\n",
            "generation id 42\n",
        ] {
            assert!(t.contains(want), "{want:?} in {t}");
        }
    }

    #[test]
    fn each_fault_is_said_in_words() {
        let mut s = healthy();
        s.controllers[0].state = LinkState::Backoff;
        s.controllers[0].last_error = Some("connection refused".into());
        s.telemetry.ports[0].attached = false;
        s.flows = 100;
        s.switch = SwitchCounters {
            packet_in: 10,
            packet_in_rate_limited: 4,
            ..Default::default()
        };
        let p = problems(&s);
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p[0].contains(
            "controller tcp:10.0.0.1:6653 is unreachable (backoff for 3 s): connection refused"
        ));
        assert!(p[1].contains("not attached on port 1 (container pa)"));
        assert!(p[2].contains("the flow table is full (100 of 100)"));
        assert!(p[3].contains("punt rate is limited: 4 PACKET_INs were not sent (of 14"));
        s.flows = 95;
        assert!(problems(&s)[2].contains("nearly full (95 of 100)"));
        let d = Dropped {
            timestamp_ns: 1,
            in_port: 1,
            reason: Some(DropReason::Spoofed),
            reason_code: DropReason::Spoofed as u32,
            pkt_len: 98,
            data: {
                let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 8, 0];
                f.extend_from_slice(&[0x45, 0, 0, 84, 0, 0, 0, 0, 64, 1, 0, 0]);
                f.extend_from_slice(&[10, 9, 9, 9, 10, 0, 0, 3]);
                f
            },
        };
        let v = answer(&s, [d].iter());
        assert_eq!(v["ok"], false);
        let t = text(&v);
        assert!(
            t.contains("port 1 spoofed_source: 02:00:00:00:00:01 > 02:00:00:00:00:02, 10.9.9.9 > 10.0.0.3 icmp (98 bytes)"),
            "{t}"
        );
        assert!(t.contains("packet_in_rate_limited 4"), "{t}");
    }

    #[test]
    fn headers_of_short_and_transport_frames() {
        assert_eq!(headers(&[1, 2, 3]), "3 bytes");
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 8, 0];
        f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&[10, 0, 0, 2, 10, 0, 0, 3, 0x9c, 0x40, 0, 80]);
        assert!(
            headers(&f).ends_with("10.0.0.2:40000 > 10.0.0.3:80 tcp"),
            "{}",
            headers(&f)
        );
    }
}
