//! A session's persistent worker threads: one pool per session, created once, used by every
//! layer. `run` hands the same closure to every worker (the caller is worker 0) and returns when
//! all have finished; layers split their work by the worker index or by an atomic task counter,
//! so no thread is spawned per layer call.
//!
//! Waiting: workers spin for a short while after each job (a layer of a small model takes
//! microseconds, and the next layer follows at once), then sleep on a condition variable. A panic
//! in any worker is caught and re-raised in the caller after every worker has finished, so the
//! caller's own panic handling (the server's per-batch `catch_unwind`) sees it.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Job = dyn Fn(usize) + Sync;

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

struct Shared {
    /// Incremented for every job; workers run each generation once.
    generation: AtomicUsize,
    /// Workers (excluding the caller) still running the current job.
    pending: AtomicUsize,
    /// The current job, valid while `pending > 0` (the caller waits for it to reach zero).
    job: Mutex<Option<JobPtr>>,
    wake: Condvar,
    lock: Mutex<()>,
    done_lock: Mutex<()>,
    done: Condvar,
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    stop: AtomicBool,
}

#[derive(Clone, Copy)]
struct JobPtr(*const Job);
// SAFETY: the pointer is only dereferenced while the caller of `run` keeps the closure alive
// (it waits until every worker has finished with it), and the closure is `Sync`.
unsafe impl Send for JobPtr {}

/// A fixed set of worker threads owned by one session.
pub struct Workers {
    threads: usize,
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    /// `run` is not reentrant: a nested call runs serially on the caller.
    busy: AtomicBool,
}

impl Workers {
    /// `threads` workers in all (the caller of `run` counts as one; `threads - 1` are spawned).
    pub fn new(threads: usize) -> Workers {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            job: Mutex::new(None),
            wake: Condvar::new(),
            lock: Mutex::new(()),
            done_lock: Mutex::new(()),
            done: Condvar::new(),
            panic: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let handles = (1..threads)
            .map(|i| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("shiftserve-worker-{i}"))
                    .spawn(move || worker_loop(&s, i))
                    .expect("spawn a worker thread")
            })
            .collect();
        Workers {
            threads,
            shared,
            handles,
            busy: AtomicBool::new(false),
        }
    }

    /// A pool that runs everything on the caller.
    pub fn single() -> Workers {
        Workers::new(1)
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(i)` for every worker index `i` in `0..threads` (index 0 on the calling thread)
    /// and returns when all have returned. A panic in any of them is re-raised here.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 || self.busy.swap(true, Ordering::Acquire) {
            for i in 0..self.threads {
                f(i);
            }
            return;
        }
        let s = &*self.shared;
        // SAFETY: the lifetime is erased only for the duration of this call: we wait below until
        // `pending` is zero, i.e. no worker holds the pointer any more.
        let ptr: *const Job = unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const Job>(f as *const _)
        };
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(JobPtr(ptr));
        s.pending.store(self.threads - 1, Ordering::SeqCst);
        {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.generation.fetch_add(1, Ordering::SeqCst);
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        // Wait for the others: spin briefly, then sleep.
        let t0 = Instant::now();
        while s.pending.load(Ordering::Acquire) != 0 {
            if t0.elapsed() < SPIN {
                std::hint::spin_loop();
            } else {
                let g = s.done_lock.lock().unwrap_or_else(|e| e.into_inner());
                if s.pending.load(Ordering::Acquire) != 0 {
                    let _ = s.done.wait_timeout(g, Duration::from_millis(1)).unwrap();
                }
            }
        }
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.busy.store(false, Ordering::Release);
        if let Err(p) = mine {
            resume_unwind(p);
        }
        let theirs = s.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(p) = theirs {
            resume_unwind(p);
        }
    }
}

fn worker_loop(s: &Shared, index: usize) {
    let mut seen = 0usize;
    loop {
        // Wait for a new generation: spin, then sleep.
        let t0 = Instant::now();
        loop {
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            let g = s.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            if t0.elapsed() < SPIN {
                std::hint::spin_loop();
            } else {
                let guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                if s.generation.load(Ordering::Acquire) == seen && !s.stop.load(Ordering::Acquire) {
                    let _ = s
                        .wake
                        .wait_timeout(guard, Duration::from_millis(50))
                        .unwrap();
                }
            }
        }
        let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(JobPtr(p)) = job {
            // SAFETY: see `JobPtr`.
            let f: &Job = unsafe { &*p };
            if let Err(e) = catch_unwind(AssertUnwindSafe(|| f(index))) {
                let mut slot = s.panic.lock().unwrap_or_else(|e| e.into_inner());
                if slot.is_none() {
                    *slot = Some(e);
                }
            }
        }
        if s.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _g = s.done_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.done.notify_all();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Workers({})", self.threads)
    }
}

thread_local! {
    /// The pool installed on this thread by [`Workers::install`].
    static CURRENT: std::cell::Cell<*const Workers> = const { std::cell::Cell::new(std::ptr::null()) };
}

impl Workers {
    /// Runs `f` with this pool installed on the calling thread: the layers that take a thread
    /// count instead of a pool (float path, grouped convolutions, fp32 `gemm` layers) then run
    /// their parts on these workers instead of spawning threads (see [`split_run`]).
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(*const Workers);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.replace(self as *const Workers)));
        f()
    }
}

/// Runs `part(i)` for `i in 0..parts`: on the installed pool when there is one with at least
/// `parts` workers (part `i` on worker `i`), else on scoped threads (part 0 on the caller). The
/// split is the caller's either way, so results do not depend on where the parts ran.
pub(crate) fn split_run(parts: usize, part: &(dyn Fn(usize) + Sync)) {
    if parts <= 1 {
        if parts == 1 {
            part(0);
        }
        return;
    }
    let pool = CURRENT.with(|c| c.get());
    // SAFETY: the pointer was set by `install` on this thread and is cleared before the pool
    // it points to can go away (the install closure borrows it).
    if let Some(pool) = unsafe { pool.as_ref() } {
        if pool.threads() >= parts {
            pool.run(&|i| {
                if i < parts {
                    part(i)
                }
            });
            return;
        }
    }
    std::thread::scope(|s| {
        for i in 1..parts {
            s.spawn(move || part(i));
        }
        part(0);
    });
}

/// Hands out task indices `0..n` to whichever worker asks first.
pub struct TaskCounter {
    next: AtomicUsize,
    n: usize,
}

impl TaskCounter {
    pub fn new(n: usize) -> TaskCounter {
        TaskCounter {
            next: AtomicUsize::new(0),
            n,
        }
    }
    #[inline]
    pub fn next(&self) -> Option<usize> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.n).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once_per_call_and_results_are_visible() {
        for threads in 1..=3 {
            let w = Workers::new(threads);
            for round in 0..200 {
                let hits: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
                let tasks = TaskCounter::new(37);
                let done = AtomicUsize::new(0);
                w.run(&|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                    while let Some(t) = tasks.next() {
                        done.fetch_add(t + 1, Ordering::Relaxed);
                    }
                });
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "round {round}"
                );
                assert_eq!(done.load(Ordering::Relaxed), 37 * 38 / 2);
            }
        }
    }

    #[test]
    fn a_worker_panic_reaches_the_caller_and_the_pool_survives() {
        let w = Workers::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            w.run(&|i| {
                if i == 1 {
                    panic!("worker one fails");
                }
            })
        }));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        w.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn sleeping_workers_wake_up() {
        let w = Workers::new(2);
        std::thread::sleep(Duration::from_millis(30));
        let n = AtomicUsize::new(0);
        w.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }
}
