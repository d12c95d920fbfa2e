//! Pretrains the three anchors of the Fashion-MNIST demo (ViT-32/64/128, `assets/fashion-mnist/family.json`)
//! from scratch, each alone, and writes them as timm-layout safetensors files — the "pretrained
//! models" the main job (`--example fashion_mnist`) starts from, as SN-Net users start from timm.
//!
//! After every epoch each anchor is scored on the first `--curve-images` test images, so the run
//! shows whether it has plateaued: `anchor{i}-curve.json` and `curves.png`/`.svg` in `--report`.
//! Each epoch ends with a checkpoint there too, and `--resume` continues a killed run exactly.
//!
//! ```text
//! cargo run --release --example train_anchors -- [--epochs 20] [--batch 128] [--lr 1e-3] [--devices 2] [--data DIR] [--output DIR] [--report DIR] [--only 2] [--resume]
//! ```

use snnet::AutodiffKernels;
use std::{collections::HashMap, path::PathBuf, time::Instant};

use burn::module::AutodiffModule;
use clap::Parser;
use serde::{Deserialize, Serialize};
use snnet::{
    backend::TrainingTask,
    demo,
    plot::{write_curve_plot, CurvePlot, CurveSeries},
    train::{
        data::{Dataset, FashionMnist, Prefix, Split},
        evaluate_routes_parallel, ListSampler, RunOptions, TrainConfig,
    },
    workflow::{accuracy_ci95, progress_bar, train_with_progress, BoxError},
};

/// Test images per forward in evaluation.
const EVAL_BATCH: usize = 250;

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
    /// Where the learning curves, their plot and the per-epoch checkpoints go.
    #[arg(long, default_value = "target/train-anchors")]
    report: PathBuf,
    /// Epochs per anchor.
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Images per step (the global batch), split between the `--devices` peers.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Data-parallel peers sharing each step (threads on the `--device` backend; the gradients are
    /// those of the whole batch).
    #[arg(long, visible_alias = "workers", default_value_t = 2, value_name = "N")]
    devices: usize,
    /// Peak learning rate (cosine schedule after a warmup of 15 % of the epochs, at most one).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Test images scored after every epoch for the learning curve (the final score uses all).
    #[arg(long, default_value_t = 2000)]
    curve_images: usize,
    /// Train only this anchor (0, 1 or 2).
    #[arg(long)]
    only: Option<usize>,
    /// Continue from the checkpoints in `--report` (an anchor already written is trained again
    /// only if its checkpoint is not at the last epoch).
    #[arg(long)]
    resume: bool,
}

/// One epoch of an anchor's learning curve.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CurvePoint {
    /// Epochs done (1-based).
    epoch: usize,
    /// Mean training loss of the epoch.
    train_loss: f64,
    /// Top-1 (%) on the first `curve_images` test images.
    test_acc1: f64,
}

/// An anchor's run, as written to `anchor{i}-curve.json` after every epoch (a resumed run
/// continues its curve) and once more with the final score.
#[derive(Debug, Serialize, Deserialize)]
struct AnchorRun {
    name: String,
    config: TrainConfig,
    curve_images: usize,
    curve: Vec<CurvePoint>,
    /// The trained anchor on the whole test set.
    test: Option<TestScore>,
}

/// The trained anchor's score on the whole test set.
#[derive(Debug, Serialize, Deserialize)]
struct TestScore {
    acc1: f64,
    acc1_ci95: f64,
    acc5: f64,
    images: usize,
    train_images_per_s: f64,
    minutes: f64,
}

impl TrainingTask for Options {
    type Output = Result<(), BoxError>;

    fn train<B: AutodiffKernels>(self, device: B::Device) -> Result<(), BoxError> {
        B::seed(&device, 0);
        let desc = demo::description()?;
        let mut net = desc.build::<B>(&device)?;
        let train = FashionMnist::load(&self.data, Split::Train)?;
        let test = FashionMnist::load(&self.data, Split::Test)?;
        let curve_test = Prefix::new(&test, self.curve_images);
        std::fs::create_dir_all(&self.output)?;
        std::fs::create_dir_all(&self.report)?;
        let mut curves: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for anchor in 0..net.anchors.len() {
            if self.only.is_some_and(|o| o != anchor) {
                continue;
            }
            let name = demo::ANCHOR_NAMES[anchor];
            let config = TrainConfig {
                epochs: self.epochs,
                batch_size: self.batch,
                peers: self.devices,
                lr: self.lr,
                warmup_epochs: (0.15 * self.epochs as f64).min(1.0),
                seed: anchor as u64,
                ..Default::default()
            };
            let steps_per_epoch = config.steps_per_epoch(train.len());
            eprintln!("{name}: {} epochs of {steps_per_epoch} steps", config.epochs);
            let checkpoints = self.report.join(format!("anchor{anchor}-checkpoints"));
            let curve_file = self.report.join(format!("anchor{anchor}-curve.json"));
            let mut run =
                AnchorRun { name: name.to_string(), config: config.clone(), curve_images: curve_test.len(), curve: Vec::new(), test: None };
            if self.resume {
                if let Ok(text) = std::fs::read_to_string(&curve_file) {
                    let previous = serde_json::from_str::<AnchorRun>(&text).map_err(|e| format!("{}: {e}", curve_file.display()))?;
                    (run.curve, run.test) = (previous.curve, previous.test);
                }
            } else {
                let _ = std::fs::remove_dir_all(&checkpoints);
            }
            let started = Instant::now();
            let mut images_per_s = Vec::new();
            // Route `anchor` is the anchor alone; steps on it touch no other parameter. One epoch
            // per call: each ends with a checkpoint the next call resumes from exactly, so the
            // anchor is scored between epochs without changing the run.
            let mut sampler = ListSampler::new(vec![anchor], anchor as u64);
            for epoch in 1..=config.epochs {
                let options = RunOptions {
                    checkpoint_dir: Some(checkpoints.clone()),
                    resume: true,
                    stop_after_steps: Some(epoch * steps_per_epoch),
                    ..Default::default()
                };
                let (trained, report, _) = train_with_progress(net, &train, &mut sampler, &config, None, &options)?;
                net = trained;
                let Some(&train_loss) = report.epoch_losses.last() else { continue };
                images_per_s.push(report.images_per_s);
                let scored = evaluate_routes_parallel(&net.valid(), &curve_test, &[anchor], EVAL_BATCH, self.devices, |_| {})?;
                let point = CurvePoint { epoch, train_loss, test_acc1: scored[0].acc1 };
                eprintln!(
                    "{name} epoch {epoch}/{}: train loss {:.4}, top-1 {:.2} % on {} test images",
                    config.epochs,
                    point.train_loss,
                    point.test_acc1,
                    curve_test.len()
                );
                run.curve.retain(|p| p.epoch != epoch);
                run.curve.push(point);
                std::fs::write(&curve_file, serde_json::to_string_pretty(&run)?)?;
            }
            let pb = progress_bar(test.len(), "test");
            let result = evaluate_routes_parallel(&net.valid(), &test, &[anchor], EVAL_BATCH, self.devices, |n| pb.set_position(n as u64))?
                .remove(0);
            pb.finish_and_clear();
            // Speed and time of the epochs trained in this process; a resumed run that had nothing
            // left to train keeps those of the run that trained it.
            let (mut minutes, mut rate) =
                (started.elapsed().as_secs_f64() / 60.0, images_per_s.iter().sum::<f64>() / images_per_s.len().max(1) as f64);
            if let (true, Some(before)) = (images_per_s.is_empty(), &run.test) {
                (minutes, rate) = (before.minutes, before.train_images_per_s);
            }
            let ci = accuracy_ci95(result.acc1, result.images);
            println!(
                "{name}: top-1 {:.2} % (95 % CI ±{ci:.2}), top-5 {:.2} % on {} test images; {rate:.0} train images/s, {minutes:.1} min",
                result.acc1, result.acc5, result.images,
            );
            run.test = Some(TestScore {
                acc1: result.acc1,
                acc1_ci95: ci,
                acc5: result.acc5,
                images: result.images,
                train_images_per_s: rate,
                minutes,
            });
            std::fs::write(&curve_file, serde_json::to_string_pretty(&run)?)?;
            curves.push((name.to_string(), run.curve.iter().map(|p| (p.epoch as f64, p.test_acc1)).collect()));
            let meta = HashMap::from([
                ("snnet.trained_by".to_string(), "examples/train_anchors.rs".to_string()),
                ("snnet.train".to_string(), serde_json::to_string(&config)?),
                ("snnet.test_acc1".to_string(), format!("{:.2}", result.acc1)),
            ]);
            let path = self.output.join(format!("anchor{anchor}.safetensors"));
            net.save_anchor(anchor, &path, meta)?;
            eprintln!("wrote {}", path.display());
        }
        let series: Vec<CurveSeries<'_>> = curves.iter().map(|(name, points)| CurveSeries { name, points }).collect();
        let title = format!("Fashion-MNIST anchors: top-1 on {} test images after each epoch", curve_test.len());
        let plot = CurvePlot { title: &title, x_label: "epoch", y_label: "Top-1 (%)", series: &series };
        for file in ["curves.png", "curves.svg"] {
            let path = self.report.join(file);
            write_curve_plot(&plot, &path)?;
            eprintln!("wrote {}", path.display());
        }
        Ok(())
    }
}

fn main() {
    let opts = Options::parse();
    snnet::backend::main_on(&opts.device.clone(), opts);
}
