//! Fuzz the OpenFlow stream decoder: any bytes, never a panic; whatever
//! decodes re-encodes, and the re-encoding is a fixed point.
#![no_main]

use bytes::BytesMut;
use daolinet_openflow::{decode, Decoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A small limit exercises the oversize path too.
    let _ = Decoder::new().max_message_len(256).decode(data);
    let mut input = data;
    while !input.is_empty() {
        match decode(input) {
            Ok(Some((frame, used))) => {
                assert!(used >= 8 && used <= input.len());
                let mut b1 = BytesMut::new();
                frame.encode(&mut b1).expect("a decoded message re-encodes");
                let (f2, used2) = decode(&b1)
                    .expect("re-encoded message decodes")
                    .expect("re-encoded message is complete");
                assert_eq!(used2, b1.len());
                let mut b2 = BytesMut::new();
                f2.encode(&mut b2).expect("re-encodes again");
                assert_eq!(b1, b2, "encoding is not a fixed point");
                input = &input[used..];
            }
            Ok(None) => break,
            Err(e) => {
                let (_xid, reply) = e.reply(input);
                let _ = reply.to_bytes(0).expect("error replies encode");
                match e.frame_len {
                    Some(n) if n <= input.len() => input = &input[n..],
                    _ => break,
                }
            }
        }
    }
});
