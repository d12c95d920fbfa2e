//! Serving a stitched network under a latency target while the machine's load changes.
//!
//! ```sh
//! cargo run --release --example serve_budget -- [--phase-seconds 8] [--batch 32] [--target-factor 1.2]
//! ```
//!
//! The Fashion-MNIST SN-Net (the main job's trained weights, `target/fashion-mnist/`, when they
//! exist) is exported as a route pack of its accuracy/FLOPs frontier, and the pack alone serves a
//! stream of test-image batches. Each route's latency is measured on the idle machine; the target
//! is a p95 latency a little above the most accurate route's idle p95. Then the stream runs through five
//! phases — idle, two threads of added CPU load, idle, one thread, idle — once with a
//! [`RouteController`] choosing the route per request and once per fixed route (the most
//! accurate, a middle one, the fastest). It prints every route switch and, per policy, the p95
//! latency against the target and the top-1 accuracy actually served, and writes
//! `serving.png`/`.svg` (latency per request, the target, the load, the controller's route),
//! `requests.jsonl` and `summary.json` to `--output`.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use burn::{
    backend::Flex,
    tensor::{Int, Tensor, TensorData},
};
use clap::Parser;
use snnet::{
    core::controller::{LatencyTarget, RouteCandidate, RouteController},
    demo,
    plot::{write_serving_plot, ServingPlot, ServingSeries},
    select::{pareto_frontier, parse_metric_lines, Goal, RouteMetrics},
    train::data::{load_batch, Dataset, FashionMnist, Split},
    workflow::BoxError,
    AnyAnchor, Description, StitchedNet,
};

type Net = StitchedNet<Flex, AnyAnchor<Flex>>;

#[derive(Parser)]
#[command(about = "Serve Fashion-MNIST under a p95 latency target while CPU load comes and goes")]
struct Args {
    /// Trained weights of the demo network (default: the main job's, if it has run; otherwise the
    /// shipped anchors with untrained stitching layers: latencies are the same, accuracies are not).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Top-1 of every route (JSON lines, `snnet eval`'s format): which routes form the frontier.
    #[arg(long, default_value_os_t = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/results/fashion-mnist/results.jsonl"))]
    results: PathBuf,
    /// Images per request.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Seconds of each of the five load phases.
    #[arg(long, default_value_t = 8.0)]
    phase_seconds: f64,
    /// The p95 target as a multiple of the most accurate route's p95 on the idle machine.
    #[arg(long, default_value_t = 1.2)]
    target_factor: f64,
    /// Output folder.
    #[arg(long, default_value = "target/serve-budget")]
    output: PathBuf,
}

/// Threads of added load in each phase.
const PHASES: [usize; 5] = [0, 2, 0, 1, 0];

/// Threads that spin while the load level is above their index.
struct Load {
    level: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(max: usize) -> Self {
        let (level, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let threads = (0..max)
            .map(|n| {
                let (level, stop) = (level.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut x = 1.0f64;
                    while !stop.load(Ordering::Relaxed) {
                        if level.load(Ordering::Relaxed) > n {
                            for _ in 0..10_000 {
                                x = (x * 1.000_001 + 1e-9).sqrt();
                            }
                            std::hint::black_box(x);
                        } else {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                })
            })
            .collect();
        Self { level, stop, threads }
    }

    fn set(&self, threads: usize) {
        self.level.store(threads, Ordering::Relaxed);
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One request: the route's forward on a batch and its predicted classes read back (the host
/// read ends the timing). Milliseconds and the number of correct predictions.
fn serve(net: &Net, route: usize, images: &Tensor<Flex, 4>, labels: &Tensor<Flex, 1, Int>) -> Result<(f64, usize), BoxError> {
    let started = Instant::now();
    let predicted = net.forward(images.clone(), route)?.argmax(1).squeeze_dim::<1>(1);
    let correct = predicted.equal(labels.clone()).int().sum().into_scalar() as usize;
    Ok((started.elapsed().as_secs_f64() * 1e3, correct))
}

/// One request of a run: when, how long, which route, how many right.
#[derive(Clone, Copy, serde::Serialize)]
struct Served {
    seconds: f64,
    latency_ms: f64,
    route: usize,
    correct: usize,
}

/// What a policy achieved over a run.
#[derive(serde::Serialize)]
struct Outcome {
    policy: String,
    requests: usize,
    p95_ms: f64,
    p95_loaded_ms: f64,
    over_target_pct: f64,
    served_top1: f64,
    switches: usize,
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values.get(rank.saturating_sub(1)).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    snnet::backend::keep_freed_memory();
    std::fs::create_dir_all(&args.output)?;
    let device = Default::default();
    let desc = demo::description()?;

    // The whole network, then the route pack of its frontier, which is what serves.
    let whole = load_network(&desc, args.weights.as_deref(), &device)?;
    let text = std::fs::read_to_string(&args.results).map_err(|e| format!("{}: {e}", args.results.display()))?;
    let accuracy = parse_metric_lines(&text, &args.results.display().to_string(), &|_| true)?;
    let table: Vec<RouteMetrics> = accuracy
        .iter()
        .filter_map(|row| {
            let cost = whole.costs().get(row.cfg_id)?;
            let mut row = row.clone();
            row.values.insert("gflops".into(), cost.flops as f64 / 1e9);
            Some(row)
        })
        .collect();
    let frontier: Vec<usize> =
        pareto_frontier(&table, ("gflops", Goal::Minimize), ("acc1", Goal::Maximize)).into_iter().map(|i| table[i].cfg_id).collect();
    let acc1 = |id: usize| table.iter().find(|r| r.cfg_id == id).and_then(|r| r.get("acc1")).unwrap_or(f64::NAN);
    let pack_path = args.output.join("frontier.safetensors");
    let summary = desc.save_route_pack(&whole, &frontier, &pack_path, Default::default())?;
    let (net, _, _) = Description::open_route_pack::<Flex>(&pack_path, &device)?;
    println!(
        "route pack of the {} frontier routes {:?}: {:.2} MiB (the whole network: {:.2} MiB)",
        frontier.len(),
        summary.routes,
        summary.bytes as f64 / 1048576.0,
        summary.network_bytes as f64 / 1048576.0
    );
    drop(whole);

    // Request batches from the test set, made once.
    let test = FashionMnist::load(&demo::assets_dir(), Split::Test)?;
    let [c, h, w] = net.layouts()[0].input;
    let batches: Vec<(Tensor<Flex, 4>, Tensor<Flex, 1, Int>)> = (0..64)
        .map(|n| {
            let indices: Vec<usize> = (0..args.batch).map(|i| (n * args.batch + i) % test.len()).collect();
            let batch = load_batch(&test, &indices);
            let labels: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
            (
                Tensor::from_data(TensorData::new(batch.images, [indices.len(), c, h, w]), &device),
                Tensor::from_data(TensorData::new(labels, [indices.len()]), &device),
            )
        })
        .collect();

    // Idle latency of every frontier route, as the requests measure it.
    let (mut candidates, mut idle_p95) = (Vec::new(), Vec::new());
    println!("\nidle latency at batch {} (median of 30 requests after 5):", args.batch);
    for &id in &frontier {
        let mut times = Vec::new();
        for n in 0..35 {
            let (images, labels) = &batches[n % batches.len()];
            let (ms, _) = serve(&net, id, images, labels)?;
            if n >= 5 {
                times.push(ms);
            }
        }
        let (median, p95) = (percentile(&mut times.clone(), 50.0), percentile(&mut times, 95.0));
        println!("  route {id:>3}: {median:>7.2} ms (p95 {p95:.2}), top-1 {:.2} %", acc1(id));
        // The controller takes the median: its window's p95 ratio carries the idle jitter too.
        candidates.push(RouteCandidate::new(id, median, acc1(id)));
        idle_p95.push(p95);
    }
    let best = *frontier.last().ok_or("no route on the frontier")?;
    let target = LatencyTarget::new(idle_p95[frontier.len() - 1] * args.target_factor, 95.0);
    println!("\ntarget: p95 ≤ {:.2} ms ({}× route {best}'s idle p95)", target.latency_ms, args.target_factor);

    // The runs: the controller, then fixed routes.
    let middle = frontier[frontier.len() / 2];
    let fastest = frontier[0];
    let mut policies: Vec<(String, Option<usize>)> = vec![("controller".into(), None)];
    for id in [best, middle, fastest] {
        if !policies.iter().any(|(_, r)| *r == Some(id)) {
            policies.push((format!("route {id} fixed"), Some(id)));
        }
    }
    let load = Load::start(PHASES.iter().copied().max().unwrap_or(0));
    let phase = Duration::from_secs_f64(args.phase_seconds);
    let loaded: Vec<(f64, f64)> = PHASES
        .iter()
        .enumerate()
        .filter(|(_, &threads)| threads > 0)
        .map(|(n, _)| (n as f64 * args.phase_seconds, (n + 1) as f64 * args.phase_seconds))
        .collect();
    let mut runs: Vec<(String, Vec<Served>)> = Vec::new();
    let mut outcomes = Vec::new();
    for (name, fixed) in &policies {
        println!("\n{name}: {} phases of {} s (added load threads {:?})", PHASES.len(), args.phase_seconds, PHASES);
        let mut controller = RouteController::new(&candidates, target.clone())?;
        let mut served = Vec::new();
        let started = Instant::now();
        for (n, &threads) in PHASES.iter().enumerate() {
            load.set(threads);
            while started.elapsed() < phase * (n as u32 + 1) {
                let (images, labels) = &batches[served.len() % batches.len()];
                let route = fixed.unwrap_or_else(|| controller.current());
                let (ms, correct) = serve(&net, route, images, labels)?;
                let seconds = started.elapsed().as_secs_f64();
                if fixed.is_none() {
                    if let Some(switch) = controller.observe(route, ms)? {
                        println!(
                            "  {seconds:>6.2} s, request {:>5}: route {} → {} ({:?}; load estimate ×{:.2})",
                            switch.request,
                            switch.from,
                            switch.to,
                            switch.reason,
                            controller.estimate()
                        );
                    }
                }
                served.push(Served { seconds, latency_ms: ms, route, correct });
            }
        }
        load.set(0);
        let outcome = summarise(name, &served, &loaded, target.latency_ms, args.batch, controller.switches().len());
        println!(
            "  {} requests: p95 {:.2} ms (under load {:.2} ms) against {:.2} ms; {:.1} % over; served top-1 {:.2} %",
            outcome.requests, outcome.p95_ms, outcome.p95_loaded_ms, target.latency_ms, outcome.over_target_pct, outcome.served_top1
        );
        outcomes.push(outcome);
        runs.push((name.clone(), served));
    }
    drop(load);

    println!(
        "\n{:<18} {:>8} {:>10} {:>14} {:>8} {:>12} {:>9}",
        "policy", "requests", "p95 (ms)", "p95 loaded", "over %", "served top-1", "switches"
    );
    for o in &outcomes {
        println!(
            "{:<18} {:>8} {:>10.2} {:>14.2} {:>8.1} {:>12.2} {:>9}",
            o.policy, o.requests, o.p95_ms, o.p95_loaded_ms, o.over_target_pct, o.served_top1, o.switches
        );
    }
    println!("target: p95 ≤ {:.2} ms", target.latency_ms);

    // Files: every request, the summary, the plot.
    let mut lines = String::new();
    for (name, served) in &runs {
        for s in served {
            lines.push_str(&serde_json::json!({ "policy": name, "seconds": s.seconds, "latency_ms": s.latency_ms, "route": s.route, "correct": s.correct }).to_string());
            lines.push('\n');
        }
    }
    std::fs::write(args.output.join("requests.jsonl"), lines)?;
    let summary = serde_json::json!({
        "batch": args.batch, "phase_seconds": args.phase_seconds, "load_threads": PHASES,
        "target_ms": target.latency_ms, "percentile": target.percentile, "frontier": frontier,
        "idle_ms": candidates.iter().map(|c| (c.cfg_id.to_string(), c.latency_ms)).collect::<std::collections::BTreeMap<_, _>>(),
        "outcomes": outcomes,
    });
    std::fs::write(args.output.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    let points: Vec<(String, Vec<(f64, f64)>)> =
        runs.iter().map(|(name, served)| (name.clone(), served.iter().map(|s| (s.seconds, s.latency_ms)).collect())).collect();
    let series: Vec<ServingSeries> = points.iter().map(|(name, requests)| ServingSeries { name, requests }).collect();
    let quality: Vec<(f64, f64)> = runs[0].1.iter().map(|s| (s.seconds, acc1(s.route))).collect();
    let title = format!("Fashion-MNIST SN-Net, batch {}, under added CPU load", args.batch);
    let target_label = format!("target: p95 ≤ {:.2} ms", target.latency_ms);
    let plot = ServingPlot {
        title: &title,
        series: &series,
        target_ms: target.latency_ms,
        target_label: &target_label,
        route_quality: &quality,
        quality_label: "controller's route: top-1 (%)",
        loaded: &loaded,
    };
    for file in ["serving.png", "serving.svg"] {
        write_serving_plot(&plot, &args.output.join(file))?;
    }
    println!("wrote {}/{{serving.png,serving.svg,requests.jsonl,summary.json,frontier.safetensors}}", args.output.display());
    Ok(())
}

/// The demo network with `weights`, else the main job's trained file when present, else the
/// shipped anchors (stitching layers untrained).
fn load_network(desc: &Description, weights: Option<&std::path::Path>, device: &burn::tensor::Device<Flex>) -> Result<Net, BoxError> {
    let net = desc.build::<Flex>(device)?;
    let trained = PathBuf::from("target/fashion-mnist/snnet-fashion-mnist.safetensors");
    let file = weights.map(PathBuf::from).or_else(|| trained.exists().then_some(trained));
    Ok(match file {
        Some(file) => {
            println!("weights: {}", file.display());
            net.load(&file)?.0
        }
        None => {
            println!(
                "weights: the shipped anchors, stitching layers untrained (run the main job for trained ones); accuracies are the table's"
            );
            let mut net = net;
            for i in 0..desc.anchors.len() {
                net = net.load_anchor(i, &demo::anchor_file(i))?.0;
            }
            net
        }
    })
}

/// The policy's figures over the run.
fn summarise(policy: &str, served: &[Served], loaded: &[(f64, f64)], target_ms: f64, batch: usize, switches: usize) -> Outcome {
    let mut all: Vec<f64> = served.iter().map(|s| s.latency_ms).collect();
    let mut under_load: Vec<f64> =
        served.iter().filter(|s| loaded.iter().any(|&(a, b)| s.seconds >= a && s.seconds < b)).map(|s| s.latency_ms).collect();
    let over = served.iter().filter(|s| s.latency_ms > target_ms).count();
    let correct: usize = served.iter().map(|s| s.correct).sum();
    Outcome {
        policy: policy.to_string(),
        requests: served.len(),
        p95_ms: percentile(&mut all, 95.0),
        p95_loaded_ms: percentile(&mut under_load, 95.0),
        over_target_pct: 100.0 * over as f64 / served.len().max(1) as f64,
        served_top1: 100.0 * correct as f64 / (served.len() * batch).max(1) as f64,
        switches,
    }
}
