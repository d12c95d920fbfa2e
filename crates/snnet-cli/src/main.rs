//! The `snnet` command line.

mod args;
mod commands;

use clap::Parser;

fn main() {
    let cli = args::Cli::parse();
    if let Err(e) = commands::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}
