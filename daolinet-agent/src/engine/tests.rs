//! The engine without root: a fake dataplane and in-memory connections
//! that record, in one log, every map write, every frame sent and every
//! message the peer received, in the order they happened.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use daolinet_common::{PortStats, PuntHeader, RuleStats};
use daolinet_openflow::{self as of, Frame, Message};

use super::*;
use crate::fastpath::FastPath;
use crate::ofswitch::SwitchSettings;
use crate::oftable::FlowTable;

/// One thing that happened, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ev {
    /// A classifier entry written for this rule id.
    Put(u32),
    /// A classifier entry removed.
    Del,
    /// A classifier entry handed to the background drain (removed later,
    /// see [`FakeMaps::drain`]).
    Drain,
    /// A table's subtable list written.
    Subtables(u8),
    /// A frame sent on a port.
    Emit(u32, Vec<u8>),
    /// A message the peer named here received (complete on the wire).
    Got(&'static str, u32, Message),
}

pub(crate) type Log = Arc<Mutex<Vec<Ev>>>;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A dataplane that records what it is asked to do.
pub(crate) struct FakeDp {
    pub log: Log,
    /// Punts to hand out; `wake` (an eventfd) is written when one is added
    /// through [`FakeDp::punter`].
    pub punts: Arc<Mutex<VecDeque<Punt>>>,
    pub wake: Option<OwnedFd>,
    pub ports: BTreeMap<u32, PortDesc>,
    /// Anti-spoofing sources set, by port (None: turned off).
    pub sources: BTreeMap<u32, Option<Source>>,
    /// Drop samples to hand out.
    pub samples: Vec<crate::dpstats::Dropped>,
    /// The classifier and instruction maps as written.
    pub maps: FakeMaps,
    /// Operations written ahead ([`Dataplane::write_ahead`]): written,
    /// in order, by the next `try_apply`, which fails if they do.
    pub ahead: Vec<MapOp>,
    /// Parts written ahead so far.
    pub ahead_parts: usize,
    /// Most instruction entries the fake map takes (a full map refuses a
    /// new one, as the kernel's does with E2BIG).
    pub ext_room: usize,
}

/// The maps a [`FakeDp`] keeps (classifier entries, rule instructions,
/// subtable lists), to compare before and after.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FakeMaps {
    pub flows: std::collections::HashMap<crate::table::EntryKey, daolinet_common::FlowEntry>,
    pub ext: BTreeMap<u32, daolinet_common::RuleExt>,
    pub subtables: BTreeMap<u8, Vec<crate::table::SubtableDesc>>,
    /// Entries of removed subtables not deleted yet: still in `flows`,
    /// as in the kernel's map while the background drain runs.
    pub draining: Vec<crate::table::EntryKey>,
}

impl FakeMaps {
    /// Delete the entries waiting for the drain.
    pub fn drain(&mut self) {
        for k in std::mem::take(&mut self.draining) {
            self.flows.remove(&k);
        }
    }

    /// The rule id the datapath's walk of `table` finds for a packet with
    /// this key: the subtables in list order, stopping once no later one
    /// can beat the best found.
    pub fn classify(&self, table: u8, key: &daolinet_common::FullKey) -> Option<u32> {
        use crate::table::EntryKey;
        let mut best: Option<&daolinet_common::FlowEntry> = None;
        for (sub, ext) in self.subtables.get(&table).into_iter().flatten() {
            if best.is_some_and(|b| b.priority >= sub.max_priority) {
                break;
            }
            let mask = daolinet_common::FullKey {
                key: sub.mask,
                ext: *ext,
            };
            let k = key.masked(&mask);
            let mk = if sub.id & daolinet_common::SUBTABLE_WIDE != 0 {
                EntryKey::Wide(Box::new(daolinet_common::WideMapKey {
                    subtable: sub.id,
                    key: k,
                }))
            } else {
                EntryKey::Narrow(daolinet_common::FlowMapKey {
                    subtable: sub.id,
                    key: k.key,
                })
            };
            if let Some(e) = self.flows.get(&mk) {
                if best.is_none_or(|b| e.priority > b.priority) {
                    best = Some(e);
                }
            }
        }
        best.map(|e| e.rule_id)
    }
}

impl FakeDp {
    pub fn new(log: &Log) -> Self {
        // SAFETY: plain eventfd(2) call.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0);
        FakeDp {
            log: log.clone(),
            punts: Arc::default(),
            // SAFETY: fresh descriptor we own.
            wake: Some(unsafe { OwnedFd::from_raw_fd(fd) }),
            ports: BTreeMap::new(),
            sources: BTreeMap::new(),
            samples: Vec::new(),
            maps: FakeMaps::default(),
            ahead: Vec::new(),
            ahead_parts: 0,
            ext_room: usize::MAX,
        }
    }

    /// Something to punt packets from another thread with.
    pub fn punter(&self) -> Punter {
        let fd = self.wake.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
        // SAFETY: dup of a descriptor we own.
        let dup = unsafe { libc::dup(fd) };
        assert!(dup >= 0);
        Punter {
            punts: self.punts.clone(),
            // SAFETY: fresh descriptor we own.
            wake: unsafe { OwnedFd::from_raw_fd(dup) },
        }
    }
}

/// Punts packets into a [`FakeDp`] as the BPF ring would.
pub(crate) struct Punter {
    punts: Arc<Mutex<VecDeque<Punt>>>,
    wake: OwnedFd,
}

impl Punter {
    pub fn punt(&self, p: Punt) {
        lock(&self.punts).push_back(p);
        let one = 1u64.to_ne_bytes();
        // SAFETY: valid eventfd and an 8-byte buffer.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
    }
}

impl Counters for FakeDp {
    fn rule(&mut self, _: u32, _: &crate::table::EntryKey) -> RuleStats {
        RuleStats::default()
    }
    fn port(&mut self, ofport: u32) -> Option<PortStats> {
        self.ports.contains_key(&ofport).then(PortStats::default)
    }
}

impl FakeDp {
    /// Write `ops` to the fake maps, stopping at the first that fails.
    fn write(&mut self, ops: &[MapOp]) -> std::result::Result<(), ApplyError> {
        let mut log = lock(&self.log);
        let m = &mut self.maps;
        for op in ops {
            match op {
                MapOp::PutFlow(k, e) => {
                    m.flows.insert(k.clone(), **e);
                    log.push(Ev::Put(e.rule_id));
                }
                MapOp::UpdateFlow(k, e) => {
                    // The counters are carried over, as the real one does.
                    let mut e = **e;
                    if let Some(old) = m.flows.get(k) {
                        e.packets = old.packets;
                        e.bytes = old.bytes;
                    }
                    m.flows.insert(k.clone(), e);
                    log.push(Ev::Put(e.rule_id));
                }
                MapOp::DelFlow(k) => {
                    m.flows.remove(k);
                    log.push(Ev::Del);
                }
                MapOp::DrainFlows(d) => {
                    for k in d.keys() {
                        m.draining.push(k);
                        log.push(Ev::Drain);
                    }
                }
                MapOp::PutRuleExt(id, e) => {
                    if !m.ext.contains_key(id) && m.ext.len() >= self.ext_room {
                        return Err(ApplyError {
                            no_room: true,
                            message: format!("instructions of rule {id}: map full"),
                        });
                    }
                    m.ext.insert(*id, **e);
                }
                MapOp::DelRuleExt(id) => {
                    m.ext.remove(id);
                }
                MapOp::SetSubtables(t, list) => {
                    m.subtables.insert(*t, list.clone());
                    log.push(Ev::Subtables(*t));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl Dataplane for FakeDp {
    fn apply(&mut self, ops: &[MapOp]) {
        // As the real one: the failed operation is logged, the rest goes on.
        for (i, _) in ops.iter().enumerate() {
            if self.try_apply(&ops[i..i + 1]).is_err() {
                continue;
            }
        }
    }
    fn write_ahead(&mut self, ops: &mut Vec<MapOp>) {
        // Any operations, unlike the real one's (additions only): what
        // fails among them fails the run.
        self.ahead_parts += usize::from(!ops.is_empty());
        self.ahead.append(ops);
    }
    fn try_apply(&mut self, ops: &[MapOp]) -> std::result::Result<(), ApplyError> {
        let ahead = std::mem::take(&mut self.ahead);
        self.write(&ahead)?;
        self.write(ops)
    }
    fn punts(&mut self, out: &mut Vec<Punt>) {
        if let Some(w) = &self.wake {
            let mut b = [0u8; 8];
            // SAFETY: valid eventfd and buffer: clears it.
            unsafe { libc::read(w.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
        }
        out.extend(lock(&self.punts).drain(..));
    }
    fn punt_fd(&self) -> Option<RawFd> {
        self.wake.as_ref().map(|f| f.as_raw_fd())
    }
    fn emit(&mut self, port: u32, frame: &[u8]) {
        lock(&self.log).push(Ev::Emit(port, frame.to_vec()));
    }
    fn attach(&mut self, iface: &str, ofport: Option<u32>, _: PortKind) -> Result<PortDesc> {
        let ofport = ofport.unwrap_or(self.ports.keys().max().copied().unwrap_or(0) + 1);
        let d = PortDesc {
            ofport,
            name: iface.into(),
            mac: [2, 0, 0, 0, 0, ofport as u8],
            up: true,
        };
        self.ports.insert(ofport, d.clone());
        Ok(d)
    }
    fn detach(&mut self, iface: &str) -> Result<Vec<u32>> {
        let gone: Vec<u32> = self
            .ports
            .iter()
            .filter(|(_, d)| d.name == iface)
            .map(|(p, _)| *p)
            .collect();
        for p in &gone {
            self.ports.remove(p);
        }
        if gone.is_empty() {
            anyhow::bail!("no such port: {iface}");
        }
        Ok(gone)
    }
    fn check_ports(&mut self) -> Vec<PortCheck> {
        self.ports
            .values()
            .map(|d| PortCheck::Present(d.clone()))
            .collect()
    }
    fn port_list(&mut self) -> Result<serde_json::Value> {
        Ok(serde_json::json!(self.ports.keys().collect::<Vec<_>>()))
    }
    fn drop_samples(&mut self, out: &mut Vec<crate::dpstats::Dropped>) {
        out.append(&mut self.samples);
    }
    fn set_port_source(&mut self, ofport: u32, source: Option<Source>) -> Result<()> {
        anyhow::ensure!(self.ports.contains_key(&ofport), "no port {ofport}");
        self.sources.insert(ofport, source);
        Ok(())
    }
}

/// The peer's side of an in-memory connection.
pub(crate) struct PipeState {
    name: &'static str,
    log: Log,
    /// Chunks the peer sent: readable once the switch has read this many
    /// times (a clock made of reads), one chunk per read.
    inbound: VecDeque<(usize, Vec<u8>)>,
    /// read() calls so far.
    pub reads: usize,
    /// The peer hung up (after its chunks).
    pub eof: bool,
    /// What the switch wrote, not yet decoded.
    outbound: Vec<u8>,
    /// Every message the peer got.
    pub got: Vec<Frame>,
    /// Most bytes taken per write; 0: the peer does not read (WouldBlock).
    pub max_write: usize,
    /// Every other write blocks.
    pub stutter: bool,
    writes: usize,
}

impl PipeState {
    /// Queue bytes from the peer, readable `after` reads from now.
    pub fn send_after(&mut self, after: usize, bytes: Vec<u8>) {
        let at = self.reads + after;
        self.inbound.push_back((at, bytes));
    }
    pub fn send(&mut self, bytes: Vec<u8>) {
        self.send_after(0, bytes);
    }
    pub fn pending(&self) -> usize {
        self.inbound.len()
    }
}

pub(crate) struct Pipe(Arc<Mutex<PipeState>>);

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut st = lock(&self.0);
        st.reads += 1;
        let now = st.reads;
        let eof = st.eof;
        match st.inbound.front_mut() {
            Some((at, chunk)) if *at < now => {
                let n = chunk.len().min(buf.len());
                buf[..n].copy_from_slice(&chunk[..n]);
                chunk.drain(..n);
                if chunk.is_empty() {
                    st.inbound.pop_front();
                }
                Ok(n)
            }
            None if eof => Ok(0),
            _ => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut st = lock(&self.0);
        st.writes += 1;
        if st.max_write == 0 || (st.stutter && st.writes.is_multiple_of(2)) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(st.max_write);
        st.outbound.extend_from_slice(&buf[..n]);
        while let Ok(Some((f, used))) = of::decode(&st.outbound) {
            st.outbound.drain(..used);
            lock(&st.log).push(Ev::Got(st.name, f.xid, f.message.clone()));
            st.got.push(f);
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Pipe {
    fn raw_fd(&self) -> Option<RawFd> {
        None
    }
}

pub(crate) fn pipe(log: &Log, name: &'static str) -> (Pipe, Arc<Mutex<PipeState>>) {
    let st = Arc::new(Mutex::new(PipeState {
        name,
        log: log.clone(),
        inbound: VecDeque::new(),
        reads: 0,
        eof: false,
        outbound: Vec::new(),
        got: Vec::new(),
        max_write: usize::MAX,
        stutter: false,
        writes: 0,
    }));
    (Pipe(st.clone()), st)
}

pub(crate) fn engine_with(log: &Log, cfg: ConnConfig) -> Engine<FakeDp> {
    let sw = Switch::new(
        FlowTable::default(),
        SwitchSettings {
            packet_in_rate: 0,
            ..Default::default()
        },
    );
    let mut eng = Engine::new(FakeDp::new(log), sw, cfg);
    for p in ["pa", "pb"] {
        eng.add_port(p, None, PortKind::Container).unwrap();
    }
    eng
}

pub(crate) fn wire(msgs: &[(u32, Message)]) -> Vec<u8> {
    msgs.iter()
        .flat_map(|(x, m)| m.to_bytes(*x).unwrap())
        .collect()
}

pub(crate) fn hello() -> Vec<u8> {
    wire(&[(1, Message::Hello(of::Hello::new()))])
}

/// A connection with its handshake done.
fn connected(
    eng: &mut Engine<FakeDp>,
    log: &Log,
    name: &'static str,
) -> (ConnId, Arc<Mutex<PipeState>>) {
    let (p, st) = pipe(log, name);
    let id = eng.open(Box::new(p), name.into());
    lock(&st).send(hello());
    eng.read(id, false);
    assert!(eng.conn(id).is_some_and(|c| c.is_up()));
    (id, st)
}

/// Give connection `id` `bytes` and let the engine read until its
/// transport has nothing left.
fn read_everything(eng: &mut Engine<FakeDp>, id: ConnId, st: &Mutex<PipeState>, bytes: Vec<u8>) {
    lock(st).send(bytes);
    while lock(st).pending() > 0 {
        eng.read(id, false);
    }
}

fn flow(dst: u8) -> Message {
    Message::FlowMod(
        format!("in_port=1,ip,nw_dst=10.0.0.{dst} actions=output:2")
            .parse()
            .unwrap(),
    )
}

fn frame(tag: u8) -> Vec<u8> {
    crate::packet::tests::ipv4_frame(17, [10, 0, 0, 1], [10, 0, 0, 2], tag.into(), 53)
}

fn packet_out(tag: u8) -> Message {
    Message::PacketOut(of::PacketOut::new(
        1,
        vec![of::Action::output(2)],
        frame(tag),
    ))
}

fn punt(tag: u8) -> Punt {
    let data = frame(tag);
    Punt {
        header: PuntHeader {
            in_port: 1,
            rule_id: u32::MAX,
            pkt_len: data.len() as u32,
            cap_len: data.len() as u32,
            ..Default::default()
        },
        data,
    }
}

/// Classifier writes before the first event matching `f`.
fn puts_before(log: &[Ev], f: impl Fn(&Ev) -> bool) -> usize {
    let at = log.iter().position(f).expect("event not in the log");
    log[..at].iter().filter(|e| matches!(e, Ev::Put(_))).count()
}

fn barrier_reply(xid: u32) -> impl Fn(&Ev) -> bool {
    move |e| matches!(e, Ev::Got(_, x, Message::BarrierReply) if *x == xid)
}

#[test]
fn barrier_replies_follow_the_map_writes_of_every_message_before_them() {
    let stream = wire(&[
        (1, Message::Hello(of::Hello::new())),
        (2, flow(1)),
        (3, flow(2)),
        (10, Message::BarrierRequest),
        (4, packet_out(7)),
        (5, flow(3)),
        (11, Message::BarrierRequest),
    ]);
    for chunk in [1, 5, 8, 13, 100, stream.len()] {
        let log = Log::default();
        let mut eng = engine_with(&log, ConnConfig::default());
        let (p, st) = pipe(&log, "c");
        let id = eng.open(Box::new(p), "c".into());
        for (i, part) in stream.chunks(chunk).enumerate() {
            lock(&st).send_after(i, part.to_vec());
        }
        while lock(&st).pending() > 0 {
            eng.read(id, false);
        }
        let log = lock(&log).clone();
        assert!(
            puts_before(&log, barrier_reply(10)) >= 2,
            "chunk {chunk}: {log:?}"
        );
        assert!(
            puts_before(&log, barrier_reply(11)) >= 3,
            "chunk {chunk}: {log:?}"
        );
        assert!(
            puts_before(&log, |e| matches!(e, Ev::Emit(2, f) if *f == frame(7))) >= 2,
            "chunk {chunk}: the PACKET_OUT went before the flows sent ahead of it: {log:?}"
        );
        let replies: Vec<u32> = log
            .iter()
            .filter_map(|e| match e {
                Ev::Got(_, x, Message::BarrierReply) => Some(*x),
                Ev::Got(_, _, Message::Error(e)) => panic!("error {e:?}"),
                _ => None,
            })
            .collect();
        assert_eq!(replies, [10, 11], "chunk {chunk}");
        assert_eq!(eng.sw.flows.len(), 3);
    }
}

#[test]
fn the_fast_path_handles_answers_in_order_with_what_the_loop_read_before() {
    let answer = wire(&[
        (20, flow(9)),
        (21, Message::BarrierRequest),
        (22, packet_out(1)),
    ]);
    // The controller's answer split anywhere: the part before the split
    // is read by the event loop, the rest arrives while the fast path
    // waits for it.
    for split in [0, 1, 7, 50, answer.len() - 30, answer.len() - 1] {
        let log = Log::default();
        let mut eng = engine_with(&log, ConnConfig::default());
        let (id, st) = connected(&mut eng, &log, "c");
        let mut fast = FastPath::patient(60);
        if split > 0 {
            lock(&st).send(answer[..split].to_vec());
            eng.read(id, false);
        }
        lock(&st).send_after(3, answer[split..].to_vec());
        lock(&eng.dp.punts).push_back(punt(1));
        assert_eq!(fast.run(&mut eng, 0), 1);
        let log = lock(&log).clone();
        let pi = log
            .iter()
            .position(|e| matches!(e, Ev::Got(_, _, Message::PacketIn(_))))
            .expect("PACKET_IN");
        let put = log
            .iter()
            .position(|e| matches!(e, Ev::Put(_)))
            .expect("flow");
        let br = log.iter().position(barrier_reply(21)).expect("barrier");
        let out = log
            .iter()
            .position(|e| matches!(e, Ev::Emit(2, f) if *f == frame(1)))
            .expect("PACKET_OUT executed");
        assert!(pi < out && put < br && put < out, "split {split}: {log:?}");
        // The spin stopped at the PACKET_OUT, not at its deadline.
        assert!(lock(&st).reads <= 3 + 3 + 2, "split {split}");
    }
}

/// A flow of cookie `cookie` to 10.(cookie).x.y.
fn flow_with_cookie(cookie: u8, i: u16) -> Message {
    let [x, y] = i.to_be_bytes();
    Message::FlowMod(
        format!("cookie={cookie},in_port=1,ip,nw_dst=10.{cookie}.{x}.{y} actions=output:2")
            .parse()
            .unwrap(),
    )
}

#[test]
fn a_barrier_after_a_delete_by_cookie_follows_the_removal_of_every_entry() {
    // 300 flows of cookie 1 and 200 of cookie 2; then, in one stream, a
    // delete by cookie 1, a barrier, and a delete by an exact match and a
    // barrier: each reply comes after every entry its delete removed is
    // gone, and what was not selected stays; whether the loop reads the
    // stream or the fast path does while it waits for a PACKET_OUT.
    let mut adds: Vec<(u32, Message)> = (0..300).map(|i| (100, flow_with_cookie(1, i))).collect();
    adds.extend((0..200).map(|i| (101, flow_with_cookie(2, i))));
    adds.push((102, Message::BarrierRequest));
    let adds = wire(&adds);
    let by_match: FlowMod = "in_port=1,ip,nw_dst=10.2.0.7".parse().unwrap();
    let dels = wire(&[
        (
            40,
            Message::FlowMod(FlowMod::delete(of::Match::new()).cookie_match(1, u64::MAX)),
        ),
        (41, Message::BarrierRequest),
        (
            42,
            Message::FlowMod(FlowMod {
                command: of::OFPFC_DELETE,
                ..by_match
            }),
        ),
        (43, Message::BarrierRequest),
        (44, packet_out(1)),
    ]);
    for (fast, split) in [(false, 0), (true, 0), (true, 9), (true, 120)] {
        let log = Log::default();
        let mut eng = engine_with(&log, ConnConfig::default());
        let (id, st) = connected(&mut eng, &log, "c");
        read_everything(&mut eng, id, &st, adds.clone());
        assert_eq!(eng.sw.flows.len(), 500);
        lock(&log).clear();
        if fast {
            // The loop reads the first part; the rest comes while the
            // fast path waits for the answer to a PACKET_IN.
            if split > 0 {
                lock(&st).send(dels[..split].to_vec());
                eng.read(id, false);
            }
            lock(&st).send_after(2, dels[split..].to_vec());
            lock(&eng.dp.punts).push_back(punt(1));
            let mut fp = FastPath::patient(60);
            assert_eq!(fp.run(&mut eng, 0), 1);
        } else {
            read_everything(&mut eng, id, &st, dels.clone());
        }
        let log = lock(&log).clone();
        let dels_before = |f: &dyn Fn(&Ev) -> bool| {
            let at = log.iter().position(f).expect("reply in the log");
            log[..at].iter().filter(|e| matches!(e, Ev::Del)).count()
        };
        let first = dels_before(&barrier_reply(41));
        assert!(
            first >= 300,
            "fast {fast} split {split}: {first} removed before the reply"
        );
        assert_eq!(
            dels_before(&barrier_reply(43)),
            301,
            "fast {fast} split {split}"
        );
        assert_eq!(eng.sw.flows.len(), 199);
        assert!(log
            .iter()
            .any(|e| matches!(e, Ev::Emit(2, f) if *f == frame(1))));
    }
}

/// A flow of cookie 3 that matches the IPv4 source only (a subtable of
/// its own), from 10.3.x.y.
fn src_flow(i: u16) -> Message {
    let [x, y] = i.to_be_bytes();
    Message::FlowMod(
        format!("cookie=3,priority=20,ip,nw_src=10.3.{x}.{y} actions=output:2")
            .parse()
            .unwrap(),
    )
}

#[test]
fn after_the_barrier_of_a_delete_that_empties_a_subtable_its_flows_match_nothing_while_their_entries_drain(
) {
    // 300 flows of cookie 3, alone in their subtable, and 200 of cookie 2
    // in another. A delete by cookie 3 unlinks the first subtable and
    // hands its entries to the drain, which has not run when the barrier
    // reply goes: a packet one of them matched matches nothing then.
    let mut adds: Vec<(u32, Message)> = (0..300).map(|i| (100, src_flow(i))).collect();
    adds.extend((0..200).map(|i| (101, flow_with_cookie(2, i))));
    adds.push((102, Message::BarrierRequest));
    let adds = wire(&adds);
    let dels = wire(&[
        (
            40,
            Message::FlowMod(FlowMod::delete(of::Match::new()).cookie_match(3, u64::MAX)),
        ),
        (41, Message::BarrierRequest),
        (42, packet_out(1)),
    ]);
    let pkt = crate::table::full(daolinet_common::FlowKey {
        in_port: 1,
        eth_type: daolinet_common::FlowKey::ETH_TYPE_IPV4,
        ipv4_src: [10, 3, 0, 7],
        ipv4_dst: [10, 9, 9, 9],
        ..Default::default()
    });
    for fast in [false, true] {
        let log = Log::default();
        let mut eng = engine_with(&log, ConnConfig::default());
        let (id, st) = connected(&mut eng, &log, "c");
        read_everything(&mut eng, id, &st, adds.clone());
        assert_eq!(eng.sw.flows.len(), 500);
        let before = eng.dp.maps.classify(0, &pkt);
        assert!(
            before.is_some(),
            "the flow from 10.3.0.7 is in the datapath"
        );
        lock(&log).clear();
        if fast {
            lock(&st).send_after(2, dels.clone());
            lock(&eng.dp.punts).push_back(punt(1));
            assert_eq!(FastPath::patient(60).run(&mut eng, 0), 1);
        } else {
            read_everything(&mut eng, id, &st, dels.clone());
        }
        let log = lock(&log).clone();
        let reply = log
            .iter()
            .position(barrier_reply(41))
            .expect("barrier reply");
        let unlinked = log
            .iter()
            .rposition(|e| matches!(e, Ev::Subtables(0)))
            .expect("the subtable list written");
        assert!(unlinked < reply, "fast {fast}: {log:?}");
        let count = |f: fn(&Ev) -> bool| log[..reply].iter().filter(|e| f(e)).count();
        assert_eq!(count(|e| matches!(e, Ev::Drain)), 300, "fast {fast}");
        assert_eq!(count(|e| matches!(e, Ev::Del)), 0, "fast {fast}");
        // The drain has not run: the entries are all there, yet the
        // packet matches none of them.
        assert_eq!(eng.dp.maps.draining.len(), 300);
        assert_eq!(eng.dp.maps.flows.len(), 500);
        assert_eq!(eng.dp.maps.subtables[&0].len(), 1);
        assert_eq!(eng.dp.maps.classify(0, &pkt), None, "fast {fast}");
        eng.dp.maps.drain();
        assert_eq!(eng.dp.maps.flows.len(), 200);
        assert_eq!(eng.sw.flows.len(), 200);
        // The flows left still match.
        let other = crate::table::full(daolinet_common::FlowKey {
            ipv4_dst: [10, 2, 0, 7],
            ..pkt.key
        });
        assert!(eng.dp.maps.classify(0, &other).is_some());
    }
}

#[test]
fn the_fast_path_waits_for_every_controller_and_for_new_punts() {
    let log = Log::default();
    let mut eng = engine_with(&log, ConnConfig::default());
    let (a, sa) = connected(&mut eng, &log, "a");
    let (b, sb) = connected(&mut eng, &log, "b");
    assert_ne!(a, b);
    let mut fast = FastPath::patient(60);
    lock(&eng.dp.punts).push_back(punt(1));
    // a answers at once; b later.
    lock(&sa).send_after(1, wire(&[(30, packet_out(1))]));
    lock(&sb).send_after(5, wire(&[(31, packet_out(2))]));
    fast.run(&mut eng, 0);
    let log = lock(&log).clone();
    let emits: Vec<Vec<u8>> = log
        .iter()
        .filter_map(|e| match e {
            Ev::Emit(2, f) => Some(f.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(emits, [frame(1), frame(2)]);
    // Both got the PACKET_IN.
    for st in [&sa, &sb] {
        assert!(lock(st)
            .got
            .iter()
            .any(|f| matches!(f.message, Message::PacketIn(_))));
    }
}

#[test]
fn a_slow_peer_gets_every_reply_whole_and_in_order() {
    let log = Log::default();
    let mut eng = engine_with(&log, ConnConfig::default());
    let (id, st) = connected(&mut eng, &log, "c");
    let mut mods = Vec::new();
    for i in 0..2000u32 {
        let fm: FlowMod = format!("ip,nw_dst=10.{}.{}.1 actions=output:1", i / 256, i % 256)
            .parse()
            .unwrap();
        mods.push((100, Message::FlowMod(fm)));
    }
    mods.push((101, Message::BarrierRequest));
    mods.push((
        102,
        Message::MultipartRequest(of::MultipartRequest::new(of::MultipartRequestBody::Flow(
            of::FlowStatsRequest::default(),
        ))),
    ));
    mods.push((103, Message::EchoRequest(vec![9])));
    // The peer takes 7 bytes at a time, and only every other try.
    {
        let mut s = lock(&st);
        s.max_write = 7;
        s.stutter = true;
        s.send(wire(&mods));
    }
    let mut rounds = 0;
    loop {
        let waiting = eng.flush(id);
        eng.pump();
        eng.read(id, false);
        for r in eng.take_resumed() {
            eng.read(r, false);
        }
        if !waiting
            && lock(&st).pending() == 0
            && !eng.sw.has_job(id)
            && eng.conn(id).is_some_and(|c| c.output().is_empty())
        {
            break;
        }
        rounds += 1;
        assert!(rounds < 1_000_000, "no progress");
    }
    let got = lock(&st).got.clone();
    let mut flows = 0;
    let mut order = Vec::new();
    for f in &got {
        match &f.message {
            Message::MultipartReply(r) => {
                let of::MultipartReplyBody::Flow(l) = &r.body else {
                    panic!("{r:?}")
                };
                flows += l.len();
                order.push(f.xid);
            }
            Message::BarrierReply | Message::EchoReply(_) => order.push(f.xid),
            Message::Error(e) => panic!("{e:?}"),
            _ => {}
        }
    }
    assert_eq!(flows, 2000);
    order.dedup();
    assert_eq!(order, [101, 102, 103]);
}

#[test]
fn a_peer_that_does_not_read_is_not_read_and_gets_no_packet_ins_until_it_reads() {
    let log = Log::default();
    let cfg = ConnConfig {
        high_water: 4096,
        ..Default::default()
    };
    let mut eng = engine_with(&log, cfg);
    let (id, st) = connected(&mut eng, &log, "c");
    let desc = |x| {
        (
            x,
            Message::MultipartRequest(of::MultipartRequest::new(
                of::MultipartRequestBody::PortDesc,
            )),
        )
    };
    lock(&st).max_write = 0;
    for round in 0..20u32 {
        let reqs: Vec<(u32, Message)> = (0..10).map(|i| desc(1000 + round * 10 + i)).collect();
        lock(&st).send_after(round as usize, wire(&reqs));
    }
    for _ in 0..40 {
        eng.read(id, false);
    }
    // Congested: reading stopped with requests still unread...
    assert!(lock(&st).pending() > 0);
    assert!(eng.conn(id).is_some_and(|c| !c.wants_read()));
    // ...and PACKET_INs for it are dropped.
    lock(&eng.dp.punts).push_back(punt(1));
    eng.drain_punts(0);
    assert_eq!(eng.conn(id).map(|c| c.dropped), Some(1));
    // It reads again: everything is answered, in order.
    lock(&st).max_write = usize::MAX;
    for _ in 0..100 {
        eng.flush(id);
        for r in eng.take_resumed() {
            eng.read(r, false);
        }
        eng.read(id, false);
    }
    let xids: Vec<u32> = lock(&st)
        .got
        .iter()
        .filter(|f| matches!(f.message, Message::MultipartReply(_)))
        .map(|f| f.xid)
        .collect();
    assert_eq!(xids, (1000..1200).collect::<Vec<_>>());
    assert!(!lock(&st)
        .got
        .iter()
        .any(|f| matches!(f.message, Message::PacketIn(_))));
}

#[test]
fn a_controller_that_never_answers_is_probed_then_dropped_and_its_session_forgotten() {
    let log = Log::default();
    let mut eng = engine_with(&log, ConnConfig::default());
    let t0 = now_ns();
    let s = crate::conn::ECHO_INTERVAL_NS;
    // Never says HELLO.
    let (p, _st) = pipe(&log, "mute");
    let mute = eng.open(Box::new(p), "mute".into());
    // Says HELLO, then nothing.
    let (quiet, qs) = connected(&mut eng, &log, "quiet");
    assert!(eng.next_deadline() <= t0 + 2 * s + 1_000_000_000);
    eng.timers(t0 + s + 500_000_000);
    assert!(lock(&qs)
        .got
        .iter()
        .any(|f| matches!(f.message, Message::EchoRequest(_))));
    assert!(eng.reap().is_empty());
    eng.timers(t0 + 3 * s);
    let mut closed: Vec<(ConnId, CloseReason)> =
        eng.reap().into_iter().map(|c| (c.id, c.reason)).collect();
    closed.sort_by_key(|c| c.0);
    assert_eq!(
        closed,
        [
            (mute, CloseReason::HelloTimeout),
            (quiet, CloseReason::EchoTimeout)
        ]
    );
    // The switch has no session left: punts go nowhere.
    assert_eq!(eng.controllers(), 0);
    assert!(!eng.sw.has_controller());
}

#[test]
fn a_peer_that_hangs_up_or_sends_an_unframeable_header_is_reaped() {
    let log = Log::default();
    let mut eng = engine_with(&log, ConnConfig::default());
    let (a, sa) = connected(&mut eng, &log, "a");
    let (b, sb) = connected(&mut eng, &log, "b");
    lock(&sa).eof = true;
    lock(&sb).send(vec![4, 0, 0, 4, 0, 0, 0, 9]);
    assert!(eng.read(a, false).closed);
    assert!(eng.read(b, false).closed);
    let closed: Vec<(ConnId, CloseReason)> =
        eng.reap().into_iter().map(|c| (c.id, c.reason)).collect();
    assert_eq!(
        closed,
        [(a, CloseReason::PeerClosed), (b, CloseReason::Unframeable)]
    );
    // b was told why before it was dropped.
    assert!(matches!(
        lock(&sb).got.last().map(|f| &f.message),
        Some(Message::Error(_))
    ));
}

#[test]
fn a_dump_of_many_flows_goes_a_step_at_a_time_and_what_follows_it_waits() {
    let log = Log::default();
    let mut eng = engine_with(&log, ConnConfig::default());
    let (a, sa) = connected(&mut eng, &log, "a");
    let (b, sb) = connected(&mut eng, &log, "b");
    let n = 5000u32;
    let mods: Vec<(u32, Message)> = (0..n)
        .map(|i| {
            let fm: FlowMod = format!(
                "priority={},ip,nw_dst=10.{}.{}.1 actions=output:1",
                i % 7,
                i / 256,
                i % 256
            )
            .parse()
            .unwrap();
            (100, Message::FlowMod(fm))
        })
        .collect();
    lock(&sa).send(wire(&mods));
    while lock(&sa).pending() > 0 {
        eng.read(a, false);
    }
    assert_eq!(eng.sw.flows.len(), n as usize);
    let dump = Message::MultipartRequest(of::MultipartRequest::new(
        of::MultipartRequestBody::Flow(of::FlowStatsRequest::default()),
    ));
    lock(&sa).send(wire(&[(76, dump), (77, Message::BarrierRequest)]));
    eng.read(a, false);
    // One step went out; the rest waits, and so does the barrier behind it.
    assert!(eng.sw.has_job(a));
    let flows_in = |st: &Arc<Mutex<PipeState>>| -> usize {
        lock(st)
            .got
            .iter()
            .map(|f| match &f.message {
                Message::MultipartReply(r) => match &r.body {
                    of::MultipartReplyBody::Flow(l) => l.len(),
                    _ => 0,
                },
                _ => 0,
            })
            .sum()
    };
    assert!(flows_in(&sa) < n as usize);
    assert!(!lock(&sa)
        .got
        .iter()
        .any(|f| matches!(f.message, Message::BarrierReply)));
    // Meanwhile another controller is served, and punts go out.
    lock(&sb).send(wire(&[(5, Message::EchoRequest(vec![1]))]));
    eng.read(b, false);
    assert!(lock(&sb)
        .got
        .iter()
        .any(|f| f.xid == 5 && matches!(f.message, Message::EchoReply(_))));
    lock(&eng.dp.punts).push_back(punt(1));
    eng.drain_punts(0);
    assert!(lock(&sb)
        .got
        .iter()
        .any(|f| matches!(f.message, Message::PacketIn(_))));
    // The rest, step by step; then the barrier.
    while eng.pump() {}
    assert!(!eng.sw.has_job(a));
    assert_eq!(flows_in(&sa), n as usize);
    let xids: Vec<(u32, bool)> = lock(&sa)
        .got
        .iter()
        .filter_map(|f| match &f.message {
            Message::MultipartReply(r) => Some((f.xid, r.flags & of::OFPMPF_REPLY_MORE != 0)),
            Message::BarrierReply => Some((f.xid, false)),
            _ => None,
        })
        .collect();
    let (last_mp, barrier) = (xids[xids.len() - 2], xids[xids.len() - 1]);
    assert_eq!(last_mp, (76, false), "the dump ends with its last reply");
    assert_eq!(barrier, (77, false), "then the barrier behind it");
    assert!(xids[..xids.len() - 2].iter().all(|x| *x == (76, true)));
    // Reading resumed: the connection is served again.
    for r in eng.take_resumed() {
        eng.read(r, false);
    }
    lock(&sa).send(wire(&[(78, Message::BarrierRequest)]));
    eng.read(a, false);
    assert!(matches!(
        lock(&sa).got.last(),
        Some(Frame {
            xid: 78,
            message: Message::BarrierReply
        })
    ));
}

#[test]
fn an_agent_says_hello_applies_port_sources_and_forwards_drop_samples() {
    use daolinet_openflow::ext::{DropSample, Ext, PortSource};
    let log = Log::default();
    let mut eng = engine_with(&log, ConnConfig::default());
    let (id, st) = connected(&mut eng, &log, "ctl");
    // The hello follows the FEATURES_REPLY.
    lock(&st).send(wire(&[(5, Message::FeaturesRequest)]));
    eng.read(id, false);
    let got: Vec<Message> = lock(&st).got.iter().map(|f| f.message.clone()).collect();
    let at = got
        .iter()
        .position(|m| matches!(m, Message::FeaturesReply(_)))
        .expect("no FEATURES_REPLY");
    assert_eq!(
        got.get(at + 1),
        Some(&Message::Experimenter(Ext::AgentHello.to_message()))
    );
    // Port sources: on for the ports named, remembered for a port attached
    // later, off for a port no longer named; no error to the controller.
    let src = |ofport, last| PortSource {
        ofport,
        mac: [2, 0, 0, 0, 0, last],
        ipv4: [10, 0, 0, last],
    };
    let sources =
        |v: Vec<PortSource>| wire(&[(6, Message::Experimenter(Ext::PortSources(v).to_message()))]);
    lock(&st).send(sources(vec![src(1, 1), src(2, 2), src(3, 3)]));
    eng.read(id, false);
    assert_eq!(
        eng.dp.sources.get(&1),
        Some(&Some(([2, 0, 0, 0, 0, 1], [10, 0, 0, 1])))
    );
    assert_eq!(
        eng.dp.sources.get(&2),
        Some(&Some(([2, 0, 0, 0, 0, 2], [10, 0, 0, 2])))
    );
    assert_eq!(eng.dp.sources.get(&3), None, "port 3 is not attached yet");
    eng.add_port("pc", Some(3), PortKind::Container).unwrap();
    assert_eq!(
        eng.dp.sources.get(&3),
        Some(&Some(([2, 0, 0, 0, 0, 3], [10, 0, 0, 3])))
    );
    lock(&st).send(sources(vec![src(1, 1), src(3, 3)]));
    eng.read(id, false);
    assert_eq!(eng.dp.sources.get(&2), Some(&None));
    assert!(
        !lock(&st)
            .got
            .iter()
            .any(|f| matches!(f.message, Message::Error(_))),
        "{:?}",
        lock(&st).got
    );
    // A drop sample goes to the controller and stays for the status.
    eng.dp.samples.push(crate::dpstats::Dropped {
        timestamp_ns: 1,
        in_port: 2,
        reason: Some(daolinet_common::DropReason::Spoofed),
        reason_code: daolinet_common::DropReason::Spoofed as u32,
        pkt_len: 98,
        data: vec![1, 2, 3],
    });
    eng.drain_samples();
    let last = lock(&st).got.last().map(|f| f.message.clone());
    assert_eq!(
        last,
        Some(Message::Experimenter(
            Ext::DropSample(DropSample {
                in_port: 2,
                pkt_len: 98,
                reason: "spoofed_source".into(),
                data: vec![1, 2, 3],
            })
            .to_message()
        ))
    );
    assert_eq!(eng.stats.samples_sent, 1);
    assert_eq!(eng.drop_log.recent().count(), 1);
}

fn flow_mod(xid: u32, text: &str) -> (u32, Message) {
    (xid, Message::FlowMod(text.parse().unwrap()))
}

fn modify_flows(xid: u32, text: &str) -> (u32, Message) {
    let mut fm: FlowMod = text.parse().unwrap();
    fm.command = of::OFPFC_MODIFY;
    (xid, Message::FlowMod(fm))
}

/// The flow dump without the durations (the clock runs).
fn dumped(eng: &mut Engine<FakeDp>) -> Vec<String> {
    eng.dump_flows()
        .unwrap()
        .iter()
        .map(|f| {
            f.split(", ")
                .filter(|p| !p.starts_with("duration="))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect()
}

/// The errors and barrier replies a peer got, in order.
fn answers(st: &Arc<Mutex<PipeState>>) -> Vec<(u32, String)> {
    lock(st)
        .got
        .drain(..)
        .filter_map(|f| match f.message {
            Message::Error(e) => Some((f.xid, e.code().map(|c| c.to_string()).unwrap_or_default())),
            Message::BarrierReply => Some((f.xid, "barrier".into())),
            _ => None,
        })
        .collect()
}

/// A modify over several rules whose map writes fail partway (the rule
/// instructions map is full after the first rule's) is taken back whole:
/// the flow table and every map as before, an OFPT_ERROR TABLE_FULL
/// answering it, and the adds read with it in the same batch applied as if
/// it had been refused alone.
#[test]
fn a_flow_mod_whose_map_writes_fail_partway_is_taken_back_whole() {
    let log: Log = Arc::default();
    let mut eng = engine_with(&log, ConnConfig::default());
    let (id, st) = connected(&mut eng, &log, "ctl");
    let setup: Vec<(u32, Message)> = (1..=3)
        .map(|i| {
            flow_mod(
                10 + i,
                &format!("cookie=0x{i},priority=5,ip,nw_dst=10.0.0.{i} actions=output:1"),
            )
        })
        .chain([(20, Message::BarrierRequest)])
        .collect();
    lock(&st).send(wire(&setup));
    eng.read(id, false);
    assert_eq!(answers(&st), vec![(20, "barrier".into())]);
    let flows = dumped(&mut eng);
    let maps = eng.dp.maps.clone();
    assert_eq!((flows.len(), maps.flows.len(), maps.ext.len()), (3, 3, 0));

    // Room for one rule's instructions: the modify (instructions that need
    // an entry of their own: goto_table) fails at its second rule.
    eng.dp.ext_room = 1;
    let modify = "ip actions=write_metadata:0x5/0xff,goto_table:1";
    lock(&st).send(wire(&[
        modify_flows(30, modify),
        (31, Message::BarrierRequest),
    ]));
    eng.read(id, false);
    assert_eq!(
        answers(&st),
        vec![
            (30, "OFPET_FLOW_MOD_FAILED/OFPFMFC_TABLE_FULL".into()),
            (31, "barrier".into())
        ]
    );
    assert_eq!(dumped(&mut eng), flows, "the flow table is as before");
    assert_eq!(eng.dp.maps, maps, "the maps are as before");

    // The same in one batch between two adds: both adds stay, the modify
    // alone is refused, its error before the barrier.
    lock(&st).send(wire(&[
        flow_mod(40, "priority=7,ip,nw_dst=10.0.1.1 actions=output:2"),
        modify_flows(41, modify),
        flow_mod(42, "priority=7,ip,nw_dst=10.0.1.2 actions=output:2"),
        (43, Message::BarrierRequest),
    ]));
    eng.read(id, false);
    assert_eq!(
        answers(&st),
        vec![
            (41, "OFPET_FLOW_MOD_FAILED/OFPFMFC_TABLE_FULL".into()),
            (43, "barrier".into())
        ]
    );
    // What a switch that was sent only the two adds holds.
    let log2: Log = Arc::default();
    let mut reference = engine_with(&log2, ConnConfig::default());
    let (id2, st2) = connected(&mut reference, &log2, "ctl");
    let mut msgs = setup.clone();
    msgs.push(flow_mod(
        40,
        "priority=7,ip,nw_dst=10.0.1.1 actions=output:2",
    ));
    msgs.push(flow_mod(
        42,
        "priority=7,ip,nw_dst=10.0.1.2 actions=output:2",
    ));
    lock(&st2).send(wire(&msgs));
    reference.read(id2, false);
    assert_eq!(dumped(&mut eng), dumped(&mut reference));
    let ids = |m: &FakeMaps| {
        let mut v: Vec<_> = m
            .flows
            .iter()
            .map(|(k, e)| {
                (format!("{k:?}"), {
                    let mut e = *e;
                    e.rule_id = 0;
                    format!("{e:?}")
                })
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids(&eng.dp.maps), ids(&reference.dp.maps));
    assert_eq!(eng.dp.maps.subtables, reference.dp.maps.subtables);
    assert!(eng.dp.maps.ext.is_empty());

    // With room the modify applies to every rule.
    eng.dp.ext_room = usize::MAX;
    lock(&st).send(wire(&[
        modify_flows(50, modify),
        (51, Message::BarrierRequest),
    ]));
    eng.read(id, false);
    assert_eq!(answers(&st), vec![(51, "barrier".into())]);
    assert_eq!(eng.dp.maps.ext.len(), 5);
    assert!(eng
        .dump_flows()
        .unwrap()
        .iter()
        .all(|f| f.contains("goto_table:1")));
}

/// A run of adds long enough to be written ahead in parts while the next
/// ones are handled ([`Dataplane::write_ahead`]): its BARRIER_REPLY
/// follows every write; when a part fails (the instruction map full), the
/// run is taken back and done again one FLOW_MOD at a time: the adds that
/// fit stay, each of the others is answered with an OFPT_ERROR, all before
/// the barrier.
#[test]
fn a_long_run_of_adds_written_ahead_is_written_before_its_barrier_or_redone_one_by_one() {
    let log: Log = Arc::default();
    let mut eng = engine_with(&log, ConnConfig::default());
    let (id, st) = connected(&mut eng, &log, "ctl");
    let n = 3 * WRITE_AHEAD as u32;
    let adds = |net: u32, actions: &str| -> Vec<(u32, Message)> {
        (0..n)
            .map(|i| {
                let dst = format!("10.{net}.{}.{}", i / 256, i % 256);
                flow_mod(
                    net * 10_000 + i,
                    &format!("priority=5,ip,nw_dst={dst} actions={actions}"),
                )
            })
            .collect()
    };
    let mut msgs = adds(1, "output:1");
    msgs.push((9_999, Message::BarrierRequest));
    lock(&st).send(wire(&msgs));
    eng.read(id, false);
    assert_eq!(answers(&st), vec![(9_999, "barrier".into())]);
    assert!(eng.dp.ahead_parts > 0, "nothing was written ahead");
    assert_eq!(
        puts_before(&lock(&log), barrier_reply(9_999)),
        n as usize,
        "the barrier reply went before every write was done"
    );
    assert_eq!(
        (eng.sw.flows.len(), eng.dp.maps.flows.len()),
        (n as usize, n as usize)
    );

    // Room for the instructions of 100 rules: parts after the one that
    // fills the map fail.
    let room = 100;
    eng.dp.ext_room = room;
    let parts = eng.dp.ahead_parts;
    let mut msgs = adds(2, "write_metadata:0x5/0xff,goto_table:1");
    msgs.push((29_999, Message::BarrierRequest));
    lock(&st).send(wire(&msgs));
    eng.read(id, false);
    assert!(eng.dp.ahead_parts > parts, "nothing was written ahead");
    let mut want: Vec<(u32, String)> = (room as u32..n)
        .map(|i| {
            (
                20_000 + i,
                "OFPET_FLOW_MOD_FAILED/OFPFMFC_TABLE_FULL".to_string(),
            )
        })
        .collect();
    want.push((29_999, "barrier".into()));
    assert_eq!(answers(&st), want);
    let total = n as usize + room;
    assert_eq!(
        (
            eng.sw.flows.len(),
            eng.dp.maps.flows.len(),
            eng.dp.maps.ext.len()
        ),
        (total, total, room)
    );
    assert!(eng.dp.ahead.is_empty());
}

/// Median and 90th percentile of `v` (ns), in µs.
fn p50_p90(v: &mut [u64]) -> (f64, f64) {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)] as f64 / 1e3;
    (at(0.5), at(0.9))
}

/// The agent's own steps on a first packet's path, over and over: each
/// punt becomes exactly one PACKET_IN carrying its frame, each PACKET_OUT
/// exactly one frame on its port, and nothing is left over from one
/// round to the next (the read and punt lists keep their room, they do
/// not keep their contents).
///
/// It also times the steps as the agent's `daolinet_agent::latency` trace
/// does (a punt to its PACKET_IN queued; a PACKET_OUT's bytes to its
/// frame handed to the datapath) and prints them; a measurement only in
/// a release build, by hand: `COLD=1` walks 32 MiB between packets (the
/// caches as a first packet finds them, a few ms after the last one),
/// `N` rounds (200 by default): `COLD=1 N=20000 cargo test --release -p
/// daolinet-agent --lib -- --nocapture first_packet_steps`.
#[test]
fn first_packet_steps_repeat_without_leftovers() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let cold = std::env::var("COLD").is_ok_and(|v| v == "1");
    let log = Log::default();
    let mut eng = engine_with(&log, ConnConfig::default());
    let (id, st) = connected(&mut eng, &log, "c");
    for i in 0..100 {
        read_everything(&mut eng, id, &st, wire(&[(i, flow(i as u8))]));
    }
    lock(&log).clear();
    lock(&st).got.clear();
    let po = wire(&[(99, packet_out(1))]);
    let mut evict = vec![0u8; if cold { 32 << 20 } else { 0 }];
    let (mut punt_ns, mut po_ns) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        for b in evict.iter_mut().step_by(64) {
            *b = b.wrapping_add(1);
        }
        // The punt: read_at to the PACKET_IN encoded in the output queue
        // (the agent's handle_ns, plus the queueing before the write).
        let p = punt(i as u8);
        let t0 = now_ns();
        let fx = eng.sw.punt(p, t0, &mut eng.dp);
        eng.apply(fx);
        punt_ns.push(now_ns() - t0);
        eng.flush_dirty();
        for b in evict.iter_mut().step_by(64) {
            *b = b.wrapping_add(1);
        }
        // The PACKET_OUT: from its bytes read to its frame handed to the
        // datapath (the agent's packet_out_handle_ns, plus the emit).
        let t0 = now_ns();
        let p = eng.peers.get_mut(&id).expect("connected");
        p.conn.receive(&po, t0, &mut eng.inputs);
        assert!(eng.handle(id, t0, true), "round {i}: no PACKET_OUT handled");
        po_ns.push(now_ns() - t0);
        eng.flush_dirty();
        // Exactly one PACKET_IN, with this round's frame, and one frame
        // out of port 2, the PACKET_OUT's.
        let got: Vec<Frame> = lock(&st).got.drain(..).collect();
        match &got[..] {
            [f] => match &f.message {
                Message::PacketIn(pi) => assert_eq!(pi.data, frame(i as u8), "round {i}"),
                m => panic!("round {i}: {m:?} instead of a PACKET_IN"),
            },
            _ => panic!("round {i}: {} messages instead of one PACKET_IN", got.len()),
        }
        let out: Vec<Ev> = lock(&log)
            .drain(..)
            .filter(|e| matches!(e, Ev::Emit(..)))
            .collect();
        assert_eq!(out, [Ev::Emit(2, frame(1))], "round {i}");
        assert!(
            eng.inputs.is_empty() && eng.punts.is_empty(),
            "round {i}: leftovers"
        );
    }
    std::hint::black_box(&evict);
    let (a, b) = p50_p90(&mut punt_ns);
    let (c, d) = p50_p90(&mut po_ns);
    println!(
        "first_packet_steps n={n} cold={cold}: punt->PACKET_IN queued p50 {a:.2} µs p90 {b:.2}; \
         PACKET_OUT bytes->frame out p50 {c:.2} µs p90 {d:.2}"
    );
}

/// A controller connected that has sent one of each message
/// ([`controller_messages`]), every one read.
fn connected_with_every_message(
    eng: &mut Engine<FakeDp>,
    log: &Log,
) -> (ConnId, Arc<Mutex<PipeState>>) {
    let (id, st) = connected(eng, log, "c");
    let clean = wire(
        &controller_messages()
            .into_iter()
            .enumerate()
            .map(|(i, m)| (100 + i as u32, m))
            .collect::<Vec<_>>(),
    );
    read_everything(eng, id, &st, clean);
    (id, st)
}

/// Messages a controller sends, one of each kind the switch handles (and a
/// few flows that reach every part of the compiler).
fn controller_messages() -> Vec<Message> {
    let mut out = Vec::new();
    for (group_type, group_id) in [(of::OFPGT_SELECT, 5u32), (of::OFPGT_FF, 6)] {
        out.push(Message::GroupMod(of::GroupMod {
            command: of::OFPGC_ADD,
            group_type,
            group_id,
            buckets: vec![
                of::Bucket {
                    weight: if group_id == 5 { 3 } else { 0 },
                    watch_port: 1,
                    watch_group: of::OFPG_ANY,
                    actions: vec![of::Action::output(1)],
                },
                of::Bucket {
                    weight: if group_id == 5 { 1 } else { 0 },
                    watch_port: 2,
                    watch_group: of::OFPG_ANY,
                    actions: vec![of::Action::output(2)],
                },
            ],
        }));
    }
    out.push(Message::MeterMod(of::MeterMod {
        command: of::OFPMC_ADD,
        flags: of::OFPMF_KBPS,
        meter_id: 1,
        bands: vec![of::MeterBand::Drop {
            rate: 1000,
            burst_size: 0,
        }],
    }));
    out.extend(
    [
        "priority=10,in_port=1,ip,nw_src=10.1.0.2,nw_dst=10.2.0.0/16 actions=set_field:02:00:00:00:00:01->eth_src,set_field:172.31.0.3->ip_dst,dec_ttl,output:2",
        "table=0,priority=5,ip actions=goto_table:1",
        "table=1,priority=5,udp,tp_dst=53 actions=set_field:5353->udp_dst,write_actions(output:2,output:1)",
        "icmp actions=set_field:3->icmp_type,set_field:1->icmp_code,group:5",
        "icmp6,icmpv6_type=135,nd_target=fe80::2,nd_sll=02:00:00:00:00:08 actions=set_field:fe80::3->nd_target,output:2",
        "arp,arp_sha=02:00:00:00:00:01 actions=set_field:2->arp_op,set_field:02:00:00:00:00:03->arp_sha,output:1",
        "in_port=1 actions=push_vlan:0x8100,output:2",
        "ip,nw_dst=10.0.0.7 actions=meter:1,output:2",
        "cookie=0x9,idle_timeout=5,hard_timeout=9,ip,nw_dst=10.0.0.9 actions=controller:128",
    ]
    .iter()
    .map(|f| Message::FlowMod(f.parse().unwrap())),
    );
    out.push(Message::FlowMod(
        FlowMod::delete(of::Match::new()).cookie_match(0x9, u64::MAX),
    ));
    let set: FlowMod =
        "ip actions=set_field:10.9.9.9->ip_dst,set_field:7->udp_src,dec_ttl,output:2"
            .parse()
            .unwrap();
    let set_actions = match set.instructions.first() {
        Some(of::Instruction::ApplyActions(a)) => a.clone(),
        other => panic!("{other:?}"),
    };
    out.push(Message::PacketOut(of::PacketOut::new(
        1,
        set_actions,
        frame(3),
    )));
    out.push(packet_out(4));
    use of::MultipartRequestBody as B;
    for body in [
        B::Desc,
        B::Flow(of::FlowStatsRequest::default()),
        B::Aggregate(of::FlowStatsRequest::default()),
        B::Table,
        B::PortStats(of::OFPP_ANY),
        B::Group(of::OFPG_ALL),
        B::GroupDesc,
        B::GroupFeatures,
        B::Meter(of::OFPM_ALL),
        B::MeterConfig(of::OFPM_ALL),
        B::MeterFeatures,
        B::TableFeatures(vec![]),
        B::PortDesc,
    ] {
        out.push(Message::MultipartRequest(of::MultipartRequest::new(body)));
    }
    out.extend([
        Message::RoleRequest(of::RoleMsg {
            role: of::OFPCR_ROLE_MASTER,
            generation_id: 3,
        }),
        Message::SetAsync(of::AsyncConfig {
            packet_in_mask: [7, 0],
            port_status_mask: [7, 7],
            flow_removed_mask: [15, 0],
        }),
        Message::GetAsyncRequest,
        Message::SetConfig(of::SwitchConfig::default()),
        Message::GetConfigRequest,
        Message::FeaturesRequest,
        Message::TableMod(of::TableMod {
            table_id: 0,
            config: 0,
        }),
        Message::BarrierRequest,
        Message::EchoRequest(vec![1, 2, 3]),
    ]);
    out
}

/// xorshift64: the same noise on every run.
fn noise(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Whatever a controller sends, the agent answers, skips or disconnects;
/// it never panics. Every message kind the switch handles, then runs of
/// them with noise past their header (lengths kept, so the stream stays
/// framed and the noise reaches the decoder and the handlers: the
/// compiler, groups, meters, PACKET_OUT actions, multipart replies), in
/// pieces of any size; a connection the agent closed is replaced.
#[test]
fn any_bytes_from_a_controller_never_panic() {
    let msgs = controller_messages();
    let log = Log::default();
    let mut eng = engine_with(&log, ConnConfig::default());
    let (mut id, mut st) = connected_with_every_message(&mut eng, &log);
    assert!(eng.conn(id).is_some_and(|c| c.is_up()));
    let mut seed = 0x5851_f42d_4c95_7f2d_u64;
    for round in 0..5000u32 {
        if round % 1000 == 0 {
            lock(&log).clear();
        }
        if !eng.conn(id).is_some_and(|c| c.is_up()) {
            (id, st) = connected(&mut eng, &log, "c");
        }
        let mut input = Vec::new();
        for _ in 0..1 + noise(&mut seed) % 4 {
            let m = &msgs[(noise(&mut seed) % msgs.len() as u64) as usize];
            let mut b = m.to_bytes(round).unwrap();
            for _ in 0..noise(&mut seed) % 5 {
                if b.len() > 8 {
                    let at = 8 + (noise(&mut seed) % (b.len() as u64 - 8)) as usize;
                    b[at] = noise(&mut seed) as u8;
                }
            }
            input.extend_from_slice(&b);
        }
        let chunk = 1 + (noise(&mut seed) % 200) as usize;
        for piece in input.chunks(chunk) {
            read_everything(&mut eng, id, &st, piece.to_vec());
        }
    }
    // Still a switch: a fresh connection gets its echo answered.
    let (id, st) = connected(&mut eng, &log, "d");
    read_everything(
        &mut eng,
        id,
        &st,
        wire(&[(77, Message::EchoRequest(vec![9]))]),
    );
    assert!(lock(&st)
        .got
        .iter()
        .any(|f| f.xid == 77 && f.message == Message::EchoReply(vec![9])));
}

/// Whatever the datapath punts, the switch handles it without panicking:
/// punt records of any length and content parse or are refused, and
/// punts of every frame layout, cut and mangled, with any header values
/// (port, reason, rule id, table, lengths, metadata) go through the switch
/// with a controller connected (PACKET_INs, the ARP responder, the
/// controller's flows installed) and with none.
#[test]
fn any_punt_never_panics() {
    let mut seed = 0x7a3b_9c1d_2e4f_6051_u64;
    for len in 0..=size_of::<PuntHeader>() + 80 {
        let record: Vec<u8> = (0..len).map(|_| noise(&mut seed) as u8).collect();
        let _ = crate::datapath::parse_punt(&record);
    }
    let frames = crate::packet::tests::templates();
    for with_controller in [true, false] {
        let log = Log::default();
        let mut eng = engine_with(&log, ConnConfig::default());
        let mut peer = None;
        if with_controller {
            peer = Some(connected_with_every_message(&mut eng, &log));
        }
        for round in 0..5000u32 {
            if round % 1000 == 0 {
                lock(&log).clear();
            }
            let mut data = frames[(noise(&mut seed) % frames.len() as u64) as usize].clone();
            for _ in 0..noise(&mut seed) % 4 {
                let at = (noise(&mut seed) % data.len() as u64) as usize;
                data[at] = noise(&mut seed) as u8;
            }
            data.truncate((noise(&mut seed) % (data.len() as u64 + 1)) as usize);
            let pick = |seed: &mut u64, some: &[u32]| {
                let r = noise(seed);
                some.get((r % (some.len() as u64 + 1)) as usize)
                    .copied()
                    .unwrap_or((r >> 32) as u32)
            };
            let header = PuntHeader {
                in_port: pick(&mut seed, &[1, 2, 0, of::OFPP_LOCAL, of::OFPP_CONTROLLER]),
                reason: pick(&mut seed, &[0, 1, 2, 3]),
                rule_id: pick(&mut seed, &[u32::MAX, 0, 1, 2, 3, 5, 8]),
                pkt_len: pick(&mut seed, &[data.len() as u32, 0, 9000]),
                cap_len: data.len() as u32,
                table_id: pick(&mut seed, &[0, 0, 1, 15]) as u8,
                metadata: noise(&mut seed),
                ..Default::default()
            };
            let fx = eng.sw.punt(Punt { header, data }, now_ns(), &mut eng.dp);
            eng.apply(fx);
            eng.flush_dirty();
        }
        if let Some((id, st)) = peer {
            // The controller got PACKET_INs all along.
            eng.flush(id);
            let got = &lock(&st).got;
            let n = got
                .iter()
                .filter(|f| matches!(f.message, Message::PacketIn(_)))
                .count();
            assert!(n > 1000, "{n} PACKET_INs");
        }
    }
}
