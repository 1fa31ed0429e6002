//! Server configuration: flags (Triton's names where one exists), `SHIFTSERVE_*` environment
//! variables and a TOML config file, in that order of precedence.

use crate::http::conn::ConnLimits;
use crate::http::ServeOptions;
use crate::repository::ControlMode;
use clap::Args;
use models::InputLimits;
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Options of `shiftserve serve` (also accepted with no subcommand).
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML file with any of these options (snake_case keys, e.g. `http_port = 8080`);
    /// flags and environment variables take precedence.
    #[arg(long, env = "SHIFTSERVE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0].
    #[arg(long, env = "SHIFTSERVE_HTTP_ADDRESS")]
    pub http_address: Option<IpAddr>,
    /// HTTP port [default: 8080]; 0 picks a free port (printed on stdout).
    #[arg(long, env = "SHIFTSERVE_HTTP_PORT")]
    pub http_port: Option<u16>,
    /// gRPC port (Open Inference Protocol v2, `inference.GRPCInferenceService`), or `off`
    /// [default: 8001, as Triton; 0 (a free port, printed on stdout) when --http-port is 0].
    #[arg(long, env = "SHIFTSERVE_GRPC_PORT", value_parser = parse_grpc_port)]
    pub grpc_port: Option<GrpcPort>,
    /// Model repository [default: models/repository, searched from the current directory, then
    /// from the executable's location].
    #[arg(long, env = "SHIFTSERVE_MODEL_REPOSITORY")]
    pub model_repository: Option<PathBuf>,
    /// none: load everything once; poll: also rescan periodically; explicit: load/unload via API [default: none].
    #[arg(long, env = "SHIFTSERVE_MODEL_CONTROL_MODE", value_enum)]
    pub model_control_mode: Option<ControlMode>,
    /// Seconds between repository scans in poll mode [default: 15].
    #[arg(long, env = "SHIFTSERVE_REPOSITORY_POLL_SECS")]
    pub repository_poll_secs: Option<u64>,
    /// Models to load at startup in explicit mode (repeatable; `*` loads all).
    #[arg(long, env = "SHIFTSERVE_LOAD_MODEL", value_delimiter = ',')]
    pub load_model: Vec<String>,
    /// Seconds to wait for in-flight and queued requests on SIGTERM/SIGINT [default: 30].
    #[arg(long, env = "SHIFTSERVE_EXIT_TIMEOUT_SECS")]
    pub exit_timeout_secs: Option<u64>,
    /// Require `Authorization: Bearer <key>` on every route except health, metrics and docs.
    #[arg(long, env = "SHIFTSERVE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Largest accepted request body in bytes [default: 16 MiB].
    #[arg(long, env = "SHIFTSERVE_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Concurrent decoding/feature-extraction jobs [default: number of CPUs].
    #[arg(long, env = "SHIFTSERVE_PREPROCESS_THREADS")]
    pub preprocess_threads: Option<usize>,
    /// Largest decoded image in pixels [default: 40000000].
    #[arg(long, env = "SHIFTSERVE_MAX_IMAGE_PIXELS")]
    pub max_image_pixels: Option<u64>,
    /// Longest accepted audio in seconds [default: 30].
    #[arg(long, env = "SHIFTSERVE_MAX_AUDIO_SECONDS")]
    pub max_audio_seconds: Option<f32>,
    /// Upper bound for a per-request timeout in milliseconds [default: 600000].
    #[arg(long, env = "SHIFTSERVE_MAX_TIMEOUT_MS")]
    pub max_timeout_ms: Option<u64>,
    /// Log format [default: text].
    #[arg(long, env = "SHIFTSERVE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `shiftserve=debug,tower_http=info` [default: info].
    #[arg(long, env = "SHIFTSERVE_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// `/v2/health/ready` is 200 only when every model that should be served has a ready
    /// version (`--strict-readiness=false`: once started, whatever loaded) [default: true].
    #[arg(long, env = "SHIFTSERVE_STRICT_READINESS", num_args = 0..=1, default_missing_value = "true")]
    pub strict_readiness: Option<bool>,
    /// Exit with a non-zero status when a model fails to load at start [default: false].
    #[arg(long, env = "SHIFTSERVE_EXIT_ON_ERROR", num_args = 0..=1, default_missing_value = "true")]
    pub exit_on_error: Option<bool>,
    /// Seconds a client has to send a request's headers, from its first byte [default: 15].
    #[arg(long, env = "SHIFTSERVE_HTTP_HEADER_TIMEOUT_SECS")]
    pub http_header_timeout_secs: Option<u64>,
    /// Seconds a client has to send a request's body, from the end of its headers; later: 408
    /// [default: 60].
    #[arg(long, env = "SHIFTSERVE_HTTP_BODY_TIMEOUT_SECS")]
    pub http_body_timeout_secs: Option<u64>,
    /// Seconds an idle keep-alive connection stays open [default: 75].
    #[arg(long, env = "SHIFTSERVE_HTTP_IDLE_TIMEOUT_SECS")]
    pub http_idle_timeout_secs: Option<u64>,
    /// Most open HTTP connections; over it a new connection gets 503 and is closed
    /// [default: 4096, less if the open-files limit is lower].
    #[arg(long, env = "SHIFTSERVE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds between the request summary lines logged at INFO (single requests are logged at
    /// DEBUG); 0 = none [default: 60].
    #[arg(long, env = "SHIFTSERVE_LOG_SUMMARY_SECS")]
    pub log_summary_secs: Option<u64>,
}

impl ServeArgs {
    /// Fills options not given on the command line or environment from the config file.
    pub fn with_config_file(self) -> Result<ServeArgs, String> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("config file {}: {e}", path.display()))?;
        let file: ServeArgs = toml::from_str(&text)
            .map_err(|e| format!("config file {}: {}", path.display(), e.message()))?;
        Ok(self.merge(file))
    }

    fn merge(self, f: ServeArgs) -> ServeArgs {
        ServeArgs {
            config: self.config,
            http_address: self.http_address.or(f.http_address),
            http_port: self.http_port.or(f.http_port),
            grpc_port: self.grpc_port.or(f.grpc_port),
            model_repository: self.model_repository.or(f.model_repository),
            model_control_mode: self.model_control_mode.or(f.model_control_mode),
            repository_poll_secs: self.repository_poll_secs.or(f.repository_poll_secs),
            load_model: if self.load_model.is_empty() {
                f.load_model
            } else {
                self.load_model
            },
            exit_timeout_secs: self.exit_timeout_secs.or(f.exit_timeout_secs),
            api_key: self.api_key.or(f.api_key),
            max_body_bytes: self.max_body_bytes.or(f.max_body_bytes),
            preprocess_threads: self.preprocess_threads.or(f.preprocess_threads),
            max_image_pixels: self.max_image_pixels.or(f.max_image_pixels),
            max_audio_seconds: self.max_audio_seconds.or(f.max_audio_seconds),
            max_timeout_ms: self.max_timeout_ms.or(f.max_timeout_ms),
            log_format: self.log_format.or(f.log_format),
            log_level: self.log_level.or(f.log_level),
            strict_readiness: self.strict_readiness.or(f.strict_readiness),
            exit_on_error: self.exit_on_error.or(f.exit_on_error),
            http_header_timeout_secs: self.http_header_timeout_secs.or(f.http_header_timeout_secs),
            http_body_timeout_secs: self.http_body_timeout_secs.or(f.http_body_timeout_secs),
            http_idle_timeout_secs: self.http_idle_timeout_secs.or(f.http_idle_timeout_secs),
            max_connections: self.max_connections.or(f.max_connections),
            log_summary_secs: self.log_summary_secs.or(f.log_summary_secs),
        }
    }

    pub fn log_format(&self) -> LogFormat {
        self.log_format.unwrap_or(LogFormat::Text)
    }

    pub fn log_level(&self) -> String {
        self.log_level.clone().unwrap_or_else(|| "info".to_string())
    }

    /// Resolves defaults and validates.
    pub fn resolve(&self) -> Result<ServeOptions, String> {
        let model_repository = match &self.model_repository {
            Some(p) => {
                if !p.is_dir() {
                    return Err(format!("model repository {} is not a directory", p.display()));
                }
                p.clone()
            }
            None => find_bundled_repository().ok_or_else(|| {
                "no model repository found (looked for models/repository from the current directory and from the executable); pass --model-repository".to_string()
            })?,
        };
        let api_key = match &self.api_key {
            Some(k) if k.trim().is_empty() => return Err("--api-key is empty".into()),
            Some(k) => Some(k.trim().to_string()),
            None => None,
        };
        let defaults = InputLimits::default();
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let max_body_bytes = self.max_body_bytes.unwrap_or(16 << 20);
        if max_body_bytes == 0 {
            return Err("--max-body-bytes must be positive".into());
        }
        let address = self
            .http_address
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let http_port = self.http_port.unwrap_or(8080);
        let grpc_port = match self.grpc_port {
            Some(GrpcPort::Off) => None,
            Some(GrpcPort::Port(p)) => Some(p),
            // A server asked to pick a free HTTP port (tests, several servers on one machine)
            // picks a free gRPC port as well rather than contending for 8001.
            None if http_port == 0 => Some(0),
            None => Some(DEFAULT_GRPC_PORT),
        };
        if grpc_port.is_some_and(|p| p != 0 && p == http_port) {
            return Err(format!(
                "--grpc-port {http_port} is the HTTP port; give another or `off`"
            ));
        }
        let secs = |v: Option<u64>, default: u64, flag: &str| -> Result<Duration, String> {
            match v.unwrap_or(default) {
                n @ 1..=86_400 => Ok(Duration::from_secs(n)),
                n => Err(format!("--{flag} must be 1 to 86400 seconds, got {n}")),
            }
        };
        let conn = ConnLimits {
            header_timeout: secs(
                self.http_header_timeout_secs,
                15,
                "http-header-timeout-secs",
            )?,
            body_timeout: secs(self.http_body_timeout_secs, 60, "http-body-timeout-secs")?,
            idle_timeout: secs(self.http_idle_timeout_secs, 75, "http-idle-timeout-secs")?,
            max_connections: match self.max_connections {
                None => crate::http::conn::default_max_connections(),
                Some(0) => return Err("--max-connections must be positive".into()),
                Some(n) => n,
            },
        };
        Ok(ServeOptions {
            addr: SocketAddr::new(address, http_port),
            grpc_addr: grpc_port.map(|p| SocketAddr::new(address, p)),
            model_repository,
            control_mode: self.model_control_mode.unwrap_or(ControlMode::None),
            poll_secs: self.repository_poll_secs.unwrap_or(15).max(1),
            load_models: self.load_model.clone(),
            exit_timeout_secs: self.exit_timeout_secs.unwrap_or(30),
            api_key,
            max_body_bytes,
            preprocess_threads: self.preprocess_threads.unwrap_or(cpus).max(1),
            limits: InputLimits {
                max_pixels: self.max_image_pixels.unwrap_or(defaults.max_pixels),
                max_audio_seconds: self.max_audio_seconds.unwrap_or(defaults.max_audio_seconds),
            },
            max_timeout_ms: self.max_timeout_ms.unwrap_or(600_000).max(1),
            strict_readiness: self.strict_readiness.unwrap_or(true),
            exit_on_error: self.exit_on_error.unwrap_or(false),
            conn,
            log_summary_secs: self.log_summary_secs.unwrap_or(60),
        })
    }
}

/// Triton's gRPC port.
pub const DEFAULT_GRPC_PORT: u16 = 8001;

/// `--grpc-port`: a port, or `off` for no gRPC listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcPort {
    Off,
    Port(u16),
}

fn parse_grpc_port(s: &str) -> Result<GrpcPort, String> {
    match s.trim() {
        "off" | "none" | "false" => Ok(GrpcPort::Off),
        p => p
            .parse::<u16>()
            .map(GrpcPort::Port)
            .map_err(|_| format!("expected a port (0-65535) or `off`, got {s:?}")),
    }
}

impl<'de> Deserialize<'de> for GrpcPort {
    /// `grpc_port = 8001` or `grpc_port = "off"` in the config file.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<GrpcPort, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Port(u16),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Port(p) => Ok(GrpcPort::Port(p)),
            Raw::Text(t) => parse_grpc_port(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// `models/repository` under the current directory or any ancestor of the executable's directory.
pub fn find_bundled_repository() -> Option<PathBuf> {
    let rel = Path::new("models").join("repository");
    if let Ok(cwd) = std::env::current_dir() {
        let p = cwd.join(&rel);
        if p.is_dir() {
            return Some(p);
        }
    }
    let exe = std::env::current_exe().ok()?.canonicalize().ok()?;
    for dir in exe.parent()?.ancestors() {
        let p = dir.join(&rel);
        if p.is_dir() {
            return Some(p);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_fills_what_flags_leave_open() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("shiftserve.toml");
        std::fs::write(
            &cfg,
            format!(
                "http_port = 9001\nmodel_control_mode = \"poll\"\nrepository_poll_secs = 3\napi_key = \"k\"\nmodel_repository = \"{}\"\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let cli = ServeArgs {
            config: Some(cfg),
            http_port: Some(7000),
            ..Default::default()
        };
        let opts = cli.with_config_file().unwrap().resolve().unwrap();
        assert_eq!(opts.addr.port(), 7000);
        assert_eq!(opts.control_mode, ControlMode::Poll);
        assert_eq!(opts.poll_secs, 3);
        assert_eq!(opts.api_key.as_deref(), Some("k"));
        assert_eq!(opts.model_repository, dir.path());
    }

    #[test]
    fn grpc_port_defaults_and_off() {
        let dir = tempfile::tempdir().unwrap();
        let args = |http: Option<u16>, grpc: Option<GrpcPort>| ServeArgs {
            model_repository: Some(dir.path().to_path_buf()),
            http_port: http,
            grpc_port: grpc,
            ..Default::default()
        };
        let port = |a: ServeArgs| a.resolve().unwrap().grpc_addr.map(|a| a.port());
        assert_eq!(port(args(None, None)), Some(8001));
        assert_eq!(port(args(Some(0), None)), Some(0));
        assert_eq!(
            port(args(Some(9000), Some(GrpcPort::Port(9001)))),
            Some(9001)
        );
        assert_eq!(port(args(None, Some(GrpcPort::Off))), None);
        let err = args(Some(9000), Some(GrpcPort::Port(9000)))
            .resolve()
            .unwrap_err();
        assert!(err.contains("HTTP port"), "{err}");
        assert_eq!(parse_grpc_port("off"), Ok(GrpcPort::Off));
        assert!(parse_grpc_port("70000").is_err());
        let cfg = dir.path().join("c.toml");
        for (text, want) in [
            ("grpc_port = 9100\n", Some(9100)),
            ("grpc_port = \"off\"\n", None),
        ] {
            std::fs::write(&cfg, text).unwrap();
            let a = ServeArgs {
                config: Some(cfg.clone()),
                model_repository: Some(dir.path().to_path_buf()),
                ..Default::default()
            };
            assert_eq!(port(a.with_config_file().unwrap()), want, "{text}");
        }
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, "http_prot = 1\n").unwrap();
        let err = ServeArgs {
            config: Some(cfg),
            ..Default::default()
        }
        .with_config_file()
        .unwrap_err();
        assert!(err.contains("http_prot"), "{err}");
    }

    #[test]
    fn missing_repository_is_an_error() {
        let args = ServeArgs {
            model_repository: Some("/nonexistent/repo".into()),
            ..Default::default()
        };
        assert!(args.resolve().unwrap_err().contains("not a directory"));
    }
}
