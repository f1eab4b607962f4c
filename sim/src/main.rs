//! `seedlog-sim`: seeded chaos runs of real seedlog nodes under madsim.
//!
//! Build it with `RUSTFLAGS="--cfg madsim"` (see README.md); without that flag the binary
//! only says so.

#![cfg_attr(not(madsim), allow(dead_code))]

mod disk;
mod group_facts;
mod history;
mod report;
mod scenario;

#[cfg(madsim)]
mod agreement;
#[cfg(madsim)]
mod cli;
#[cfg(madsim)]
mod cluster;
#[cfg(madsim)]
mod faults;
#[cfg(madsim)]
mod intact;
#[cfg(madsim)]
mod run;
#[cfg(madsim)]
mod workload;

#[cfg(madsim)]
fn main() {
    std::process::exit(cli::main());
}

#[cfg(not(madsim))]
fn main() {
    eprintln!("seedlog-sim must be built with RUSTFLAGS=\"--cfg madsim\"; see README.md");
    std::process::exit(report::EXIT_CRASH);
}
