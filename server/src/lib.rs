//! shiftserve: the HTTP and gRPC inference server (Open Inference Protocol v2 + task API), dynamic
//! batching, model repository, metrics, and the command-line tools.

pub mod batcher;
pub mod cli;
pub mod config;
pub mod error;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod model_config;
pub mod repository;
pub mod serve;
pub mod stats;
