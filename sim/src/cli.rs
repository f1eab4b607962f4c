//! The command line: `run`, `sweep` and `canaries`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use clap::{Parser, Subcommand};
use seedlog_core::canary::{self, Canary};

use crate::report::{Report, EXIT_CRASH, EXIT_PASS};
use crate::run::{self, Show};
use crate::scenario::{Plan, Scenario};

/// Exit code of a seed that ran differently twice.
const EXIT_NONDETERMINISTIC: i32 = 4;

#[derive(Parser)]
#[command(
    name = "seedlog-sim",
    about = "Deterministic simulation of seedlog clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one scenario with one seed.
    Run {
        /// Scenario file.
        scenario: PathBuf,
        /// The seed: decides everything about the run.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Plant a canary bug (repeatable; see `canaries`).
        #[arg(long)]
        canary: Vec<String>,
        /// Run the seed twice and require the same trace hash.
        #[arg(long)]
        check_determinism: bool,
        /// Write the run's events and the nodes' logs to this file, as JSON lines.
        #[arg(long)]
        trace_out: Option<PathBuf>,
        /// Print only the summary.
        #[arg(long)]
        quiet: bool,
        /// Print one machine-readable result line (used by `sweep`).
        #[arg(long, hide = true)]
        result_line: bool,
    },
    /// Run scenarios over a range of seeds, in parallel, and list the failures.
    Sweep {
        /// Scenario files (default: every scenarios/*.toml).
        scenarios: Vec<PathBuf>,
        /// Seeds as A..B (B excluded).
        #[arg(long, default_value = "1..21")]
        seeds: String,
        /// Plant a canary bug in every run.
        #[arg(long)]
        canary: Vec<String>,
        /// Runs at once (default: the number of cores).
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// List the canary bugs.
    Canaries,
}

/// Writes to the trace file while switched on (the determinism re-run is not recorded).
#[derive(Clone)]
struct TraceFile {
    file: Arc<Mutex<std::fs::File>>,
    on: Arc<AtomicBool>,
}

impl std::io::Write for TraceFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.on.load(Ordering::Relaxed) {
            self.file.lock().expect("trace file lock").write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.lock().expect("trace file lock").flush()
    }
}

/// Logs go to stderr as `RUST_LOG` says (off by default); with `--trace-out`, the run's
/// events and every node's logs at info and above also go to that file as JSON lines.
fn init_tracing(trace_out: Option<&Path>) -> Result<Option<Arc<AtomicBool>>, String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, EnvFilter, Layer};
    let stderr_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("off"));
    let stderr = fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(stderr_filter);
    let Some(path) = trace_out else {
        tracing_subscriber::registry().with(stderr).init();
        return Ok(None);
    };
    let file =
        std::fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    let on = Arc::new(AtomicBool::new(true));
    let writer = TraceFile {
        file: Arc::new(Mutex::new(file)),
        on: on.clone(),
    };
    let json = fmt::layer()
        .json()
        .with_writer(move || writer.clone())
        .with_filter(EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(stderr)
        .with(json)
        .init();
    Ok(Some(on))
}

pub fn main() -> i32 {
    let command = Cli::parse().command;
    let trace_out = match &command {
        Cmd::Run { trace_out, .. } => trace_out.clone(),
        _ => None,
    };
    let trace_switch = match init_tracing(trace_out.as_deref()) {
        Ok(switch) => switch,
        Err(e) => {
            eprintln!("seedlog-sim: {e}");
            return EXIT_CRASH;
        }
    };
    match command {
        Cmd::Run {
            scenario,
            seed,
            canary,
            check_determinism,
            trace_out: _,
            quiet,
            result_line,
        } => run_one(
            &scenario,
            seed,
            &canary,
            check_determinism,
            trace_switch,
            quiet,
            result_line,
        ),
        Cmd::Sweep {
            scenarios,
            seeds,
            canary,
            jobs,
        } => sweep(scenarios, &seeds, &canary, jobs),
        Cmd::Canaries => {
            for c in Canary::ALL {
                println!("{:<20} {}", c.name(), c.describe());
            }
            EXIT_PASS
        }
    }
}

fn plant(names: &[String]) -> Result<(), String> {
    for name in names {
        let c = Canary::from_name(name)
            .ok_or_else(|| format!("unknown canary {name:?} (see `seedlog-sim canaries`)"))?;
        canary::plant(c);
    }
    Ok(())
}

fn reproduce_line(scenario: &Path, seed: u64, canaries: &[String]) -> String {
    let mut line = format!("seedlog-sim run {} --seed {seed}", scenario.display());
    for c in canaries {
        line.push_str(&format!(" --canary {c}"));
    }
    line
}

/// Wall-clock seconds a run may take before it counts as hung: a busy loop inside a node
/// freezes simulated time, so only the real clock can notice it.
const WALL_LIMIT_SECS: u64 = 120;

/// Runs a plan, turning a panic anywhere in the simulation, or a hang, into `Err`.
fn guarded(plan: &Plan, show: Show) -> Result<Report, String> {
    let plan = plan.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    // A fresh thread per run: madsim keeps per-thread runtime state.
    std::thread::spawn(move || {
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run::run(&plan, show)));
        let _ = tx.send(outcome);
    });
    match rx.recv_timeout(std::time::Duration::from_secs(WALL_LIMIT_SECS)) {
        Err(_) => Err(format!(
            "hung: no result after {WALL_LIMIT_SECS} s of wall time"
        )),
        Ok(Ok(report)) => Ok(report),
        Ok(Err(payload)) => Err(payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())),
    }
}

fn run_one(
    path: &Path,
    seed: u64,
    canaries: &[String],
    check_determinism: bool,
    trace_switch: Option<Arc<AtomicBool>>,
    quiet: bool,
    result_line: bool,
) -> i32 {
    let scenario = match Scenario::load(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("seedlog-sim: {e:#}");
            return EXIT_CRASH;
        }
    };
    if let Err(e) = plant(canaries) {
        eprintln!("seedlog-sim: {e}");
        return EXIT_CRASH;
    }
    let plan = Plan::derive(&scenario, seed);
    if !quiet {
        println!("seedlog-sim  scenario={}  seed={seed}", scenario.name);
        if !scenario.description.is_empty() {
            println!("  {}", scenario.description);
        }
        for line in plan.describe() {
            println!("  {line}");
        }
        if !canaries.is_empty() {
            println!("  canaries planted: {}", canaries.join(", "));
        }
    }
    let show = Show {
        progress: !quiet && !result_line,
    };
    let report = match guarded(&plan, show) {
        Ok(report) => report,
        Err(panic) => {
            if result_line {
                println!(
                    "RESULT {EXIT_CRASH} 0 0 0 panic: {}",
                    panic.replace('\n', " ")
                );
            }
            eprintln!("seedlog-sim: the simulation failed: {panic}");
            eprintln!("reproduce: {}", reproduce_line(path, seed, canaries));
            // A hung run's thread is still spinning: leave without waiting for it.
            std::process::exit(EXIT_CRASH);
        }
    };
    let mut code = report.exit_code();
    if check_determinism {
        if let Some(switch) = &trace_switch {
            switch.store(false, Ordering::Relaxed);
        }
        match guarded(&plan, Show::default()) {
            Ok(again) if again.trace_hash == report.trace_hash => {
                println!(
                    "determinism       ok (trace hash {:016x} twice)",
                    report.trace_hash
                );
            }
            Ok(again) => {
                println!(
                    "determinism       VIOLATED: trace hash {:016x} then {:016x}",
                    report.trace_hash, again.trace_hash
                );
                code = EXIT_NONDETERMINISTIC;
            }
            Err(panic) => {
                println!("determinism       the second run panicked: {panic}");
                code = EXIT_CRASH;
            }
        }
    }
    if result_line {
        let first = report
            .violations
            .first()
            .map_or(String::new(), |v| format!("{}: {}", v.check, v.detail));
        println!(
            "RESULT {code} {:016x} {} {} {first}",
            report.trace_hash, report.sim_ms, report.wall_ms
        );
        return code;
    }
    println!("{}", report.summary());
    let ratio = report.sim_ms as f64 / report.wall_ms.max(1) as f64;
    println!(
        "wall time         {:.2} s ({ratio:.0}x simulated/wall)",
        report.wall_ms as f64 / 1000.0
    );
    if code != EXIT_PASS {
        println!("reproduce: {}", reproduce_line(path, seed, canaries));
    }
    code
}

fn parse_seeds(seeds: &str) -> Result<std::ops::Range<u64>, String> {
    let (a, b) = seeds
        .split_once("..")
        .ok_or_else(|| format!("seeds {seeds:?} are not A..B"))?;
    let a = a.parse().map_err(|_| format!("bad seed {a:?}"))?;
    let b = b.parse().map_err(|_| format!("bad seed {b:?}"))?;
    Ok(a..b)
}

fn default_scenarios() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("scenarios")
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

struct Outcome {
    scenario: PathBuf,
    seed: u64,
    code: i32,
    line: String,
}

fn sweep(scenarios: Vec<PathBuf>, seeds: &str, canaries: &[String], jobs: Option<usize>) -> i32 {
    let scenarios = if scenarios.is_empty() {
        default_scenarios()
    } else {
        scenarios
    };
    let seeds = match parse_seeds(seeds) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("seedlog-sim: {e}");
            return EXIT_CRASH;
        }
    };
    let jobs = jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let exe = std::env::current_exe().expect("own path");
    let work: Vec<(PathBuf, u64)> = scenarios
        .iter()
        .flat_map(|s| seeds.clone().map(move |seed| (s.clone(), seed)))
        .collect();
    println!(
        "sweep: {} scenarios x {} seeds = {} runs, {jobs} at a time",
        scenarios.len(),
        seeds.end - seeds.start,
        work.len()
    );
    let started = std::time::Instant::now();
    let queue = std::sync::Mutex::new(work.into_iter());
    let outcomes = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let Some((scenario, seed)) = queue.lock().expect("queue").next() else {
                    return;
                };
                let mut cmd = Command::new(&exe);
                cmd.arg("run")
                    .arg(&scenario)
                    .arg("--seed")
                    .arg(seed.to_string())
                    .arg("--quiet")
                    .arg("--result-line");
                for c in canaries {
                    cmd.arg("--canary").arg(c);
                }
                let output = cmd.output();
                let (code, line) = match output {
                    Ok(out) => {
                        let stdout = String::from_utf8_lossy(&out.stdout);
                        let line = stdout
                            .lines()
                            .find(|l| l.starts_with("RESULT "))
                            .unwrap_or("RESULT 3 no result line")
                            .to_string();
                        (out.status.code().unwrap_or(EXIT_CRASH), line)
                    }
                    Err(e) => (EXIT_CRASH, format!("RESULT 3 could not start: {e}")),
                };
                print!("{}", if code == EXIT_PASS { "." } else { "F" });
                let _ = std::io::stdout().flush();
                outcomes.lock().expect("outcomes").push(Outcome {
                    scenario,
                    seed,
                    code,
                    line,
                });
            });
        }
    });
    println!();
    let mut outcomes = outcomes.into_inner().expect("outcomes");
    outcomes.sort_by(|a, b| (&a.scenario, a.seed).cmp(&(&b.scenario, b.seed)));
    let failures: Vec<&Outcome> = outcomes.iter().filter(|o| o.code != EXIT_PASS).collect();
    let elapsed = started.elapsed().as_secs_f64();
    let (sim_ms, wall_ms): (u64, u64) = outcomes
        .iter()
        .filter_map(|o| {
            let mut f = o.line.split_whitespace().skip(3);
            Some((
                f.next()?.parse::<u64>().ok()?,
                f.next()?.parse::<u64>().ok()?,
            ))
        })
        .fold((0, 0), |(s, w), (a, b)| (s + a, w + b));
    println!(
        "{} runs, {} failed, {:.1} s wall ({:.0} seeds/min, {:.0}x simulated/wall per run)",
        outcomes.len(),
        failures.len(),
        elapsed,
        outcomes.len() as f64 * 60.0 / elapsed.max(0.001),
        sim_ms as f64 / wall_ms.max(1) as f64
    );
    if failures.is_empty() {
        return EXIT_PASS;
    }
    println!(
        "{:<32} {:>6} {:>4}  first violation / reproduce",
        "scenario", "seed", "exit"
    );
    for f in &failures {
        let detail: String = f
            .line
            .splitn(6, ' ')
            .nth(5)
            .unwrap_or("")
            .chars()
            .take(100)
            .collect();
        println!(
            "{:<32} {:>6} {:>4}  {detail}",
            f.scenario.display(),
            f.seed,
            f.code
        );
        println!(
            "{:>45}  {}",
            "",
            reproduce_line(&f.scenario, f.seed, canaries)
        );
    }
    failures.iter().map(|f| f.code).max().unwrap_or(EXIT_CRASH)
}
