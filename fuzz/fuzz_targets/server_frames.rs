//! What a client reads from natterd: arbitrary bytes as a `ServerFrame`
//! stream (the SDK's side of the protocol). Never a panic; what decodes
//! re-encodes to what decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_proto::wire::ServerFrame;
use natter_proto::FrameDecoder;
use prost::Message as _;

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut decoder = FrameDecoder::new(MAX);
    decoder.extend(data);
    while let Ok(Some(frame)) = decoder.next_message::<ServerFrame>() {
        let back = ServerFrame::decode(frame.encode_to_vec().as_slice()).expect("re-encoded");
        assert_eq!(back, frame);
    }
});
