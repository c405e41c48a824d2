//! daolinet-agent: the per-host DaoliNet switch.
//!
//! - [`compile`]: OpenFlow flows (daolinet-openflow syntax/types) to the
//!   datapath's match key/mask and compiled actions (pure, no I/O);
//! - [`table`]: the userspace rule table and its tuple-space layout
//!   (subtables, shadowing by priority) — pure, tested without root;
//! - [`datapath`]: loads the BPF object, pins maps under bpffs, attaches
//!   programs to ports and writes the table into the maps ([`drain`]:
//!   the entries of removed subtables, deleted in the background);
//! - [`oftable`]: OpenFlow 1.3 FLOW_MOD semantics and timeouts over the
//!   table (sans-IO); [`ofswitch`]: the OpenFlow switch (sessions, roles,
//!   multiparts, PACKET_IN/OUT, ARP responder, fail modes; sans-IO);
//!   [`packet`]: userspace packet parsing and rewriting;
//! - [`conn`]: one OpenFlow connection (framing, HELLO and version, echo
//!   keepalive, backpressure; sans-IO);
//! - [`engine`]: the single owner of the switch, its [`engine::Dataplane`]
//!   and its connections, applying the switch's effects in order (generic
//!   over the dataplane: tested without root); [`fastpath`]: punts to
//!   PACKET_IN and the wait for the answers, handed the engine;
//!   [`runtime`]: the one-thread event loop (epoll) around them: sockets,
//!   reconnects, timers, signals, the control socket ([`control`]);
//!   [`tls`]: OpenFlow over TLS to a controller (a rustls transport);
//! - [`host`]: the real dataplane (BPF maps, [`inject`]: AF_PACKET
//!   transmit and the LOCAL port; [`bell`]: the punt ring's wake-up
//!   device; both TAP devices made by `tap`; [`netdev`]: interface facts);
//!   [`register`]: self-registration with the controller's REST API (a
//!   thread of its own, told by the event loop when controllers connect);
//!   [`hostsetup`]: the host's NAT-out (forwarding, masquerade, the pool
//!   routed to the LOCAL port);
//! - [`portbook`]: the ports attached through the control socket, kept
//!   for the next start; [`delqueue`]: the deferred-deletion queue the
//!   runtimes' integrations leave when the agent or controller is down.
//!
//! Module dependencies run one way: runtime -> control, fastpath ->
//! engine -> conn, ofswitch -> oftable -> table, compile; host -> engine
//! (the trait), datapath -> drain, inject -> netdev, inject and bell ->
//! tap.

pub mod ahead;
pub mod bell;
pub mod compile;
pub mod conn;
pub mod control;
pub mod datapath;
pub mod delqueue;
pub mod dpstats;
pub mod drain;
pub mod dropwatch;
pub mod engine;
pub mod fastpath;
pub mod groups;
pub mod heap;
pub mod host;
pub mod hostsetup;
pub mod inject;
pub mod meters;
pub mod metrics;
pub mod netdev;
pub mod ofswitch;
pub mod oftable;
pub mod packet;
pub mod pipeline;
pub mod portbook;
pub mod register;
pub mod runtime;
pub mod status;
pub mod table;
mod tap;
pub mod tls;

/// Default OpenFlow port number of the uplink (`--uplink-ofport`): below
/// OpenFlow 1.0's 0xff00 so Open vSwitch tools, which keep ports in 16 bits,
/// can show and use it.
pub const DEFAULT_UPLINK_OFPORT: u32 = 65000;
