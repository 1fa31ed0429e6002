//! Generates the gRPC service (tonic) and messages (prost) from `proto/grpc_predict_v2.proto`.
//! The .proto is parsed by `protox`, a protobuf compiler written in Rust, so building shiftserve
//! needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/grpc_predict_v2.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        // The client (without transport) serves the integration tests and library users.
        .build_client(true)
        .build_transport(false)
        .build_server(true)
        // Tensor payloads stay reference-counted buffers (no copy out of the request).
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .bytes(".inference.InferTensorContents.bytes_contents")
        .compile_fds(fds)?;
    Ok(())
}
