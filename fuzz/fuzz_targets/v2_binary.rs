#![no_main]
//! See `shiftserve::http::decode::fuzzing::v2_binary` for the input layout.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shiftserve::http::decode::fuzzing::v2_binary(data);
});
