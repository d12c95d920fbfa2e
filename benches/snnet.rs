//! Criterion benchmarks of the DeiT-Ti/S/B SN-Net (224×224, 71 routes, random weights, seeded).
//!
//! ```text
//! cargo bench --bench snnet                                   # every group on the CPU backend (flex)
//! cargo bench --bench snnet -- route_switch                   # criterion's own filter (a regex on the ids)
//! cargo bench --bench snnet -- 'forward/batch1/route0$'
//! SNNET_BENCH_GROUPS=forward,route_switch cargo bench --bench snnet
//! SNNET_BENCH_DEVICE=cuda SNNET_BENCH_DTYPE=bf16 cargo bench --bench snnet --features cuda
//! ```
//!
//! Groups (benchmark ids in brackets):
//!
//! - `first_forward` [`first_forward/route24`]: the first forward of a route on a network built
//!   just before (the build is not timed), batch 1. On GPU backends kernels are compiled and tuned
//!   once per process, not per network: only the first iteration in the process is truly cold, and
//!   it is printed separately (`cold first forward in this process`); criterion's statistics then
//!   describe a fresh network in a warm process. This group runs first so that the cold figure is
//!   real. `snnet bench` measures cold first forwards per process.
//! - `forward` [`forward/batch{1,8}/route{0,1,2,10,24,40,56,70}`]: warm forward of one route,
//!   each iteration ending with a device sync (`B::sync`), so GPU timings are complete. Each case is
//!   pre-warmed once (untimed) before criterion's warm-up. Throughput is reported in images.
//! - `route_switch` [`route_switch/select`]: `StitchedNet::select` alternating between routes 24
//!   and 56. A counting global allocator reports the heap allocations per switch (printed, not
//!   asserted).
//! - `ls_init` [`ls_init/images8_chunk4`]: least-squares initialisation of all 22 stitching layers
//!   from 8 calibration images in chunks of 4 (anchors' forwards, f64 normal equations, solve).
//! - `train_step` [`train_step/route24_batch8`]: one training step of route 24 at batch 8 on
//!   `Autodiff<B>`: forward, cross-entropy against random labels, backward, AdamW step over the
//!   whole network (parameters outside the route have no gradient and are left as they are).
//! - `lora` [`lora/batch1/{affine,rank64_merged,rank64_unmerged}`]: warm forward at batch 1 of
//!   route 16 (L→S: DeiT3-B blocks 0–2, a 768→384 stitching layer, DeiT3-S blocks 3–11) of the
//!   two-way DeiT3-S/B SN-Net, with affine stitching layers, with SN-Netv2's rank-64 LoRA layers
//!   merged for inference (`merged_for_inference`, what deployment runs: it should cost what the
//!   affine one does), and unmerged (the training form's extra low-rank product).
//!
//! Environment:
//!
//! - `SNNET_BENCH_DEVICE` = `flex` (default) | `cuda` | `wgpu` | `vulkan` | `metal`: the backend
//!   (GPU backends need the cargo feature of the same name).
//! - `SNNET_BENCH_DTYPE` = `f32` (default) | `f16` | `bf16`.
//! - `SNNET_BENCH_GROUPS` = a comma-separated list of the groups above (default: all). Skipped
//!   groups build nothing; criterion's filter also skips building the networks of groups whose ids
//!   it excludes.
//!
//! Defaults are sized for a 2-core CPU: 10 samples, 1 s warm-up, 3 s measurement, flat sampling
//! for the slow groups (one forward of DeiT-B at batch 8 takes seconds there). Criterion's command
//! line (`--sample-size`, `--warm-up-time`, `--measurement-time`) overrides the defaults of the
//! `forward` group. Medians are in `target/criterion/<id>/new/estimates.json`.

use snnet::Kernels;
use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::HashSet,
    hint::black_box,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use burn::{
    backend::Autodiff,
    nn::loss::CrossEntropyLossConfig,
    optim::{AdamWConfig, GradientsParams, Optimizer},
    tensor::{Distribution, Int, Tensor},
};
use criterion::{Criterion, SamplingMode, Throughput};
use snnet::{
    backend::{run_on_with, BackendTask, Precision},
    latency::prewarm,
    AnyAnchor, Description, StitchedNet,
};

/// Counts heap allocations (all threads) so that `route_switch` can report allocations per switch.
struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is added.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const ANCHORS: [&str; 3] = ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"];
const GROUPS: [&str; 6] = ["first_forward", "forward", "route_switch", "ls_init", "train_step", "lora"];
const LORA_ANCHORS: [&str; 2] = ["deit3_small_patch16_224", "deit3_base_patch16_224"];
const LORA_ROUTE: usize = 16;
const LORA_RANK: usize = 64;
const FORWARD_ROUTES: [usize; 8] = [0, 1, 2, 10, 24, 40, 56, 70];
const FORWARD_BATCHES: [usize; 2] = [1, 8];
const FIRST_FORWARD_ROUTES: [usize; 1] = [24];
const SWITCH_ROUTES: (usize, usize) = (24, 56);
const LS_IMAGES: usize = 8;
const LS_CHUNK: usize = 4;
const TRAIN_ROUTE: usize = 24;
const TRAIN_BATCH: usize = 8;
const SEED: u64 = 0;

type Net<B> = StitchedNet<B, AnyAnchor<B>>;

fn build<B: Kernels>(device: &B::Device) -> Net<B> {
    B::seed(device, SEED);
    let net = Description::from_names(&ANCHORS).build::<B>(device).expect("the DeiT-Ti/S/B SN-Net builds");
    assert_eq!(net.num_routes(), 71);
    net
}

fn images<B: Kernels>(batch: usize, device: &B::Device) -> Tensor<B, 4> {
    Tensor::random([batch, 3, 224, 224], Distribution::Normal(0.0, 1.0), device)
}

fn sync<B: Kernels>(device: &B::Device) {
    B::sync(device).expect("device sync");
}

struct Benches<'c> {
    criterion: &'c mut Criterion,
    groups: Vec<String>,
}

impl BackendTask for Benches<'_> {
    type Output = ();

    fn run<B: Kernels>(self, device: B::Device, name: &'static str) {
        let Benches { criterion: c, groups } = self;
        eprintln!("snnet benches on `{name}`, groups: {}", groups.join(","));
        let wants = |group: &str| groups.iter().any(|g| g == group);
        // One network shared by forward, route_switch and ls_init, built on first use (a group
        // that the filter excludes builds nothing).
        let mut shared: Option<Net<B>> = None;
        if wants("first_forward") {
            first_forward::<B>(c, &device);
        }
        if wants("forward") {
            forward::<B>(c, &device, &mut shared);
        }
        if wants("route_switch") {
            route_switch::<B>(c, &device, &mut shared);
        }
        if wants("ls_init") {
            ls_init::<B>(c, &device, &mut shared);
        }
        if wants("train_step") {
            drop(shared.take());
            train_step::<B>(c, &device);
        }
        if wants("lora") {
            drop(shared.take());
            lora::<B>(c, &device);
        }
    }
}

fn lora<B: Kernels>(c: &mut Criterion, device: &B::Device) {
    let build = |rank: usize| {
        B::seed(device, SEED);
        let mut description = Description::from_names(&LORA_ANCHORS);
        description.space = snnet::SpaceSettings { lora_rank: rank, ..snnet::SpaceSettings::two_way() };
        description.build::<B>(device).expect("the two-way DeiT3-S/B SN-Net builds")
    };
    let mut group = c.benchmark_group("lora/batch1");
    group.sampling_mode(SamplingMode::Flat);
    let x = images::<B>(1, device);
    let cases: [(&str, Box<dyn Fn() -> Net<B>>); 3] = [
        ("affine", Box::new(|| build(0))),
        ("rank64_merged", Box::new(|| build(LORA_RANK).merged_for_inference())),
        ("rank64_unmerged", Box::new(|| build(LORA_RANK))),
    ];
    for (name, make) in cases {
        group.bench_function(name, |b| {
            let net = make();
            prewarm(&net, &[LORA_ROUTE], &x).expect("prewarm");
            b.iter(|| {
                let out = net.forward(x.clone(), LORA_ROUTE).expect("forward");
                sync::<B>(device);
                out
            })
        });
    }
    group.finish();
}

fn first_forward<B: Kernels>(c: &mut Criterion, device: &B::Device) {
    let mut group = c.benchmark_group("first_forward");
    group.sampling_mode(SamplingMode::Flat).sample_size(10).warm_up_time(Duration::from_millis(1)).measurement_time(Duration::from_secs(1));
    let mut cold_reported = false;
    for id in FIRST_FORWARD_ROUTES {
        group.bench_function(format!("route{id}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let net = build::<B>(device);
                    let x = images::<B>(1, device);
                    sync::<B>(device);
                    let t = Instant::now();
                    let out = net.forward(x, id).expect("forward");
                    sync::<B>(device);
                    let elapsed = t.elapsed();
                    drop(out);
                    total += elapsed;
                    if !cold_reported {
                        cold_reported = true;
                        eprintln!("first_forward/route{id}: cold first forward in this process: {:.2} ms", elapsed.as_secs_f64() * 1e3);
                    }
                }
                total
            })
        });
    }
    group.finish();
}

fn forward<B: Kernels>(c: &mut Criterion, device: &B::Device, shared: &mut Option<Net<B>>) {
    let mut warmed = HashSet::new();
    for batch in FORWARD_BATCHES {
        let mut group = c.benchmark_group(format!("forward/batch{batch}"));
        group.sampling_mode(SamplingMode::Flat).throughput(Throughput::Elements(batch as u64));
        let mut x: Option<Tensor<B, 4>> = None;
        for id in FORWARD_ROUTES {
            group.bench_function(format!("route{id}"), |b| {
                let net = shared.get_or_insert_with(|| build::<B>(device));
                let x = x.get_or_insert_with(|| images::<B>(batch, device));
                if warmed.insert((batch, id)) {
                    let cold = prewarm(net, &[id], x).expect("prewarm")[0];
                    let cost = net.costs()[id];
                    let route = net.route(id).expect("route");
                    eprintln!(
                        "forward/batch{batch}/route{id}: anchors {:?}, stitch {:?}, {:.3} GFLOPs/image, first forward {cold:.1} ms",
                        route.comb_id,
                        route.stitch_cfgs,
                        cost.flops as f64 / 1e9
                    );
                }
                b.iter(|| {
                    let out = net.forward(x.clone(), id).expect("forward");
                    sync::<B>(device);
                    out
                })
            });
        }
        group.finish();
    }
}

fn route_switch<B: Kernels>(c: &mut Criterion, device: &B::Device, shared: &mut Option<Net<B>>) {
    let mut group = c.benchmark_group("route_switch");
    group.sample_size(50).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let mut reported = false;
    group.bench_function("select", |b| {
        let net = shared.get_or_insert_with(|| build::<B>(device));
        let (r1, r2) = SWITCH_ROUTES;
        if !reported {
            reported = true;
            const SWITCHES: u64 = 100_000;
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            for i in 0..SWITCHES {
                net.select(black_box(if i % 2 == 0 { r1 } else { r2 })).expect("route");
            }
            let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
            eprintln!(
                "route_switch: {allocations} heap allocations in {SWITCHES} switches ({} per switch; counted over all threads)",
                allocations as f64 / SWITCHES as f64
            );
        }
        let mut flip = false;
        b.iter(|| {
            flip = !flip;
            net.select(black_box(if flip { r1 } else { r2 })).expect("route");
            net.selected()
        })
    });
    group.finish();
}

fn ls_init<B: Kernels>(c: &mut Criterion, device: &B::Device, shared: &mut Option<Net<B>>) {
    let mut group = c.benchmark_group("ls_init");
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    let mut calibration: Option<Tensor<B, 4>> = None;
    group.bench_function(format!("images{LS_IMAGES}_chunk{LS_CHUNK}"), |b| {
        let net = shared.get_or_insert_with(|| build::<B>(device));
        let calibration = calibration.get_or_insert_with(|| images::<B>(LS_IMAGES, device));
        b.iter(|| {
            let report = net.init_least_squares(calibration.clone(), LS_CHUNK, |_| {}).expect("least squares");
            sync::<B>(device);
            report
        })
    });
    group.finish();
}

fn train_step<B: Kernels>(c: &mut Criterion, device: &B::Device) {
    type Ad<B> = Autodiff<B>;
    let mut group = c.benchmark_group("train_step");
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    // The optimizer's step consumes the network and returns the updated one: it lives in an Option.
    let mut state: Option<(Option<Net<Ad<B>>>, _, Tensor<Ad<B>, 4>, Tensor<Ad<B>, 1, Int>)> = None;
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    group.bench_function(format!("route{TRAIN_ROUTE}_batch{TRAIN_BATCH}"), |b| {
        let (net, optimizer, x, labels) = state.get_or_insert_with(|| {
            let net = build::<Ad<B>>(device);
            let optimizer = AdamWConfig::new().init::<Ad<B>, Net<Ad<B>>>();
            let x = images::<Ad<B>>(TRAIN_BATCH, device);
            let labels = Tensor::<Ad<B>, 1, Int>::random([TRAIN_BATCH], Distribution::Uniform(0.0, 1000.0), device);
            (Some(net), optimizer, x, labels)
        });
        b.iter(|| {
            let current = net.take().expect("network");
            let logits = current.forward(x.clone(), TRAIN_ROUTE).expect("forward");
            let loss = loss_fn.forward(logits, labels.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &current);
            let updated = optimizer.step(1e-4, current, grads);
            sync::<Ad<B>>(device);
            *net = Some(updated);
        });
    });
    group.finish();
}

fn main() {
    let device = std::env::var("SNNET_BENCH_DEVICE").unwrap_or_else(|_| "flex".into());
    let precision: Precision = match std::env::var("SNNET_BENCH_DTYPE") {
        Ok(s) => s.parse().unwrap_or_else(|e| panic!("SNNET_BENCH_DTYPE: {e}")),
        Err(_) => Precision::F32,
    };
    snnet::backend::program_settings(&device);
    let groups: Vec<String> = match std::env::var("SNNET_BENCH_GROUPS") {
        Ok(s) => s.split(',').map(|g| g.trim().to_string()).filter(|g| !g.is_empty()).collect(),
        Err(_) => GROUPS.iter().map(|g| g.to_string()).collect(),
    };
    if let Some(bad) = groups.iter().find(|g| !GROUPS.contains(&g.as_str())) {
        panic!("SNNET_BENCH_GROUPS: unknown group `{bad}`; choose from {}", GROUPS.join(","));
    }
    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    if let Err(e) = run_on_with(&device, precision, Benches { criterion: &mut criterion, groups }) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    criterion.final_summary();
}
