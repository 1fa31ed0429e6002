//! Test harness: a temporary model repository built from the committed fixtures, and the real
//! `shiftserve` binary started on a free loopback port.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures")
        .join(name)
}

/// A model repository in a temporary directory.
pub struct Repo {
    pub dir: tempfile::TempDir,
}

impl Repo {
    pub fn new() -> Repo {
        Repo {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Adds `<name>/<version>/model.safetensors` (copied from a fixture) and `config.toml`.
    pub fn add(&self, name: &str, version: u64, fixture_file: &str, config: &str) -> &Self {
        let mdir = self.path().join(name);
        std::fs::create_dir_all(&mdir).unwrap();
        std::fs::write(mdir.join("config.toml"), config).unwrap();
        self.add_version(name, version, fixture_file);
        self
    }

    /// Adds a version atomically: written next to the repository, then renamed in.
    pub fn add_version(&self, name: &str, version: u64, fixture_file: &str) {
        let staging = self.path().join(format!(".staging-{name}-{version}"));
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::copy(fixture(fixture_file), staging.join("model.safetensors")).unwrap();
        std::fs::rename(&staging, self.path().join(name).join(version.to_string())).unwrap();
    }

    pub fn add_bytes_version(&self, name: &str, version: u64, bytes: &[u8]) {
        let staging = self.path().join(format!(".staging-{name}-{version}"));
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(staging.join("model.safetensors"), bytes).unwrap();
        std::fs::rename(&staging, self.path().join(name).join(version.to_string())).unwrap();
    }
}

pub struct Server {
    pub child: Option<Child>,
    pub base: String,
    pub client: reqwest::blocking::Client,
    /// The lines the server prints on stdout after the first.
    stdout: std::sync::Mutex<std::sync::mpsc::Receiver<String>>,
    grpc: std::sync::OnceLock<String>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_shiftserve")
}

impl Server {
    /// Starts `shiftserve` with `args` (plus a loopback address and port 0) and waits until it
    /// prints its address. Does not wait for readiness.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(bin());
        cmd.args([
            "--http-address",
            "127.0.0.1",
            "--http-port",
            "0",
            "--log-level",
            "warn",
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn shiftserve");
        let stdout = child.stdout.take().unwrap();
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("read stdout");
        let base = line
            .trim()
            .strip_prefix("shiftserve listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        // Keep draining stdout so the child never blocks on a full pipe.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in reader.lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Server {
            child: Some(child),
            base,
            client,
            stdout: std::sync::Mutex::new(rx),
            grpc: std::sync::OnceLock::new(),
        }
    }

    /// The gRPC listener's `host:port`, from the line the server prints after the HTTP one.
    pub fn grpc_addr(&self) -> String {
        self.grpc
            .get_or_init(|| {
                let rx = self.stdout.lock().unwrap();
                loop {
                    let line = rx
                        .recv_timeout(Duration::from_secs(30))
                        .expect("no \"shiftserve gRPC listening on\" line on stdout");
                    if let Some(a) = line.trim().strip_prefix("shiftserve gRPC listening on ") {
                        return a.to_string();
                    }
                }
            })
            .clone()
    }

    /// Spawns and waits until `/v2/health/ready` answers 200.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Server {
        let s = Server::spawn(args, envs);
        s.wait_ready();
        s
    }

    pub fn wait_ready(&self) {
        let t0 = Instant::now();
        loop {
            if let Ok(r) = self.client.get(self.url("/v2/health/ready")).send() {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "server not ready after 120 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn sigterm(&self) {
        let rc = unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0);
    }

    /// Waits for the process to exit (panics after `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let t0 = Instant::now();
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            assert!(
                t0.elapsed() < timeout,
                "server did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sum of a metric's samples whose labels contain every `k="v"` in `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self
            .client
            .get(self.url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        metric_sum(&text, name, labels)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (n, l) = match series.find('{') {
            Some(i) => (&series[..i], &series[i..]),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        {
            sum += value.parse::<f64>().unwrap();
        }
    }
    sum
}

/// A grayscale PNG of `w`x`h` with a deterministic pattern.
pub fn png(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = image::GrayImage::from_fn(w, h, |x, y| {
        image::Luma([((x * 7 + y * 13) as u8).wrapping_add(seed.wrapping_mul(31))])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

pub fn wav() -> Vec<u8> {
    std::fs::read(fixture("audio/pcm16_16k_mono.wav")).unwrap()
}

pub const API_KEY: &str = "s3cret-key";
