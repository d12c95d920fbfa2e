//! The main job: a complete SN-Net run on Fashion-MNIST, offline, on the CPU.
//!
//! Starts from three pretrained ViTs (ViT-32/64/128, `assets/fashion-mnist/anchor{i}.safetensors`,
//! made by `--example train_anchors`), stitches them into 35 routes, initialises the stitching
//! layers by least squares, fine-tunes every route jointly (one random route per step), evaluates
//! every route on the 10,000 test images, and writes the results (official JSON-lines format), the
//! route table and the accuracy-vs-FLOPs plot (PNG and SVG).
//!
//! ```text
//! cargo run --release --example fashion_mnist -- [--epochs 11] [--devices 2] [--output target/fashion-mnist] [--resume] [--data DIR]
//! ```

use snnet::AutodiffKernels;
use std::{collections::HashMap, path::PathBuf, time::Instant};

use burn::{module::AutodiffModule, tensor::Tensor};
use clap::Parser;
use snnet::{
    backend::TrainingTask,
    demo,
    train::{
        data::{Dataset, FashionMnist, Split},
        Distillation, FlopsGap, RunOptions, Teacher,
    },
    workflow::{check_stitching, evaluate_into, route_table, train_with_progress, write_accuracy_plots, BoxError},
};

mod common;
use common::DemoRun;

/// Test images per forward in evaluation: on the CPU backend 64 evaluated every route 1.26× faster
/// than 500 (2,000 images, two workers; docs/benchmarks.md). Smaller activations stay in cache.
const EVAL_BATCH: usize = 64;

/// Stitch, initialise, fine-tune and evaluate the Fashion-MNIST demo SN-Net.
#[derive(Parser)]
struct Options {
    #[command(flatten)]
    run: DemoRun,
    /// Where results, plots, weights and checkpoints go.
    #[arg(long, default_value = "target/fashion-mnist")]
    output: PathBuf,
    /// Epochs of joint fine-tuning (11: about 9 minutes on 2 cores with evaluation; docs/results.md).
    #[arg(long, default_value_t = 11)]
    epochs: usize,
    /// Learning-rate scale of the anchors' parameters, against the stitching layers' `--lr`
    /// (0.3: the stitched routes' best on the converged anchors, docs/results.md; the official Swin
    /// recipe's 0.1 leaves them 0.6 point lower).
    #[arg(long, default_value_t = 0.3)]
    anchor_lr_scale: f64,
    /// Train only the stitching layers (the anchors keep their pretrained weights).
    #[arg(long)]
    freeze_anchors: bool,
    /// Distil every route from the pretrained ViT-128 (`soft`, τ = 1, or `hard`), weight 0.5.
    #[arg(long, value_parser = ["soft", "hard"])]
    distill: Option<String>,
    /// Continue a killed run from its checkpoint (and its partial results file).
    #[arg(long)]
    resume: bool,
    /// Also evaluate every route right after least squares, before fine-tuning.
    #[arg(long)]
    eval_ls: bool,
    /// How each step's route is drawn: `uniform` over all routes (SN-Net) or `flops-grouped`
    /// (SN-Netv2: routes sorted by FLOPs are cut into groups at `--flops-gap`; a group is drawn,
    /// then a route in it).
    #[arg(long, default_value = "uniform", value_parser = ["uniform", "flops-grouped"])]
    sampler: String,
    /// FLOPs-grouped sampling: the gap that starts a new group, in GFLOPs or as a share of the
    /// largest route's FLOPs (`5%`).
    #[arg(long, default_value = "5%")]
    flops_gap: FlopsGap,
}

impl TrainingTask for Options {
    type Output = Result<(), BoxError>;

    fn train<B: AutodiffKernels>(self, device: B::Device) -> Result<(), BoxError> {
        let t0 = Instant::now();
        std::fs::create_dir_all(&self.output)?;
        let desc = demo::description()?;
        let names = demo::anchor_names();
        let train = FashionMnist::load(&self.run.data, Split::Train)?;
        let test = FashionMnist::load(&self.run.data, Split::Test)?;
        let ls_file = self.output.join("ls-init.safetensors");
        let results = self.output.join("results.jsonl");
        let checkpoints = self.output.join("checkpoints");
        if !self.resume {
            for old in [&results, &self.output.join("results-ls.jsonl")] {
                let _ = std::fs::remove_file(old);
            }
            let _ = std::fs::remove_dir_all(&checkpoints);
        }

        // 1. Stitch the pretrained anchors and initialise the stitching layers by least squares.
        let mut ls_net = desc.build::<B::InnerBackend>(&device)?;
        for i in 0..ls_net.anchors.len() {
            ls_net = ls_net.load_anchor(i, &demo::anchor_file(i))?.0;
        }
        println!(
            "SN-Net of {}: {} routes, {} stitching layers ({:.1} s)",
            names.join(", "),
            ls_net.num_routes(),
            ls_net.space().layers.len(),
            t0.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let report = self.run.least_squares(&mut ls_net, &train, &device)?;
        let ls_seconds = t.elapsed().as_secs_f64();
        println!("least squares: {} layers from {} images in {ls_seconds:.1} s", report.layers.len(), report.images);
        ls_net.save(&ls_file, HashMap::from([("snnet.stitching".to_string(), "least-squares".to_string())]))?;
        if self.eval_ls {
            let routes: Vec<usize> = (0..ls_net.num_routes()).collect();
            let rows = evaluate_into(&ls_net, &test, &routes, EVAL_BATCH, self.run.peers(), &self.output.join("results-ls.jsonl"))?;
            println!("after least squares only:\n{}", route_table(&ls_net, &rows, &names));
        }

        // 2. Fine-tune every route jointly, on the autodiff backend, with checkpoints.
        let (net, _) = desc.build::<B>(&device)?.load(&ls_file)?;
        let config = self.run.train_config(self.epochs, if self.freeze_anchors { 0.0 } else { self.anchor_lr_scale });
        // The teacher: the pretrained largest anchor of the network least squares left (anchors untouched).
        let largest = ls_net.anchors.len() - 1;
        let teacher_logits = move |x: Tensor<B::InnerBackend, 4>| ls_net.forward(x, largest);
        let teacher = self.distill.as_deref().map(|kind| Teacher::<B> {
            logits: &teacher_logits,
            kind: if kind == "hard" { Distillation::Hard { alpha: 0.5 } } else { Distillation::Soft { alpha: 0.5, tau: 1.0 } },
        });
        let grouped = (self.sampler == "flops-grouped").then_some(self.flops_gap);
        let mut sampler = common::route_sampler(&net, (0..net.num_routes()).collect(), grouped)?;
        let options =
            RunOptions { checkpoint_dir: Some(checkpoints), checkpoint_every: Some(100), resume: self.resume, ..Default::default() };
        let t = Instant::now();
        let (net, report, _) = train_with_progress(net, &train, sampler.as_mut(), &config, teacher.as_ref(), &options)?;
        let train_seconds = t.elapsed().as_secs_f64();
        println!(
            "joint training: {} steps ({} epoch(s), batch {} over {} peer(s)) in {train_seconds:.1} s, {:.0} images/s; epoch losses {:?}",
            report.steps,
            config.epochs,
            config.batch_size,
            config.peers,
            report.images_per_s,
            report.epoch_losses.iter().map(|l| (l * 1e4).round() / 1e4).collect::<Vec<_>>()
        );
        let net = net.valid();
        net.save(&self.output.join("snnet-fashion-mnist.safetensors"), HashMap::from([("snnet.stitching".into(), "trained".into())]))?;

        // 3. Evaluate every route on the whole test set; table, checks, plot.
        let t = Instant::now();
        let rows = evaluate_into(&net, &test, &(0..net.num_routes()).collect::<Vec<_>>(), EVAL_BATCH, self.run.peers(), &results)?;
        let eval_seconds = t.elapsed().as_secs_f64();
        println!("evaluation of {} routes on {} test images in {eval_seconds:.1} s\n", rows.len(), test.len());
        print!("{}", route_table(&net, &rows, &names));
        let check = check_stitching(&net, &rows, 1.0)?;
        let gaps: Vec<String> = check.anchor_gaps.iter().map(|(g, ci)| format!("+{g:.2} (95% CI ±{ci:.2})")).collect();
        println!(
            "\nanchors: {} → each beats the previous: {} [{}]",
            check.anchor_acc1.iter().map(|a| format!("{a:.2}")).collect::<Vec<_>>().join(" / "),
            if check.anchors_ordered { "yes" } else { "NO" },
            gaps.join(", ")
        );
        println!(
            "stitched routes at or above the smaller of the anchors they join: {}/{} ({:.0} %)",
            check.stitched_at_or_above_smaller,
            check.stitched_total,
            100.0 * check.at_or_above_smaller_share()
        );
        println!(
            "stitched routes within 1 point of the range of the anchors they join: {}/{} ({:.0} %)",
            check.stitched_within,
            check.stitched_total,
            100.0 * check.within_share()
        );
        println!(
            "Pareto frontier: {} routes, {} of them stitched ({})",
            check.frontier.len(),
            check.stitched_on_frontier,
            check.frontier.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(", ")
        );
        let title = format!("Fashion-MNIST SN-Net: {} routes on {} test images", rows.len(), test.len());
        let plots = [self.output.join("frontier.png"), self.output.join("frontier.svg")];
        write_accuracy_plots(&net, &rows, &names, &title, &plots)?;
        let summary = serde_json::json!({
            "routes": rows.len(), "test_images": test.len(), "check": check,
            "seconds": {"least_squares": ls_seconds, "training": train_seconds, "evaluation": eval_seconds, "total": t0.elapsed().as_secs_f64()},
            "training": {"steps": report.steps, "images_per_s": report.images_per_s, "epoch_losses": report.epoch_losses, "config": config},
        });
        std::fs::write(self.output.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
        println!("total {:.1} s; results in {}", t0.elapsed().as_secs_f64(), self.output.display());
        Ok(())
    }
}

fn main() {
    let opts = Options::parse();
    snnet::backend::main_on(&opts.run.device.clone(), opts);
}
