//! Command-line arguments shared by every command.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use snnet::train::FlopsGap;

/// Most images per forward that `bench` and `parity` accept: 4,096 (the probe batch is allocated
/// up front, and the activations grow with it).
pub const MAX_PROBE_BATCH: usize = 4096;

/// Most untimed warm-up forwards, and most timed repeats, per route in `bench`: 10,000.
pub const MAX_BENCH_FORWARDS: usize = 10_000;

/// A whole number between `min` and `max`, for clap; the error names the number and the limit.
fn number_within(text: &str, min: usize, max: usize, what: &str) -> Result<usize, String> {
    let value: usize = text.trim().parse().map_err(|e| format!("`{text}` is not a whole number ({e})"))?;
    if value < min {
        return Err(format!("{value} is less than {min}"));
    }
    if value > max {
        return Err(format!("{value} is over the limit of {max} {what}"));
    }
    Ok(value)
}

fn probe_batch(text: &str) -> Result<usize, String> {
    number_within(text, 1, MAX_PROBE_BATCH, "images per forward")
}

fn bench_forwards(text: &str) -> Result<usize, String> {
    number_within(text, 0, MAX_BENCH_FORWARDS, "forwards per route")
}

/// What `snnet --help` says about the limits a network is checked against (the library's
/// `snnet::anchors::limits` and `snnet::core::limits`; a test keeps the numbers equal).
const LIMITS_HELP: &str = "Limits: a network that asks for more is refused before anything is allocated, naming the \
number and the limit. Raise them with these environment variables if you mean it:
  SNNET_MAX_PARAMS     parameters (and index tables) per anchor and per network, default 4294967296
  SNNET_MAX_FLOPS      multiply-accumulates per image and anchor, default 17592186044416
  SNNET_MAX_POSITIONS  positions (tokens or map cells) per image at any stage, default 65536
  SNNET_MAX_ROUTES     routes per stitch space, default 100000
Fixed: widths up to 262144, 4096 blocks and 16 stages per anchor, images up to 16384 px, 16777216 classes, \
kernel_size up to 64.";

/// Stitchable Neural Networks: one network, many accuracy/speed trade-offs.
#[derive(Debug, Parser)]
#[command(name = "snnet", version, about, after_help = LIMITS_HELP)]
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
    /// SN-Netv2's two-way space: two anchors, the shallower first, stitched both ways (S→L, L→S,
    /// L→S→L, S→L→S); sets the file's `"space": {"kind": "two_way"}`.
    #[arg(long, global = true)]
    pub two_way: bool,
    /// SN-Netv2's LoRA stitching layers of rank R: the dense map frozen in training, a trained
    /// rank-R update (merged for inference); 0: the affine layer. Sets the file's `lora_rank`.
    #[arg(long, global = true, value_name = "R")]
    pub lora_rank: Option<usize>,
    /// An snnet weight file (safetensors).
    #[arg(long, global = true, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Backend: flex (CPU), cuda, wgpu, vulkan, metal.
    #[arg(long, global = true, default_value = "flex")]
    pub device: String,
    /// Float precision on the device: f32, f16 (GPU backends) or bf16 (cuda).
    #[arg(long, global = true, default_value = "f32")]
    pub dtype: String,
    /// Seed for random weights when no `--weights` is given.
    #[arg(long, global = true, default_value_t = 0)]
    pub seed: u64,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run burn-collective's orchestrator for a training run over several machines: the processes
    /// started with `train --num-nodes N --orchestrator HOST:PORT` meet here. Runs until
    /// interrupted.
    Orchestrator {
        /// Port to listen on (every interface).
        #[arg(long, default_value_t = 3000)]
        port: u16,
    },
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
        /// A safetensors file with the input `[batch, channels, height, width]` (tensor `input`, or
        /// the only one), or image files (PNG/JPEG, comma separated), preprocessed for the network.
        #[arg(long, value_delimiter = ',', required = true, value_name = "FILES")]
        input: Vec<PathBuf>,
        /// Output safetensors file (`logits`, or `logits.{id}` for `all`).
        #[arg(long)]
        output: PathBuf,
    },
    /// Build an snnet weight file from pretrained checkpoints: one timm checkpoint per anchor
    /// (in anchor order; stitching layers are left for least-squares init) or one official SN-Net
    /// checkpoint. Accepts safetensors and PyTorch `.pth` files.
    Import {
        /// Checkpoint files, comma separated.
        #[arg(long, value_delimiter = ',', required = true, value_name = "FILES")]
        from: Vec<PathBuf>,
        /// The snnet weight file to write (safetensors).
        #[arg(long)]
        output: PathBuf,
    },
    /// Least-squares initialise the stitching layers from calibration images and write the
    /// weight file (anchors from `--weights`, e.g. a file made by `import`).
    Init {
        /// The data: a Fashion-MNIST folder (IDX files) or an ImageFolder tree (`train/`, `val/` or class folders).
        #[command(flatten)]
        data: DataArgs,
        /// Calibration images (the official recipe: 100), drawn from the training split.
        #[arg(long, default_value_t = 100)]
        images: usize,
        /// Images per forward while accumulating.
        #[arg(long, default_value_t = 25)]
        chunk: usize,
        /// The weight file to write.
        #[arg(long)]
        output: PathBuf,
    },
    /// Evaluate every route (or `--routes`) on the validation split: JSON lines in the official
    /// results format, resumable (routes already in the file are skipped), and a plot.
    Eval {
        /// The data (see `init`).
        #[command(flatten)]
        data: DataArgs,
        /// Route ids, comma separated (default: every route).
        #[arg(long, value_delimiter = ',')]
        routes: Option<Vec<usize>>,
        /// Images per forward.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Threads sharing the routes (default: one per CPU thread on the CPU backend, where two
        /// evaluate the Fashion-MNIST family 1.3× faster than one, docs/benchmarks.md; one on GPU backends).
        #[arg(long)]
        workers: Option<usize>,
        /// Evaluate only the first N validation images.
        #[arg(long)]
        limit: Option<usize>,
        /// Results file (JSON lines), appended to.
        #[arg(long)]
        output: PathBuf,
        /// Accuracy-against-FLOPs plots to write (`.png`/`.svg`, comma separated).
        #[arg(long, value_delimiter = ',', value_name = "FILES")]
        plot: Vec<PathBuf>,
    },
    /// Train every route jointly (one random route per step, the SN-Net recipe) from `--weights`
    /// and write the weight file. Checkpoints go to `--checkpoint-dir` after every epoch (and every
    /// `--checkpoint-every` steps); `--resume` continues a killed run exactly.
    Train(TrainArgs),
    /// Measure the latency of routes on the device (warm-up, median of repeats).
    Bench {
        /// Route ids, comma separated (default: every route).
        #[arg(long, value_delimiter = ',')]
        routes: Option<Vec<usize>>,
        /// Batch sizes, comma separated (each 1 to 4,096).
        #[arg(long, value_delimiter = ',', default_value = "1", value_parser = probe_batch)]
        batch: Vec<usize>,
        /// Untimed forwards before timing each route (at most 10,000).
        #[arg(long, default_value_t = 2, value_parser = bench_forwards)]
        warmup: usize,
        /// Timed forwards per route (at least; at most 10,000).
        #[arg(long, default_value_t = 5, value_parser = bench_forwards)]
        repeats: usize,
        /// Keep timing a route until this many seconds have passed (at most 200 forwards).
        #[arg(long, default_value_t = 0.5)]
        min_seconds: f64,
        /// Print one JSON object per route and batch instead of a table.
        #[arg(long)]
        json: bool,
        /// Also write the measurements as JSON lines to this file (the latency table `snnet select` reads).
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Compare this device's logits with a reference device's, route by route, on identical weights
    /// and images (e.g. `--device cuda --dtype bf16 parity`). One JSON line per route.
    Parity {
        /// The reference backend (f32).
        #[arg(long, default_value = "flex")]
        reference: String,
        /// Route ids, comma separated (default: every route).
        #[arg(long, value_delimiter = ',')]
        routes: Option<Vec<usize>>,
        /// Images in the probe batch (deterministic values in [-2, 2]; 1 to 4,096).
        #[arg(long, default_value_t = 2, value_parser = probe_batch)]
        batch: usize,
    },
    /// Pick the most accurate route (without results: the largest) within every budget given.
    Select {
        /// Where the measured metrics come from.
        #[command(flatten)]
        tables: TableArgs,
        /// Largest FLOPs, in G multiply-accumulates (as the paper counts).
        #[arg(long)]
        max_gflops: Option<f64>,
        /// Largest parameter count (official convention).
        #[arg(long)]
        max_params: Option<f64>,
        /// Largest resident weight memory of the route, MiB (from the latency table, else f32).
        #[arg(long)]
        max_memory_mb: Option<f64>,
        /// Largest measured latency, milliseconds (needs `--latency`).
        #[arg(long)]
        max_latency_ms: Option<f64>,
        /// Print the chosen route as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Write a route pack, the file to deploy: only the tensors of the routes given (each shared
    /// tensor once, SN-Netv2's LoRA layers merged), with the network's description in its metadata,
    /// so that `snnet --weights FILE infer|bench|eval` needs nothing else and builds only what the
    /// routes use.
    Export {
        /// Route ids, comma separated (`--route 24` for one), or `frontier`: the routes on the Pareto
        /// frontier of `--results`' accuracy against `--x`.
        #[arg(long, visible_alias = "route", value_name = "IDS|frontier")]
        routes: String,
        /// Where the accuracies of `--routes frontier` come from.
        #[command(flatten)]
        tables: TableArgs,
        /// Cost metric of the frontier, smaller is better: gflops, params, latency_ms, …
        #[arg(long, default_value = "gflops")]
        x: String,
        /// The route pack to write (safetensors).
        #[arg(long)]
        output: PathBuf,
    },
    /// Print the Pareto frontier of two metrics (default: accuracy against GFLOPs).
    Frontier {
        /// Where the measured metrics come from.
        #[command(flatten)]
        tables: TableArgs,
        /// Cost metric, smaller is better: gflops, params, latency_ms, memory_mb, …
        #[arg(long, default_value = "gflops")]
        x: String,
        /// Quality metric, larger is better: acc1, acc5, …
        #[arg(long, default_value = "acc1")]
        y: String,
        /// Also draw every route and the frontier to these files (`.png` and/or `.svg`, comma separated).
        #[arg(long, value_delimiter = ',', value_name = "FILES")]
        plot: Vec<PathBuf>,
        /// One JSON object per frontier route.
        #[arg(long)]
        json: bool,
    },
}

/// Where the images come from.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// Dataset folder: Fashion-MNIST IDX files, or an ImageFolder tree.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Seed of the calibration draw.
    #[arg(long, default_value_t = 0)]
    pub data_seed: u64,
}

/// Metric tables that `select` and `frontier` read beside the route costs.
#[derive(Debug, Args)]
pub struct TableArgs {
    /// Evaluation results: JSON lines with `cfg_id` and `acc1` (official results format, `snnet eval`).
    #[arg(long, value_name = "FILE")]
    pub results: Option<PathBuf>,
    /// Latency table: JSON lines from `snnet bench --output`.
    #[arg(long, value_name = "FILE")]
    pub latency: Option<PathBuf>,
    /// Use the latency table's rows of this batch size (needed when it holds several).
    #[arg(long)]
    pub batch: Option<usize>,
}

/// `snnet train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The data (see `init`); training uses the training split.
    #[command(flatten)]
    pub data: DataArgs,
    /// Passes over the training set.
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Images per step (the global batch), split between the `--devices` peers.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Data-parallel peers: each trains its shard of every step's `--batch` images, and their
    /// gradients are summed through burn's collective before one optimiser step on every peer. A
    /// number N puts N peers on the `--device` backend (cuda: its devices 0..N-1; the CPU: threads
    /// sharing it; wgpu's one default device cannot be shared by peers). At most the batch size.
    #[arg(long, visible_alias = "workers", default_value_t = 1, value_name = "N")]
    pub devices: usize,
    /// Which route each peer trains at a step: `per-peer` (each its own, drawn from the seed + its
    /// rank: the official multi-GPU recipe) or `shared` (all the same route: the gradient of the
    /// whole batch on one route, as one device computes it).
    #[arg(long, default_value = "per-peer", value_parser = ["per-peer", "shared"])]
    pub route_policy: String,
    /// Seconds the peers wait for each other at a gradient exchange before stopping with an error
    /// that names the missing peer.
    #[arg(long, default_value_t = 600.0, value_name = "SECONDS")]
    pub peer_timeout: f64,
    /// Processes (machines) of a multi-machine run, each with `--devices` peers; needs
    /// `--node-id`, `--orchestrator` and `--node-address` too.
    #[arg(long, value_name = "N")]
    pub num_nodes: Option<usize>,
    /// This process's index among the `--num-nodes` processes, from 0 (node 0 writes the
    /// checkpoints and the weight file).
    #[arg(long, value_name = "I")]
    pub node_id: Option<usize>,
    /// The orchestrator of a multi-machine run (`snnet orchestrator --port P` on one machine).
    #[arg(long, value_name = "HOST:PORT")]
    pub orchestrator: Option<String>,
    /// This process's address for the other processes' tensor transfers (the port is opened on
    /// every interface).
    #[arg(long, value_name = "HOST:PORT")]
    pub node_address: Option<String>,
    /// Base learning rate (after warmup).
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    /// Learning rate at the end of the cosine.
    #[arg(long, default_value_t = 1e-5)]
    pub min_lr: f64,
    /// Learning rate at the start of warmup.
    #[arg(long, default_value_t = 1e-6)]
    pub warmup_lr: f64,
    /// Warmup length in epochs.
    #[arg(long, default_value_t = 0.0)]
    pub warmup_epochs: f64,
    /// Step the schedule after every optimiser step (`step`, the Swin recipe) or epoch (`epoch`, DeiT).
    #[arg(long, default_value = "step", value_parser = ["step", "epoch"])]
    pub lr_stepping: String,
    /// Learning-rate scale of the anchors (the Swin recipe: 0.1).
    #[arg(long, default_value_t = 1.0)]
    pub anchor_lr_scale: f64,
    /// Learning-rate scale of the stitching layers.
    #[arg(long, default_value_t = 1.0)]
    pub stitch_lr_scale: f64,
    /// Train only the stitching layers (anchor learning-rate scale 0).
    #[arg(long)]
    pub freeze_anchors: bool,
    /// AdamW weight decay (not on biases, norms, `cls_token`, `pos_embed`).
    #[arg(long, default_value_t = 0.05)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value.
    #[arg(long)]
    pub clip_grad: Option<f64>,
    /// Label smoothing.
    #[arg(long, default_value_t = 0.1)]
    pub smoothing: f64,
    /// Distil from a teacher route of the starting weights: `hard` or `soft`.
    #[arg(long, value_parser = ["hard", "soft"])]
    pub distill: Option<String>,
    /// Weight of the distillation term.
    #[arg(long, default_value_t = 0.5)]
    pub distill_alpha: f64,
    /// Temperature of soft distillation.
    #[arg(long, default_value_t = 1.0)]
    pub distill_tau: f64,
    /// Teacher route (default: the last anchor, usually the largest).
    #[arg(long)]
    pub teacher_route: Option<usize>,
    /// Stochastic depth rate of every ViT anchor (overrides the description).
    #[arg(long)]
    pub drop_path: Option<f64>,
    /// No flips or shifts of training images.
    #[arg(long)]
    pub no_augment: bool,
    /// Train only these routes, comma separated (default: every route).
    #[arg(long, value_delimiter = ',')]
    pub routes: Option<Vec<usize>>,
    /// How each step's route is drawn from the trained routes: `uniform` (SN-Net) or
    /// `flops-grouped` (SN-Netv2: routes sorted by FLOPs are cut into groups at `--flops-gap`; a
    /// group is drawn, then a route in it).
    #[arg(long, default_value = "uniform", value_parser = ["uniform", "flops-grouped"])]
    pub sampler: String,
    /// FLOPs-grouped sampling: the gap that starts a new group, in GFLOPs (official: 1.0), or with
    /// `%` as a share of the largest route's FLOPs (e.g. `5%`, for small networks whose routes all
    /// lie within one GFLOP).
    #[arg(long, default_value = "1.0")]
    pub flops_gap: FlopsGap,
    /// FLOPs-grouped sampling: favour the costlier groups along a linear ramp (group `g` of `G`,
    /// 0-based by FLOPs, weighs `g/k + 1/G`; SN-Netv2's `--flops_sampling_k`). Default: groups
    /// drawn uniformly.
    #[arg(long, value_name = "K")]
    pub flops_sampling_k: Option<f64>,
    /// Seed of the route sampler, data order, augmentation and drop path.
    #[arg(long, default_value_t = 0)]
    pub train_seed: u64,
    /// Folder for checkpoints.
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Also checkpoint every N steps.
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<usize>,
    /// Continue from the checkpoint in `--checkpoint-dir`.
    #[arg(long, requires = "checkpoint_dir")]
    pub resume: bool,
    /// Stop after this many steps (e.g. to measure throughput); the weight file is still written.
    #[arg(long, value_name = "N")]
    pub max_steps: Option<usize>,
    /// Read the losses back from the device every N steps (all at once; also at checkpoints and
    /// epoch ends): between reads a step waits on nothing.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub log_every: u64,
    /// The weight file to write at the end.
    #[arg(long)]
    pub output: PathBuf,
}
