//! What natterd reads from a client: arbitrary bytes, arriving in arbitrary
//! pieces, through the frame decoder into `ClientFrame`s. Never a panic; the
//! decoder never buffers more than one frame's worth past its limit; and
//! every frame that decodes re-encodes into a frame that decodes to the same
//! message (what natterd understood is what was meant).
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_proto::codec::{decode_body, encode_frame};
use natter_proto::wire::ClientFrame;
use natter_proto::FrameDecoder;

/// A small limit, so oversized frames are reached often.
const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses how the rest is cut into reads.
    let Some((&cut, rest)) = data.split_first() else { return };
    let step = usize::from(cut % 64) + 1;
    let mut decoder = FrameDecoder::new(MAX);
    for piece in rest.chunks(step) {
        decoder.extend(piece);
        loop {
            match decoder.next_message::<ClientFrame>() {
                Ok(Some(frame)) => {
                    let again = encode_frame(&frame, MAX * 4).expect("a decoded frame re-encodes");
                    let mut redecoder = FrameDecoder::new(MAX * 4);
                    redecoder.extend(&again);
                    let back: ClientFrame = redecoder.next_message().expect("re-encoded").expect("whole");
                    assert_eq!(back, frame);
                }
                Ok(None) => break,
                // A malformed body is reported and the stream goes on; a
                // broken length or an oversized frame ends it.
                Err(natter_proto::FrameError::Malformed(_)) => {}
                Err(_) => return,
            }
        }
        assert!(decoder.buffered() <= MAX + 10 + step, "buffered {} past the limit", decoder.buffered());
    }
    // A body alone, as the transfer streams' headers are read.
    let _ = decode_body::<ClientFrame>(rest);
});
