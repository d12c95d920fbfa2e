//! SN-Net against SN-Netv2 on the same two anchors: the shipped ViT-32 and ViT-128 of the
//! Fashion-MNIST demo (`assets/fashion-mnist/`), stitched one way (SN-Net's paired window, 18
//! routes) and two ways (SN-Netv2: S→L, L→S, L→S→L, S→L→S, 33 routes, with LoRA stitching layers
//! and FLOPs-grouped route sampling). Both networks get the same least-squares initialisation
//! budget, the same joint fine-tuning (epochs, batch, learning rates) and the same evaluation on
//! the 10,000 test images; their accuracy-vs-FLOPs frontiers are drawn in one figure.
//!
//! ```text
//! cargo run --release --example fashion_mnist_v2 -- [--epochs 1] [--lora-rank 8] [--flops-gap 5%] [--output target/fashion-mnist-v2]
//! ```
//!
//! Writes, in `--output`: `results-{v1,v2}.jsonl` (every route, official format), the route tables,
//! `frontier-v1-v2.{png,svg}` and `summary.json` (per network: routes, frontier, anchors; and, at
//! each frontier route's FLOPs, the best top-1 the other network reaches within that budget).

use snnet::AutodiffKernels;
use std::{collections::HashMap, path::PathBuf, time::Instant};

use burn::module::AutodiffModule;
use clap::Parser;
use snnet::{
    backend::TrainingTask,
    demo,
    train::{
        data::{Dataset, FashionMnist, Split},
        FlopsGap, Prefix, RunOptions,
    },
    workflow::{accuracy_frontier, accuracy_points, evaluate_into, route_table, train_with_progress, write_accuracy_comparison, BoxError},
    Description, RouteMetrics, SpaceSettings,
};

mod common;
use common::DemoRun;

/// Test images per forward in evaluation (as the main job).
const EVAL_BATCH: usize = 64;

/// The demo anchors this example stitches: ViT-32 and ViT-128 (equal depth 6).
const ANCHORS: [usize; 2] = [0, 2];

/// Stitch ViT-32 and ViT-128 one way and two ways, train both alike, compare their frontiers.
#[derive(Parser)]
struct Options {
    #[command(flatten)]
    run: DemoRun,
    /// Where results, plots and weights go.
    #[arg(long, default_value = "target/fashion-mnist-v2")]
    output: PathBuf,
    /// Epochs of joint fine-tuning, for each network.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Learning-rate scale of the anchors' parameters (the official Swin recipe: 0.1, with the
    /// stitching layers at the full rate).
    #[arg(long, default_value_t = 0.1)]
    anchor_lr_scale: f64,
    /// Rank of SN-Netv2's LoRA stitching layers (ViT-32's width is 32).
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    /// FLOPs gap of SN-Netv2's route groups: GFLOPs, or a percentage of the largest route.
    #[arg(long, default_value = "5%")]
    flops_gap: FlopsGap,
    /// Test images to evaluate on (the first N; default: all 10,000).
    #[arg(long)]
    test_images: Option<usize>,
}

/// One of the two networks compared.
struct Variant {
    /// File-name tag.
    tag: &'static str,
    /// Legend name.
    name: String,
    /// Its space.
    space: SpaceSettings,
}

/// What one network's run produced.
struct Outcome {
    name: String,
    rows: Vec<RouteMetrics>,
    points: Vec<snnet::plot::PlotRoute>,
    frontier: Vec<usize>,
    seconds: f64,
    summary: serde_json::Value,
}

impl TrainingTask for Options {
    type Output = Result<(), BoxError>;

    fn train<B: AutodiffKernels>(self, device: B::Device) -> Result<(), BoxError> {
        let t0 = Instant::now();
        std::fs::create_dir_all(&self.output)?;
        let train = FashionMnist::load(&self.run.data, Split::Train)?;
        let test = FashionMnist::load(&self.run.data, Split::Test)?;
        let test = Prefix::new(&test, self.test_images.unwrap_or(usize::MAX));
        let variants = [
            Variant { tag: "v1", name: "SN-Net (one-way)".into(), space: SpaceSettings::default() },
            Variant {
                tag: "v2",
                name: format!("SN-Netv2 (two-way, LoRA r={})", self.lora_rank),
                space: SpaceSettings { lora_rank: self.lora_rank, ..SpaceSettings::two_way() },
            },
        ];
        let mut outcomes = Vec::new();
        for variant in variants {
            outcomes.push(self.run_variant::<B>(&variant, &train, &test, &device)?);
        }

        // The two frontiers in one figure, and each frontier route against the other network.
        let series: Vec<_> = outcomes.iter().map(|o| (o.name.clone(), o.points.clone(), o.frontier.clone())).collect();
        let title = format!("ViT-32 + ViT-128 on Fashion-MNIST ({} test images): one-way vs two-way", test.len());
        write_accuracy_comparison(&series, &title, &[self.output.join("frontier-v1-v2.png"), self.output.join("frontier-v1-v2.svg")])?;
        let mut summary = serde_json::Map::new();
        for (i, o) in outcomes.iter().enumerate() {
            let other = &outcomes[1 - i];
            let mut against = Vec::new();
            let (mut ahead, mut level, mut behind) = (0, 0, 0);
            for &id in &o.frontier {
                let row = o.rows.iter().find(|r| r.cfg_id == id).expect("frontier routes are rows");
                let (flops, acc) = (row.get("gflops").unwrap_or(f64::NAN), row.get("acc1").unwrap_or(f64::NAN));
                let best_other = best_within(&other.rows, flops);
                match best_other {
                    Some(b) if b > acc => behind += 1,
                    Some(b) if b == acc => level += 1,
                    _ => ahead += 1,
                }
                against.push(serde_json::json!({"cfg_id": id, "gflops": flops, "acc1": acc, "other_best_acc1_within": best_other}));
            }
            println!(
                "{}: {} routes, {} on the frontier; at the FLOPs of each, against the best route of {} within that budget: ahead {ahead}, level {level}, behind {behind}",
                o.name,
                o.rows.len(),
                o.frontier.len(),
                other.name,
            );
            let mut entry = o.summary.clone();
            entry["frontier_against_other"] = serde_json::Value::Array(against);
            entry["seconds"] = o.seconds.into();
            summary.insert(o.name.clone(), entry);
        }
        summary.insert("seconds_total".into(), t0.elapsed().as_secs_f64().into());
        std::fs::write(self.output.join("summary.json"), serde_json::to_string_pretty(&serde_json::Value::Object(summary))?)?;
        println!("total {:.1} s; results in {}", t0.elapsed().as_secs_f64(), self.output.display());
        Ok(())
    }
}

impl Options {
    /// Least squares, joint fine-tuning and evaluation of one network.
    fn run_variant<B: AutodiffKernels>(
        &self,
        variant: &Variant,
        train: &FashionMnist,
        test: &dyn Dataset,
        device: &B::Device,
    ) -> Result<Outcome, BoxError> {
        let t0 = Instant::now();
        let demo_desc = demo::description()?;
        let desc = Description {
            anchors: ANCHORS.iter().map(|&a| demo_desc.anchors[a].clone()).collect(),
            space: variant.space.clone(),
            behaviour: demo_desc.behaviour.clone(),
        };
        let names: Vec<String> = ANCHORS.iter().map(|&a| demo::ANCHOR_NAMES[a].to_string()).collect();

        // 1. The pretrained anchors, stitched; least squares on the same calibration images. The
        // seed fixes what least squares does not set: the LoRA factors' initialisation.
        <B::InnerBackend as burn::tensor::backend::Backend>::seed(device, 0);
        let mut ls_net = desc.build::<B::InnerBackend>(device)?;
        for (i, &a) in ANCHORS.iter().enumerate() {
            ls_net = ls_net.load_anchor(i, &demo::anchor_file(a))?.0;
        }
        println!("{}: {} routes, {} stitching layers", variant.name, ls_net.num_routes(), ls_net.space().layers.len());
        self.run.least_squares(&mut ls_net, train, device)?;
        let ls_file = self.output.join(format!("ls-init-{}.safetensors", variant.tag));
        ls_net.save(&ls_file, HashMap::new())?;

        // 2. Joint fine-tuning: uniform over the trained routes (v1), FLOPs-grouped (v2).
        let (net, _) = desc.build::<B>(device)?.load(&ls_file)?;
        let grouped = (variant.space.kind == snnet::SpaceKind::TwoWay).then_some(self.flops_gap);
        let mut sampler = common::route_sampler(&net, net.space().trained_routes(), grouped)?;
        let config = self.run.train_config(self.epochs, self.anchor_lr_scale);
        let (net, report, _) = train_with_progress(net, train, sampler.as_mut(), &config, None, &RunOptions::default())?;
        println!("{}: {} steps, {:.0} images/s, epoch losses {:?}", variant.name, report.steps, report.images_per_s, report.epoch_losses);
        let net = net.valid();
        net.save(&self.output.join(format!("snnet-{}.safetensors", variant.tag)), HashMap::new())?;

        // 3. Every route on the test images, as inference runs it (LoRA merged).
        let net = net.merged_for_inference();
        let results = self.output.join(format!("results-{}.jsonl", variant.tag));
        let _ = std::fs::remove_file(&results);
        let rows = evaluate_into(&net, test, &(0..net.num_routes()).collect::<Vec<_>>(), EVAL_BATCH, self.run.peers(), &results)?;
        let table = route_table(&net, &rows, &names);
        print!("{table}");
        std::fs::write(self.output.join(format!("routes-{}.txt", variant.tag)), &table)?;
        let frontier = accuracy_frontier(&rows);
        let anchors: Vec<f64> = (0..2).filter_map(|id| rows.iter().find(|r| r.cfg_id == id).and_then(|r| r.get("acc1"))).collect();
        let summary = serde_json::json!({
            "routes": rows.len(), "frontier": frontier, "anchor_acc1": anchors,
            "training": {"steps": report.steps, "images_per_s": report.images_per_s, "epoch_losses": report.epoch_losses},
        });
        // Anchors are labelled per network (each fine-tuned them its own way).
        let points = accuracy_points(&net, &rows, &names)
            .into_iter()
            .map(|mut p| {
                p.anchor = p.anchor.map(|a| format!("{a} ({})", variant.tag));
                p
            })
            .collect();
        Ok(Outcome { name: variant.name.clone(), rows, points, frontier, seconds: t0.elapsed().as_secs_f64(), summary })
    }
}

/// The best top-1 among `rows` at most `gflops` GFLOPs.
fn best_within(rows: &[RouteMetrics], gflops: f64) -> Option<f64> {
    rows.iter().filter(|r| r.get("gflops").is_some_and(|f| f <= gflops * (1.0 + 1e-9))).filter_map(|r| r.get("acc1")).reduce(f64::max)
}

fn main() {
    let opts = Options::parse();
    snnet::backend::main_on(&opts.run.device.clone(), opts);
}
