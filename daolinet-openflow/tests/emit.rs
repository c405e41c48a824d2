//! Property tests: the zero-copy emitters write exactly the bytes the
//! codec's encoder writes for the equivalent message, after whatever the
//! buffer held, and leave the buffer as it was on error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::BytesMut;
use daolinet_openflow::emit::{self, FlowModHead};
use daolinet_openflow::*;
use proptest::prelude::*;

/// A FLOW_MOD of the shape `emit::flow_mod` writes: one APPLY_ACTIONS
/// instruction, or none when there is no action.
fn emitted_shape(mut fm: FlowMod, actions: Vec<Action>) -> FlowMod {
    fm.instructions = if actions.is_empty() {
        Vec::new()
    } else {
        vec![Instruction::ApplyActions(actions)]
    };
    fm
}

fn via_codec(m: &Message, xid: u32, prefix: &[u8]) -> BytesMut {
    let mut buf = BytesMut::from(prefix);
    encode(m, xid, &mut buf).unwrap();
    buf
}

proptest! {
    #[test]
    fn flow_mod_equals_the_codec(
        fm in common::flow_mod(),
        actions in common::actions(),
        xid in any::<u32>(),
        prefix in common::bytes(9),
    ) {
        let fm = emitted_shape(fm, actions.clone());
        let mut out = BytesMut::from(&prefix[..]);
        emit::flow_mod::<EncodeError>(
            &mut out,
            xid,
            &fm.head(),
            |w| {
                fm.match_.fields.iter().for_each(|f| w.field(f));
                Ok(())
            },
            |w| {
                actions.iter().for_each(|a| w.action(a));
                Ok(())
            },
        )
        .unwrap();
        prop_assert_eq!(out, via_codec(&Message::FlowMod(fm.clone()), xid, &prefix));
        // The head is the FLOW_MOD's fixed part, and back.
        prop_assert_eq!(FlowMod::from_parts(fm.head(), fm.match_.clone(), fm.instructions.clone()), fm);
    }

    #[test]
    fn packet_out_equals_the_codec(
        in_port in any::<u32>(),
        actions in common::actions(),
        data in common::bytes(200),
        xid in any::<u32>(),
        prefix in common::bytes(9),
    ) {
        let mut out = BytesMut::from(&prefix[..]);
        emit::packet_out::<EncodeError>(
            &mut out,
            xid,
            in_port,
            |w| {
                actions.iter().for_each(|a| w.action(a));
                Ok(())
            },
            &data,
        )
        .unwrap();
        let po = PacketOut::new(in_port, actions, data);
        prop_assert_eq!(out, via_codec(&Message::PacketOut(po), xid, &prefix));
    }

    /// A writer's error, or a message over 65535 bytes, leaves the buffer
    /// exactly as it was, whatever was written before the failure.
    #[test]
    fn failures_leave_the_buffer_unchanged(
        fm in common::flow_mod(),
        actions in common::actions(),
        prefix in common::bytes(9),
        fail_in_match in any::<bool>(),
    ) {
        #[derive(Debug, PartialEq)]
        enum E {
            Mine,
            Encode(EncodeError),
        }
        impl From<EncodeError> for E {
            fn from(e: EncodeError) -> Self {
                E::Encode(e)
            }
        }
        let mut out = BytesMut::from(&prefix[..]);
        let r = emit::flow_mod(
            &mut out,
            1,
            &fm.head(),
            |w| {
                fm.match_.fields.iter().for_each(|f| w.field(f));
                if fail_in_match { Err(E::Mine) } else { Ok(()) }
            },
            |w| {
                actions.iter().for_each(|a| w.action(a));
                Err(E::Mine)
            },
        );
        prop_assert_eq!(r, Err(E::Mine));
        prop_assert_eq!(&out[..], &prefix[..]);
        let big = vec![0u8; MAX_MESSAGE_LEN];
        let r = emit::packet_out::<EncodeError>(&mut out, 2, 1, |_| Ok(()), &big);
        prop_assert!(matches!(r, Err(EncodeError::TooLong { max: MAX_MESSAGE_LEN, .. })), "{:?}", r);
        prop_assert_eq!(&out[..], &prefix[..]);
    }
}

/// The largest PACKET_OUT that fits is written; one byte more is refused.
#[test]
fn packet_out_length_limit() {
    // Header 8 + fixed part 16 + one output action 16.
    let room = MAX_MESSAGE_LEN - 8 - 16 - 16;
    let act = Action::output(3);
    for (len, ok) in [(room, true), (room + 1, false)] {
        let mut out = BytesMut::new();
        let r = emit::packet_out::<EncodeError>(
            &mut out,
            9,
            2,
            |w| {
                w.action(&act);
                Ok(())
            },
            &vec![7u8; len],
        );
        assert_eq!(r.is_ok(), ok, "{len}: {r:?}");
        assert_eq!(out.len(), if ok { MAX_MESSAGE_LEN } else { 0 });
    }
    // The default head is an unbuffered ADD, like FlowMod::default().
    assert_eq!(FlowModHead::default(), FlowMod::default().head());
}
