//! `seedlog`: a Kafka-compatible event log broker in one small binary.

use std::io::IsTerminal as _;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use seedlog_node::config::RunArgs;

#[derive(Parser)]
#[command(
    name = "seedlog",
    version,
    about = "A Kafka-compatible event log broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// How log lines are written to stderr: `human` (colour only on a terminal) or `json`,
    /// one object per line. RUST_LOG filters them (default `info`).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "SEEDLOG_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// Settings for the broker when no subcommand is given.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker (the default).
    Run(Box<RunArgs>),
    /// Measure a Kafka-compatible broker with a load generator.
    #[command(subcommand)]
    Bench(seedlog_node::bench::BenchCommand),
    /// Run a local cluster of separate broker processes (clients on 127.0.0.1:9092, 9093, ...).
    DevCluster(seedlog_node::dev_cluster::DevClusterArgs),
    /// Consumer groups: list, describe (members, offsets, lag), reset offsets.
    #[command(subcommand)]
    Groups(seedlog_node::groups::GroupsCommand),
    /// Topic and broker configs: describe, alter (set and delete) at run time.
    #[command(subcommand)]
    Configs(seedlog_node::configs::ConfigsCommand),
    /// Transactions: list the transactional ids, describe one.
    #[command(subcommand)]
    Transactions(seedlog_node::transactions::TransactionsCommand),
    /// Write a development CA, a broker keystore and client certificates (PEM).
    Certs(seedlog_node::certs::CertsArgs),
    /// SCRAM users: create (or change a password), list, delete.
    #[command(subcommand)]
    Users(seedlog_node::access::UsersCommand),
    /// ACLs: create, list, delete.
    #[command(subcommand)]
    Acls(seedlog_node::access::AclsCommand),
}

/// Keeps memory the broker frees for its next requests instead of handing it back to the
/// kernel. Every produce request is a buffer of up to a megabyte or more, read and then
/// freed; glibc's defaults serve such sizes with `mmap` at first and give the top of the heap
/// back once 2× that much is free, so each new request buffer faulted its pages in again,
/// zero-filled: about a third of one broker's CPU per record under kcat (0.185 against 0.12
/// CPU-s per million, medians of eight alternating pairs; BENCHMARKS.md, thirteenth
/// session). Buffers below 32 MiB (glibc's largest mmap threshold) now come from the heap,
/// and the heap keeps up to 128 MiB free before it shrinks: RSS after a load is some ten
/// megabytes higher, and stays bounded by the peak in use.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        const TRIM_THRESHOLD: libc::c_int = 128 << 20;
        // SAFETY: mallopt only sets allocator parameters; it is called before the broker
        // starts any thread, and a refused setting (a zero return) leaves the default.
        let set = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 0
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 0
        };
        if !set {
            tracing::debug!("the allocator refused its thresholds; keeping glibc's defaults");
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Human => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    let args = match cli.command {
        Some(Command::Run(args)) => *args,
        Some(Command::Bench(command)) => return exit(bench(command)),
        Some(Command::DevCluster(args)) => return exit(dev_cluster(args)),
        Some(Command::Groups(command)) => return exit(groups(command)),
        Some(Command::Transactions(command)) => return exit(transactions(command)),
        Some(Command::Configs(command)) => {
            return exit(current_thread(seedlog_node::configs::run(command)))
        }
        Some(Command::Users(command)) => {
            return exit(current_thread(seedlog_node::access::run_users(command)))
        }
        Some(Command::Acls(command)) => {
            return exit(current_thread(seedlog_node::access::run_acls(command)))
        }
        Some(Command::Certs(args)) => {
            return exit(seedlog_node::certs::run(&args).map(|w| {
                println!("CA (truststore): {}", w.ca.display());
                println!("broker keystore: {}", w.keystore.display());
            }))
        }
        None => cli.run,
    };
    keep_freed_memory();
    let result = args.resolve().and_then(|config| {
        // One thread: the core already runs on one, and connection tasks only move bytes.
        // Against a multi-threaded runtime it cut broker CPU per million records by 15-30%
        // (fewer cross-thread wakeups); fsyncs keep their own thread.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(seedlog_node::server::serve(
            config,
            seedlog_node::shutdown_signal(),
        ))
    });
    exit(result)
}

fn bench(command: seedlog_node::bench::BenchCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(seedlog_node::bench::run(command))
}

fn groups(command: seedlog_node::groups::GroupsCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(seedlog_node::groups::run(command))
}

fn transactions(command: seedlog_node::transactions::TransactionsCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(seedlog_node::transactions::run(command))
}

fn dev_cluster(args: seedlog_node::dev_cluster::DevClusterArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(seedlog_node::dev_cluster::run(args))
}

fn current_thread(
    task: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(task)
}

fn exit(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seedlog: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
