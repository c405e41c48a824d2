//! A million flows through a tool we did not write: installed with
//! `ovs-ofctl add-flows` from files, traffic still forwarded by the right
//! flow among them, `dump-flows` complete, and a delete by cookie mask that
//! leaves exactly the others.

use std::io::Write;
use std::time::Duration;

use daolinet_testlab::{Lab, Need, Netns};

/// The agent's OpenFlow listener, inside the test's host namespace.
const OF_PORT: u16 = 6634;
/// Flows besides the two that carry the test's traffic.
const OTHERS: u32 = 1_000_000;
/// `ovs-ofctl add-flows` waits for a barrier after every flow, so one
/// process installs a flow per round trip: the files are loaded by this
/// many processes at once.
const PARTS: u32 = 8;

fn ofctl(h: &Netns, args: &[&str]) -> String {
    let target = format!("tcp:127.0.0.1:{OF_PORT}");
    let mut full = vec!["ovs-ofctl", "-O", "OpenFlow13", args[0], &target];
    full.extend_from_slice(&args[1..]);
    let r = h.output(&full);
    assert!(r.ok, "ovs-ofctl {args:?} failed: {}", r.stderr);
    r.stdout
}

/// The other flows: two masks (two subtables), output to a port, cookie 1.
fn other_flow(i: u32) -> String {
    let (x, y, z) = (i >> 16, (i >> 8) & 255, i & 255);
    if i.is_multiple_of(2) {
        format!("cookie=0x1,priority=100,in_port=1,ip,nw_dst=11.{x}.{y}.{z},actions=output:2")
    } else {
        format!("cookie=0x1,priority=150,ip,nw_src=12.{x}.{y}.{z},actions=output:1")
    }
}

#[test]
fn a_million_flows_from_ovs_ofctl_files_forward_dump_and_delete_by_cookie() {
    let Some(mut lab) = Lab::new(&[
        Need::BpfObject,
        Need::Program("ping"),
        Need::Program("ovs-ofctl"),
    ]) else {
        return;
    };
    let h = lab.netns("h");
    h.veth("up0", "up0p");
    let a = lab.container(&h, "a", "pa", "10.1.0.2", "02:00:00:00:00:0a");
    let b = lab.container(&h, "b", "pb", "10.1.0.3", "02:00:00:00:00:0b");
    for (c, ip, mac) in [
        (&a, "10.1.0.3", "02:00:00:00:00:0b"),
        (&b, "10.1.0.2", "02:00:00:00:00:0a"),
    ] {
        c.ip(&["neigh", "add", ip, "lladdr", mac, "dev", "eth0"]);
    }
    let listen = format!("ptcp:{OF_PORT}");
    let agent = lab.agent(
        &h,
        &[
            "--uplink",
            "up0",
            "--port",
            "pa=1",
            "--port",
            "pb=2",
            "--listen",
            &listen,
            "--max-flows",
            "1100000",
        ],
    );
    h.wait_tcp_listening(OF_PORT, Duration::from_secs(30));

    // The files: the two flows the pings take (cookie 2, in the same
    // subtable as half of the others) and a million others.
    let dir = lab.subdir("flows");
    let mut files = Vec::new();
    for part in 0..PARTS {
        let path = dir.join(format!("part{part}.txt"));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("flow file"));
        if part == 0 {
            for flow in [
                "cookie=0x2,priority=300,in_port=1,ip,nw_dst=10.1.0.3,actions=output:2",
                "cookie=0x2,priority=300,in_port=2,ip,nw_dst=10.1.0.2,actions=output:1",
            ] {
                writeln!(f, "{flow}").expect("write");
            }
        }
        for i in (part..OTHERS).step_by(PARTS as usize) {
            writeln!(f, "{}", other_flow(i)).expect("write");
        }
        f.flush().expect("write");
        files.push(path);
    }
    let target = format!("tcp:127.0.0.1:{OF_PORT}");
    let loaders: Vec<_> = files
        .iter()
        .map(|f| {
            let file = f.display().to_string();
            h.command(&["ovs-ofctl", "-O", "OpenFlow13", "add-flows", &target, &file])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("ovs-ofctl add-flows")
        })
        .collect();
    for l in loaders {
        let out = l.wait_with_output().expect("ovs-ofctl add-flows");
        assert!(
            out.status.success(),
            "ovs-ofctl add-flows: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let total = OTHERS + 2;
    let agg = ofctl(&h, &["dump-aggregate"]);
    assert!(agg.contains(&format!("flow_count={total}")), "{agg}");

    // The traffic takes its flows, a million others around them.
    assert!(a.ping("10.1.0.3", 3, 2), "a -> b with a million flows");
    assert!(b.ping("10.1.0.2", 1, 2), "b -> a with a million flows");
    let mine = ofctl(&h, &["dump-flows", "cookie=0x2/-1"]);
    let to_b = mine
        .lines()
        .find(|l| l.contains("nw_dst=10.1.0.3"))
        .unwrap_or_else(|| panic!("the flow to b is not listed: {mine}"));
    let packets: u64 = to_b
        .split("n_packets=")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {to_b}"));
    assert!(packets >= 3, "the pings did not take their flow: {to_b}");

    // The dump lists every flow.
    let dump = ofctl(&h, &["dump-flows"]);
    assert_eq!(dump.matches("cookie=").count(), total as usize);
    assert_eq!(dump.matches("cookie=0x2,").count(), 2);
    drop(dump);

    // One delete by cookie mask takes the million and only them.
    ofctl(&h, &["del-flows", "cookie=0x1/-1"]);
    let left = ofctl(&h, &["dump-flows"]);
    let lines: Vec<&str> = left.lines().filter(|l| l.contains("cookie=")).collect();
    assert_eq!(lines.len(), 2, "{left}");
    assert!(lines.iter().all(|l| l.contains("cookie=0x2,")), "{left}");
    assert!(a.ping("10.1.0.3", 1, 2), "a -> b after the delete");
    let status = agent.cli(&["status", "--json"]);
    assert!(status.contains("\"flows\": 2"), "{status}");
}
