//! Property tests: decode(encode(m)) == m for every message type, and the
//! encoder/decoder agree on lengths.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::BytesMut;
use daolinet_openflow::*;
use proptest::prelude::*;

fn roundtrip(m: &Message, xid: u32) {
    let mut buf = BytesMut::new();
    encode(m, xid, &mut buf).unwrap();
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    assert_eq!(len, buf.len(), "header length");
    let (frame, used) = decode(&buf)
        .unwrap_or_else(|e| panic!("decode failed: {e}\n{m:?}"))
        .expect("complete message");
    assert_eq!(used, buf.len());
    assert_eq!(frame.xid, xid);
    assert_eq!(&frame.message, m);
    // Re-encoding gives the same bytes.
    let mut again = BytesMut::new();
    frame.encode(&mut again).unwrap();
    assert_eq!(&again[..], &buf[..]);
    // Every strict prefix is "need more bytes".
    for cut in [0, 1, 7, 8, buf.len() / 2, buf.len() - 1] {
        if cut < buf.len() {
            assert_eq!(decode(&buf[..cut]), Ok(None), "prefix {cut}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_message_roundtrips(m in common::message(), xid in any::<u32>()) {
        roundtrip(&m, xid);
    }

    #[test]
    fn flow_mod_roundtrips(fm in common::flow_mod(), xid in any::<u32>()) {
        roundtrip(&Message::FlowMod(fm), xid);
    }

    #[test]
    fn multipart_roundtrips(req in common::mp_request(), rep in common::mp_reply()) {
        roundtrip(&Message::MultipartRequest(req), 1);
        roundtrip(&Message::MultipartReply(rep), 2);
    }

    #[test]
    fn concatenated_stream_decodes_in_order(ms in proptest::collection::vec(common::message(), 1..6)) {
        let mut buf = BytesMut::new();
        for (i, m) in ms.iter().enumerate() {
            encode(m, i as u32, &mut buf).unwrap();
        }
        let mut input = &buf[..];
        for (i, m) in ms.iter().enumerate() {
            let (f, used) = decode(input).unwrap().unwrap();
            prop_assert_eq!(f.xid, i as u32);
            prop_assert_eq!(&f.message, m);
            input = &input[used..];
        }
        prop_assert!(input.is_empty());
    }
}

#[test]
fn every_message_type_is_generated() {
    // Sanity: the generator covers all 30 message types.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::new();
    let s = common::message();
    for _ in 0..5000 {
        seen.insert(s.new_tree(&mut runner).unwrap().current().msg_type());
    }
    assert_eq!(seen.len(), 30, "{seen:?}");
}
