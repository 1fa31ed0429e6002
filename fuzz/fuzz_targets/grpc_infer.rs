#![no_main]
//! See `shiftserve::grpc::fuzzing::model_infer`: the bytes are a gRPC `ModelInferRequest`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shiftserve::grpc::fuzzing::model_infer(data);
});
