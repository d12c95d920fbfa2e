//! Build the DeiT-Ti/S/B SN-Net, least-squares initialise it, measure every route, switch routes.
//!
//! ```text
//! cargo run --release --example deit_stitch -- [--device flex] [--images 100] [--batch 1] [--repeats 3] [--ls-only]
//! ```
//!
//! Weights are random (pretrained checkpoints cannot be downloaded here): the point is the
//! mechanics and the costs, which equal the official implementation's. Calibration images are
//! synthetic. `--ls-only` prints one JSON line with the least-squares timing and stops (used by
//! `tools/compare_ls_init.sh` for the side-by-side with the official approach).

use snnet::Kernels;
use std::time::Instant;

use burn::tensor::{Distribution, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use snnet::{backend::BackendTask, latency::route_latency_ms, Description};

struct Options {
    images: usize,
    chunk: usize,
    batch: usize,
    repeats: usize,
    ls_only: bool,
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta}").expect("valid template").progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

impl BackendTask for Options {
    type Output = Result<(), Box<dyn std::error::Error>>;

    fn run<B: Kernels>(self, device: B::Device, name: &'static str) -> Self::Output {
        B::seed(&device, 0);
        let desc = Description::from_names(&["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]);
        let mut net = desc.build::<B>(&device)?;
        eprintln!("DeiT-Ti/S/B SN-Net on `{name}`: {} routes, {} stitching layers", net.num_routes(), net.space().layers.len());

        let calibration = Tensor::<B, 4>::random([self.images, 3, 224, 224], Distribution::Normal(0.0, 1.0), &device);
        let pb = bar(self.images, "LS init");
        let t = Instant::now();
        let report = net.init_least_squares(calibration, self.chunk, |p| pb.set_position(p.images_done as u64))?;
        pb.finish_and_clear();
        let seconds = t.elapsed().as_secs_f64();
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        println!(
            "{}",
            serde_json::json!({
                "impl": format!("snnet ({name})"), "threads": threads, "images": self.images,
                "seconds_total": seconds, "seconds_features": report.seconds_features, "seconds_forward": report.seconds_forward,
                "seconds_solve": report.seconds_solve, "layers": report.layers.len(),
            })
        );
        if self.ls_only {
            return Ok(());
        }

        let images = Tensor::<B, 4>::random([self.batch, 3, 224, 224], Distribution::Normal(0.0, 1.0), &device);
        let pb = bar(net.num_routes(), "latency");
        let mut latencies = Vec::new();
        for id in 0..net.num_routes() {
            latencies.push(route_latency_ms(&net, id, &images, 1, self.repeats)?);
            pb.inc(1);
        }
        pb.finish_and_clear();
        println!(
            "{:>6}  {:<8} {:<8} {:>8}  {:>10}  {:>12}  {:>11}",
            "cfg_id", "comb", "(j,k)", "GFLOPs", "params", "params_exact", "latency ms"
        );
        let names = ["Ti", "S", "B"];
        for (id, lat) in latencies.iter().enumerate() {
            let r = net.route(id)?;
            let c = net.costs()[id];
            let comb = r.comb_id.iter().map(|&a| names[a]).collect::<Vec<_>>().join("→");
            let pos = r.stitch_cfgs.first().map(|(j, k)| format!("({j},{k})")).unwrap_or_default();
            println!("{id:>6}  {comb:<8} {pos:<8} {:>8.3}  {:>10}  {:>12}  {lat:>11.2}", c.flops as f64 / 1e9, c.params, c.params_exact);
        }

        // Run-time switching: pick a route, run it, pick another; nothing is reloaded.
        for id in [0, 24, 56, 2] {
            let t = Instant::now();
            net.select(id)?;
            let switch_ns = t.elapsed().as_nanos();
            let logits = net.forward_selected(images.clone())?;
            let top = logits.argmax(1).into_data().convert::<i64>().to_vec::<i64>().unwrap_or_default();
            println!(
                "route {id:>2}: switched in {switch_ns} ns, {:.2} GFLOPs, predicted classes {top:?}",
                net.costs()[id].flops as f64 / 1e9
            );
        }
        Ok(())
    }
}

fn main() {
    let mut device = "flex".to_string();
    let mut opts = Options { images: 100, chunk: 25, batch: 1, repeats: 3, ls_only: false };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match a.as_str() {
            "--device" => device = value("--device"),
            "--images" => opts.images = value("--images").parse().expect("--images takes a number"),
            "--chunk" => opts.chunk = value("--chunk").parse().expect("--chunk takes a number"),
            "--batch" => opts.batch = value("--batch").parse().expect("--batch takes a number"),
            "--repeats" => opts.repeats = value("--repeats").parse().expect("--repeats takes a number"),
            "--ls-only" => opts.ls_only = true,
            other => {
                eprintln!("unknown argument `{other}`");
                std::process::exit(2);
            }
        }
    }
    snnet::backend::main_on(&device, opts);
}
