//! Malformed input: truncated, oversized, wrong version, wrong length, and
//! nested length lies each give the right OFPT_ERROR code, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::BytesMut;
use daolinet_openflow::*;
use proptest::prelude::*;

fn enc(m: &Message, xid: u32) -> Vec<u8> {
    m.to_bytes(xid).unwrap()
}

fn set_len(b: &mut [u8]) {
    let n = b.len() as u16;
    b[2..4].copy_from_slice(&n.to_be_bytes());
}

fn flow_mod() -> FlowMod {
    FlowMod::add(
        Match::new()
            .in_port(1)
            .eth_type(0x0800)
            .ipv4_dst("10.0.0.2".parse().unwrap()),
    )
    .priority(10)
    .apply(vec![
        Action::output(2),
        Action::set_field(OxmField::EthDst(MacAddr([2, 0, 0, 0, 0, 9]), None)),
    ])
}

#[test]
fn short_buffers_ask_for_more() {
    let b = enc(&Message::FlowMod(flow_mod()), 9);
    for cut in 0..b.len() {
        assert_eq!(decode(&b[..cut]), Ok(None), "cut {cut}");
    }
}

#[test]
fn header_length_below_8_cannot_resync() {
    let b = [4u8, OFPT_ECHO_REQUEST, 0, 7, 0, 0, 0, 5];
    let e = decode(&b).unwrap_err();
    assert_eq!(e.code, ErrorCode::BAD_LEN);
    assert_eq!(e.xid, Some(5));
    assert_eq!(e.frame_len, None);
}

#[test]
fn oversized_message_is_rejected_before_buffering() {
    // Header says 60000 bytes but only the header arrived: the default decoder
    // waits; a decoder with a 1 KiB limit rejects at once.
    let b = [4u8, OFPT_PACKET_OUT, 0xea, 0x60, 0, 0, 0, 1];
    assert_eq!(decode(&b), Ok(None));
    let e = Decoder::new().max_message_len(1024).decode(&b).unwrap_err();
    assert_eq!(e.code, ErrorCode::BAD_LEN);
    assert_eq!(e.frame_len, Some(60000));
}

#[test]
fn encoding_more_than_65535_bytes_fails_cleanly() {
    let po = PacketOut::new(OFPP_CONTROLLER, vec![Action::output(1)], vec![0; 70000]);
    let mut buf = BytesMut::from(&b"keep"[..]);
    let e = encode(&Message::PacketOut(po), 1, &mut buf).unwrap_err();
    assert!(matches!(e, EncodeError::TooLong { .. }));
    assert_eq!(&buf[..], b"keep");
}

#[test]
fn wrong_version_answers_bad_version_and_can_skip() {
    let mut b = enc(&Message::BarrierRequest, 3);
    b[0] = 1;
    let e = decode(&b).unwrap_err();
    assert_eq!(e.code, ErrorCode::BAD_VERSION);
    assert_eq!(e.frame_len, Some(8));
    // HELLO of any version is accepted (version negotiation).
    let mut h = enc(&Message::Hello(Hello::new()), 1);
    h[0] = 6;
    let (f, _) = decode(&h).unwrap().unwrap();
    assert!(matches!(
        f.message,
        Message::Hello(Hello { version: 6, .. })
    ));
}

#[test]
fn unknown_type_answers_bad_type_with_reply_data() {
    let mut b = vec![4u8, 0x60, 0, 0, 0, 0, 0, 0x42];
    b.extend([0u8; 100]);
    set_len(&mut b);
    let e = decode(&b).unwrap_err();
    assert_eq!(e.code, ErrorCode::BAD_TYPE);
    let (xid, reply) = e.reply(&b);
    assert_eq!(xid, 0x42);
    let Message::Error(ErrorMsg::Standard {
        err_type,
        code,
        data,
    }) = reply
    else {
        panic!()
    };
    assert_eq!((err_type, code), (OFPET_BAD_REQUEST, OFPBRC_BAD_TYPE));
    assert_eq!(data, b[..64].to_vec());
    assert_eq!(e.to_string(), "malformed OpenFlow message (type 96, xid 0x42): unknown message type (answer OFPET_BAD_REQUEST/OFPBRC_BAD_TYPE)");
}

#[test]
fn fixed_size_messages_with_wrong_length_are_bad_len() {
    for m in [
        Message::FeaturesRequest,
        Message::BarrierRequest,
        Message::SetConfig(SwitchConfig::default()),
        Message::RoleRequest(RoleMsg {
            role: 1,
            generation_id: 0,
        }),
        Message::PortStatus(PortStatus::new(
            OFPPR_ADD,
            Port::new(1, MacAddr::ZERO, "p1"),
        )),
    ] {
        let mut b = enc(&m, 1);
        b.extend([0u8; 4]);
        set_len(&mut b);
        assert_eq!(
            decode(&b).unwrap_err().code,
            ErrorCode::BAD_LEN,
            "{m:?} longer"
        );
        let mut b = enc(&m, 1);
        if b.len() > 8 {
            b.truncate(b.len() - 2);
            set_len(&mut b);
            assert_eq!(
                decode(&b).unwrap_err().code,
                ErrorCode::BAD_LEN,
                "{m:?} shorter"
            );
        }
    }
}

/// Byte offsets inside the encoded flow_mod() message.
const MATCH_LEN_AT: usize = 8 + 40 + 2;

#[test]
fn match_length_lies_are_bad_match_len() {
    let b = enc(&Message::FlowMod(flow_mod()), 1);
    assert_eq!(
        u16::from_be_bytes([b[MATCH_LEN_AT], b[MATCH_LEN_AT + 1]]),
        4 + 8 + 6 + 8
    );
    for lie in [0u16, 3, 5, 27, 200, 0xffff] {
        let mut x = b.clone();
        x[MATCH_LEN_AT..MATCH_LEN_AT + 2].copy_from_slice(&lie.to_be_bytes());
        let e = decode(&x).unwrap_err();
        assert!(
            e.code.err_type == OFPET_BAD_MATCH || e.code.err_type == OFPET_BAD_INSTRUCTION,
            "lie {lie}: {e}"
        );
        assert_eq!(e.frame_len, Some(b.len()));
    }
    // Wrong match type.
    let mut x = b.clone();
    x[MATCH_LEN_AT - 1] = 0;
    assert_eq!(decode(&x).unwrap_err().code, ErrorCode::BAD_MATCH_TYPE);
    // OXM TLV length lie: in_port claims 5 bytes.
    let mut x = b.clone();
    x[MATCH_LEN_AT + 2 + 3] = 5;
    assert_eq!(decode(&x).unwrap_err().code, ErrorCode::BAD_MATCH_LEN);
}

#[test]
fn instruction_and_action_length_lies() {
    let b = enc(&Message::FlowMod(flow_mod()), 1);
    let inst_at = MATCH_LEN_AT - 2 + 32; // match is 26 bytes padded to 32
    assert_eq!(
        u16::from_be_bytes([b[inst_at], b[inst_at + 1]]),
        OFPIT_APPLY_ACTIONS_U16
    );
    for lie in [0u16, 4, 9, 16, 0x100] {
        let mut x = b.clone();
        x[inst_at + 2..inst_at + 4].copy_from_slice(&lie.to_be_bytes());
        let e = decode(&x).unwrap_err();
        assert!(
            e.code.err_type == OFPET_BAD_INSTRUCTION || e.code.err_type == OFPET_BAD_ACTION,
            "lie {lie}: {e}"
        );
    }
    let act_at = inst_at + 8;
    for lie in [0u16, 8, 12, 24, 0x200] {
        let mut x = b.clone();
        x[act_at + 2..act_at + 4].copy_from_slice(&lie.to_be_bytes());
        let e = decode(&x).unwrap_err();
        assert_eq!(e.code.err_type, OFPET_BAD_ACTION, "lie {lie}: {e}");
    }
    // set_field whose OXM claims more than the action holds.
    let sf_at = act_at + 16;
    let mut x = b.clone();
    x[sf_at + 4 + 3] = 12;
    assert_eq!(decode(&x).unwrap_err().code, ErrorCode::BAD_SET_LEN);
}

const OFPIT_APPLY_ACTIONS_U16: u16 = 4;

#[test]
fn packet_out_actions_len_lie() {
    let po = PacketOut::new(OFPP_CONTROLLER, vec![Action::output(1)], vec![1, 2, 3]);
    let b = enc(&Message::PacketOut(po), 1);
    let mut x = b.clone();
    x[16..18].copy_from_slice(&1000u16.to_be_bytes());
    assert_eq!(decode(&x).unwrap_err().code, ErrorCode::BAD_LEN);
    let mut x = b;
    x[16..18].copy_from_slice(&8u16.to_be_bytes());
    assert_eq!(decode(&x).unwrap_err().code, ErrorCode::BAD_ACTION_LEN);
}

#[test]
fn multipart_record_length_lies() {
    let rep = MultipartReply::new(MultipartReplyBody::Flow(vec![FlowStats {
        table_id: 0,
        duration_sec: 1,
        duration_nsec: 2,
        priority: 3,
        idle_timeout: 0,
        hard_timeout: 0,
        flags: 0,
        cookie: 0,
        packet_count: 0,
        byte_count: 0,
        match_: Match::new().in_port(1),
        instructions: vec![],
    }]));
    let b = enc(&Message::MultipartReply(rep), 1);
    for lie in [0u16, 8, 55, 100, 0xffff] {
        let mut x = b.clone();
        x[16..18].copy_from_slice(&lie.to_be_bytes());
        assert!(decode(&x).is_err(), "lie {lie}");
    }
    // A port-desc reply that is not a whole number of ports.
    let rep = MultipartReply::new(MultipartReplyBody::PortDesc(vec![Port::new(
        1,
        MacAddr::ZERO,
        "p1",
    )]));
    let mut b = enc(&Message::MultipartReply(rep), 1);
    b.truncate(b.len() - 8);
    set_len(&mut b);
    assert_eq!(decode(&b).unwrap_err().code, ErrorCode::BAD_LEN);
}

#[test]
fn stream_resyncs_after_a_bad_message() {
    let mut buf = Vec::new();
    buf.extend(enc(&Message::EchoRequest(vec![1]), 1));
    let mut bad = vec![4u8, 0x70, 0, 0, 0, 0, 0, 2, 9, 9, 9];
    set_len(&mut bad);
    buf.extend(&bad);
    buf.extend(enc(&Message::BarrierRequest, 3));
    let mut input = &buf[..];
    let mut seen = Vec::new();
    loop {
        match decode(input) {
            Ok(Some((f, used))) => {
                seen.push(Ok(f.xid));
                input = &input[used..];
            }
            Ok(None) => break,
            Err(e) => {
                seen.push(Err(e.xid));
                input = &input[e.frame_len.unwrap()..];
            }
        }
    }
    assert_eq!(seen, vec![Ok(1), Err(Some(2)), Ok(3)]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Arbitrary bytes never panic, and errors always point inside the input.
    #[test]
    fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        match decode(&b) {
            Ok(Some((_, used))) => prop_assert!(used <= b.len() && used >= 8),
            Ok(None) => {}
            Err(e) => if let Some(n) = e.frame_len { prop_assert!(n <= 65535) },
        }
    }

    /// Valid messages with one byte flipped never panic.
    #[test]
    fn mutated_messages_never_panic(m in common::message(), pos in any::<usize>(), val in any::<u8>()) {
        let mut b = m.to_bytes(1).unwrap();
        let i = pos % b.len();
        b[i] = val;
        let _ = decode(&b);
        // Keep the header consistent and fuzz only the body.
        let mut b2 = m.to_bytes(1).unwrap();
        if b2.len() > 8 {
            let i = 8 + pos % (b2.len() - 8);
            b2[i] = val;
            let _ = decode(&b2);
        }
    }
}
