//! `shiftserve inspect`, `shiftserve run` and `shiftserve bench`.

use crate::stats::percentile;
use models::{InputLimits, MediaHint, Model};
use std::path::Path;
use std::time::{Duration, Instant};

fn open(path: &Path) -> Result<Model, String> {
    Model::open(path).map_err(|e| format!("{}: {}", path.display(), e.message))
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

fn shape(s: &[usize]) -> String {
    format!(
        "[{}]",
        s.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// `shiftserve inspect MODEL`: metadata, layers, bits, sizes, compression ratio against fp32.
pub fn inspect(path: &Path) -> Result<String, String> {
    let model = open(path)?;
    let info = model.info();
    let mut out = String::new();
    let ratio = if info.file_bytes > 0 {
        info.fp32_bytes as f64 / info.file_bytes as f64
    } else {
        0.0
    };
    out += &format!("model        {}\n", info.name);
    out += &format!("file         {}\n", path.display());
    out += &format!("task         {}\n", info.task.as_str());
    if !info.description.is_empty() {
        out += &format!("description  {}\n", info.description);
    }
    out += &format!(
        "input        {} {}\n",
        info.input_kind,
        shape(&info.input_shape)
    );
    out += &format!("preprocess   {}\n", info.preprocess_json);
    out += &format!("classes      {}\n", info.labels.len());
    if let Some(t) = info.temperature {
        out += &format!("temperature  {t} (scores = softmax(logits / {t}))\n");
    }
    let bits: Vec<String> = info.weight_bits.iter().map(|b| format!("W{b}")).collect();
    out += &format!(
        "weight bits  {}\n",
        if bits.is_empty() && info.tensor_train.is_some() {
            "none (fp32 tensor-train cores)".into()
        } else if bits.is_empty() {
            "none (fp32 only)".into()
        } else {
            bits.join(", ")
        }
    );
    out += &format!("numeric path {}\n", info.numeric_path);
    out += &format!("parameters   {}\n", info.parameters);
    out += &format!(
        "file size    {} ({} bytes)\n",
        human_bytes(info.file_bytes),
        info.file_bytes
    );
    out += &format!(
        "fp32 size    {} ({} bytes)\n",
        human_bytes(info.fp32_bytes),
        info.fp32_bytes
    );
    out += &format!("compression  {ratio:.2}x vs fp32\n");
    if let Some(tt) = &info.tensor_train {
        out += &format!(
            "tt-lstm      {} params vs {} dense ({:.1} %), {} vs {} fp32\n",
            tt.params,
            tt.dense_params,
            100.0 * tt.fraction(),
            human_bytes(tt.bytes),
            human_bytes(tt.dense_bytes)
        );
        let dense_model = info.fp32_bytes - 4 * tt.params + tt.dense_bytes;
        if info.file_bytes > 0 {
            out += &format!(
                "vs dense     {:.2}x vs the fp32 model with dense LSTM matrices ({} bytes)\n",
                dense_model as f64 / info.file_bytes as f64,
                dense_model
            );
        }
    }
    out += &format!("kernel isa   {}\n\n", models::kernel_isa());
    let layers = model.layers();
    let kernel_of = |node: &str| {
        model
            .layer_kernels()
            .iter()
            .find(|k| k.node == node)
            .map(|k| k.kernel.clone())
            .unwrap_or_else(|| "-".into())
    };
    let kernel_w = model
        .layer_kernels()
        .iter()
        .map(|k| k.kernel.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let name_w = layers
        .iter()
        .map(|l| l.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let op_w = layers.iter().map(|l| l.op.len()).max().unwrap_or(2).max(2);
    let header = format!(
        "{:<name_w$}  {:<op_w$}  {:<16}  {:<16}  {:>4}  {:>5}  {:>10}  {:>10}  {:>7}  {:<kernel_w$}",
        "node", "op", "input", "output", "bits", "path", "params", "bytes", "vs fp32", "kernel"
    );
    out += header.trim_end();
    out += "\n";
    for l in layers {
        let vs = if l.bytes > 0 {
            format!("{:.1}x", (l.params * 4) as f64 / l.bytes as f64)
        } else {
            "-".into()
        };
        let row = format!(
            "{:<name_w$}  {:<op_w$}  {:<16}  {:<16}  {:>4}  {:>5}  {:>10}  {:>10}  {:>7}  {:<kernel_w$}",
            l.name,
            l.op,
            shape(&l.input_shape),
            shape(&l.output_shape),
            l.bits.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
            l.path.unwrap_or("-"),
            l.params,
            l.bytes,
            vs,
            kernel_of(&l.name)
        );
        out += row.trim_end();
        out += "\n";
    }
    Ok(out)
}

fn hint_from_path(p: &Path) -> MediaHint {
    crate::http::decode::hint_from_extension(p.extension().and_then(|e| e.to_str()))
}

/// `shiftserve run MODEL INPUT`: top-k predictions for one image or WAV file.
pub fn run(
    model_path: &Path,
    input: &Path,
    top_k: usize,
    threads: usize,
    json: bool,
) -> Result<String, String> {
    let model = open(model_path)?;
    let data = std::fs::read(input).map_err(|e| format!("{}: {e}", input.display()))?;
    let t0 = Instant::now();
    let x = model
        .preprocess(&data, hint_from_path(input), &InputLimits::default())
        .map_err(|e| format!("{}: {}", input.display(), e.message))?;
    let pre = t0.elapsed();
    let mut session = model.session(1, threads.max(1));
    let t1 = Instant::now();
    let logits = session
        .run(&[x.as_slice()])
        .map_err(|e| e.message)?
        .to_vec();
    let infer = t1.elapsed();
    let info = model.info();
    let ranked = crate::http::ranking::rank(info, &logits, top_k, None);
    let (top, intent) = (ranked.top, ranked.intent);
    if json {
        let preds: Vec<_> = top
            .iter()
            .map(|&(i, s)| serde_json::json!({"label": info.labels.get(i), "index": i, "score": s}))
            .collect();
        let mut v = serde_json::json!({
            "model": info.name,
            "predictions": preds,
            "timing": {"preprocess_ms": pre.as_secs_f64() * 1e3, "inference_ms": infer.as_secs_f64() * 1e3},
        });
        if let Some(it) = intent {
            v["intent"] = serde_json::json!({"action": it.action, "object": it.object, "location": it.location});
        }
        return Ok(format!("{v}\n"));
    }
    let mut out = format!(
        "{} ({}) on {}\n",
        info.name,
        info.task.as_str(),
        input.display()
    );
    let w = top
        .iter()
        .map(|(i, _)| info.labels[*i].len())
        .max()
        .unwrap_or(5)
        .max(5);
    out += &format!("  {:>4}  {:<w$}  {:>8}\n", "rank", "label", "score");
    for (rank, (i, s)) in top.iter().enumerate() {
        out += &format!(
            "  {:>4}  {:<w$}  {:>8.4}   (class {i})\n",
            rank + 1,
            info.labels[*i],
            s
        );
    }
    if let Some(it) = intent {
        out += &format!(
            "  intent: action={} object={} location={}\n",
            it.action, it.object, it.location
        );
    }
    out += &format!(
        "  preprocess {:.3} ms, inference {:.3} ms (kernel {})\n",
        pre.as_secs_f64() * 1e3,
        infer.as_secs_f64() * 1e3,
        models::kernel_isa()
    );
    Ok(out)
}

pub struct BenchSpec {
    pub batches: Vec<usize>,
    pub threads: Vec<usize>,
    /// Measure each configuration for about this long (after warmup).
    pub seconds: f64,
    pub min_iters: usize,
    pub warmup: usize,
    /// Per-layer table for every configuration (else for the first only).
    pub per_layer: bool,
}

#[derive(Debug, Clone)]
pub struct BenchRow {
    pub threads: usize,
    pub batch: usize,
    pub iters: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// Samples per second.
    pub throughput: f64,
    /// Per step: (name, what runs it, mean ms per batch).
    pub layers: Vec<(String, String, f64)>,
}

/// Deterministic pseudo-random input in [-1, 1).
fn bench_input(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Latency percentiles and throughput of `Session::run` per (threads, batch), then a per-step
/// time breakdown. `load(threads)` plans the model for a thread count.
pub fn bench(
    name: &str,
    load: impl Fn(usize) -> Result<Model, String>,
    spec: &BenchSpec,
) -> Result<String, String> {
    let load_before = loadavg();
    let mut rows = Vec::new();
    let mut policy = String::new();
    let mut per_sample = Vec::new();
    for &threads in &spec.threads {
        let model = load(threads)?;
        policy = model.kernel_policy().setting().to_string();
        per_sample = model.sample_major_steps();
        rows.extend(bench_model(&model, threads, spec)?);
    }
    let mut out = bench_table(name, &policy, &rows);
    out += &format!(
        "load average (1 min) before {load_before}, after {}; other processes on the machine are not \
         paused by this command\n",
        loadavg()
    );
    if let (Some(first), Some(last)) = (per_sample.first(), per_sample.last()) {
        out += &format!(
            "a batch runs steps {first} .. {last} sample by sample (their activations stay in \
             cache), the rest over the whole batch\n"
        );
    }
    for (i, r) in rows.iter().enumerate() {
        if i == 0 || spec.per_layer {
            out += &layer_table(r);
        }
    }
    Ok(out)
}

fn bench_model(model: &Model, threads: usize, spec: &BenchSpec) -> Result<Vec<BenchRow>, String> {
    let len: usize = model.info().input_shape.iter().product();
    let max_batch = spec.batches.iter().copied().max().unwrap_or(1);
    let inputs: Vec<Vec<f32>> = (0..max_batch).map(|i| bench_input(len, i as u64)).collect();
    let steps = model.steps();
    let mut rows = Vec::new();
    for &batch in &spec.batches {
        let mut session = model.session(batch, threads);
        let refs: Vec<&[f32]> = inputs[..batch].iter().map(|v| v.as_slice()).collect();
        for _ in 0..spec.warmup {
            session.run(&refs).map_err(|e| e.message)?;
        }
        let mut lat = Vec::new();
        let start = Instant::now();
        let budget = Duration::from_secs_f64(spec.seconds);
        while lat.len() < spec.min_iters || start.elapsed() < budget {
            let t = Instant::now();
            session.run(&refs).map_err(|e| e.message)?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let total: f64 = lat.iter().sum::<f64>() / 1e3;
        // Per-step times over a few more runs (timed separately: reading the clock around every
        // step is not free).
        let mut times = Vec::new();
        let reps = spec.min_iters.max(3);
        for _ in 0..reps {
            session
                .run_timed(&refs, &mut times)
                .map_err(|e| e.message)?;
        }
        let layers = steps
            .iter()
            .zip(&times)
            .map(|((n, k), t)| (n.clone(), k.clone(), t * 1e3 / reps as f64))
            .collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        rows.push(BenchRow {
            threads,
            batch,
            iters: lat.len(),
            p50_ms: percentile(&lat, 50.0).unwrap_or(0.0),
            p90_ms: percentile(&lat, 90.0).unwrap_or(0.0),
            p99_ms: percentile(&lat, 99.0).unwrap_or(0.0),
            throughput: (batch * lat.len()) as f64 / total,
            layers,
        });
    }
    Ok(rows)
}

pub fn bench_table(name: &str, policy: &str, rows: &[BenchRow]) -> String {
    let mut out =
        format!("benchmark {name} (SHIFTSERVE_KERNEL={policy}; per-layer kernels below)\n");
    out += &format!(
        "{:>7}  {:>5}  {:>6}  {:>10}  {:>10}  {:>10}  {:>12}  {:>10}\n",
        "threads", "batch", "iters", "p50 ms", "p90 ms", "p99 ms", "samples/s", "vs first"
    );
    let base = rows.first().map(|r| r.throughput).unwrap_or(1.0);
    for r in rows {
        out += &format!(
            "{:>7}  {:>5}  {:>6}  {:>10.3}  {:>10.3}  {:>10.3}  {:>12.1}  {:>9.2}x\n",
            r.threads,
            r.batch,
            r.iters,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.throughput,
            r.throughput / base
        );
    }
    out
}

fn layer_table(r: &BenchRow) -> String {
    let total: f64 = r.layers.iter().map(|l| l.2).sum();
    let wn = r.layers.iter().map(|l| l.0.len()).max().unwrap_or(4).max(4);
    let mut out = format!(
        "\nper layer, threads {} batch {} (mean ms per batch over timed runs; sum {:.3} ms)\n",
        r.threads, r.batch, total
    );
    out += &format!("{:<wn$}  {:>9}  {:>6}  kernel\n", "step", "ms", "share");
    for (n, k, t) in &r.layers {
        out += &format!(
            "{n:<wn$}  {t:>9.3}  {:>5.1}%  {k}\n",
            100.0 * t / total.max(1e-12)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(2048), "2.00 KiB");
        assert_eq!(human_bytes(3 << 20), "3.00 MiB");
    }

    #[test]
    fn bench_input_is_deterministic_and_bounded() {
        let a = bench_input(1000, 3);
        assert_eq!(a, bench_input(1000, 3));
        assert_ne!(a, bench_input(1000, 4));
        assert!(a.iter().all(|x| (-1.0..1.0).contains(x)));
    }
}
