//! seedlog-node: the `seedlog` broker process around the sans-IO core: configuration, the
//! tokio driver and Kafka listener, and disk storage.

#[cfg(not(madsim))]
pub mod access;
#[cfg(not(madsim))]
pub mod bench;
#[cfg(not(madsim))]
pub mod certs;
pub mod client;
pub mod config;
#[cfg(not(madsim))]
pub mod configs;
pub mod console;
#[cfg(not(madsim))]
pub mod dev_cluster;
#[cfg(not(madsim))]
pub mod groups;
pub mod listeners;
pub mod metrics;
pub mod peer;
pub mod server;
pub mod stages;
pub mod storage;
#[cfg(not(madsim))]
pub mod tls;
#[cfg(not(madsim))]
pub mod transactions;

/// Fills `out` with randomness from the OS: std's hasher keys come from it (and, under
/// madsim, from the simulation's seed, so simulated runs stay deterministic).
pub fn os_random(out: &mut [u8]) {
    use std::hash::{BuildHasher, Hasher};
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_be_bytes()[..chunk.len()]);
    }
}

/// Resolves on SIGINT or SIGTERM.
#[cfg(not(madsim))]
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the broker");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received");
}
