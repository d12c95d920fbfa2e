//! The `snnet` command line.

mod args;
mod commands;
mod evaluate;
mod peak_alloc;
mod train;

use clap::Parser;

/// Tracks heap use so `snnet bench` can report peak activation memory on the CPU backend.
#[global_allocator]
static ALLOCATOR: peak_alloc::PeakAlloc = peak_alloc::PeakAlloc::new();

fn main() {
    let cli = args::Cli::parse();
    if let Err(e) = commands::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}
