//! Bad input to `daolinet-agent run`: one clear line, non-zero exit,
//! nothing attached or pinned.

use daolinet_testlab::{output_of, Lab, Need};

#[test]
fn bad_input_gets_one_clear_line_and_nothing_is_left_attached() {
    let Some(mut lab) = Lab::new(&[Need::BpfObject, Need::Program("tc")]) else {
        return;
    };
    let h = lab.netns("h");
    h.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up0p"]);
    // Each attempt is a fresh agent: its own state dir and pins.
    let mut run_agent = |args: &[&str]| {
        let agent = lab.agent_stopped(&h, &[]);
        let mut full = vec!["run"];
        full.extend_from_slice(args);
        let r = output_of(&mut agent.command(&full), "daolinet-agent run");
        (r.ok, r.stderr)
    };

    let (ok, err) = run_agent(&["--uplink", "nosuch0"]);
    assert!(!ok);
    assert!(err.contains("no such interface: nosuch0"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("error")).count(),
        1,
        "{err}"
    );

    let (ok, err) = run_agent(&["--uplink", "up0", "--port", "nosuch1=3"]);
    assert!(!ok);
    assert!(err.contains("no such interface: nosuch1"), "{err}");

    let (ok, err) = run_agent(&["--uplink", "up0", "--port", "up0p=x"]);
    assert!(!ok);
    assert!(err.contains("bad OpenFlow port number"), "{err}");

    for n in ["0", "999999999"] {
        let (ok, err) = run_agent(&["--uplink", "up0", "--max-flows", n]);
        assert!(!ok);
        assert!(
            err.contains(&format!("--max-flows {n}: expected 1 to")),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    let (ok, err) = run_agent(&[
        "--uplink",
        "up0",
        "--bpf-object",
        "/nonexistent/daolinet.bpf.o",
    ]);
    assert!(!ok);
    assert!(err.contains("cargo xtask build-ebpf --release"), "{err}");

    // Same port twice: refused before anything stays attached.
    let (ok, err) = run_agent(&["--uplink", "up0", "--port", "up0p=1", "--port", "up0p=2"]);
    assert!(!ok);
    assert!(err.contains("already attached"), "{err}");

    // Nothing is left on the interfaces: no tcx/XDP program remains.
    let text = h.ip(&["-d", "link", "show", "up0"]);
    assert!(!text.contains("xdp"), "{text}");
    let filters = h.run(&["tc", "filter", "show", "dev", "up0", "ingress"]);
    assert!(filters.trim().is_empty(), "{filters}");
}
