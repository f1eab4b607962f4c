//! The outcome of a run: a summary table, the verdict and its exit code.

use std::fmt::Write as _;

use crate::history::{Check, Counts, History, Violation};

/// Exit code of a run that passed.
pub const EXIT_PASS: i32 = 0;
/// Exit code of a run that broke a safety property.
pub const EXIT_SAFETY: i32 = 1;
/// Exit code of a run whose cluster did not recover in time.
pub const EXIT_LIVENESS: i32 = 2;
/// Exit code of a run in which something panicked.
pub const EXIT_CRASH: i32 = 3;

/// What a run found.
pub struct Report {
    /// Simulated milliseconds.
    pub sim_ms: u64,
    /// Wall-clock milliseconds.
    pub wall_ms: u64,
    /// Counters.
    pub counts: Counts,
    /// Simulated milliseconds from heal to a readable acknowledged write.
    pub recovered_ms: Option<u64>,
    /// What broke.
    pub violations: Vec<Violation>,
    /// Fingerprint of the run's events.
    pub trace_hash: u64,
    /// Number of events traced.
    pub events: u64,
}

impl Report {
    /// Builds the report from the finished history.
    pub fn new(history: History, sim_ms: u64, recovered_ms: Option<u64>) -> Report {
        Report {
            sim_ms,
            wall_ms: 0,
            counts: history.counts.clone(),
            recovered_ms,
            violations: history.violations().to_vec(),
            trace_hash: history.trace_hash(),
            events: history.event_count(),
        }
    }

    /// The exit code: safety failures win over liveness failures.
    pub fn exit_code(&self) -> i32 {
        if self.violations.iter().any(|v| v.check != Check::Liveness) {
            EXIT_SAFETY
        } else if self.violations.is_empty() {
            EXIT_PASS
        } else {
            EXIT_LIVENESS
        }
    }

    /// One word for the verdict.
    pub fn verdict(&self) -> &'static str {
        match self.exit_code() {
            EXIT_PASS => "PASS",
            EXIT_SAFETY => "FAIL (safety)",
            _ => "FAIL (liveness)",
        }
    }

    /// The deterministic part of the summary (no wall-clock figures): what snapshots pin.
    pub fn summary(&self) -> String {
        let c = &self.counts;
        let mut out = String::new();
        let faults: Vec<String> = c.faults.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            out,
            "simulated time    {:.1} s",
            self.sim_ms as f64 / 1000.0
        );
        let _ = writeln!(out, "produce requests  {}", c.produce_requests);
        let _ = writeln!(
            out,
            "records acked     {} acks=all, {} acks=1",
            c.acked_durable, c.acked_leader
        );
        let _ = writeln!(
            out,
            "records unacked   {} refused, {} indeterminate",
            c.refused, c.indeterminate
        );
        let _ = writeln!(out, "records read      {}", c.reads);
        if c.txns.iter().any(|n| *n > 0) {
            let [committed, aborted, unknown] = c.txns;
            let _ = writeln!(
                out,
                "transactions      {committed} committed, {aborted} aborted, {unknown} unknown"
            );
        }
        let _ = writeln!(
            out,
            "losses excused    {} (acks=all records of single-copy partitions whose disk damaged them)",
            c.excused
        );
        let _ = writeln!(
            out,
            "faults injected   {}",
            if faults.is_empty() {
                "none".into()
            } else {
                faults.join(" ")
            }
        );
        let links: Vec<String> = (c.peer_links.iter())
            .map(|(v, n)| format!("v{v}={n}"))
            .collect();
        if !links.is_empty() {
            let _ = writeln!(out, "peer links        {}", links.join(" "));
        }
        let _ = writeln!(
            out,
            "recovery          {}",
            self.recovered_ms
                .map_or("did not recover".into(), |ms| format!(
                    "{:.1} s after heal",
                    ms as f64 / 1000.0
                ))
        );
        for check in Check::ALL {
            let broken: Vec<&Violation> = self
                .violations
                .iter()
                .filter(|v| v.check == check)
                .collect();
            let status = match broken.first() {
                None => "ok".to_string(),
                Some(v) => format!("VIOLATED x{}: {}", broken.len(), v.detail),
            };
            let _ = writeln!(out, "  {check:<22} {status}");
        }
        let _ = writeln!(
            out,
            "trace             {} events, hash {:016x}",
            self.events, self.trace_hash
        );
        let _ = write!(out, "result            {}", self.verdict());
        out
    }
}
