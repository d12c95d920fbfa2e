//! Pretrains the three anchors of the Fashion-MNIST demo (ViT-32/64/128, `assets/fashion-mnist/family.json`)
//! from scratch, each alone, and writes them as timm-layout safetensors files — the "pretrained
//! models" the main job (`--example fashion_mnist`) starts from, as SN-Net users start from timm.
//!
//! ```text
//! cargo run --release --example train_anchors -- [--epochs 10] [--batch 128] [--lr 1e-3] [--data DIR] [--output DIR] [--only 2]
//! ```

use snnet::AutodiffKernels;
use std::{collections::HashMap, path::PathBuf, time::Instant};

use burn::module::AutodiffModule;
use clap::Parser;
use snnet::{
    backend::TrainingTask,
    demo,
    train::{
        data::{Dataset, FashionMnist, Split},
        evaluate_routes, ListSampler, RunOptions, TrainConfig,
    },
    workflow::{progress_bar, train_with_progress, BoxError},
};

/// Pretrain the Fashion-MNIST demo anchors.
#[derive(Parser)]
struct Options {
    /// Backend: flex (CPU), cuda, wgpu, vulkan, metal.
    #[arg(long, default_value = "flex")]
    device: String,
    /// Folder with the Fashion-MNIST IDX files (default: the copy in assets/fashion-mnist).
    #[arg(long, default_value_os_t = demo::assets_dir())]
    data: PathBuf,
    /// Where to write `anchor{i}.safetensors`.
    #[arg(long, default_value_os_t = demo::assets_dir())]
    output: PathBuf,
    /// Epochs per anchor.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Peak learning rate (cosine schedule after a warmup of 15 % of the epochs, at most one).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Train only this anchor (0, 1 or 2).
    #[arg(long)]
    only: Option<usize>,
}

impl TrainingTask for Options {
    type Output = Result<(), BoxError>;

    fn train<B: AutodiffKernels>(self, device: B::Device) -> Result<(), BoxError> {
        B::seed(&device, 0);
        let desc = demo::description()?;
        let mut net = desc.build::<B>(&device)?;
        let train = FashionMnist::load(&self.data, Split::Train)?;
        let test = FashionMnist::load(&self.data, Split::Test)?;
        std::fs::create_dir_all(&self.output)?;
        for anchor in 0..net.anchors.len() {
            if self.only.is_some_and(|o| o != anchor) {
                continue;
            }
            let name = demo::ANCHOR_NAMES[anchor];
            let config = TrainConfig {
                epochs: self.epochs,
                batch_size: self.batch,
                lr: self.lr,
                warmup_epochs: (0.15 * self.epochs as f64).min(1.0),
                seed: anchor as u64,
                ..Default::default()
            };
            eprintln!("{name}: {} epochs of {} steps", config.epochs, config.steps_per_epoch(train.len()));
            let started = Instant::now();
            // Route `anchor` is the anchor alone; steps on it touch no other parameter.
            let mut sampler = ListSampler::new(vec![anchor], anchor as u64);
            let (trained, report, _) = train_with_progress(net, &train, &mut sampler, &config, None, &RunOptions::default())?;
            net = trained;
            let pb = progress_bar(test.len(), "test");
            let result = evaluate_routes(&net.valid(), &test, &[anchor], 500, |n| pb.set_position(n as u64))?.remove(0);
            pb.finish_and_clear();
            let minutes = started.elapsed().as_secs_f64() / 60.0;
            println!(
                "{name}: top-1 {:.2} %, top-5 {:.2} % on {} test images; {:.0} train images/s, {minutes:.1} min, epoch losses {:?}",
                result.acc1,
                result.acc5,
                result.images,
                report.images_per_s,
                report.epoch_losses.iter().map(|l| (l * 1e4).round() / 1e4).collect::<Vec<_>>()
            );
            let meta = HashMap::from([
                ("snnet.trained_by".to_string(), "examples/train_anchors.rs".to_string()),
                ("snnet.train".to_string(), serde_json::to_string(&config)?),
                ("snnet.test_acc1".to_string(), format!("{:.2}", result.acc1)),
            ]);
            let path = self.output.join(format!("anchor{anchor}.safetensors"));
            net.save_anchor(anchor, &path, meta)?;
            eprintln!("wrote {}", path.display());
        }
        Ok(())
    }
}

fn main() {
    let opts = Options::parse();
    snnet::backend::main_on(&opts.device.clone(), opts);
}
