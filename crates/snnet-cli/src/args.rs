//! Command-line arguments shared by every command.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Stitchable Neural Networks: one network, many accuracy/speed trade-offs.
#[derive(Debug, Parser)]
#[command(name = "snnet", version, about)]
pub struct Cli {
    /// Flags every command shares.
    #[command(flatten)]
    pub network: NetworkArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Which network, which weights, which device.
#[derive(Debug, Args)]
pub struct NetworkArgs {
    /// SN-Net description file (JSON: anchors, space, behaviour).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Anchors by preset name, comma separated (overrides the file's anchors).
    #[arg(long, global = true, value_delimiter = ',', value_name = "NAMES")]
    pub anchors: Option<Vec<String>>,
    /// Window size of the paired stitching (overrides the file).
    #[arg(long, global = true)]
    pub kernel_size: Option<usize>,
    /// Window stride (overrides the file).
    #[arg(long, global = true)]
    pub stride: Option<usize>,
    /// Stitch only neighbouring anchors (overrides the file).
    #[arg(long, global = true, value_name = "true|false")]
    pub nearest_stitching: Option<bool>,
    /// An snnet weight file (safetensors).
    #[arg(long, global = true, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Backend: flex (CPU), cuda, wgpu, vulkan, metal.
    #[arg(long, global = true, default_value = "flex")]
    pub device: String,
    /// Seed for random weights when no `--weights` is given.
    #[arg(long, global = true, default_value_t = 0)]
    pub seed: u64,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List every route with its FLOPs and parameters.
    Space {
        /// One JSON object per line with the official fields.
        #[arg(long)]
        json: bool,
    },
    /// Run routes on an input tensor and write their logits.
    Infer {
        /// Route id, or `all`.
        #[arg(long)]
        route: String,
        /// safetensors file with the input `[batch, channels, height, width]` (tensor `input`, or the only one).
        #[arg(long)]
        input: PathBuf,
        /// Output safetensors file (`logits`, or `logits.{id}` for `all`).
        #[arg(long)]
        output: PathBuf,
    },
}
