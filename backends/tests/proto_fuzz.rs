//! Arbitrary byte streams into the protocol's decoder: never a panic, never a buffer past one
//! frame, and every frame that decodes re-encodes to a value that decodes the same.

use arrakis_backends::proto::frame::{encode, HEADER};
use arrakis_backends::proto::{decode_request, FrameBuf, Request, RequestFrame, MAX_FRAME};
use proptest::prelude::*;

/// Feeds `bytes` in chunks of `chunk` bytes; returns the decoded requests.
fn feed(bytes: &[u8], chunk: usize) -> Vec<RequestFrame> {
    let mut fb = FrameBuf::new();
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = fb.room().min(chunk).min(rest.len());
        if n == 0 {
            // A bad header: the stream has lost its framing; a daemon closes it here.
            assert!(fb.take().is_err());
            return out;
        }
        fb.extend(&rest[..n]).unwrap();
        rest = &rest[n..];
        match fb.take() {
            Ok(Some(body)) => {
                assert!(body.len() <= MAX_FRAME);
                if let Ok(r) = decode_request(&body) {
                    out.push(r);
                }
            }
            Ok(None) => {}
            Err(_) => return out,
        }
        assert!(fb.room() <= HEADER + MAX_FRAME);
    }
    out
}

fn json_ish() -> impl Strategy<Value = Vec<u8>> {
    let pieces = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"op\"",
        "\"seq\"",
        "\"req\"",
        "\"grant\"",
        "\"filter\"",
        "\"register\"",
        "\"name\"",
        "\"hello\"",
        "\"min\"",
        "\"max\"",
        "\"ports\"",
        "\"lo\"",
        "\"hi\"",
        "\"local\"",
        "\"::\"",
        "\"0.0.0.0\"",
        "\"proto\"",
        "\"tcp\"",
        "\"direction\"",
        "\"in\"",
        "1",
        "0",
        "65535",
        "-1",
        "1e999",
        "\"peers\"",
        "\"bind\"",
        "\"remote\"",
        "\"udp\"",
        "\"127.0.0.1:5000\"",
        "\"[::1]:0\"",
        "\"[::ffff:127.0.0.1]:53\"",
        "null",
        "\"\\u0000\"",
    ]);
    prop::collection::vec(pieces, 0..60).prop_map(|v| v.concat().into_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096), chunk in 1usize..512) {
        feed(&bytes, chunk);
    }

    #[test]
    fn framed_json_fragments_decode_or_fail_cleanly(body in json_ish(), chunk in 1usize..64) {
        let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        for r in feed(&bytes, chunk) {
            let again = encode(&r).unwrap();
            prop_assert_eq!(decode_request(&again[HEADER..]).unwrap(), r);
        }
    }
}

#[test]
fn a_unit_request_with_extra_fields_is_refused() {
    assert_eq!(decode_request(br#"{"seq":1,"req":{"op":"status"}}"#).unwrap().req, Request::Status {});
    assert!(decode_request(br#"{"seq":1,"req":{"op":"status","pid":1}}"#).is_err());
    assert!(decode_request(br#"{"seq":1,"req":{"op":"status"},"x":1}"#).is_err());
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    let mut body = "[".repeat(MAX_FRAME / 2);
    body.push_str(&"]".repeat(MAX_FRAME / 2));
    assert!(decode_request(body.as_bytes()).is_err());
}
