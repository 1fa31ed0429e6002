//! `shiftserve serve`: binds (HTTP, and gRPC unless off), loads the repository, serves, and
//! drains on SIGTERM/SIGINT.

use crate::http::{router, AppState, ServeOptions};
use crate::metrics::Metrics;
use crate::repository::{ControlMode, Repository};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

async fn wait_for_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return "SIGINT";
            }
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// Runs the server until a termination signal, then drains and returns.
pub async fn serve(opts: ServeOptions) -> Result<(), String> {
    // An invalid kernel policy would fail every model: refuse to start instead.
    models::PlanOptions::from_env().map_err(|e| {
        format!(
            "invalid SHIFTSERVE_KERNEL={:?}: {}",
            std::env::var("SHIFTSERVE_KERNEL").unwrap_or_default(),
            e.message
        )
    })?;
    let isa = models::kernel_isa();
    let metrics = Arc::new(Metrics::new(&isa));
    let repo = Arc::new(Repository::new(
        opts.model_repository.clone(),
        opts.control_mode,
        metrics.clone(),
    ));
    let state = Arc::new(AppState::new(
        repo.clone(),
        metrics,
        opts.clone(),
        isa.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", opts.addr))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        address = %local,
        repository = %opts.model_repository.display(),
        control_mode = opts.control_mode.as_str(),
        kernel_isa = %isa,
        auth = opts.api_key.is_some(),
        max_connections = opts.conn.max_connections,
        "shiftserve listening"
    );
    // The address lines go to stdout for scripts that start the server on port 0. A closed
    // stdout (the reader went away) must not take the server down: write errors are ignored.
    stdout_line(&format!("shiftserve listening on http://{local}"));
    let grpc_listener = match opts.grpc_addr {
        Some(addr) => {
            let l = crate::grpc::bind(addr).await?;
            let local = l.local_addr().map_err(|e| e.to_string())?;
            tracing::info!(address = %local, "shiftserve gRPC listening");
            stdout_line(&format!("shiftserve gRPC listening on {local}"));
            Some(l)
        }
        None => None,
    };

    // Initial load in the background: liveness answers at once, readiness after warmup.
    // With --exit-on-error a failed model stops the server.
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<String>();
    {
        let repo = repo.clone();
        let state = state.clone();
        let explicit = opts.load_models.clone();
        tokio::spawn(async move {
            let r = repo.clone();
            let failed = tokio::task::spawn_blocking(move || r.load_initial(&explicit))
                .await
                .unwrap_or_else(|_| vec![("*".into(), "initial load panicked".into())]);
            if state.opts.exit_on_error && !failed.is_empty() {
                let list: Vec<String> = failed.iter().map(|(m, e)| format!("{m}: {e}")).collect();
                let _ = fatal_tx.send(format!(
                    "--exit-on-error: {} model(s) failed to load: {}",
                    failed.len(),
                    list.join("; ")
                ));
                return;
            }
            state.started.store(true, Ordering::SeqCst);
            let ready: Vec<String> = repo
                .all_loaded()
                .iter()
                .map(|lv| format!("{}:{}", lv.name, lv.version))
                .collect();
            tracing::info!(models = ?ready, "initial model load finished; ready");
            if repo.mode() == ControlMode::Poll {
                let every = Duration::from_secs(state.opts.poll_secs);
                loop {
                    tokio::time::sleep(every).await;
                    if state.draining.load(Ordering::SeqCst) {
                        break;
                    }
                    let r = repo.clone();
                    let _ = tokio::task::spawn_blocking(move || r.poll_once()).await;
                }
            }
        });
    }

    let drain_started = Arc::new(Notify::new());
    // Set once the drain is over: the gRPC server then stops as the HTTP server does.
    let (drained_tx, drained_rx) = tokio::sync::watch::channel(false);
    let shutdown = {
        let state = state.clone();
        let drain_started = drain_started.clone();
        async move {
            let sig = wait_for_signal().await;
            state.draining.store(true, Ordering::SeqCst);
            drain_started.notify_one();
            let inflight = state.inflight();
            tracing::info!(
                signal = sig,
                inflight,
                "draining: readiness is 503, new work is refused"
            );
            let timeout = Duration::from_secs(state.opts.exit_timeout_secs);
            if state.wait_idle(timeout).await {
                tracing::info!("all accepted requests answered");
            } else {
                tracing::warn!(
                    inflight = state.inflight(),
                    "exit timeout reached with requests still in flight"
                );
            }
            let _ = drained_tx.send(true);
        }
    };
    if state.opts.log_summary_secs > 0 {
        let state = state.clone();
        tokio::spawn(async move {
            let secs = state.opts.log_summary_secs;
            let mut tick = tokio::time::interval(Duration::from_secs(secs));
            tick.tick().await;
            loop {
                tick.tick().await;
                state.summary.log_and_reset(secs);
            }
        });
    }
    let http = crate::http::conn::serve(
        listener,
        router(state.clone()),
        state.metrics.clone(),
        state.opts.conn,
        shutdown,
    );
    let grpc = async {
        match grpc_listener {
            Some(l) => {
                let mut drained = drained_rx;
                let stop = async move {
                    let _ = drained.wait_for(|d| *d).await;
                };
                crate::grpc::serve(l, state.clone(), stop).await
            }
            None => Ok(()),
        }
    };
    // Both end after the drain; a gRPC transport error stops the server.
    let server = async {
        let http = async {
            http.await;
            Ok(())
        };
        tokio::try_join!(http, grpc).map(|_| ())
    };
    let hard_stop = {
        let drain_started = drain_started.clone();
        let secs = opts.exit_timeout_secs;
        async move {
            drain_started.notified().await;
            // Connections get the exit timeout plus a grace period to flush their answers;
            // a second signal stops at once.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(secs) + Duration::from_secs(2)) => "exit timeout",
                sig = wait_for_signal() => sig,
            }
        }
    };
    let fatal = async {
        match fatal_rx.await {
            Ok(msg) => msg,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        r = server => r?,
        why = hard_stop => tracing::warn!(cause = why, "stopping with requests or connections still open"),
        msg = fatal => {
            tracing::error!(error = %msg, "stopping");
            let r = repo.clone();
            let _ = tokio::task::spawn_blocking(move || r.shutdown()).await;
            return Err(msg);
        }
    }
    let r = repo.clone();
    let _ = tokio::task::spawn_blocking(move || r.shutdown()).await;
    tracing::info!("shiftserve stopped");
    Ok(())
}

/// Writes one line to stdout and flushes it, ignoring errors (`println!` panics on a closed pipe).
fn stdout_line(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
