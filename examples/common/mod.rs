//! What the Fashion-MNIST examples (`fashion_mnist`, `fashion_mnist_v2`) share: their run options,
//! least squares on shuffled training images, and the joint fine-tuning recipe.

use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use snnet::{
    demo,
    train::{
        data::{load_batch, Dataset},
        SplitMix64, StepConfig, TrainConfig,
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
    /// Images per step, split between the `--workers` threads.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Worker threads: in training they share each step (its one sampled route on each thread's
    /// part of the batch, gradients combined as for the whole batch); in evaluation they share
    /// the routes.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Peak learning rate of the stitching layers (cosine to 1e-6 after a short warmup); the
    /// anchors train at `--anchor-lr-scale` times it.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Learning-rate scale of the anchors' parameters (the official Swin recipe: 0.1, with the
    /// stitching layers at the full rate).
    #[arg(long, default_value_t = 0.1)]
    pub anchor_lr_scale: f64,
}

impl DemoRun {
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
            workers: self.workers,
            lr: self.lr,
            warmup_lr: 1e-6,
            min_lr: 1e-6,
            warmup_epochs: 0.1_f64.min(epochs as f64),
            step: StepConfig { anchor_lr_scale, ..Default::default() },
            ..Default::default()
        }
    }
}
