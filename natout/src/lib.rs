//! The host's part of DaoliNet's NAT-out, on agent hosts and Open vSwitch
//! hosts alike.
//!
//! A container's packet to the outside leaves its host's datapath for the
//! host stack (OpenFlow LOCAL) with the container's *physical* IP as
//! source. The host must then
//! 1. forward it: `net.ipv4.conf.DEV.forwarding=1` on the devices packets
//!    come in on (the LOCAL device, and on agent hosts the uplink the
//!    replies come back on); per device, so nothing else of the host starts
//!    forwarding;
//! 2. masquerade the physical pool out of the host's underlay device: one
//!    nftables table of DaoliNet's own (family `ip`, [`TABLE`]), created
//!    whole in one transaction through the `nftables` crate (`nft -j`), so
//!    no other table or chain of the host is touched;
//! 3. route the pool back to the datapath's LOCAL port, so de-masqueraded
//!    replies (and replies arriving after their return flow expired, which
//!    the controller's pool flow then sends to the controller) enter the
//!    datapath with `in_port=LOCAL` and meet the return flows: on agent
//!    hosts the pool goes to the `dllocalN` device (no ARP); on Open
//!    vSwitch hosts to the bridge's LOCAL interface through a dummy next
//!    hop ([`NEXT_HOP`], RFC 7600) with a permanent neighbour entry, so the
//!    kernel never ARPs for container addresses.
//!
//! [`apply`] does it and returns an [`Applied`] record of exactly what it
//! changed (the previous sysctl values included); [`undo`] removes exactly
//! that. A failure half-way undoes what was done. The record is plain data
//! (serde) so that a one-shot command (`daolictl host join-ovs`) can keep it
//! and `leave-ovs` can undo it later; the agent holds a [`Guard`].
//!
//! The rule set and the commands are built by pure functions
//! ([`ruleset`], [`route_commands`]), tested without root.

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv4Addr;
use std::process::Command;
use std::str::FromStr;

use nftables::{
    batch::Batch,
    expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix},
    schema::{Chain, FlushObject, NfCmd, NfListObject, Nftables, Rule, Table},
    stmt::{Match, Operator, Statement},
    types::{NfChainPolicy, NfChainType, NfFamily, NfHook},
};
use serde::{Deserialize, Serialize};

/// The name of DaoliNet's nftables table (family `ip`).
pub const TABLE: &str = "daolinet";

/// The dummy next hop of the pool route on Open vSwitch hosts (RFC 7600's
/// IPv4 dummy address, also the address of the agent's `dllocalN`).
pub const NEXT_HOP: Ipv4Addr = Ipv4Addr::new(192, 0, 0, 8);

/// nftables priority of source NAT (`srcnat`).
const PRIO_SRCNAT: i32 = 100;

/// An IPv4 prefix, `a.b.c.d/len` with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pool {
    /// The network address.
    pub addr: Ipv4Addr,
    /// The prefix length, 0..=32.
    pub len: u8,
}

impl FromStr for Pool {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IPv4 prefix like 172.31.0.0/16");
        let (a, l) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let len: u8 = l.parse().map_err(|_| bad())?;
        if len > 32 {
            return Err(bad());
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        if u32::from(addr) & !mask != 0 {
            return Err(format!("{s:?} has host bits set"));
        }
        Ok(Pool { addr, len })
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl TryFrom<String> for Pool {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Pool> for String {
    fn from(p: Pool) -> String {
        p.to_string()
    }
}

/// How the pool is routed back to the datapath's LOCAL port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolRoute {
    /// Straight onto a device without ARP (the agent's `dllocalN`).
    Device(String),
    /// Through [`NEXT_HOP`] on a device, with a permanent neighbour entry
    /// for it (`lladdr`, any unicast MAC: the datapath's flows rewrite it).
    Via {
        /// The device (an Open vSwitch bridge's LOCAL interface).
        dev: String,
        /// The neighbour entry's MAC, `aa:bb:cc:dd:ee:ff`.
        lladdr: String,
    },
}

impl PoolRoute {
    /// The device the pool is routed to.
    pub fn dev(&self) -> &str {
        match self {
            PoolRoute::Device(d) | PoolRoute::Via { dev: d, .. } => d,
        }
    }
}

/// What to set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The controller's physical pool.
    pub pool: Pool,
    /// The device towards the outside: masquerade to its address.
    pub out_dev: String,
    /// Devices on which the host must forward.
    pub forward_devs: Vec<String>,
    /// The pool's way back to the datapath.
    pub route: PoolRoute,
}

/// A sysctl changed by [`apply`], with the value it had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sysctl {
    /// Path under `/proc/sys`.
    pub path: String,
    /// Its value before (restored by [`undo`]).
    pub before: String,
}

/// Exactly what [`apply`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Sysctls set, with their previous values.
    #[serde(default)]
    pub sysctls: Vec<Sysctl>,
    /// The nftables table created (family `ip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// The neighbour entry added: `(address, device)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neigh: Option<(Ipv4Addr, String)>,
    /// The `ip` arguments that delete the route added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_del: Option<Vec<String>>,
}

fn s(x: &str) -> Cow<'static, str> {
    Cow::Owned(x.to_string())
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::IP,
        name: s(TABLE),
        handle: None,
    }
}

fn base_chain(name: &str, ty: NfChainType, hook: NfHook, prio: i32) -> Chain<'static> {
    Chain {
        family: NfFamily::IP,
        table: s(TABLE),
        name: s(name),
        _type: Some(ty),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Default::default()
    }
}

fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn field(protocol: &str, name: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: s(protocol),
            field: s(name),
        },
    )))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn prefix(p: Pool) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(s(&p.addr.to_string()))),
        len: u32::from(p.len),
    }))
}

fn rule(chain: &str, expr: Vec<Statement<'static>>) -> Rule<'static> {
    Rule {
        family: NfFamily::IP,
        table: s(TABLE),
        chain: s(chain),
        expr: Cow::Owned(expr),
        ..Default::default()
    }
}

/// The one transaction that (re)creates DaoliNet's table whole: the
/// table added and flushed (a table left by a killed process is taken
/// over, nothing else is touched), then
/// ```text
/// table ip daolinet {
///   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
///     ip saddr POOL oifname OUT masquerade }
///   chain output { type filter hook output priority filter; policy accept;
///     oifname OUT ip daddr POOL icmp type redirect drop }
/// }
/// ```
/// The output rule keeps the host from sending ICMP redirects to
/// containers: on an Open vSwitch host their packets come in and go out on
/// the same device (the bridge), which is exactly when the kernel sends
/// one.
pub fn ruleset(plan: &Plan) -> Nftables<'static> {
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));
    b.add_cmd(NfCmd::Flush(FlushObject::Table(table())));
    b.add(NfListObject::Chain(base_chain(
        "postrouting",
        NfChainType::NAT,
        NfHook::Postrouting,
        PRIO_SRCNAT,
    )));
    b.add(NfListObject::Rule(rule(
        "postrouting",
        vec![
            eq(field("ip", "saddr"), prefix(plan.pool)),
            eq(meta(MetaKey::Oifname), Expression::String(s(&plan.out_dev))),
            Statement::Masquerade(None),
        ],
    )));
    b.add(NfListObject::Chain(base_chain(
        "output",
        NfChainType::Filter,
        NfHook::Output,
        0,
    )));
    b.add(NfListObject::Rule(rule(
        "output",
        vec![
            eq(meta(MetaKey::Oifname), Expression::String(s(&plan.out_dev))),
            eq(field("ip", "daddr"), prefix(plan.pool)),
            eq(field("icmp", "type"), Expression::String(s("redirect"))),
            Statement::Drop(None),
        ],
    )));
    b.to_nftables()
}

/// The transaction deleting table `name` (family `ip`).
pub fn delete_table(name: &str) -> Nftables<'static> {
    let mut b = Batch::new();
    b.delete(NfListObject::Table(Table {
        family: NfFamily::IP,
        name: s(name),
        handle: None,
    }));
    b.to_nftables()
}

/// The `ip` commands routing the pool: `(neighbour entry to add,
/// route to add, route to delete)`.
pub fn route_commands(
    pool: Pool,
    route: &PoolRoute,
) -> (Option<Vec<String>>, Vec<String>, Vec<String>) {
    let v = |a: &[&str]| a.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let p = pool.to_string();
    let hop = NEXT_HOP.to_string();
    match route {
        PoolRoute::Device(dev) => (
            None,
            v(&["-4", "route", "add", &p, "dev", dev]),
            v(&["-4", "route", "del", &p, "dev", dev]),
        ),
        PoolRoute::Via { dev, lladdr } => (
            Some(v(&[
                "-4",
                "neigh",
                "add",
                &hop,
                "lladdr",
                lladdr,
                "dev",
                dev,
                "nud",
                "permanent",
            ])),
            v(&["-4", "route", "add", &p, "via", &hop, "dev", dev, "onlink"]),
            v(&["-4", "route", "del", &p, "via", &hop, "dev", dev]),
        ),
    }
}

/// The sysctl enabling forwarding on `dev`.
pub fn forwarding_path(dev: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{dev}/forwarding")
}

fn ip(args: &[String]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(format!(
        "`ip {}` failed: {}",
        args.join(" "),
        err.lines().next().unwrap_or("no error message").trim()
    ))
}

fn nft(n: &Nftables<'_>) -> Result<(), String> {
    nftables::helper::apply_ruleset(n).map_err(|e| format!("nft: {e}"))
}

fn write_sysctl(path: &str, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("writing {value} to {path}: {e}"))
}

/// Set up NAT-out as `plan` says; on a failure, undo what was done and say
/// what failed.
pub fn apply(plan: &Plan) -> Result<Applied, String> {
    let mut done = Applied::default();
    match apply_steps(plan, &mut done) {
        Ok(()) => Ok(done),
        Err(e) => match undo(&done) {
            Ok(()) => Err(e),
            Err(u) => Err(format!("{e} (undo incomplete: {u})")),
        },
    }
}

fn apply_steps(plan: &Plan, done: &mut Applied) -> Result<(), String> {
    for dev in &plan.forward_devs {
        let path = forwarding_path(dev);
        let before = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {path}: {e}"))?
            .trim()
            .to_string();
        if before != "1" {
            write_sysctl(&path, "1")?;
            done.sysctls.push(Sysctl { path, before });
        }
    }
    let (neigh, add, del) = route_commands(plan.pool, &plan.route);
    if let Some(n) = neigh {
        ip(&n)?;
        done.neigh = Some((NEXT_HOP, plan.route.dev().to_string()));
    }
    ip(&add)?;
    done.route_del = Some(del);
    nft(&ruleset(plan))?;
    done.table = Some(TABLE.to_string());
    Ok(())
}

/// Remove exactly what `a` records, in reverse order; every step is tried,
/// the failures are reported together. Things that are already gone (the
/// route of a device that went away) are not failures.
pub fn undo(a: &Applied) -> Result<(), String> {
    let mut errs = Vec::new();
    if let Some(t) = &a.table {
        let exists = Command::new("nft")
            .args(["list", "table", "ip", t])
            .output()
            .is_ok_and(|o| o.status.success());
        if exists {
            if let Err(e) = nft(&delete_table(t)) {
                errs.push(e);
            }
        }
    }
    if let Some(del) = &a.route_del {
        let dev_gone = del
            .iter()
            .position(|x| x == "dev")
            .and_then(|i| del.get(i + 1))
            .is_some_and(|d| !std::path::Path::new("/sys/class/net").join(d).exists());
        if !dev_gone {
            if let Err(e) = ip(del) {
                errs.push(e);
            }
        }
    }
    if let Some((addr, dev)) = &a.neigh {
        if std::path::Path::new("/sys/class/net").join(dev).exists() {
            let args: Vec<String> = ["-4", "neigh", "del", &addr.to_string(), "dev", dev]
                .iter()
                .map(|x| x.to_string())
                .collect();
            if let Err(e) = ip(&args) {
                errs.push(e);
            }
        }
    }
    for sc in a.sysctls.iter().rev() {
        // A device that went away took its sysctl with it.
        if std::path::Path::new(&sc.path).exists() {
            if let Err(e) = write_sysctl(&sc.path, &sc.before) {
                errs.push(e);
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}

/// What [`apply`] did, undone when dropped (or by [`Guard::release`],
/// which reports failures).
#[derive(Debug)]
pub struct Guard(Option<Applied>);

impl Guard {
    /// Set up `plan` and hold it.
    pub fn apply(plan: &Plan) -> Result<Guard, String> {
        apply(plan).map(|a| Guard(Some(a)))
    }

    /// What is held.
    pub fn applied(&self) -> Option<&Applied> {
        self.0.as_ref()
    }

    /// Undo now.
    pub fn release(mut self) -> Result<(), String> {
        match self.0.take() {
            Some(a) => undo(&a),
            None => Ok(()),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            let _ = undo(&a);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn plan(route: PoolRoute) -> Plan {
        Plan {
            pool: "172.31.0.0/16".parse().unwrap(),
            out_dev: "eth0".into(),
            forward_devs: vec!["dllocal0".into(), "eth0".into()],
            route,
        }
    }

    #[test]
    fn pools_parse_strictly() {
        let p: Pool = "10.0.0.0/8".parse().unwrap();
        assert_eq!(p.to_string(), "10.0.0.0/8");
        assert_eq!("0.0.0.0/0".parse::<Pool>().unwrap().len, 0);
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0",
            "10.0.0.0/33",
            "x/8",
            "10.0.0.0/-1",
        ] {
            assert!(bad.parse::<Pool>().is_err(), "{bad}");
        }
        let j = serde_json::to_string(&p).unwrap();
        assert_eq!(j, "\"10.0.0.0/8\"");
        assert!(serde_json::from_str::<Pool>("\"10.0.0.1/8\"").is_err());
    }

    #[test]
    fn the_table_is_one_transaction_in_our_own_table() {
        let n = ruleset(&plan(PoolRoute::Device("dllocal0".into())));
        let j = serde_json::to_value(&n).unwrap();
        let cmds = j["nftables"].as_array().unwrap();
        // Every command names our table in family ip, and nothing else.
        for c in cmds {
            let (_, obj) = c.as_object().unwrap().iter().next().unwrap();
            let (kind, body) = obj.as_object().unwrap().iter().next().unwrap();
            assert_eq!(body["family"], "ip", "{c}");
            let t = if kind == "table" {
                &body["name"]
            } else {
                &body["table"]
            };
            assert_eq!(t, TABLE, "{c}");
        }
        let text = j.to_string();
        assert!(text.contains(r#"{"flush":{"table""#), "{text}");
        assert!(text.contains(r#""hook":"postrouting""#), "{text}");
        assert!(text.contains(r#""type":"nat""#), "{text}");
        assert!(
            text.contains(r#"{"prefix":{"addr":"172.31.0.0","len":16}}"#),
            "{text}"
        );
        assert!(text.contains(r#"{"masquerade":null}"#), "{text}");
        assert!(text.contains(r#""right":"redirect""#), "{text}");
        assert_eq!(
            delete_table(TABLE),
            serde_json::from_value(serde_json::json!({"nftables":[{"delete":{"table":{"family":"ip","name":"daolinet"}}}]})).unwrap()
        );
    }

    #[test]
    fn routes_to_a_device_or_through_the_dummy_hop() {
        let p: Pool = "172.31.0.0/16".parse().unwrap();
        let (n, add, del) = route_commands(p, &PoolRoute::Device("dllocal0".into()));
        assert!(n.is_none());
        assert_eq!(add.join(" "), "-4 route add 172.31.0.0/16 dev dllocal0");
        assert_eq!(del.join(" "), "-4 route del 172.31.0.0/16 dev dllocal0");
        let (n, add, del) = route_commands(
            p,
            &PoolRoute::Via {
                dev: "br0".into(),
                lladdr: "02:00:00:00:00:01".into(),
            },
        );
        assert_eq!(
            n.unwrap().join(" "),
            "-4 neigh add 192.0.0.8 lladdr 02:00:00:00:00:01 dev br0 nud permanent"
        );
        assert_eq!(
            add.join(" "),
            "-4 route add 172.31.0.0/16 via 192.0.0.8 dev br0 onlink"
        );
        assert_eq!(
            del.join(" "),
            "-4 route del 172.31.0.0/16 via 192.0.0.8 dev br0"
        );
    }

    #[test]
    fn the_record_survives_json() {
        let a = Applied {
            sysctls: vec![Sysctl {
                path: forwarding_path("br0"),
                before: "0".into(),
            }],
            table: Some(TABLE.into()),
            neigh: Some((NEXT_HOP, "br0".into())),
            route_del: Some(vec!["-4".into(), "route".into()]),
        };
        let back: Applied = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back, a);
        assert_eq!(
            serde_json::from_str::<Applied>("{}").unwrap(),
            Applied::default()
        );
    }
}
