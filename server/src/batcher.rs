//! One bounded queue and dynamic batcher per model version, drained by dedicated inference
//! threads (never tokio workers).
//!
//! Zero-wait batching: when no instance of the model is executing, a free instance runs what is
//! queued at once (a lone request never waits for company). Requests that arrive while the
//! model executes queue up and form the next batch (up to `max_batch_size`) as soon as an
//! instance is free. Only while another instance is executing may a free instance wait for a
//! fuller batch: until a preferred size is queued, or `max_queue_delay` after the oldest queued
//! request arrived. `wait_when_idle` restores the fixed delay of Triton's dynamic batcher
//! (always wait up to `max_queue_delay` for a preferred size).
//! Requests whose client went away or whose deadline passed are dropped before they run.
//!
//! Admission: `queue_capacity` bounds the samples admitted and not yet taken into a batch. A
//! request that finds no room may wait for it ([`Batcher::reserve_within`]) in arrival order
//! (a fair semaphore: a newcomer never overtakes a waiter); waiting costs neither CPU nor the
//! request's body, which is read only once it has its place.

use models::{ErrorKind, ModelError};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Semaphore, TryAcquireError};

/// Executes batches; one per inference thread, owning its preallocated buffers.
pub trait Runner: Send {
    /// Runs `batch` (each a preprocessed sample) and returns `[batch.len(), outputs]` row-major.
    fn run(&mut self, batch: &[&[f32]]) -> Result<Vec<f32>, ModelError>;
}

/// The real runner: a `models::Session`.
pub struct SessionRunner(pub models::Session);

impl Runner for SessionRunner {
    fn run(&mut self, batch: &[&[f32]]) -> Result<Vec<f32>, ModelError> {
        self.0.run(batch).map(|out| out.to_vec())
    }
}

/// Makes a loaded version's runner from its warmed-up session: the real server wraps the
/// session itself ([`session_runners`]); tests inject a wrapper (a slow or failing runner) to
/// drive the HTTP layer in-process.
pub type RunnerFactory = std::sync::Arc<dyn Fn(models::Session) -> Box<dyn Runner> + Send + Sync>;

/// The production factory: every instance runs its `models::Session`.
pub fn session_runners() -> RunnerFactory {
    std::sync::Arc::new(|s| Box::new(SessionRunner(s)))
}

/// Hooks for metrics and statistics.
pub trait BatchObserver: Send + Sync {
    fn queue_depth(&self, _depth: usize) {}
    fn batch_done(&self, _size: usize, _infer: Duration) {}
    /// A queued request was dropped without running: its client went away (`cancelled`) or its
    /// deadline passed.
    fn skipped(&self, _cancelled: bool) {}
}

pub struct NoObserver;
impl BatchObserver for NoObserver {}

#[derive(Debug, Clone)]
pub struct BatchConfig {
    pub max_batch_size: usize,
    pub preferred_batch_sizes: Vec<usize>,
    pub max_queue_delay: Duration,
    pub queue_capacity: usize,
    /// Wait up to `max_queue_delay` for a preferred size even when the model is idle.
    pub wait_when_idle: bool,
    /// How long an instance that finds the queue empty polls it before sleeping (one instance
    /// per model at a time); zero: sleep at once.
    pub idle_spin: Duration,
}

#[derive(Debug)]
pub struct JobOutput {
    /// This sample's row of the batch output.
    pub output: Vec<f32>,
    pub batch_size: usize,
    pub queue_time: Duration,
    pub infer_time: Duration,
}

#[derive(Debug)]
pub enum JobError {
    /// The deadline passed while the request was still queued.
    Expired,
    Failed(ModelError),
}

pub type JobResult = Result<JobOutput, JobError>;

pub struct Job {
    pub input: Vec<f32>,
    pub enqueued: Instant,
    pub deadline: Instant,
    pub reply: oneshot::Sender<JobResult>,
}

impl Job {
    pub fn new(input: Vec<f32>, deadline: Instant) -> (Job, oneshot::Receiver<JobResult>) {
        let (tx, rx) = oneshot::channel();
        (
            Job {
                input,
                enqueued: Instant::now(),
                deadline,
                reply: tx,
            },
            rx,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is at capacity.
    Full,
    /// The batcher no longer accepts work (version being unloaded or server shutting down).
    Closed,
}

struct State {
    queue: VecDeque<Job>,
    /// Samples admitted (see [`Batcher::reserve`]) but not yet queued: waiting for or in
    /// preprocessing. They count against `queue_capacity` like queued ones.
    reserved: usize,
    closed: bool,
    /// Instances executing a batch right now.
    busy: usize,
}

impl State {
    /// Everything admitted and not yet taken into a batch: reserved plus queued samples.
    fn depth(&self) -> usize {
        self.reserved + self.queue.len()
    }
}

/// A place in a model's queue, taken at admission before preprocessing. Converted into queued
/// jobs by [`Batcher::submit_reserved`]; dropped unused (error, timeout, cancellation) it
/// gives its places back.
pub struct Reservation {
    shared: Arc<Shared>,
    n: usize,
}

impl Reservation {
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

impl Reservation {
    /// Grows this reservation to `n` places if the queue has room for the extra ones now (and
    /// nobody waits for room ahead of this request); false leaves it unchanged.
    pub fn try_grow(&mut self, n: usize) -> bool {
        if n <= self.n {
            return n == self.n;
        }
        let extra = n - self.n;
        let Ok(extra_u32) = u32::try_from(extra) else {
            return false;
        };
        match self.shared.room.try_acquire_many(extra_u32) {
            Ok(p) => p.forget(),
            Err(_) => return false,
        }
        book(&self.shared, extra);
        self.n = n;
        true
    }

    /// Whether this reservation holds places in `batcher`'s queue.
    pub fn is_for(&self, batcher: &Batcher) -> bool {
        Arc::ptr_eq(&self.shared, &batcher.shared)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.n == 0 {
            return;
        }
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.reserved -= self.n;
        let depth = st.depth();
        drop(st);
        self.shared.room.add_permits(self.n);
        self.shared.observer.queue_depth(depth);
    }
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    /// Free places: `queue_capacity` minus the depth, handed out in arrival order. Places are
    /// taken (and forgotten) at admission and added back when samples leave the depth: taken
    /// into a batch, purged, or a reservation dropped unused.
    room: Semaphore,
    cfg: BatchConfig,
    observer: Arc<dyn BatchObserver>,
    /// Queued jobs, readable without the lock (what an idle spinning instance polls).
    queued: AtomicUsize,
    /// An instance is polling the queue instead of sleeping (at most one at a time).
    spinning: AtomicBool,
}

pub struct Batcher {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// How many queued requests to take now, if a batch should leave.
pub fn batch_take(queued: usize, cfg: &BatchConfig, flush: bool) -> Option<usize> {
    if queued == 0 {
        return None;
    }
    if queued >= cfg.max_batch_size {
        return Some(cfg.max_batch_size);
    }
    if flush {
        return Some(queued);
    }
    cfg.preferred_batch_sizes
        .iter()
        .copied()
        .filter(|&p| p <= queued)
        .max()
}

impl Batcher {
    /// Starts one inference thread per runner.
    pub fn start(
        name: &str,
        cfg: BatchConfig,
        runners: Vec<Box<dyn Runner>>,
        observer: Arc<dyn BatchObserver>,
    ) -> std::io::Result<Batcher> {
        assert!(
            cfg.max_batch_size >= 1 && cfg.queue_capacity >= 1,
            "invalid batch config"
        );
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                reserved: 0,
                closed: false,
                busy: 0,
            }),
            cv: Condvar::new(),
            room: Semaphore::new(cfg.queue_capacity),
            queued: AtomicUsize::new(0),
            spinning: AtomicBool::new(false),
            cfg,
            observer,
        });
        let mut workers = Vec::new();
        for (i, runner) in runners.into_iter().enumerate() {
            let sh = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("infer-{name}-{i}"))
                .spawn(move || worker_loop(sh, runner));
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) => {
                    shared.state.lock().unwrap().closed = true;
                    shared.room.close();
                    shared.cv.notify_all();
                    return Err(e);
                }
            }
        }
        Ok(Batcher {
            shared,
            workers: Mutex::new(workers),
        })
    }

    /// Admits `n` samples of one request if the queue has room for them now: reserves their
    /// places against `queue_capacity` (counting reserved and queued samples), or refuses with
    /// `Full` (also while earlier requests wait for room) / `Closed`.
    pub fn reserve(&self, n: usize) -> Result<Reservation, SubmitError> {
        // `close` closes `room`, so a closed batcher refuses here without taking the lock.
        let Ok(n_u32) = u32::try_from(n) else {
            return Err(SubmitError::Full);
        };
        match self.shared.room.try_acquire_many(n_u32) {
            Ok(p) => p.forget(),
            Err(TryAcquireError::Closed) => return Err(SubmitError::Closed),
            Err(TryAcquireError::NoPermits) => return Err(SubmitError::Full),
        }
        Ok(self.admitted(n))
    }

    /// Admits `n` samples of one request, waiting for room until `until` in arrival order
    /// (`Full` when there is none by then, at once if `n` exceeds `queue_capacity`; `Closed` as
    /// soon as the batcher closes). Cancel-safe: dropped while waiting, it takes no place.
    pub async fn reserve_within(
        &self,
        n: usize,
        until: tokio::time::Instant,
    ) -> Result<Reservation, SubmitError> {
        if n > self.shared.cfg.queue_capacity {
            return Err(SubmitError::Full);
        }
        if until <= tokio::time::Instant::now() {
            return self.reserve(n);
        }
        let Ok(n_u32) = u32::try_from(n) else {
            return Err(SubmitError::Full);
        };
        let acquire = self.shared.room.acquire_many(n_u32);
        match tokio::time::timeout_at(until, acquire).await {
            Ok(Ok(p)) => p.forget(),
            Ok(Err(_)) => return Err(SubmitError::Closed),
            Err(_) => return Err(SubmitError::Full),
        }
        // Closed meanwhile: `submit_reserved` refuses and the reservation gives its places back.
        Ok(self.admitted(n))
    }

    /// A reservation of `n` places already taken from `room`.
    fn admitted(&self, n: usize) -> Reservation {
        book(&self.shared, n);
        Reservation {
            shared: self.shared.clone(),
            n,
        }
    }

    /// Enqueues all jobs of one request in the places `res` reserved on this batcher (one job
    /// per reserved place). On `Closed` the reservation is released and the jobs are given back
    /// (so a caller can submit the same inputs elsewhere without having copied them).
    pub fn submit_reserved(
        &self,
        mut res: Reservation,
        jobs: Vec<Job>,
    ) -> Result<(), (SubmitError, Vec<Job>)> {
        assert!(
            Arc::ptr_eq(&res.shared, &self.shared) && res.n == jobs.len(),
            "reservation does not match this submission"
        );
        let mut st = self.shared.state.lock().unwrap();
        if st.closed {
            drop(st);
            return Err((SubmitError::Closed, jobs));
        }
        st.reserved -= res.n;
        res.n = 0;
        st.queue.extend(jobs);
        self.shared.queued.store(st.queue.len(), Ordering::Release);
        let depth = st.depth();
        drop(st);
        self.shared.observer.queue_depth(depth);
        self.shared.cv.notify_one();
        Ok(())
    }

    /// Admits and enqueues all jobs of one request, or none of them.
    pub fn submit(&self, jobs: Vec<Job>) -> Result<(), SubmitError> {
        let res = self.reserve(jobs.len())?;
        self.submit_reserved(res, jobs).map_err(|(e, _)| e)
    }

    /// Reserved plus queued samples (what `shiftserve_queue_depth` reports).
    pub fn depth(&self) -> usize {
        self.shared.state.lock().unwrap().depth()
    }

    pub fn config(&self) -> &BatchConfig {
        &self.shared.cfg
    }

    /// Stops accepting work; queued requests still run, then the threads exit.
    pub fn close(&self) {
        self.shared.state.lock().unwrap().closed = true;
        self.shared.room.close();
        self.shared.cv.notify_all();
    }

    /// Closes and waits until every queued request has been answered and the threads exited.
    pub fn shutdown(&self) {
        self.close();
        let handles: Vec<_> = self.workers.lock().unwrap().drain(..).collect();
        for h in handles {
            let _ = h.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.close();
    }
}

/// Counts `n` places taken from `shared.room` as reserved, and reports the new depth.
fn book(shared: &Shared, n: usize) {
    let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    st.reserved += n;
    let depth = st.depth();
    drop(st);
    shared.observer.queue_depth(depth);
}

/// Removes cancelled and expired jobs; answers the expired ones. Returns how many it removed.
fn purge(queue: &mut VecDeque<Job>, observer: &dyn BatchObserver) -> usize {
    let now = Instant::now();
    // Most calls find nothing to remove: look before rebuilding the queue.
    if !queue
        .iter()
        .any(|job| job.deadline <= now || job.reply.is_closed())
    {
        return 0;
    }
    let before = queue.len();
    let mut kept = VecDeque::with_capacity(queue.len());
    for job in queue.drain(..) {
        if job.deadline <= now {
            // A closed reply past its deadline is the handler's own timeout, not a disconnect.
            observer.skipped(false);
            let _ = job.reply.send(Err(JobError::Expired));
        } else if job.reply.is_closed() {
            observer.skipped(true);
        } else {
            kept.push_back(job);
        }
    }
    *queue = kept;
    before - queue.len()
}

fn worker_loop(shared: Arc<Shared>, mut runner: Box<dyn Runner>) {
    let cfg = &shared.cfg;
    loop {
        let jobs: Vec<Job> = {
            let mut st = shared.state.lock().unwrap();
            let take = loop {
                let purged = purge(&mut st.queue, &*shared.observer);
                if purged > 0 {
                    shared.queued.store(st.queue.len(), Ordering::Release);
                    shared.room.add_permits(purged);
                    shared.observer.queue_depth(st.depth());
                }
                let n = st.queue.len();
                if n == 0 {
                    if st.closed {
                        return;
                    }
                    if !cfg.idle_spin.is_zero() && !shared.spinning.swap(true, Ordering::AcqRel) {
                        // Poll for the next request a little before sleeping: one that comes
                        // meanwhile starts without a thread wake-up.
                        drop(st);
                        let until = Instant::now() + cfg.idle_spin;
                        while shared.queued.load(Ordering::Acquire) == 0 && Instant::now() < until {
                            for _ in 0..32 {
                                std::hint::spin_loop();
                            }
                            // On a loaded machine the threads preparing the next requests
                            // need this core more than the poll does.
                            std::thread::yield_now();
                        }
                        shared.spinning.store(false, Ordering::Release);
                        st = shared.state.lock().unwrap();
                        if !st.queue.is_empty() || st.closed {
                            continue;
                        }
                    }
                    st = shared.cv.wait(st).unwrap();
                    continue;
                }
                let now = Instant::now();
                let oldest = st.queue.front().map(|j| j.enqueued).unwrap_or(now);
                let due = oldest + cfg.max_queue_delay;
                // The model is idle: run now, whatever is queued.
                let idle = st.busy == 0 && !cfg.wait_when_idle;
                if let Some(take) = batch_take(n, cfg, idle || now >= due || st.closed) {
                    break take;
                }
                let earliest_deadline = st.queue.iter().map(|j| j.deadline).min().unwrap_or(due);
                let wake = due.min(earliest_deadline);
                let wait = wake
                    .saturating_duration_since(now)
                    .max(Duration::from_micros(20));
                st = shared.cv.wait_timeout(st, wait).unwrap().0;
            };
            let jobs: Vec<Job> = st.queue.drain(..take).collect();
            shared.queued.store(st.queue.len(), Ordering::Release);
            st.busy += 1;
            let rest = st.queue.len();
            let depth = st.depth();
            drop(st);
            shared.room.add_permits(take);
            shared.observer.queue_depth(depth);
            if rest > 0 {
                // Let another instance start forming the next batch.
                shared.cv.notify_one();
            }
            jobs
        };
        run_batch(&mut *runner, jobs, &*shared.observer);
        let mut st = shared.state.lock().unwrap();
        st.busy -= 1;
        let waiting = !st.queue.is_empty();
        drop(st);
        if waiting {
            // An instance waiting for a fuller batch re-checks: the model may be idle now.
            shared.cv.notify_all();
        }
    }
}

fn run_batch(runner: &mut dyn Runner, jobs: Vec<Job>, observer: &dyn BatchObserver) {
    let size = jobs.len();
    let started = Instant::now();
    let inputs: Vec<&[f32]> = jobs.iter().map(|j| j.input.as_slice()).collect();
    let result = catch_unwind(AssertUnwindSafe(|| runner.run(&inputs)));
    let infer = started.elapsed();
    observer.batch_done(size, infer);
    let result = match result {
        Ok(Ok(out)) if !out.is_empty() && out.len() % size == 0 => Ok(out),
        Ok(Ok(out)) => Err(ModelError::new(
            ErrorKind::Internal,
            format!("model returned {} values for a batch of {size}", out.len()),
        )),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ModelError::new(ErrorKind::Internal, "inference panicked")),
    };
    match result {
        Ok(out) => {
            let per = out.len() / size;
            for (i, job) in jobs.into_iter().enumerate() {
                let _ = job.reply.send(Ok(JobOutput {
                    output: out[i * per..(i + 1) * per].to_vec(),
                    batch_size: size,
                    queue_time: started.saturating_duration_since(job.enqueued),
                    infer_time: infer,
                }));
            }
        }
        Err(e) => {
            tracing::error!(error = %e.message, batch = size, "batch execution failed");
            for job in jobs {
                let _ = job.reply.send(Err(JobError::Failed(e.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    /// Sums each sample; reports executed batch sizes.
    struct SumRunner {
        sizes: mpsc::Sender<usize>,
        fail_on: Option<f32>,
    }

    impl Runner for SumRunner {
        fn run(&mut self, batch: &[&[f32]]) -> Result<Vec<f32>, ModelError> {
            self.sizes.send(batch.len()).unwrap();
            let out: Vec<f32> = batch.iter().map(|x| x.iter().sum()).collect();
            if let Some(bad) = self.fail_on {
                if out.contains(&bad) {
                    panic!("poisoned sample");
                }
            }
            Ok(out)
        }
    }

    #[derive(Default)]
    struct Counts {
        cancelled: AtomicUsize,
        expired: AtomicUsize,
        batches: AtomicUsize,
    }
    impl BatchObserver for Counts {
        fn batch_done(&self, _size: usize, _infer: Duration) {
            self.batches.fetch_add(1, Ordering::SeqCst);
        }
        fn skipped(&self, cancelled: bool) {
            if cancelled {
                &self.cancelled
            } else {
                &self.expired
            }
            .fetch_add(1, Ordering::SeqCst);
        }
    }

    fn cfg(max: usize, preferred: &[usize], delay_ms: u64, cap: usize) -> BatchConfig {
        BatchConfig {
            max_batch_size: max,
            preferred_batch_sizes: preferred.to_vec(),
            max_queue_delay: Duration::from_millis(delay_ms),
            queue_capacity: cap,
            wait_when_idle: false,
            idle_spin: Duration::ZERO,
        }
    }

    /// Like `cfg`, with Triton's fixed delay (waits even when idle).
    fn cfg_waiting(max: usize, preferred: &[usize], delay_ms: u64, cap: usize) -> BatchConfig {
        BatchConfig {
            wait_when_idle: true,
            ..cfg(max, preferred, delay_ms, cap)
        }
    }

    /// Holds every batch until opened.
    #[derive(Default)]
    struct Gate {
        open: Mutex<bool>,
        cv: Condvar,
    }

    impl Gate {
        fn open(&self) {
            *self.open.lock().unwrap() = true;
            self.cv.notify_all();
        }
        fn wait(&self) {
            let mut g = self.open.lock().unwrap();
            while !*g {
                g = self.cv.wait(g).unwrap();
            }
        }
    }

    /// Sums each sample after the gate opens; reports batch sizes as they start.
    struct GatedRunner {
        started: mpsc::Sender<usize>,
        gate: Arc<Gate>,
    }

    impl Runner for GatedRunner {
        fn run(&mut self, batch: &[&[f32]]) -> Result<Vec<f32>, ModelError> {
            self.started.send(batch.len()).unwrap();
            self.gate.wait();
            Ok(batch.iter().map(|x| x.iter().sum()).collect())
        }
    }

    fn start_gated(
        c: BatchConfig,
        instances: usize,
    ) -> (Batcher, mpsc::Receiver<usize>, Arc<Gate>, Arc<Counts>) {
        let (tx, rx) = mpsc::channel();
        let gate = Arc::new(Gate::default());
        let counts = Arc::new(Counts::default());
        let runners: Vec<Box<dyn Runner>> = (0..instances)
            .map(|_| {
                Box::new(GatedRunner {
                    started: tx.clone(),
                    gate: gate.clone(),
                }) as Box<dyn Runner>
            })
            .collect();
        let b = Batcher::start("gated", c, runners, counts.clone()).unwrap();
        (b, rx, gate, counts)
    }

    fn start(
        c: BatchConfig,
        fail_on: Option<f32>,
    ) -> (Batcher, mpsc::Receiver<usize>, Arc<Counts>) {
        let (tx, rx) = mpsc::channel();
        let counts = Arc::new(Counts::default());
        let b = Batcher::start(
            "t",
            c,
            vec![Box::new(SumRunner { sizes: tx, fail_on })],
            counts.clone(),
        )
        .unwrap();
        (b, rx, counts)
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn take_rules() {
        let c = cfg(8, &[2, 4], 1000, 100);
        assert_eq!(batch_take(0, &c, true), None);
        assert_eq!(batch_take(1, &c, false), None);
        assert_eq!(batch_take(1, &c, true), Some(1));
        assert_eq!(batch_take(3, &c, false), Some(2));
        assert_eq!(batch_take(5, &c, false), Some(4));
        assert_eq!(batch_take(7, &c, true), Some(7));
        assert_eq!(batch_take(20, &c, false), Some(8));
    }

    #[test]
    fn idle_model_runs_a_lone_request_at_once() {
        // The delay is far longer than the test: the request must not wait for it.
        let (b, sizes, _) = start(cfg(8, &[4, 8], 60_000, 100), None);
        for i in 0..3 {
            let t0 = Instant::now();
            let (job, rx) = Job::new(vec![i as f32, 1.0], far());
            b.submit(vec![job]).unwrap();
            let out = rx.blocking_recv().unwrap().unwrap();
            assert_eq!(out.output, vec![i as f32 + 1.0]);
            assert_eq!(out.batch_size, 1);
            assert!(t0.elapsed() < Duration::from_secs(30));
            assert_eq!(sizes.recv().unwrap(), 1);
        }
    }

    #[test]
    fn requests_queued_behind_a_running_batch_form_the_next_batch() {
        let (b, started, gate, _) = start_gated(cfg(4, &[], 60_000, 100), 1);
        let (first, rx_first) = Job::new(vec![1.0], far());
        b.submit(vec![first]).unwrap();
        // The first runs alone at once and holds the only instance.
        assert_eq!(started.recv().unwrap(), 1);
        let mut rxs = Vec::new();
        for i in 0..6 {
            let (job, rx) = Job::new(vec![i as f32], far());
            b.submit(vec![job]).unwrap();
            rxs.push(rx);
        }
        gate.open();
        assert_eq!(rx_first.blocking_recv().unwrap().unwrap().batch_size, 1);
        // Six queued behind it: a full batch of 4, then the other 2 at once.
        assert_eq!(started.recv().unwrap(), 4);
        assert_eq!(started.recv().unwrap(), 2);
        let got: Vec<usize> = rxs
            .into_iter()
            .map(|rx| rx.blocking_recv().unwrap().unwrap().batch_size)
            .collect();
        assert_eq!(got, vec![4, 4, 4, 4, 2, 2]);
    }

    #[test]
    fn a_free_instance_waits_for_company_only_while_another_executes() {
        let (b, started, gate, _) = start_gated(cfg(8, &[2], 60_000, 100), 2);
        let (first, rx_first) = Job::new(vec![1.0], far());
        b.submit(vec![first]).unwrap();
        assert_eq!(started.recv().unwrap(), 1);
        // One instance executes; the other waits until a preferred size (2) is queued.
        let (a, rx_a) = Job::new(vec![2.0], far());
        b.submit(vec![a]).unwrap();
        assert!(started.recv_timeout(Duration::from_millis(200)).is_err());
        let (c, rx_c) = Job::new(vec![3.0], far());
        b.submit(vec![c]).unwrap();
        assert_eq!(started.recv().unwrap(), 2);
        gate.open();
        assert_eq!(rx_first.blocking_recv().unwrap().unwrap().batch_size, 1);
        assert_eq!(rx_a.blocking_recv().unwrap().unwrap().batch_size, 2);
        assert_eq!(rx_c.blocking_recv().unwrap().unwrap().batch_size, 2);
    }

    #[test]
    fn full_batch_leaves_without_waiting_for_the_delay() {
        // Triton's fixed delay, far longer than the test: only max_batch_size can send it.
        let (b, sizes, _) = start(cfg_waiting(4, &[], 60_000, 100), None);
        let mut rxs = Vec::new();
        for i in 0..4 {
            let (job, rx) = Job::new(vec![i as f32, 1.0], far());
            rxs.push(rx);
            b.submit(vec![job]).unwrap();
        }
        for (i, rx) in rxs.into_iter().enumerate() {
            let out = rx.blocking_recv().unwrap().unwrap();
            assert_eq!(out.output, vec![i as f32 + 1.0]);
            assert_eq!(out.batch_size, 4);
        }
        assert_eq!(sizes.recv().unwrap(), 4);
    }

    #[test]
    fn delay_flushes_a_partial_batch_when_waiting_when_idle() {
        let (b, sizes, _) = start(cfg_waiting(8, &[], 30, 100), None);
        let t0 = Instant::now();
        let (job, rx) = Job::new(vec![2.0], far());
        b.submit(vec![job]).unwrap();
        let out = rx.blocking_recv().unwrap().unwrap();
        assert_eq!(out.output, vec![2.0]);
        assert_eq!(out.batch_size, 1);
        assert!(t0.elapsed() >= Duration::from_millis(30));
        assert!(out.queue_time >= Duration::from_millis(29));
        assert_eq!(sizes.recv().unwrap(), 1);
    }

    #[test]
    fn preferred_size_leaves_early() {
        let (b, sizes, _) = start(cfg_waiting(8, &[2], 60_000, 100), None);
        let jobs: Vec<_> = (0..3).map(|i| Job::new(vec![i as f32], far())).collect();
        let (jobs, mut rxs): (Vec<_>, Vec<_>) = jobs.into_iter().unzip();
        b.submit(jobs).unwrap();
        assert_eq!(sizes.recv().unwrap(), 2);
        assert_eq!(
            rxs.remove(0).blocking_recv().unwrap().unwrap().batch_size,
            2
        );
        // The third waits for more company until the batcher is closed, which flushes it.
        b.shutdown();
        assert_eq!(
            rxs.pop()
                .unwrap()
                .blocking_recv()
                .unwrap()
                .unwrap()
                .batch_size,
            1
        );
    }

    #[test]
    fn full_queue_rejects_and_closed_rejects() {
        let (b, _sizes, _) = start(cfg_waiting(8, &[], 60_000, 2), None);
        let (j1, r1) = Job::new(vec![1.0], far());
        let (j2, r2) = Job::new(vec![1.0], far());
        let (j3, _r3) = Job::new(vec![1.0], far());
        b.submit(vec![j1]).unwrap();
        b.submit(vec![j2]).unwrap();
        assert_eq!(b.depth(), 2);
        assert_eq!(b.submit(vec![j3]).unwrap_err(), SubmitError::Full);
        // Drain: queued work still completes.
        b.shutdown();
        assert!(r1.blocking_recv().unwrap().is_ok());
        assert!(r2.blocking_recv().unwrap().is_ok());
        let (j4, _r4) = Job::new(vec![1.0], far());
        assert_eq!(b.submit(vec![j4]).unwrap_err(), SubmitError::Closed);
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    fn soon(ms: u64) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(ms)
    }

    #[test]
    fn waiting_admission_gets_the_places_a_batch_frees_in_arrival_order() {
        // Room for 2; one instance held in the runner.
        let (b, started, gate, _) = start_gated(cfg(1, &[], 0, 2), 1);
        let (j, r1) = Job::new(vec![1.0], far());
        b.submit(vec![j]).unwrap();
        assert_eq!(started.recv().unwrap(), 1);
        let (j, r2) = Job::new(vec![2.0], far());
        let (k, r3) = Job::new(vec![3.0], far());
        b.submit(vec![j]).unwrap();
        b.submit(vec![k]).unwrap();
        assert_eq!(b.depth(), 2);
        let b = Arc::new(b);
        let rt = rt();
        rt.block_on(async {
            // No room: a waiter times out with Full, taking no place.
            assert_eq!(
                b.reserve_within(1, soon(30)).await.err(),
                Some(SubmitError::Full)
            );
            // More than the queue can ever hold is refused at once.
            assert_eq!(
                b.reserve_within(3, soon(60_000)).await.err(),
                Some(SubmitError::Full)
            );
            // Two waiters in order; a newcomer's try does not overtake them.
            let order = Arc::new(Mutex::new(Vec::new()));
            let mut waiters = Vec::new();
            for (i, n) in [(0, 2), (1, 1)] {
                let (b, order) = (b.clone(), order.clone());
                waiters.push(tokio::spawn(async move {
                    let r = b.reserve_within(n, soon(60_000)).await.unwrap();
                    order.lock().unwrap().push(i);
                    r
                }));
                tokio::task::yield_now().await;
            }
            gate.open();
            let first = waiters.remove(0).await.unwrap();
            assert_eq!(first.len(), 2);
            assert_eq!(*order.lock().unwrap(), vec![0]);
            // The queue holds the 2 places of the first waiter: the second still waits, and a
            // newcomer gets no place.
            assert_eq!(b.depth(), 2);
            assert_eq!(b.reserve(1).err(), Some(SubmitError::Full));
            drop(first);
            let second = waiters.remove(0).await.unwrap();
            assert_eq!(second.len(), 1);
            assert_eq!(*order.lock().unwrap(), vec![0, 1]);
            assert_eq!(b.depth(), 1);
            drop(second);
        });
        assert_eq!(r1.blocking_recv().unwrap().unwrap().output, vec![1.0]);
        assert_eq!(r2.blocking_recv().unwrap().unwrap().output, vec![2.0]);
        assert_eq!(r3.blocking_recv().unwrap().unwrap().output, vec![3.0]);
        assert_eq!(b.depth(), 0);
        assert!(b.reserve(2).is_ok());
    }

    #[test]
    fn an_idle_spinning_instance_runs_what_arrives_and_stops_on_close() {
        let c = BatchConfig {
            idle_spin: Duration::from_millis(50),
            ..cfg(4, &[], 0, 8)
        };
        let (b, sizes, _) = start(c, None);
        for i in 0..20 {
            // Each request arrives while the instance polls after the previous one.
            let (j, r) = Job::new(vec![i as f32], far());
            b.submit(vec![j]).unwrap();
            assert_eq!(r.blocking_recv().unwrap().unwrap().output, vec![i as f32]);
        }
        assert_eq!(sizes.try_iter().count(), 20);
        // Closing while it polls: the thread exits (shutdown joins it).
        b.shutdown();
        assert_eq!(b.depth(), 0);
    }

    #[test]
    fn closing_wakes_waiters_with_closed_and_grow_needs_room() {
        let (b, _sizes, _) = start(cfg_waiting(8, &[], 60_000, 3), None);
        let b = Arc::new(b);
        let mut r = b.reserve(1).unwrap();
        assert!(r.is_for(&b));
        assert!(r.try_grow(3));
        assert_eq!((r.len(), b.depth()), (3, 3));
        assert!(!r.try_grow(4));
        assert_eq!((r.len(), b.depth()), (3, 3));
        let rt = rt();
        rt.block_on(async {
            let w = {
                let b = b.clone();
                tokio::spawn(async move { b.reserve_within(1, soon(60_000)).await.err() })
            };
            tokio::task::yield_now().await;
            b.close();
            assert_eq!(w.await.unwrap(), Some(SubmitError::Closed));
        });
        drop(r);
        assert_eq!(b.depth(), 0);
    }

    #[test]
    fn reservations_count_against_capacity_and_are_released_on_drop() {
        let (b, sizes, _) = start(cfg_waiting(8, &[], 60_000, 3), None);
        let r2 = b.reserve(2).unwrap();
        assert_eq!(b.depth(), 2);
        // Reserved places bound admission exactly like queued ones.
        assert_eq!(b.reserve(2).err(), Some(SubmitError::Full));
        let r1 = b.reserve(1).unwrap();
        assert_eq!(b.depth(), 3);
        let (job, rx) = Job::new(vec![5.0], far());
        assert_eq!(b.submit(vec![job]).err(), Some(SubmitError::Full));
        drop(rx);
        // An abandoned reservation (error, timeout, cancelled client) gives its places back.
        drop(r2);
        assert_eq!(b.depth(), 1);
        // Converting a reservation into a queued job keeps the depth (reserved -> queued).
        let (job, rx) = Job::new(vec![7.0], far());
        assert!(b.submit_reserved(r1, vec![job]).is_ok());
        assert_eq!(b.depth(), 1);
        let r = b.reserve(2).unwrap();
        assert_eq!(b.depth(), 3);
        b.close();
        // Closed: no new admission; a pending reservation is refused and released.
        assert_eq!(b.reserve(1).err(), Some(SubmitError::Closed));
        let (job, _rx2) = Job::new(vec![1.0], far());
        let (job2, _rx3) = Job::new(vec![2.0], far());
        let Err((e, back)) = b.submit_reserved(r, vec![job, job2]) else {
            panic!("a closed batcher accepted a reservation");
        };
        assert_eq!(e, SubmitError::Closed);
        // The jobs come back with their inputs, for a retry on another version.
        assert_eq!(
            back.iter().map(|j| j.input.clone()).collect::<Vec<_>>(),
            vec![vec![1.0], vec![2.0]]
        );
        b.shutdown();
        assert_eq!(rx.blocking_recv().unwrap().unwrap().output, vec![7.0]);
        assert_eq!(b.depth(), 0);
        assert_eq!(sizes.try_iter().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn cancelled_and_expired_requests_never_run() {
        let (b, sizes, counts) = start(cfg(8, &[], 60_000, 10), None);
        let (gone, rx_gone) = Job::new(vec![100.0], far());
        drop(rx_gone);
        let (late, rx_late) = Job::new(vec![200.0], Instant::now());
        let (ok, rx_ok) = Job::new(vec![3.0], far());
        b.submit(vec![gone, late, ok]).unwrap();
        b.shutdown();
        assert!(matches!(
            rx_late.blocking_recv().unwrap(),
            Err(JobError::Expired)
        ));
        let out = rx_ok.blocking_recv().unwrap().unwrap();
        assert_eq!(out.output, vec![3.0]);
        assert_eq!(out.batch_size, 1);
        assert_eq!(sizes.try_iter().collect::<Vec<_>>(), vec![1]);
        assert_eq!(counts.cancelled.load(Ordering::SeqCst), 1);
        assert_eq!(counts.expired.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn expired_request_is_answered_while_others_wait() {
        // Nothing forms a batch (long delay, no preferred size), yet the deadline is honoured.
        let (b, _sizes, counts) = start(cfg_waiting(8, &[], 60_000, 10), None);
        let (job, rx) = Job::new(vec![1.0], Instant::now() + Duration::from_millis(20));
        b.submit(vec![job]).unwrap();
        assert!(matches!(
            rx.blocking_recv().unwrap(),
            Err(JobError::Expired)
        ));
        assert_eq!(counts.expired.load(Ordering::SeqCst), 1);
        assert_eq!(b.depth(), 0);
    }

    #[test]
    fn panicking_batch_fails_its_requests_and_the_worker_survives() {
        let (b, _sizes, counts) = start(cfg(1, &[], 0, 10), Some(13.0));
        let (bad, rx_bad) = Job::new(vec![13.0], far());
        b.submit(vec![bad]).unwrap();
        match rx_bad.blocking_recv().unwrap() {
            Err(JobError::Failed(e)) => assert!(e.message.contains("panicked")),
            other => panic!("unexpected {other:?}"),
        }
        let (good, rx_good) = Job::new(vec![1.0, 2.0], far());
        b.submit(vec![good]).unwrap();
        assert_eq!(rx_good.blocking_recv().unwrap().unwrap().output, vec![3.0]);
        assert_eq!(counts.batches.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn several_instances_share_one_queue() {
        let (tx, sizes) = mpsc::channel();
        let runners: Vec<Box<dyn Runner>> = (0..3)
            .map(|_| {
                Box::new(SumRunner {
                    sizes: tx.clone(),
                    fail_on: None,
                }) as Box<dyn Runner>
            })
            .collect();
        let b =
            Batcher::start("multi", cfg(2, &[], 1, 1000), runners, Arc::new(NoObserver)).unwrap();
        let mut rxs = Vec::new();
        for i in 0..200 {
            let (job, rx) = Job::new(vec![i as f32], far());
            b.submit(vec![job]).unwrap();
            rxs.push(rx);
        }
        for (i, rx) in rxs.into_iter().enumerate() {
            assert_eq!(rx.blocking_recv().unwrap().unwrap().output, vec![i as f32]);
        }
        b.shutdown();
        drop(tx);
        assert_eq!(sizes.iter().sum::<usize>(), 200);
    }
}
