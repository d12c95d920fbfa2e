//! What the Fashion-MNIST examples (`fashion_mnist`, `fashion_mnist_v2`) share: their run options,
//! least squares on shuffled training images, and the joint fine-tuning recipe.

use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use snnet::{
    demo,
    train::{
        data::{load_batch, Dataset},
        FlopsGap, FlopsGroupedSampler, ListSampler, RoutePolicy, RouteSampler, SplitMix64, StepConfig, TrainConfig,
    },
    workflow::{progress_bar, BoxError},
    Anchor, Kernels, LsReport, Stitch, StitchedNet,
};

/// The options both examples take (flattened into each one's own).
#[derive(clap::Args)]
pub struct DemoRun {
    /// Backend: flex (CPU), cuda, wgpu, vulkan, metal.
    #[arg(long, default_value = "flex")]
    pub device: String,
    /// Folder with the Fashion-MNIST IDX files (default: the copy in assets/fashion-mnist).
    #[arg(long, default_value_os_t = demo::assets_dir())]
    pub data: PathBuf,
    /// Calibration images for least squares.
    #[arg(long, default_value_t = 200)]
    pub ls_images: usize,
    /// Images per step (the global batch), split between the `--devices` peers.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Data-parallel peers in training (each on its shard of every step's batch, gradients summed
    /// through burn's collective: threads sharing the CPU on flex, devices 0..N-1 on GPU
    /// backends); threads sharing the routes in evaluation. Default: 2 on flex, 1 on a GPU.
    #[arg(long, visible_alias = "workers", value_name = "N")]
    pub devices: Option<usize>,
    /// Which route each training peer trains at a step: `per-peer` (each its own, drawn from the
    /// seed + its rank: the official multi-GPU recipe, as `snnet train`) or `shared` (one route per
    /// step for all peers, as one device trains).
    #[arg(long, default_value = "per-peer", value_parser = ["per-peer", "shared"])]
    pub route_policy: String,
    /// Peak learning rate of the stitching layers (cosine to 1e-6 after a short warmup); the
    /// anchors train at `--anchor-lr-scale` times it (each example's own default).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
}

impl DemoRun {
    /// `--devices`, or its default for the backend: 2 on the CPU (whose second core a step
    /// otherwise leaves idle), 1 on a GPU.
    pub fn peers(&self) -> usize {
        self.devices.unwrap_or(if self.device == "flex" { 2 } else { 1 })
    }

    /// Least squares of `net`'s stitching layers on the first `--ls-images` of the training
    /// images in a seeded shuffle (the same images for every network), with a progress bar.
    pub fn least_squares<B: Kernels, A: Anchor<B>, L: Stitch<B>>(
        &self,
        net: &mut StitchedNet<B, A, L>,
        train: &dyn Dataset,
        device: &B::Device,
    ) -> Result<LsReport, BoxError> {
        let mut order: Vec<usize> = (0..train.len()).collect();
        SplitMix64::new(0).shuffle(&mut order);
        let calib = load_batch(train, &order[..self.ls_images.min(order.len())]);
        let [c, h, w] = net.layouts()[0].input;
        let images = Tensor::<B, 4>::from_data(TensorData::new(calib.images, [calib.labels.len(), c, h, w]), device);
        let pb = progress_bar(calib.labels.len(), "LS init");
        let report = net.init_least_squares(images, 50, |p| pb.set_position(p.images_done as u64))?;
        pb.finish_and_clear();
        Ok(report)
    }

    /// The joint fine-tuning recipe for `epochs` epochs: stitching layers at `--lr`, anchors at
    /// `anchor_lr_scale` times it, a 0.1-epoch warmup from 1e-6 and a cosine to 1e-6.
    pub fn train_config(&self, epochs: usize, anchor_lr_scale: f64) -> TrainConfig {
        TrainConfig {
            epochs,
            batch_size: self.batch,
            peers: self.peers(),
            route_policy: if self.route_policy == "shared" { RoutePolicy::Shared } else { RoutePolicy::PerPeer },
            lr: self.lr,
            warmup_lr: 1e-6,
            min_lr: 1e-6,
            warmup_epochs: 0.1_f64.min(epochs as f64),
            step: StepConfig { anchor_lr_scale, ..Default::default() },
            ..Default::default()
        }
    }
}

/// The route sampler of joint training over `routes`: uniform (SN-Net), or FLOPs-grouped at `gap`
/// (SN-Netv2; the group sizes are printed), seeded with 0 as every demo run.
pub fn route_sampler<B: Kernels, A: Anchor<B>, L: Stitch<B>>(
    net: &StitchedNet<B, A, L>,
    routes: Vec<usize>,
    grouped: Option<FlopsGap>,
) -> Result<Box<dyn RouteSampler>, BoxError> {
    let Some(gap) = grouped else { return Ok(Box::new(ListSampler::new(routes, 0))) };
    let sampler = FlopsGroupedSampler::over_routes(net, &routes, gap, None, 0)?;
    println!(
        "FLOPs-grouped sampling: {} groups of sizes {:?}",
        sampler.groups().len(),
        sampler.groups().iter().map(Vec::len).collect::<Vec<_>>()
    );
    Ok(Box::new(sampler))
}
