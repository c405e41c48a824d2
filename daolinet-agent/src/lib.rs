//! daolinet-agent: the per-host DaoliNet switch.
//!
//! - [`compile`]: OpenFlow flows (daolinet-openflow syntax/types) to the
//!   datapath's match key/mask and compiled actions (pure, no I/O);
//! - [`table`]: the userspace rule table and its tuple-space layout
//!   (subtables, shadowing by priority) — pure, tested without root;
//! - [`datapath`]: loads the BPF object, pins maps under bpffs, attaches
//!   programs to ports and writes the table into the maps.

pub mod agent;
pub mod compile;
pub mod datapath;
pub mod ofswitch;
pub mod oftable;
pub mod packet;
pub mod table;
