//! Live feed messages as a follower receives them from anyone allowed to publish: headers
//! (`Name: value` lines up to a blank line) and a body. Any bytes decode or fail cleanly; a
//! chunk that decodes encodes to headers and a body that decode to it again.
#![no_main]

use async_nats::HeaderMap;
use bytes::Bytes;
use feed::message::{self, FeedMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (&data[..0], data),
    };
    let mut headers = HeaderMap::new();
    for line in String::from_utf8_lossy(head).lines() {
        if let Some((name, value)) = line.split_once(':') {
            let (name, value) = (name.trim(), value.trim());
            if !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
                && !value.contains(['\r', '\n'])
            {
                headers.insert(name, value);
            }
        }
    }
    let payload = Bytes::copy_from_slice(body);
    if let Ok(FeedMessage::Chunk(chunk)) = message::decode(Some(&headers), &payload) {
        let (headers, body) = chunk.encode();
        match message::decode(Some(&headers), &body) {
            Ok(FeedMessage::Chunk(again)) => assert_eq!(again, chunk),
            other => panic!("a decoded chunk does not decode again: {other:?}"),
        }
    }
    let _ = message::decode(None, &payload);
});
