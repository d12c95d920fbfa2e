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
    // The process-wide settings the library leaves to programs (`snnet::backend::program_settings`):
    // glibc keeps freed memory for the CPU backend's per-op buffers, and a GPU backend's failed
    // probe is reported as an error without its panic message on stderr.
    snnet::backend::program_settings(&cli.network.device);
    if let args::Command::Parity { reference, .. } = &cli.command {
        snnet::backend::keep_freed_memory_for(reference);
    }
    if let Err(e) = commands::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}
