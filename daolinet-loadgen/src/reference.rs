//! A floor reference: the least a Rust controller must do to answer the
//! generator, with no policy and no store. It answers each PACKET_IN of a
//! planned flow with the same messages daolinet-controller sends for a
//! same-host pair (forward and reverse FLOW_MOD, PACKET_OUT), built with the
//! same codec, from a table lookup. It tells how much of the machine the
//! generator and the codec alone take, i.e. the ceiling any controller can
//! reach in this benchmark on this machine.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::{Buf, BytesMut};
use daolinet_openflow::{
    decode, encode, Action, FlowMod, Hello, Match, Message, OxmField, PacketOut,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::plan::{Container, Plan};

type Table = HashMap<Ipv4Addr, Container>;

fn answer(gw: [u8; 6], table: &Table, pi: &daolinet_openflow::PacketIn, out: &mut BytesMut) {
    let d = &pi.data;
    if d.len() < 34 || d[12..14] != [0x08, 0x00] {
        return;
    }
    let src = Ipv4Addr::new(d[26], d[27], d[28], d[29]);
    let dst = Ipv4Addr::new(d[30], d[31], d[32], d[33]);
    let (Some(a), Some(b)) = (table.get(&src), table.get(&dst)) else {
        return;
    };
    if pi.in_port() != Some(a.port) {
        return;
    }
    let acts = |c: &Container| {
        vec![
            Action::SetField(OxmField::EthSrc(daolinet_openflow::MacAddr(gw), None)),
            Action::SetField(OxmField::EthDst(daolinet_openflow::MacAddr(c.mac), None)),
            Action::output(c.port),
        ]
    };
    let flow = |x: &Container, y: &Container| {
        FlowMod::add(
            Match::new()
                .in_port(x.port)
                .eth_type(0x0800)
                .ipv4_src(x.ip)
                .ipv4_dst(y.ip),
        )
        .priority(100)
        .idle_timeout(10)
        .apply(acts(y))
    };
    let msgs = [
        Message::FlowMod(flow(a, b)),
        Message::FlowMod(flow(b, a)),
        Message::PacketOut(PacketOut::new(a.port, acts(b), d.clone())),
    ];
    for m in &msgs {
        if let Err(e) = encode(m, 0, out) {
            tracing::warn!("encode: {e}");
        }
    }
}

async fn serve(mut s: TcpStream, gw: [u8; 6], table: Arc<Table>) -> Result<()> {
    s.set_nodelay(true)?;
    let mut out = BytesMut::with_capacity(64 * 1024);
    encode(&Message::Hello(Hello::new()), 1, &mut out)?;
    encode(&Message::FeaturesRequest, 2, &mut out)?;
    s.write_all(&out).await?;
    out.clear();
    let mut buf = BytesMut::with_capacity(256 * 1024);
    loop {
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        loop {
            match decode(&buf) {
                Ok(Some((f, n))) => {
                    buf.advance(n);
                    match f.message {
                        Message::PacketIn(pi) => answer(gw, &table, &pi, &mut out),
                        Message::EchoRequest(d) => encode(&Message::EchoReply(d), f.xid, &mut out)?,
                        _ => {}
                    }
                }
                Ok(None) => break,
                Err(e) => match e.frame_len {
                    Some(n) if n > 0 => buf.advance(n),
                    _ => return Err(anyhow::anyhow!("bad input: {e}")),
                },
            }
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
    }
}

fn table(plan: &Plan) -> Arc<Table> {
    let mut table = Table::new();
    for s in 0..plan.switches {
        for j in 0..plan.containers {
            let c = plan.container(s, j);
            table.insert(c.ip, c);
        }
    }
    Arc::new(table)
}

/// Accepts switches on `l` and answers them, until the task is dropped.
pub async fn serve_on(l: TcpListener, plan: &Plan) -> Result<()> {
    let table = table(plan);
    let gw = plan.gateway_mac;
    loop {
        let (s, peer) = l.accept().await?;
        let t = table.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(s, gw, t).await {
                tracing::warn!(%peer, "{e:#}");
            }
        });
    }
}

/// Serves the reference controller on `listen` until killed.
pub fn run(listen: &str, plan: &Plan, threads: usize) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let l = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        println!("listening: {}", l.local_addr()?);
        serve_on(l, plan).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::flows;
    use crate::switch::flow_key;

    #[test]
    fn answers_a_planned_flow_like_the_controller() {
        let plan = Plan::new(2, 4).unwrap();
        let mut table = Table::new();
        for s in 0..2 {
            for j in 0..4 {
                let c = plan.container(s, j);
                table.insert(c.ip, c);
            }
        }
        let f = &flows(&plan, 1).unwrap()[3];
        let Some((fr, _)) = decode(&f.packet_in).unwrap() else {
            panic!("incomplete")
        };
        let Message::PacketIn(pi) = fr.message else {
            panic!("not a PACKET_IN")
        };
        let mut out = BytesMut::new();
        answer(plan.gateway_mac, &table, &pi, &mut out);
        let mut rest = &out[..];
        let mut got = Vec::new();
        while let Some((fr, n)) = decode(rest).unwrap() {
            got.push(fr.message);
            rest = &rest[n..];
        }
        assert_eq!(got.len(), 3);
        let Message::FlowMod(fm) = &got[0] else {
            panic!("not a FLOW_MOD")
        };
        assert_eq!(flow_key(fm), Some(f.key));
        assert!(matches!(got[2], Message::PacketOut(_)));
        // From the wrong port: no answer.
        let mut wrong = pi.clone();
        wrong.match_ = Match::new().in_port(99);
        let mut out = BytesMut::new();
        answer(plan.gateway_mac, &table, &wrong, &mut out);
        assert!(out.is_empty());
    }
}
