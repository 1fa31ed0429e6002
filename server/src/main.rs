//! The `shiftserve` binary: `serve` (default), `inspect`, `run`, `bench`.

use clap::{Parser, Subcommand};
use shiftserve::cli;
use shiftserve::config::{LogFormat, ServeArgs};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "shiftserve",
    version,
    about = "CPU inference server for multiplication-free (power-of-two weight) networks",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no subcommand, `shiftserve` serves (same options as `shiftserve serve`).
    #[command(flatten)]
    serve: ServeArgs,
}

// Parsed once at start: the size of the `Serve` variant (every serve option) does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve the model repository over HTTP (the default).
    Serve(ServeArgs),
    /// Show a model file's metadata, layers, bits, sizes and compression ratio against fp32.
    Inspect {
        /// Path to a model file (.safetensors).
        model: PathBuf,
    },
    /// Classify one image or WAV file.
    Run {
        model: PathBuf,
        input: PathBuf,
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Latency percentiles (p50/p90/p99) and throughput per batch size and thread count.
    Bench {
        /// Path to a model file; or use --synthetic.
        #[arg(required_unless_present = "synthetic", conflicts_with = "synthetic")]
        model: Option<PathBuf>,
        /// Build a model with random low-variance weights: `resnet18-w3` (ImageNet ResNet-18, 224x224, W3).
        #[arg(long, value_parser = ["resnet18-w3"])]
        synthetic: Option<String>,
        /// Batch sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,8")]
        batch: Vec<usize>,
        /// Thread counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1")]
        threads: Vec<usize>,
        /// Seconds to measure each configuration.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Minimum iterations per configuration.
        #[arg(long, default_value_t = 5)]
        min_iters: usize,
        /// Warmup iterations per configuration.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Seed of the synthetic weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print the per-layer time table for every configuration (default: the first only).
        #[arg(long)]
        per_layer: bool,
    },
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal (and never with NO_COLOR set).
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

fn run_serve(args: ServeArgs) -> Result<(), String> {
    let args = args.with_config_file()?;
    init_logging(args.log_format(), &args.log_level());
    let opts = args.resolve()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("shiftserve-http")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(shiftserve::serve::serve(opts))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run_serve(cli.serve),
        Some(Command::Serve(args)) => run_serve(args),
        Some(Command::Inspect { model }) => cli::inspect(&model).map(|s| print!("{s}")),
        Some(Command::Run {
            model,
            input,
            top_k,
            threads,
            json,
        }) => cli::run(&model, &input, top_k, threads, json).map(|s| print!("{s}")),
        Some(Command::Bench {
            model,
            synthetic,
            batch,
            threads,
            seconds,
            min_iters,
            warmup,
            seed,
            per_layer,
        }) => (|| {
            if batch.contains(&0) || threads.contains(&0) {
                return Err("batch sizes and thread counts must be positive".to_string());
            }
            let name = match (&model, &synthetic) {
                (Some(p), _) => p.display().to_string(),
                (None, Some(s)) => s.clone(),
                (None, None) => return Err("give a MODEL path or --synthetic resnet18-w3".into()),
            };
            let spec = cli::BenchSpec {
                batches: batch,
                threads,
                seconds,
                min_iters: min_iters.max(1),
                warmup,
                per_layer,
            };
            // The per-layer kernel choice is measured for the benchmarked batch sizes, once per
            // thread count.
            let load = |threads: usize| -> Result<models::Model, String> {
                let opts = models::PlanOptions {
                    threads,
                    batch_sizes: spec.batches.clone(),
                    ..models::PlanOptions::from_env().map_err(|e| e.message)?
                };
                match (&model, &synthetic) {
                    (Some(p), _) => models::Model::open_with(p, &opts)
                        .map_err(|e| format!("{}: {}", p.display(), e.message)),
                    (_, Some(s)) => {
                        eprintln!("building synthetic {s} (seed {seed}, planned for {threads} thread(s))...");
                        models::synth::resnet18_with(
                            &models::synth::SynthConfig {
                                seed,
                                ..Default::default()
                            },
                            &opts,
                        )
                        .map_err(|e| e.message)
                    }
                    _ => unreachable!(),
                }
            };
            print!("{}", cli::bench(&name, load, &spec)?);
            Ok(())
        })(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shiftserve: {e}");
            ExitCode::FAILURE
        }
    }
}
