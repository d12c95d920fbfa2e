//! The joint-training loop of SN-Net: every step trains a sampled route on one batch (or, with
//! several peers, each peer its own route or the same one on its shard of the batch), with the official schedule, AdamW, optional
//! distillation, seeded data order, augmentation and drop path, and checkpoints from which a
//! killed run resumes exactly.

use snnet_core::AutodiffKernels;
use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use burn::{
    module::Module,
    tensor::{Int, Tensor, TensorData},
};
use serde::{Deserialize, Serialize};
use snnet_core::{rng::SplitMix64, Anchor, StitchedNet};

use crate::{
    augment::Augment,
    checkpoint::{load_checkpoint, read_index, save_checkpoint, RunPosition},
    data::{load_batch, Dataset},
    error::{TrainError, TrainResult},
    optim::{AdamW, AdamWConfig},
    peers::{exclusive_run, reset_collective, Board, Cluster, LocalPart, Peer, RoutePolicy},
    sampler::RouteSampler,
    scalar::DeviceScalar,
    schedule::CosineSchedule,
    step::{apply_gradients, fresh_leaves, replica, route_gradients, Distillation, RouteBatch, StepConfig},
};

/// How the learning rate follows the cosine schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stepping {
    /// Updated after every optimiser step, warmup then cosine counted in steps (the Swin recipe).
    PerStep,
    /// Updated after every epoch, the DeiT/LeViT way (epochs 0 and 1 at the warmup rate).
    PerEpoch,
}

/// Settings of a training run. A resumed run must repeat them exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per step (the last incomplete batch of an epoch is dropped, as timm does).
    pub batch_size: usize,
    /// Peers of a data-parallel run: each trains its shard of every step's batch (`batch_size` is
    /// the global batch), and their gradients are summed through burn's collective, each weighted
    /// by its share, before one AdamW step on every peer. On the CPU backend, whose small-tensor
    /// work runs mostly on one core, two peers make a step about 1.5× faster.
    #[serde(default = "one_peer", alias = "workers")]
    pub peers: usize,
    /// Which route each peer trains at a step (with one peer both policies are the same).
    #[serde(default)]
    pub route_policy: RoutePolicy,
    /// Base learning rate, reached after warmup.
    pub lr: f64,
    /// Learning rate at the start of warmup.
    pub warmup_lr: f64,
    /// Learning rate at the end of the cosine.
    pub min_lr: f64,
    /// Warmup length in epochs (may be fractional with [`Stepping::PerStep`]).
    pub warmup_epochs: f64,
    /// How the rate is stepped.
    pub stepping: Stepping,
    /// Loss and learning-rate scales of anchors and stitching layers.
    pub step: StepConfig,
    /// Optimiser hyper-parameters.
    pub adamw: AdamWConfig,
    /// Augmentation of training images (`None`: none).
    pub augment: Option<Augment>,
    /// Seed of data order, augmentation and drop path (the sampler has its own).
    pub seed: u64,
}

fn one_peer() -> usize {
    1
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 1,
            batch_size: 128,
            peers: 1,
            route_policy: RoutePolicy::default(),
            lr: 5e-4,
            warmup_lr: 1e-6,
            min_lr: 1e-5,
            warmup_epochs: 0.0,
            stepping: Stepping::PerStep,
            step: StepConfig::default(),
            adamw: AdamWConfig::default(),
            augment: Some(Augment::default()),
            seed: 0,
        }
    }
}

impl TrainConfig {
    /// Steps in one epoch of `samples` images.
    pub fn steps_per_epoch(&self, samples: usize) -> usize {
        samples / self.batch_size.max(1)
    }

    /// The schedule for a run with `steps_per_epoch` steps an epoch.
    pub fn schedule(&self, steps_per_epoch: usize) -> CosineSchedule {
        match self.stepping {
            Stepping::PerStep => {
                let warmup = self.warmup_epochs * steps_per_epoch as f64;
                CosineSchedule {
                    base_lr: self.lr,
                    warmup_lr: self.warmup_lr,
                    min_lr: self.min_lr,
                    warmup_t: warmup,
                    t_initial: (self.epochs * steps_per_epoch) as f64 - warmup,
                    warmup_prefix: true,
                }
            }
            Stepping::PerEpoch => CosineSchedule {
                base_lr: self.lr,
                warmup_lr: self.warmup_lr,
                min_lr: self.min_lr,
                warmup_t: self.warmup_epochs,
                t_initial: self.epochs as f64,
                warmup_prefix: false,
            },
        }
    }

    /// The learning rate of global step `step` in epoch `epoch`.
    pub fn lr_at(&self, schedule: &CosineSchedule, epoch: usize, step: usize) -> f64 {
        match self.stepping {
            Stepping::PerStep => schedule.swin_step_lr(step),
            Stepping::PerEpoch => schedule.deit_epoch_lr(epoch),
        }
    }

    fn validate(&self, samples: usize) -> TrainResult<()> {
        let bad = |setting: &str, reason: String| Err(TrainError::Setting { setting: setting.into(), reason });
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if self.peers == 0 || self.peers > self.batch_size {
            return bad("peers", format!("{} is not between 1 and the batch size {}", self.peers, self.batch_size));
        }
        if samples < self.batch_size {
            return bad("batch_size", format!("{} is more than the {samples} training samples", self.batch_size));
        }
        for (name, v) in [("lr", self.lr), ("warmup_lr", self.warmup_lr), ("min_lr", self.min_lr), ("warmup_epochs", self.warmup_epochs)] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(name, format!("{v} is not a non-negative number"));
            }
        }
        if self.warmup_epochs > self.epochs as f64 {
            return bad("warmup_epochs", format!("{} is longer than the {} epochs", self.warmup_epochs, self.epochs));
        }
        Ok(())
    }
}

/// Distillation from a teacher: its logits for a batch, and the loss that uses them.
pub struct Teacher<'a, B: AutodiffKernels> {
    /// Logits `[batch, classes]` of the teacher for the images (no gradient is taken; called by
    /// every peer of a data-parallel run).
    pub logits: &'a (dyn Fn(Tensor<B::InnerBackend, 4>) -> snnet_core::Result<Tensor<B::InnerBackend, 2>> + Sync),
    /// Hard or soft distillation, and its weight.
    pub kind: Distillation,
}

/// Where and how a run is saved, logged and stopped.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Folder of the checkpoints (`None`: no checkpoints).
    pub checkpoint_dir: Option<PathBuf>,
    /// Also checkpoint every this many steps (checkpoints are always written at each epoch's end).
    pub checkpoint_every: Option<usize>,
    /// Continue from the checkpoint in `checkpoint_dir` if there is one.
    pub resume: bool,
    /// Stop after this global step without writing anything, as a killed run would (for tests and
    /// for budgeted runs).
    pub stop_after_steps: Option<usize>,
    /// Read the steps' losses back from the device every this many steps (all of them in one
    /// transfer), and at every checkpoint and epoch end; 1 reads after every step. Between reads
    /// a step waits on nothing, and a loss that is not finite stops the run at the next read.
    pub log_every: usize,
    /// How long the peers of a data-parallel run wait for each other at an exchange (or at the
    /// start) before stopping with an error that names the peers that did not arrive.
    pub peer_timeout: Duration,
    /// This process's place in a run over several processes (machines); `None`: all peers are
    /// threads of this process.
    pub cluster: Option<Cluster>,
}

impl Default for RunOptions {
    fn default() -> Self {
        let peer_timeout = Duration::from_secs(600);
        Self {
            checkpoint_dir: None,
            checkpoint_every: None,
            resume: false,
            stop_after_steps: None,
            log_every: 10,
            peer_timeout,
            cluster: None,
        }
    }
}

/// What the loop reports after every step.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainProgress {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Epochs in the run.
    pub epochs: usize,
    /// Global steps done (this one included).
    pub step: usize,
    /// Steps in the whole run.
    pub total_steps: usize,
    /// Route trained at this step.
    pub route: usize,
    /// Loss of this step, when the losses were read at this step (every
    /// [`RunOptions::log_every`] steps, and at checkpoints and epoch ends).
    pub loss: Option<f64>,
    /// Mean loss over the epoch up to the last read, when read at this step.
    pub epoch_loss: Option<f64>,
    /// Learning rate of this step.
    pub lr: f64,
    /// Training images per second since the run (or the resumed part) started.
    pub images_per_s: f64,
    /// Seconds of this step's forward, backward and optimiser update (data loading excluded): on a
    /// device that queues its work, the time to queue it, plus the read at a logging step.
    pub step_seconds: f64,
}

/// A finished (or stopped) run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainReport {
    /// Global steps done in total (including those before a resume).
    pub steps: usize,
    /// Step the run resumed from (0 for a fresh run).
    pub resumed_from: usize,
    /// Mean loss of each epoch that ended in this process.
    pub epoch_losses: Vec<f64>,
    /// Images per second over this process's steps.
    pub images_per_s: f64,
    /// Seconds spent in this process.
    pub seconds: f64,
    /// Samples skipped because they could not be read.
    pub skipped_samples: usize,
}

/// Order of the training samples in `epoch`: a permutation drawn from the run's seed.
pub fn epoch_order(seed: u64, epoch: usize, samples: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..samples).collect();
    SplitMix64::stream(seed, epoch as u64 + 1, 0xA24B_AED4_963E_E407).shuffle(&mut order);
    order
}

/// A seed for `step` in stream `stream` (augmentation, drop path; `+ 0x100·r` for peer `r`'s
/// drop path), independent of how the run got there.
fn step_seed(seed: u64, step: usize, stream: u64) -> u64 {
    // `seed ^ step·a ^ stream·b`: the step's stream of the (stream-salted) seed.
    SplitMix64::stream(seed ^ stream.wrapping_mul(0xC2B2_AE3D_27D4_EB4F), step as u64, 0x9FB2_1C65_1E98_DF25).next_u64()
}

/// Trains `net` jointly on `dataset`: each step draws a route from `sampler` and trains it on the
/// next batch. With a checkpoint folder, writes a checkpoint after every epoch (and every
/// `checkpoint_every` steps) and, with `resume`, continues exactly where the last one left off.
///
/// With [`TrainConfig::peers`] above 1 the run is data-parallel: that many peers, threads of this
/// process on the network's device, each train their shard of every step's batch and exchange
/// gradients through burn's collective ([`train_on`] puts them on several devices).
pub fn train<B: AutodiffKernels, A: Anchor<B>>(
    net: StitchedNet<B, A>,
    dataset: &dyn Dataset,
    sampler: &mut dyn RouteSampler,
    config: &TrainConfig,
    teacher: Option<&Teacher<'_, B>>,
    options: &RunOptions,
    progress: impl FnMut(&TrainProgress),
) -> TrainResult<(StitchedNet<B, A>, TrainReport)> {
    let device = net.devices().into_iter().next().unwrap_or_default();
    let devices = vec![device; config.peers.max(1)];
    train_on(&devices, net, dataset, sampler, config, teacher, options, progress)
}

/// [`train`] with peer `r` on `devices[r]` (as many devices as [`TrainConfig::peers`]; a device
/// may repeat). Peer 0 runs on the calling thread, reports progress and writes the checkpoints;
/// every peer keeps its own copy of the weights and optimiser state, identical after every step.
#[allow(clippy::too_many_arguments)]
pub fn train_on<B: AutodiffKernels, A: Anchor<B>>(
    devices: &[B::Device],
    net: StitchedNet<B, A>,
    dataset: &dyn Dataset,
    sampler: &mut dyn RouteSampler,
    config: &TrainConfig,
    teacher: Option<&Teacher<'_, B>>,
    options: &RunOptions,
    mut progress: impl FnMut(&TrainProgress),
) -> TrainResult<(StitchedNet<B, A>, TrainReport)> {
    let samples = dataset.len();
    config.validate(samples)?;
    let nodes = options.cluster.as_ref().map_or(1, |c| c.nodes);
    let node = options.cluster.as_ref().map_or(0, |c| c.node);
    if devices.len() * nodes != config.peers {
        let reason = match nodes {
            1 => format!("{} peers need as many devices, got {}", config.peers, devices.len()),
            _ => format!(
                "{} peers over {nodes} processes need {} devices in each, got {}",
                config.peers,
                config.peers / nodes,
                devices.len()
            ),
        };
        return Err(TrainError::Setting { setting: "peers".into(), reason });
    }
    if teacher.is_some() && devices.iter().any(|d| *d != devices[0]) {
        let reason = "distillation runs the teacher on one device; put every peer on it (the CPU backend's peers can share it)".to_string();
        return Err(TrainError::Setting { setting: "peers".into(), reason });
    }
    shared_devices_are_safe::<B>(devices)?;
    let config_json = serde_json::to_value(config).expect("a config serialises");
    // `fork`: moved (if it is not there yet) as trainable leaves, which `to_device` would not keep.
    let mut net = net.fork(&devices[0]);
    let mut optimizer = AdamW::<B>::new(config.adamw.clone());
    let first_sampler_state = sampler.state();
    let mut position = RunPosition { epoch: 0, batch_in_epoch: 0, global_step: 0, sampler_state: first_sampler_state };
    if let (true, Some(dir)) = (options.resume, &options.checkpoint_dir) {
        if let Some(index) = read_index(dir)? {
            let shown = dir.join(crate::checkpoint::CHECKPOINT_FILE).display().to_string();
            if let Some(diff) = snnet_core::weights::first_difference("", &index.config, &config_json) {
                return Err(TrainError::Checkpoint { path: shown, reason: format!("written with other settings: {diff}") });
            }
            if index.samples != samples {
                return Err(TrainError::Checkpoint {
                    path: shown,
                    reason: format!("written for {} training samples, the data now has {samples}", index.samples),
                });
            }
            net = load_checkpoint(dir, &index, net, &mut optimizer)?;
            position = index.position;
            sampler.restore(position.sampler_state);
        }
    }
    let local_peers = devices.len();
    let run = Run {
        dataset,
        config,
        teacher,
        options,
        config_json,
        samples,
        resumed_from: position.global_step,
        first_sampler_state,
        node,
        local_peers,
    };
    if config.peers == 1 {
        return run.peer(0, None, net, optimizer, sampler, position, &mut progress);
    }

    let _only_run = exclusive_run();
    reset_collective::<B>();
    let orchestrator = options.cluster.as_ref().map(|c| c.orchestrator.clone());
    let board = Board::new(local_peers, options.peer_timeout, reset_collective::<B>, orchestrator);
    // Peer r's sampler under per-peer routes: from the route seed + r, advanced past the steps done.
    let own_routes = |sampler: &mut dyn RouteSampler, rank: usize| {
        sampler.restore(first_sampler_state.wrapping_add(rank as u64));
        for _ in 0..position.global_step {
            sampler.next_route();
        }
    };
    if config.route_policy == RoutePolicy::PerPeer && node > 0 {
        own_routes(sampler, node * local_peers);
    }
    // Every other local peer's copy, sampler and optimiser, made before any of them starts.
    let mut others = Vec::with_capacity(local_peers - 1);
    for (local, device) in devices.iter().enumerate().skip(1) {
        let mut own_sampler = sampler.fork();
        if config.route_policy == RoutePolicy::PerPeer {
            own_routes(own_sampler.as_mut(), node * local_peers + local);
        }
        others.push((local, replica(&net.clone().fork(device)), optimizer.to_device(device), own_sampler));
    }
    let (first, rest) = std::thread::scope(|scope| {
        let watchdog = scope.spawn(|| board.watch());
        let handles: Vec<_> = others
            .into_iter()
            .map(|(local, net, optimizer, mut own_sampler)| {
                let (run, board, position) = (&run, board.clone(), position.clone());
                let rank = node * local_peers + local;
                scope.spawn(move || {
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run.peer(local, Some(&board), net, optimizer, own_sampler.as_mut(), position, &mut |_| {})
                    }));
                    let outcome = outcome.unwrap_or_else(|panic| {
                        let what = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
                        Err(TrainError::Peers {
                            peers: run.config.peers,
                            reason: format!("peer {rank} panicked: {}", what.unwrap_or_default()),
                        })
                    });
                    if let Err(e) = &outcome {
                        board.fail(rank, &e.to_string());
                    }
                    outcome.map(|_| ())
                })
            })
            .collect();
        let first = run.peer(0, Some(&board), net, optimizer, sampler, position, &mut progress);
        if let Err(e) = &first {
            board.fail(node * local_peers, &e.to_string());
        }
        let rest: Vec<TrainResult<()>> = handles.into_iter().map(|h| h.join().expect("a peer's panics are caught")).collect();
        board.finish();
        watchdog.join().expect("the watchdog does not panic");
        (first, rest)
    });
    reset_collective::<B>();
    let trained = first?;
    rest.into_iter().collect::<TrainResult<Vec<()>>>()?;
    Ok(trained)
}

/// Refuses peers that share a device of a fused backend (burn's `fusion` decorator, which the GPU
/// backends use). On one device burn-collective's all-reduce gives every peer the *same* tensor
/// (moving a tensor to its own device returns it), so the peers' threads use and drop one tensor
/// at once; burn-fusion 0.21's streams are not safe for that (burn#4947, fixed upstream after
/// 0.21.0): two peers on lavapipe's one device crashed a CI run that way, with a panic on the
/// device's thread. The CPU backend, which has no fusion, runs its peers as threads on its one
/// device.
fn shared_devices_are_safe<B: AutodiffKernels>(devices: &[B::Device]) -> TrainResult<()> {
    let backend = B::name(&devices[0]);
    if !backend.contains("fusion") {
        return Ok(());
    }
    for (second, device) in devices.iter().enumerate() {
        if let Some(first) = devices[..second].iter().position(|d| d == device) {
            let reason = format!(
                "peers {first} and {second} share the device {device:?} of {backend}: burn 0.21's fusion is not safe for one tensor \
                 used by several threads (burn#4947); give each peer a device of its own, or train with one peer"
            );
            return Err(TrainError::Setting { setting: "peers".into(), reason });
        }
    }
    Ok(())
}

/// What every peer of a run shares.
struct Run<'a, B: AutodiffKernels> {
    dataset: &'a dyn Dataset,
    config: &'a TrainConfig,
    teacher: Option<&'a Teacher<'a, B>>,
    options: &'a RunOptions,
    config_json: serde_json::Value,
    samples: usize,
    resumed_from: usize,
    /// The route sampler's state before the run (the peers' samplers derive from it).
    first_sampler_state: u64,
    /// This process's index among the run's processes, and its number of peers.
    node: usize,
    local_peers: usize,
}

impl<B: AutodiffKernels> Run<'_, B> {
    /// What every peer must agree on before training: each setting, the number of samples and
    /// the route sampler's seed.
    fn settings(&self) -> Vec<(String, String)> {
        let mut settings: Vec<(String, String)> = match &self.config_json {
            serde_json::Value::Object(fields) => fields.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
            other => vec![("settings".into(), other.to_string())],
        };
        settings.push(("training samples".into(), self.samples.to_string()));
        settings.push(("route sampler state".into(), self.first_sampler_state.to_string()));
        settings
    }

    /// The training loop of this process's peer `local` (alone when `board` is `None`): its shard
    /// of every step's batch, its route, the exchange with the other peers, the optimiser step.
    /// The first peer of each process reports progress; the run's peer 0 writes the checkpoints.
    #[allow(clippy::too_many_arguments)]
    fn peer<A: Anchor<B>>(
        &self,
        local: usize,
        board: Option<&Arc<Board>>,
        mut net: StitchedNet<B, A>,
        mut optimizer: AdamW<B>,
        sampler: &mut dyn RouteSampler,
        mut position: RunPosition,
        progress: &mut dyn FnMut(&TrainProgress),
    ) -> TrainResult<(StitchedNet<B, A>, TrainReport)> {
        let (config, options, dataset) = (self.config, self.options, self.dataset);
        let steps_per_epoch = config.steps_per_epoch(self.samples);
        let total_steps = steps_per_epoch * config.epochs;
        let schedule = config.schedule(steps_per_epoch);
        let device = net.devices().into_iter().next().unwrap_or_default();
        let [c, h, w] = dataset.shape();
        let rank = self.node * self.local_peers + local;
        let peer = match board {
            Some(board) => {
                let peer = Peer::<B>::join(local, self.local_peers, options.cluster.as_ref(), board.clone(), device.clone(), &net)?;
                let weights: Vec<(String, Vec<f32>)> = net.named_tensors().into_iter().map(|(k, t)| (k, t.data)).collect();
                peer.agree(&self.settings(), &weights)?;
                Some(peer)
            }
            None => None,
        };
        // This peer's shard of each step's batch: contiguous, the first ones one larger when the
        // peers do not divide the batch.
        let shard_len = config.batch_size / config.peers + usize::from(rank < config.batch_size % config.peers);
        let shard_from = rank * (config.batch_size / config.peers) + rank.min(config.batch_size % config.peers);

        let started = Instant::now();
        let mut images_done = 0usize;
        let mut skipped = 0usize;
        let mut epoch_losses = Vec::new();
        let checkpoint = |net: &StitchedNet<B, A>, optimizer: &AdamW<B>, position: &RunPosition| -> TrainResult<()> {
            match (&options.checkpoint_dir, rank) {
                (Some(dir), 0) => save_checkpoint(dir, net, optimizer, position, self.config_json.clone(), self.samples),
                _ => Ok(()),
            }
        };
        let finish = |net, report| {
            if let Some(peer) = peer.as_ref() {
                peer.leave();
            }
            Ok((net, report))
        };

        while position.epoch < config.epochs {
            let order = epoch_order(config.seed, position.epoch, self.samples);
            let mut losses = UnreadLosses::default();
            while position.batch_in_epoch < steps_per_epoch {
                if options.stop_after_steps.is_some_and(|s| position.global_step >= s) {
                    losses.read()?;
                    let report = report(position.global_step, self.resumed_from, epoch_losses, images_done, started, skipped);
                    return finish(net, report);
                }
                let step = position.global_step;
                // Whether this step ends the epoch, or else writes a periodic checkpoint: both read
                // the losses first (the epoch's mean; no checkpoint of a run that diverged).
                let end_of_epoch = position.batch_in_epoch + 1 == steps_per_epoch;
                let periodic_checkpoint = !end_of_epoch && options.checkpoint_every.is_some_and(|n| n > 0 && (step + 1) % n == 0);
                let lr = config.lr_at(&schedule, position.epoch, step);
                let route = sampler.next_route();
                let start = position.batch_in_epoch * config.batch_size + shard_from;
                let mut batch = load_batch(dataset, &order[start..start + shard_len]);
                if let Some((index, err)) = batch.skipped.first() {
                    eprintln!("skipping {} unreadable training sample(s), e.g. {index}: {err}", batch.skipped.len());
                }
                let step_started = Instant::now();
                let n = batch.len();
                let result = match n {
                    0 => None,
                    _ => {
                        if let Some(augment) = &config.augment {
                            augment.apply(&mut batch.images, [c, h, w], step_seed(config.seed, step, 1), shard_from);
                        }
                        let images = Tensor::<B, 4>::from_data(TensorData::new(batch.images, [n, c, h, w]), &device);
                        let labels: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
                        let labels = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [n]), &device);
                        let teacher_logits = match self.teacher {
                            Some(t) => Some((Tensor::<B, 2>::from_inner((t.logits)(images.clone().inner())?), t.kind)),
                            None => None,
                        };
                        let noise_seed = Some(step_seed(config.seed, step, 2 + 0x100 * rank as u64));
                        let batch = RouteBatch { images, labels, teacher_logits, route, noise_seed };
                        Some(route_gradients(&fresh_leaves(&net), batch, &config.step)?)
                    }
                };
                let (step_images, step_skipped, result) = match &peer {
                    Some(peer) => {
                        let part = LocalPart { images: n, skipped: batch.skipped.len(), result };
                        let all = peer.exchange(step, part)?;
                        (all.images, all.skipped, all.result)
                    }
                    None => (n, batch.skipped.len(), result),
                };
                skipped += step_skipped;
                if let Some((loss, grads)) = result {
                    let (trained, _) = apply_gradients(net, &mut optimizer, &grads, lr, &config.step);
                    net = trained;
                    losses.push(step, route, loss);
                    let loss = match losses.len() >= options.log_every.max(1) || end_of_epoch || periodic_checkpoint {
                        true => losses.read()?,
                        false => None,
                    };
                    let step_seconds = step_started.elapsed().as_secs_f64();
                    images_done += step_images;
                    let elapsed = started.elapsed().as_secs_f64();
                    progress(&TrainProgress {
                        epoch: position.epoch,
                        epochs: config.epochs,
                        step: step + 1,
                        total_steps,
                        route,
                        loss,
                        epoch_loss: loss.and(losses.epoch_mean()),
                        lr,
                        images_per_s: images_done as f64 / elapsed.max(1e-9),
                        step_seconds,
                    });
                }
                position.batch_in_epoch += 1;
                position.global_step += 1;
                position.sampler_state = sampler.state();
                if periodic_checkpoint {
                    losses.read()?; // what an empty step (every sample unreadable) left unread
                    checkpoint(&net, &optimizer, &position)?;
                }
            }
            losses.read()?;
            epoch_losses.push(losses.epoch_mean().unwrap_or(f64::NAN));
            position.epoch += 1;
            position.batch_in_epoch = 0;
            checkpoint(&net, &optimizer, &position)?;
        }
        let report = report(position.global_step, self.resumed_from, epoch_losses, images_done, started, skipped);
        finish(net, report)
    }
}

/// The losses of an epoch's steps: those not read yet stay on the device until [`read`](Self::read)
/// fetches them all in one transfer.
struct UnreadLosses<B: burn::tensor::backend::Backend> {
    /// Global step and route of each unread loss.
    steps: Vec<(usize, usize)>,
    unread: Vec<DeviceScalar<B>>,
    /// Sum and count of the losses read so far this epoch.
    sum: f64,
    count: usize,
}

impl<B: burn::tensor::backend::Backend> Default for UnreadLosses<B> {
    fn default() -> Self {
        Self { steps: Vec::new(), unread: Vec::new(), sum: 0.0, count: 0 }
    }
}

impl<B: burn::tensor::backend::Backend> UnreadLosses<B> {
    fn push(&mut self, step: usize, route: usize, loss: DeviceScalar<B>) {
        self.steps.push((step, route));
        self.unread.push(loss);
    }

    fn len(&self) -> usize {
        self.unread.len()
    }

    /// Reads the unread losses (one transfer) into the epoch's sum and returns the newest one
    /// (`None` if there were none); a loss that is not finite is an error naming its step and route.
    fn read(&mut self) -> TrainResult<Option<f64>> {
        let values = DeviceScalar::read_all(&self.unread);
        self.unread.clear();
        for (&(step, route), &loss) in self.steps.iter().zip(&values) {
            if !loss.is_finite() {
                return Err(TrainError::Diverged { step, route, loss });
            }
            self.sum += loss;
            self.count += 1;
        }
        self.steps.clear();
        Ok(values.last().copied())
    }

    /// Mean of the losses read so far this epoch.
    fn epoch_mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

fn report(steps: usize, resumed_from: usize, epoch_losses: Vec<f64>, images: usize, started: Instant, skipped: usize) -> TrainReport {
    let seconds = started.elapsed().as_secs_f64();
    TrainReport { steps, resumed_from, epoch_losses, images_per_s: images as f64 / seconds.max(1e-9), seconds, skipped_samples: skipped }
}
