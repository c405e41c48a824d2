//! The OpenFlow 1.3 pipeline in userspace, sans-IO: what the datapath does
//! to a packet, run on a frame. The switch uses it for PACKET_OUTs (their
//! action lists, output to TABLE, groups); it is also the reference the
//! pipeline's semantics are tested against without root.
//!
//! The same rules as the datapath ([`crate::table`] holds them): per table
//! the highest-priority rule; its instructions as meter (not applied
//! here: meters police the datapath's traffic), apply-actions,
//! clear-actions, write-actions, write-metadata, goto-table; a table other
//! than 0 without a matching rule drops the packet; at the end the action
//! set runs in its fixed order (a group wins over an output). Outputs
//! send the frame as it is at that point; a group's buckets each work on a
//! copy.

use daolinet_common::{
    group_type, Action, ActionKind, FlowKey, RuleExt, EXT_CLEAR_ACTIONS, MAX_ACTIONS, NO_TABLE,
    N_TABLES,
};
use daolinet_openflow as of;

use crate::compile::action_set;
use crate::groups::{select_bucket, GroupTable};
use crate::packet::{apply, full_key, Applied, Regs};
use crate::table::RuleTable;

/// Where a frame goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Emit {
    /// Out of this OpenFlow port (by number).
    Port(u32, Vec<u8>),
    /// Back out of the ingress port (IN_PORT).
    InPort(Vec<u8>),
    /// To the host stack (LOCAL).
    Local(Vec<u8>),
    /// To the controllers.
    Controller {
        /// OFPR_* reason.
        reason: u8,
        /// Table of the rule that sent it.
        table: u8,
        /// That rule's id (None: no rule).
        rule: Option<u32>,
        /// The frame.
        frame: Vec<u8>,
        /// The metadata register then.
        metadata: u64,
    },
}

/// The tables and groups a packet runs through.
pub struct Pipeline<'a> {
    /// The rules of every table.
    pub rules: &'a RuleTable,
    /// The groups.
    pub groups: &'a GroupTable,
}

/// A packet on its way through the pipeline.
struct Pkt {
    frame: Vec<u8>,
    in_port: u32,
    regs: Regs,
    table: u8,
    rule: Option<u32>,
    aset: Vec<Action>,
    /// The rules matched so far (see [`Pipeline::run_counted`]).
    matched: Vec<u32>,
}

impl Pipeline<'_> {
    /// Run `frame`, received on `in_port`, through the tables from table 0.
    /// A table-0 miss is a PACKET_IN (OFPR_NO_MATCH).
    pub fn run(&self, frame: Vec<u8>, in_port: u32) -> Vec<Emit> {
        self.run_counted(frame, in_port).0
    }

    /// [`Pipeline::run`], and the ids of the rules the packet matched, in
    /// order (one per table it went through), for the caller to count it
    /// on them.
    pub fn run_counted(&self, frame: Vec<u8>, in_port: u32) -> (Vec<Emit>, Vec<u32>) {
        let mut out = Vec::new();
        let mut p = Pkt {
            frame,
            in_port,
            regs: Regs::default(),
            table: 0,
            rule: None,
            aset: Vec::new(),
            matched: Vec::new(),
        };
        self.tables(&mut p, &mut out);
        (out, p.matched)
    }

    /// Apply an action list (a PACKET_OUT's) to `frame` from `in_port`:
    /// outputs send copies as they come; `frame` is left rewritten. False
    /// when the packet must go no further (an expired TTL).
    pub fn apply_actions(
        &self,
        frame: &mut Vec<u8>,
        in_port: u32,
        actions: &[Action],
    ) -> (Vec<Emit>, bool) {
        let mut out = Vec::new();
        let mut p = Pkt {
            frame: std::mem::take(frame),
            in_port,
            regs: Regs::default(),
            table: 0,
            rule: None,
            aset: Vec::new(),
            matched: Vec::new(),
        };
        let go_on = self.apply_list(&mut p, actions, &mut out);
        *frame = p.frame;
        (out, go_on)
    }

    fn tables(&self, p: &mut Pkt, out: &mut Vec<Emit>) {
        for _ in 0..N_TABLES {
            let Some((key, _)) = full_key(&p.frame, p.in_port, &p.regs) else {
                return;
            };
            let Some((id, rule)) = self.rules.lookup(p.table, &key) else {
                if p.table == 0 {
                    out.push(Emit::Controller {
                        reason: of::OFPR_NO_MATCH,
                        table: 0,
                        rule: None,
                        frame: p.frame.clone(),
                        metadata: p.regs.metadata,
                    });
                }
                return;
            };
            p.rule = Some(id);
            p.matched.push(id);
            if !self.apply_list(p, &rule.actions, out) {
                return;
            }
            let ext: RuleExt = rule.ext.as_deref().copied().unwrap_or_default();
            if ext.flags & EXT_CLEAR_ACTIONS != 0 {
                p.aset.clear();
            }
            let n = (ext.n_write as usize).min(MAX_ACTIONS);
            if n > 0 {
                let mut set = std::mem::take(&mut p.aset);
                set.extend_from_slice(&ext.write[..n]);
                p.aset = action_set(set);
            }
            let (v, m) = (
                daolinet_common::u64_of(ext.metadata),
                daolinet_common::u64_of(ext.metadata_mask),
            );
            p.regs.metadata = (p.regs.metadata & !m) | (v & m);
            if ext.goto_table == NO_TABLE || ext.goto_table <= u32::from(p.table) {
                break;
            }
            p.table = ext.goto_table as u8;
        }
        let set = std::mem::take(&mut p.aset);
        let has_group = set.iter().any(|a| a.kind() == Some(ActionKind::Group));
        let set: Vec<Action> = set
            .into_iter()
            .filter(|a| !(has_group && a.kind().is_some_and(|k| k.is_output())))
            .collect();
        self.apply_list(p, &set, out);
    }

    /// Apply `actions` to the packet; false when it must go no further
    /// (an expired TTL was punted).
    fn apply_list(&self, p: &mut Pkt, actions: &[Action], out: &mut Vec<Emit>) -> bool {
        for a in actions {
            match a.kind() {
                Some(ActionKind::Group) => self.group(p, a.arg, out),
                Some(k) if k.is_output() => self.output(p, a, out),
                Some(ActionKind::Drop) => return false,
                Some(_) if apply(&mut p.frame, a, &mut p.regs) == Applied::TtlExpired => {
                    out.push(Emit::Controller {
                        reason: of::OFPR_INVALID_TTL,
                        table: p.table,
                        rule: p.rule,
                        frame: p.frame.clone(),
                        metadata: p.regs.metadata,
                    });
                    return false;
                }
                Some(_) | None => {}
            }
        }
        true
    }

    fn output(&self, p: &Pkt, a: &Action, out: &mut Vec<Emit>) {
        let frame = p.frame.clone();
        match a.kind() {
            Some(ActionKind::Output) => out.push(Emit::Port(a.arg, frame)),
            Some(ActionKind::OutputInPort) => out.push(Emit::InPort(frame)),
            Some(ActionKind::OutputLocal) => out.push(Emit::Local(frame)),
            Some(ActionKind::Controller) => out.push(Emit::Controller {
                reason: of::OFPR_ACTION,
                table: p.table,
                rule: p.rule,
                frame,
                metadata: p.regs.metadata,
            }),
            _ => {}
        }
    }

    /// Apply group `id`: each chosen bucket works on a copy.
    fn group(&self, p: &Pkt, id: u32, out: &mut Vec<Emit>) {
        let Some(g) = self.groups.get(id) else {
            return;
        };
        let chosen: Vec<usize> = match u32::from(g.desc.group_type) {
            group_type::ALL => (0..g.buckets.len()).collect(),
            group_type::SELECT => {
                let hash = full_key(&p.frame, p.in_port, &p.regs)
                    .map_or(0, |(k, _)| connection_hash(&k.key));
                select_bucket(&g.entry, hash).into_iter().collect()
            }
            group_type::FAST_FAILOVER => {
                let l = g.entry.live as usize;
                (l < g.buckets.len()).then_some(l).into_iter().collect()
            }
            _ => (0..g.buckets.len().min(1)).collect(),
        };
        for b in chosen {
            let mut copy = Pkt {
                frame: p.frame.clone(),
                in_port: p.in_port,
                regs: p.regs,
                table: p.table,
                rule: p.rule,
                aset: Vec::new(),
                matched: Vec::new(),
            };
            if let Some(acts) = g.buckets.get(b) {
                self.apply_list(&mut copy, acts, out);
            }
        }
    }
}

/// A connection's hash for select groups in userspace (any stable hash of
/// the addresses, Ethernet and IP, and ports: the datapath's own choice is
/// tested in the datapath).
pub fn connection_hash(k: &FlowKey) -> u32 {
    let w = k.words();
    let mut h = w[1] ^ w[2].rotate_left(13) ^ w[7].rotate_left(7) ^ u32::from(k.ip_proto);
    h ^= w[4].rotate_left(3) ^ w[5].rotate_left(11) ^ w[6].rotate_left(19);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile_instructions, compile_match};
    use crate::packet::tests::ipv4_frame;
    use crate::table::Rule;

    fn table_with(flows: &[(u8, &str)]) -> RuleTable {
        let mut t = RuleTable::new();
        for (table, f) in flows {
            let fm: of::FlowMod = f.parse().expect("flow syntax");
            let (key, mask) = compile_match(&fm.match_).expect("match");
            let c = compile_instructions(&fm.instructions, *table).expect("instructions");
            t.insert(Rule {
                actions: c.apply,
                ext: c.ext.map(Box::new),
                ..Rule::matching(*table, fm.priority, &key, &mask)
            })
            .expect("insert");
        }
        t
    }

    fn ports(e: &[Emit]) -> Vec<u32> {
        e.iter()
            .filter_map(|x| match x {
                Emit::Port(p, _) => Some(*p),
                _ => None,
            })
            .collect()
    }

    fn frame() -> Vec<u8> {
        ipv4_frame(6, [10, 0, 0, 1], [10, 0, 0, 2], 1234, 80)
    }

    #[test]
    fn goto_carries_metadata_to_the_next_table() {
        let t = table_with(&[
            (0, "ip actions=write_metadata:0xff/0xff,goto_table:2"),
            (2, "metadata=0xff,ip actions=output:3"),
            (2, "priority=40000,metadata=0x1/0xff,ip actions=output:4"),
        ]);
        let g = GroupTable::new();
        let p = Pipeline {
            rules: &t,
            groups: &g,
        };
        assert_eq!(ports(&p.run(frame(), 1)), [3]);
    }

    #[test]
    fn a_miss_after_table_0_drops_and_in_table_0_punts() {
        let t = table_with(&[(0, "ip actions=goto_table:1")]);
        let g = GroupTable::new();
        let p = Pipeline {
            rules: &t,
            groups: &g,
        };
        assert!(p.run(frame(), 1).is_empty());
        let arp = {
            let mut f = frame();
            f[12..14].copy_from_slice(&[8, 6]);
            f
        };
        assert!(matches!(
            p.run(arp, 1).as_slice(),
            [Emit::Controller {
                reason: of::OFPR_NO_MATCH,
                ..
            }]
        ));
    }

    #[test]
    fn the_action_set_runs_at_the_end_in_its_own_order() {
        // Table 0 writes an output and a rewrite, table 1 replaces the
        // output; the rewrite runs before the output whatever the order
        // written. Clear-actions empties the set.
        let t = table_with(&[
            (
                0,
                "ip actions=write_actions(output:5,set_field:10.9.9.9->ip_dst),goto_table:1",
            ),
            (1, "ip,nw_src=10.0.0.1 actions=write_actions(output:6)"),
        ]);
        let g = GroupTable::new();
        let p = Pipeline {
            rules: &t,
            groups: &g,
        };
        let e = p.run(frame(), 1);
        assert_eq!(ports(&e), [6]);
        let Emit::Port(_, f) = &e[0] else {
            panic!("not an output")
        };
        assert_eq!(&f[30..34], &[10, 9, 9, 9]);
        let t = table_with(&[
            (0, "ip actions=write_actions(output:5),goto_table:1"),
            (1, "ip actions=clear_actions"),
        ]);
        let p = Pipeline {
            rules: &t,
            groups: &g,
        };
        assert!(p.run(frame(), 1).is_empty());
    }

    #[test]
    fn apply_outputs_see_the_frame_as_rewritten_so_far() {
        let t = table_with(&[(
            0,
            "ip actions=output:2,set_field:02:00:00:00:00:09->eth_dst,output:3",
        )]);
        let g = GroupTable::new();
        let p = Pipeline {
            rules: &t,
            groups: &g,
        };
        let e = p.run(frame(), 1);
        let frames: Vec<&Vec<u8>> = e
            .iter()
            .filter_map(|x| match x {
                Emit::Port(_, f) => Some(f),
                _ => None,
            })
            .collect();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0][..6], [2, 0, 0, 0, 0, 2]);
        assert_eq!(frames[1][..6], [2, 0, 0, 0, 0, 9]);
    }

    #[test]
    fn group_buckets_work_on_copies() {
        let mut g = GroupTable::new();
        let bucket = |mac: [u8; 6], port: u32| of::Bucket {
            weight: 0,
            watch_port: of::OFPP_ANY,
            watch_group: of::OFPG_ANY,
            actions: vec![
                of::Action::SetField(of::OxmField::EthDst(of::MacAddr(mac), None)),
                of::Action::output(port),
            ],
        };
        g.group_mod(
            &of::GroupMod {
                command: of::OFPGC_ADD,
                group_type: of::OFPGT_ALL,
                group_id: 1,
                buckets: vec![bucket([2, 0, 0, 0, 0, 7], 2), bucket([2, 0, 0, 0, 0, 8], 3)],
            },
            0,
            &|_| true,
        )
        .expect("group");
        let t = table_with(&[(0, "ip actions=group:1,output:4")]);
        let p = Pipeline {
            rules: &t,
            groups: &g,
        };
        let e = p.run(frame(), 1);
        let got: Vec<(u32, u8)> = e
            .iter()
            .filter_map(|x| match x {
                Emit::Port(p, f) => Some((*p, f[5])),
                _ => None,
            })
            .collect();
        // Each bucket rewrote its copy; the packet after the group did not.
        assert_eq!(got, [(2, 7), (3, 8), (4, 2)]);
    }
}
