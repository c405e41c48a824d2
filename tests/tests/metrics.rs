//! Privileged: the agent's Prometheus metrics (`run --metrics`), read
//! by a real Prometheus.
//!
//! One agent host (a namespace) with a container port; a rule drops what
//! the container sends. The container's pings are dropped in the
//! datapath, and the agent's `/metrics` counts them exactly, by reason
//! and by port; a Prometheus (the Debian package) started in the host's
//! namespace scrapes the agent, and a query through its HTTP API returns
//! the same count. `daolinet-agent status` says in words that its
//! controller (nothing listens there) is unreachable and shows the sampled
//! drops with their reason, port and headers. The workspace skip rule
//! applies; the lab's guards remove everything.
#![allow(clippy::panic)] // a panic is a failed test

use std::time::Duration;

use daolinet_testlab::{wait_poll, Api, Lab, Need, Poll};

/// The value of the sample `series` (name and labels, exactly as
/// rendered) in a Prometheus text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Percent-encoding of a query string value.
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn agent_metrics_count_drops_by_reason_and_port_and_prometheus_scrapes_them() {
    let Some(mut lab) = Lab::new(&[
        Need::BpfObject,
        Need::Binary("daolinet-agent"),
        Need::Program("ping"),
        Need::Program("prometheus"),
    ]) else {
        return;
    };
    let h = lab.netns("h");
    h.veth("up0", "up0p");
    let a = lab.container(&h, "a", "pa", "10.77.0.2", "02:00:00:00:77:02");
    // No ARP to resolve: the pings go straight to the datapath.
    a.ip(&[
        "neigh",
        "replace",
        "10.77.0.3",
        "lladdr",
        "02:00:00:00:77:03",
        "dev",
        "eth0",
    ]);
    let agent = lab.agent(
        &h,
        &[
            "--uplink",
            "up0",
            "--port",
            "pa=1",
            "--metrics",
            "127.0.0.1:9780",
            "--controller",
            "tcp:127.0.0.1:1",
        ],
    );
    let metrics = Api::new("127.0.0.1:9780", None).in_netns(&h);
    let m = metrics.text("/metrics");
    let drops = "daolinet_agent_port_drops_total{port=\"pa\",ofport=\"1\",reason=\"policy_drop\"}";
    assert_eq!(sample(&m, drops), Some(0.0), "{m}");
    assert_eq!(
        sample(
            &m,
            "daolinet_agent_port_attached{port=\"pa\",ofport=\"1\",kind=\"container\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert!(
        m.contains("daolinet_agent_map_capacity{map=\"flows\"}"),
        "{m}"
    );
    // Other paths answer without disturbing the agent.
    let (st, _) = metrics.raw("GET", "/nope", None);
    assert_eq!(st, 404);
    assert_eq!(metrics.text("/healthz").trim(), "ok");

    agent.cli(&[
        "rule",
        "add",
        "priority=100,in_port=1,ip,nw_dst=10.77.0.3 actions=drop",
    ]);
    const N: u32 = 7;
    assert!(!a.ping("10.77.0.3", N, 1), "a ping got through a drop rule");
    let m = metrics.text("/metrics");
    assert_eq!(sample(&m, drops), Some(f64::from(N)), "{m}");
    assert_eq!(
        sample(
            &m,
            "daolinet_agent_datapath_drops_total{reason=\"policy_drop\"}"
        ),
        Some(f64::from(N)),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "daolinet_agent_port_receive_dropped_total{port=\"pa\",ofport=\"1\",kind=\"container\"}"
        ),
        Some(f64::from(N)),
        "{m}"
    );
    assert_eq!(sample(&m, "daolinet_agent_flows_installed"), Some(1.0));

    // The status says what is wrong and shows the sampled drops.
    let status = agent.cli(&["status"]);
    assert!(
        status.contains("controller tcp:127.0.0.1:1 is unreachable")
            && status.contains(
                "port 1 policy_drop: 02:00:00:00:77:02 > 02:00:00:00:77:03, \
                 10.77.0.2 > 10.77.0.3 icmp"
            ),
        "{status}"
    );
    let j: serde_json::Value = serde_json::from_str(&agent.cli(&["status", "--json"]))
        .unwrap_or_else(|e| panic!("status --json: {e}"));
    assert_eq!(j["ok"], false, "{j:#}");
    let n = j["recent_drops"].as_array().map_or(0, Vec::len);
    assert!(n >= 1 && n <= N as usize, "{n} samples of {N} drops: {j:#}");

    // A real Prometheus scrapes the agent every second.
    let dir = lab.subdir("prometheus");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: daolinet-agent\n    static_configs:\n      - targets: ['127.0.0.1:9780']\n",
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
    let cfg_arg = format!("--config.file={}", config.display());
    let data_arg = format!("--storage.tsdb.path={}", dir.join("data").display());
    let _prom = h.spawn(&[
        "prometheus",
        &cfg_arg,
        &data_arg,
        "--web.listen-address=127.0.0.1:9090",
    ]);
    let prom = Api::new("127.0.0.1:9090", None).in_netns(&h);
    let query = format!(
        "/api/v1/query?query={}",
        query_escape(
            "sum by (port, reason) (daolinet_agent_port_drops_total{reason=\"policy_drop\",port=\"pa\"})"
        )
    );
    let value = wait_poll(
        "Prometheus to have scraped the agent",
        Duration::from_secs(60),
        || match prom.try_raw("GET", &query, None) {
            Ok((200, body)) => {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                match v["data"]["result"][0]["value"][1].as_str() {
                    Some(x) => Poll::Ready(x.to_string()),
                    None => Poll::Pending(body),
                }
            }
            Ok((st, body)) => Poll::Pending(format!("{st}: {body}")),
            Err(e) => Poll::Pending(e.to_string()),
        },
    );
    assert_eq!(value, N.to_string(), "Prometheus saw another count");
    // The scrape itself is healthy (up == 1).
    let (_, body) = prom.raw("GET", "/api/v1/query?query=up", None);
    assert!(body.contains("\"1\""), "{body}");
}
