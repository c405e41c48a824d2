//! The host's IPv4 configuration of one interface (addresses, main-table
//! routes) as `ip -j` shows it, and the `ip` commands that move it to
//! another interface and back. Pure: parsing and command building, tested
//! on captured output; running the commands is the caller's business.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One IPv4 address of an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addr {
    /// `A.B.C.D/LEN`.
    pub cidr: String,
    /// Broadcast address, if one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<String>,
}

/// One IPv4 route of the main table through an interface (not the
/// `proto kernel` ones, which come and go with the addresses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// `default` or `A.B.C.D/LEN`.
    pub dst: String,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u64>,
    /// Protocol (`static`, `dhcp`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// Scope, when not the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Preferred source address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// `onlink` next hop.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub onlink: bool,
}

/// The IPv4 addresses in `ip -j -4 addr show dev IF` output.
pub fn parse_addrs(json: &str) -> Result<Vec<Addr>, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("ip -j addr: {e}"))?;
    let mut out = Vec::new();
    for link in v.as_array().into_iter().flatten() {
        for a in link["addr_info"].as_array().into_iter().flatten() {
            if a["family"] != "inet" {
                continue;
            }
            let (Some(local), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64()) else {
                continue;
            };
            out.push(Addr {
                cidr: format!("{local}/{len}"),
                broadcast: a["broadcast"].as_str().map(str::to_string),
            });
        }
    }
    Ok(out)
}

/// The movable routes in `ip -j -4 route show dev IF` output (main
/// table): everything but the `proto kernel` routes of the addresses and
/// multipath routes (which `show dev` does not reproduce whole).
pub fn parse_routes(json: &str) -> Result<Vec<Route>, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("ip -j route: {e}"))?;
    let mut out = Vec::new();
    for r in v.as_array().into_iter().flatten() {
        if r["protocol"] == "kernel" || r.get("nexthops").is_some() {
            continue;
        }
        if r.get("type").is_some_and(|t| t != "unicast") {
            continue;
        }
        let Some(dst) = r["dst"].as_str() else {
            continue;
        };
        let s = |k: &str| r[k].as_str().map(str::to_string);
        out.push(Route {
            dst: dst.to_string(),
            via: s("gateway"),
            metric: r["metric"].as_u64(),
            proto: s("protocol"),
            scope: s("scope").filter(|sc| {
                // The scope ip would choose anyway: link without a next
                // hop, global with one.
                !((sc == "link" && r.get("gateway").is_none())
                    || (sc == "global" && r.get("gateway").is_some()))
            }),
            src: s("prefsrc"),
            onlink: r["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "onlink")),
        });
    }
    Ok(out)
}

/// The MAC address in `ip -j link show dev IF` output.
pub fn parse_mac(json: &str) -> Result<String, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("ip -j link: {e}"))?;
    v[0]["address"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "no link address".to_string())
}

/// Whether ARP is on, from `ip -j link show dev IF` output.
pub fn parse_arp_on(json: &str) -> bool {
    let v: Value = serde_json::from_str(json).unwrap_or_default();
    !v[0]["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "NOARP"))
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// `ip addr add` of `a` on `dev`.
pub fn addr_add(a: &Addr, dev: &str) -> Vec<String> {
    let mut c = s(&["ip", "addr", "add", &a.cidr]);
    if let Some(b) = &a.broadcast {
        c.extend(s(&["broadcast", b]));
    }
    c.extend(s(&["dev", dev]));
    c
}

/// `ip addr del` of `a` on `dev`.
pub fn addr_del(a: &Addr, dev: &str) -> Vec<String> {
    s(&["ip", "addr", "del", &a.cidr, "dev", dev])
}

/// `ip route replace` of `r` through `dev` (takes the route over from
/// another interface: same destination, metric and table).
pub fn route_replace(r: &Route, dev: &str) -> Vec<String> {
    let mut c = s(&["ip", "route", "replace", &r.dst]);
    if let Some(v) = &r.via {
        c.extend(s(&["via", v]));
    }
    c.extend(s(&["dev", dev]));
    if let Some(m) = r.metric {
        c.extend(s(&["metric", &m.to_string()]));
    }
    if let Some(p) = &r.proto {
        c.extend(s(&["proto", p]));
    }
    if let Some(sc) = &r.scope {
        c.extend(s(&["scope", sc]));
    }
    if let Some(src) = &r.src {
        c.extend(s(&["src", src]));
    }
    if r.onlink {
        c.push("onlink".into());
    }
    c
}

/// The commands that move `addrs` and `routes` from `from` to `to`, in
/// order: the addresses appear on `to`, the routes are taken over, then
/// the addresses leave `from` (and with them its connected routes).
pub fn move_commands(addrs: &[Addr], routes: &[Route], from: &str, to: &str) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = addrs.iter().map(|a| addr_add(a, to)).collect();
    // Routes through a gateway need its subnet reachable first: direct
    // routes go first.
    let (direct, via): (Vec<&Route>, Vec<&Route>) = routes.iter().partition(|r| r.via.is_none());
    out.extend(direct.into_iter().chain(via).map(|r| route_replace(r, to)));
    out.extend(addrs.iter().map(|a| addr_del(a, from)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRS: &str = r#"[{"ifindex":2,"link_index":2,"ifname":"up0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"qdisc":"noqueue","operstate":"UP","group":"default","txqlen":1000,"link_type":"ether","address":"02:00:00:00:90:02","broadcast":"ff:ff:ff:ff:ff:ff","link_netnsid":0,"addr_info":[{"family":"inet","local":"192.168.90.2","prefixlen":24,"scope":"global","label":"up0","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet","local":"10.9.9.9","prefixlen":16,"broadcast":"10.9.255.255","scope":"global","label":"up0","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"fe80::ff:fe00:9002","prefixlen":64,"scope":"link","valid_life_time":4294967295,"preferred_life_time":4294967295}]}]"#;

    const ROUTES: &str = r#"[{"dst":"default","gateway":"192.168.90.1","flags":[]},{"dst":"10.9.0.0/16","protocol":"kernel","scope":"link","prefsrc":"10.9.9.9","flags":[]},{"dst":"10.10.0.0/16","gateway":"192.168.90.1","protocol":"static","metric":50,"flags":[]},{"dst":"10.11.0.0/16","scope":"link","prefsrc":"192.168.90.2","flags":[]},{"dst":"10.12.0.0/16","gateway":"10.200.0.1","flags":["onlink"]},{"dst":"192.168.90.0/24","protocol":"kernel","scope":"link","prefsrc":"192.168.90.2","flags":[]},{"type":"blackhole","dst":"10.13.0.0/16","flags":[]}]"#;

    #[test]
    fn addresses_and_routes_parse_from_ip_json() {
        assert_eq!(
            parse_addrs(ADDRS).unwrap(),
            vec![
                Addr {
                    cidr: "192.168.90.2/24".into(),
                    broadcast: None
                },
                Addr {
                    cidr: "10.9.9.9/16".into(),
                    broadcast: Some("10.9.255.255".into())
                },
            ]
        );
        assert_eq!(parse_addrs("[]").unwrap(), vec![]);
        assert_eq!(parse_mac(ADDRS).unwrap(), "02:00:00:00:90:02");
        assert!(parse_arp_on(ADDRS));
        assert!(!parse_arp_on(r#"[{"flags":["BROADCAST","NOARP","UP"]}]"#));
        let routes = parse_routes(ROUTES).unwrap();
        let dsts: Vec<&str> = routes.iter().map(|r| r.dst.as_str()).collect();
        assert_eq!(
            dsts,
            ["default", "10.10.0.0/16", "10.11.0.0/16", "10.12.0.0/16"]
        );
        assert!(parse_addrs("not json").is_err());
    }

    #[test]
    fn moving_takes_addresses_then_routes_then_leaves_the_old_interface() {
        let addrs = parse_addrs(ADDRS).unwrap();
        let routes = parse_routes(ROUTES).unwrap();
        let cmds: Vec<String> = move_commands(&addrs, &routes, "up0", "br0")
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(
            cmds,
            [
                "ip addr add 192.168.90.2/24 dev br0",
                "ip addr add 10.9.9.9/16 broadcast 10.9.255.255 dev br0",
                "ip route replace 10.11.0.0/16 dev br0 src 192.168.90.2",
                "ip route replace default via 192.168.90.1 dev br0",
                "ip route replace 10.10.0.0/16 via 192.168.90.1 dev br0 metric 50 proto static",
                "ip route replace 10.12.0.0/16 via 10.200.0.1 dev br0 onlink",
                "ip addr del 192.168.90.2/24 dev up0",
                "ip addr del 10.9.9.9/16 dev up0",
            ]
        );
    }
}
