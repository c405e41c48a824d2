//! daolinet-agent: the per-host DaoliNet switch.
//!
//! - [`compile`]: OpenFlow flows (daolinet-openflow syntax/types) to the
//!   datapath's match key/mask and compiled actions (pure, no I/O);
//! - [`table`]: the userspace rule table and its tuple-space layout
//!   (subtables, shadowing by priority) — pure, tested without root;
//! - [`datapath`]: loads the BPF object, pins maps under bpffs, attaches
//!   programs to ports and writes the table into the maps;
//! - [`oftable`]: OpenFlow 1.3 FLOW_MOD semantics and timeouts over the
//!   table (sans-IO); [`ofswitch`]: the OpenFlow switch (sessions, roles,
//!   multiparts, PACKET_IN/OUT, ARP responder, fail modes; sans-IO);
//!   [`packet`]: userspace packet parsing and rewriting;
//! - [`agent`]: applies the switch's effects to the datapath and the
//!   connections, and serves the control socket; [`runtime`]: tokio tasks
//!   for controller connections, the passive listener, punts and timers;
//!   [`inject`]: AF_PACKET transmit; [`register`]: self-registration with
//!   the controller's REST API.

pub mod agent;
pub mod compile;
pub mod datapath;
pub mod inject;
pub mod ofswitch;
pub mod oftable;
pub mod packet;
pub mod register;
pub mod runtime;
pub mod table;

/// Default OpenFlow port number of the uplink (`--uplink-ofport`): below
/// OpenFlow 1.0's 0xff00 so Open vSwitch tools, which keep ports in 16 bits,
/// can show and use it.
pub const DEFAULT_UPLINK_OFPORT: u32 = 65000;
