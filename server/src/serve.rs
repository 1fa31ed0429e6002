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
        "shiftserve listening"
    );
    println!("shiftserve listening on http://{local}");
    let grpc_listener = match opts.grpc_addr {
        Some(addr) => {
            let l = crate::grpc::bind(addr).await?;
            let local = l.local_addr().map_err(|e| e.to_string())?;
            tracing::info!(address = %local, "shiftserve gRPC listening");
            println!("shiftserve gRPC listening on {local}");
            Some(l)
        }
        None => None,
    };

    // Initial load in the background: liveness answers at once, readiness after warmup.
    {
        let repo = repo.clone();
        let state = state.clone();
        let explicit = opts.load_models.clone();
        tokio::spawn(async move {
            let r = repo.clone();
            let _ = tokio::task::spawn_blocking(move || r.load_initial(&explicit)).await;
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
    let http = axum::serve(listener, router(state.clone())).with_graceful_shutdown(shutdown);
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
    let server = async {
        let http = async { http.await.map_err(|e| format!("server error: {e}")) };
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
    tokio::select! {
        r = server => r?,
        why = hard_stop => tracing::warn!(cause = why, "stopping with requests or connections still open"),
    }
    let r = repo.clone();
    let _ = tokio::task::spawn_blocking(move || r.shutdown()).await;
    tracing::info!("shiftserve stopped");
    Ok(())
}
