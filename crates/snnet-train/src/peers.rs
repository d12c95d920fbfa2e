//! The peers of a data-parallel run and their gradient exchange, on burn's collective
//! (`burn-collective`): every peer computes the gradients of its route on its shard of the step's
//! global batch, the peers sum them — each pre-scaled by its share of the batch, so the sum is the
//! gradient of the global batch's mean loss — and every peer applies the same AdamW step to its own
//! copy of the weights, which therefore stay identical.
//!
//! The collective has no timeouts: a peer that never arrives would leave the others waiting
//! forever. A [`Board`] kept beside it records which peer waits where and the first failure; its
//! watchdog names a peer that has not reached an exchange within the bound, and a peer that fails
//! says so. Either way the collective is reset, which makes every waiting call return, and each peer
//! stops with the error that names the culprit.

use std::{
    collections::HashMap,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use burn::{
    module::{Module, ModuleVisitor, Param, ParamId},
    tensor::{Tensor, TensorData, TensorPrimitive},
};
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};
use serde::{Deserialize, Serialize};
use snnet_core::AutodiffKernels;

use crate::{
    error::{TrainError, TrainResult},
    optim::Grads,
    scalar::DeviceScalar,
};

/// Which route each peer of a data-parallel run trains at a step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutePolicy {
    /// Every peer draws its own route (peer `r` from the route seed `+ r`), so a step trains as many
    /// routes as there are peers and averages their gradients: the official multi-GPU recipe
    /// (`main.py` of SN-Net and SN-Netv2 seed each rank's sampler with `seed + rank`).
    #[default]
    PerPeer,
    /// All peers train the same route, each on its shard: the gradient of the whole batch on one
    /// route, as a single device would compute it.
    Shared,
}

/// This process's place in a data-parallel run over several processes (machines), each running
/// the same number of peers, joined through burn-collective's global orchestrator.
///
/// Known limit of burn-collective 0.21: the processes meet and complete their first exchange, but
/// every later one waits forever (its `SyncService::sync` never empties its list of synced nodes,
/// so the second sync never sees exactly the nodes it expects; ring, tree and centralised
/// strategies alike). The peers' watchdog turns that into an error after
/// [`RunOptions::peer_timeout`](crate::RunOptions::peer_timeout) naming the other processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// This process's index, `0..nodes` (node 0's first peer writes the checkpoints).
    pub node: usize,
    /// Processes in the run.
    pub nodes: usize,
    /// The orchestrator, `HOST:PORT` (started with [`run_orchestrator`] or `snnet orchestrator`).
    pub orchestrator: String,
    /// This process's tensor data service, `HOST:PORT`, reachable by the other processes (the
    /// service listens on the port on every interface).
    pub node_address: String,
}

impl Cluster {
    /// The collective's settings for `local_peers` peers of this process, or the setting that is
    /// wrong.
    fn collective(&self, local_peers: usize) -> TrainResult<CollectiveConfig> {
        if self.nodes < 2 || self.node >= self.nodes {
            let reason =
                format!("node {} of {} nodes: the nodes are numbered 0..{} and there are at least 2", self.node, self.nodes, self.nodes);
            return Err(TrainError::Setting { setting: "node".into(), reason });
        }
        let (orchestrator, _) = ws_address("orchestrator", &self.orchestrator)?;
        let (node_address, port) = ws_address("node_address", &self.node_address)?;
        let bad = |reason: String| TrainError::Setting { setting: "orchestrator".into(), reason };
        Ok(CollectiveConfig::default()
            .with_num_devices(local_peers)
            .with_num_nodes(self.nodes as u32)
            .with_global_address(orchestrator.parse().map_err(bad)?)
            .with_node_address(node_address.parse().map_err(bad)?)
            .with_data_service_port(port))
    }
}

/// `HOST:PORT` (or `ws://HOST:PORT`) as the websocket address burn-collective connects to, and the
/// port; anything else is an error naming `setting`.
fn ws_address(setting: &str, text: &str) -> TrainResult<(String, u16)> {
    let bare = text.strip_prefix("ws://").unwrap_or(text);
    let parsed = bare.rsplit_once(':').and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)));
    match parsed {
        Some((host, port)) if !host.is_empty() && !host.contains('/') && port > 0 => Ok((format!("ws://{host}:{port}"), port)),
        _ => Err(TrainError::Setting { setting: setting.into(), reason: format!("`{text}` is not HOST:PORT (e.g. 10.0.0.1:3000)") }),
    }
}

/// Runs burn-collective's global orchestrator on `port` (every interface) until the process is
/// interrupted: the meeting point of the processes of multi-machine runs.
pub fn run_orchestrator(port: u16) -> TrainResult<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| TrainError::Peers { peers: 0, reason: format!("cannot start the orchestrator's runtime: {e}") })?;
    runtime.block_on(burn_collective::start_global_orchestrator(port));
    Ok(())
}

/// The peers' gradient exchange of one step: one peer's part, before the exchange.
pub struct LocalPart<B: AutodiffKernels> {
    /// Images of this peer's shard that were read (0 if none could be).
    pub images: usize,
    /// Samples of this peer's shard that could not be read.
    pub skipped: usize,
    /// Mean loss over the shard and its gradients (`None` when the shard is empty).
    pub result: Option<(DeviceScalar<B::InnerBackend>, Grads<B>)>,
}

/// What the exchange gives every peer alike.
pub struct Exchanged<B: AutodiffKernels> {
    /// Images of the global batch that were read.
    pub images: usize,
    /// Samples of the global batch that could not be read.
    pub skipped: usize,
    /// Mean loss over the global batch and its gradient (`None` when no peer read an image).
    pub result: Option<(DeviceScalar<B::InnerBackend>, Grads<B>)>,
}

/// Where a peer is, as the watchdog sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Joining the collective.
    Joining,
    /// In the gradient exchange of a step.
    Exchange(usize),
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stage::Joining => write!(f, "the start of the run"),
            Stage::Exchange(step) => write!(f, "the gradient exchange of step {}", step + 1),
        }
    }
}

#[derive(Default)]
struct BoardState {
    /// Per peer: the stage it waits in and since when (`None`: computing).
    waiting: Vec<Option<(Stage, Instant)>>,
    /// The first failure, in words.
    failure: Option<String>,
    /// The run is over (the watchdog stops).
    finished: bool,
}

/// Who waits where, and the first failure, for the in-process peers of one run (shared by them and
/// the watchdog).
pub struct Board {
    state: Mutex<BoardState>,
    wake: Condvar,
    timeout: Duration,
    reset: fn(),
    /// With several processes: the orchestrator, named when no local peer is missing.
    orchestrator: Option<String>,
}

impl Board {
    /// A board for the `peers` peers of this process whose exchanges must complete within
    /// `timeout`; `reset` resets the collective (making every waiting local call return);
    /// `orchestrator`: the orchestrator's address when other processes take part.
    pub fn new(peers: usize, timeout: Duration, reset: fn(), orchestrator: Option<String>) -> Arc<Self> {
        let state = BoardState { waiting: vec![None; peers], ..BoardState::default() };
        Arc::new(Self { state: Mutex::new(state), wake: Condvar::new(), timeout, reset, orchestrator })
    }

    fn lock(&self) -> MutexGuard<'_, BoardState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn enter(&self, rank: usize, stage: Stage) {
        self.lock().waiting[rank] = Some((stage, Instant::now()));
    }

    fn leave(&self, rank: usize) {
        self.lock().waiting[rank] = None;
    }

    /// Records that peer `rank` stopped with `reason` (the first failure is kept) and releases the
    /// others.
    pub fn fail(&self, rank: usize, reason: &str) {
        let mut state = self.lock();
        if state.failure.is_none() {
            state.failure = Some(format!("peer {rank} stopped: {reason}"));
            drop(state);
            (self.reset)();
        }
    }

    /// The first failure, if any.
    pub fn failure(&self) -> Option<String> {
        self.lock().failure.clone()
    }

    /// Ends the watchdog.
    pub fn finish(&self) {
        self.lock().finished = true;
        self.wake.notify_all();
    }

    /// Watches the peers until [`finish`](Self::finish): when one has waited in an exchange longer
    /// than the timeout, names the peers that have not arrived and releases the others.
    pub fn watch(&self) {
        let poll = (self.timeout / 20).clamp(Duration::from_millis(10), Duration::from_millis(500));
        let mut state = self.lock();
        while !state.finished {
            state = self.wake.wait_timeout(state, poll).unwrap_or_else(|p| p.into_inner()).0;
            if state.failure.is_some() {
                continue;
            }
            let overdue = state.waiting.iter().flatten().find(|(_, since)| since.elapsed() > self.timeout).copied();
            if let Some((stage, _)) = overdue {
                let absent: Vec<String> =
                    (0..state.waiting.len()).filter(|&r| state.waiting[r].is_none_or(|(s, _)| s != stage)).map(|r| r.to_string()).collect();
                let who = match (absent.len(), &self.orchestrator) {
                    (0, Some(orchestrator)) => format!("the other processes (orchestrator {orchestrator})"),
                    (0, None) => "the collective".to_string(),
                    (1, _) => format!("peer {}", absent[0]),
                    _ => format!("peers {}", absent.join(", ")),
                };
                let bound = self.timeout.as_secs_f64();
                let bound = if bound.fract() == 0.0 { format!("{bound:.0}") } else { format!("{bound:.1}") };
                state.failure = Some(format!("{who} did not reach {stage} within {bound} s (the others waited)"));
                drop(state);
                (self.reset)();
                state = self.lock();
            }
        }
    }
}

/// One peer's membership of the collective: its ranks, the run's peer count and the board.
pub struct Peer<B: AutodiffKernels> {
    /// Rank among this process's peers (its line on the board).
    local: usize,
    /// Rank among all peers of the run (0 writes the checkpoints).
    rank: usize,
    peers: usize,
    /// Processes in the run (1: this one alone); the exchanged buffers are at least this long.
    nodes: usize,
    board: Arc<Board>,
    /// Parameters in the order every peer visits them (the exchange's layout), with their sizes.
    layout: Vec<(ParamId, usize)>,
    device: burn::tensor::Device<B::InnerBackend>,
}

/// Serialises the data-parallel runs of this process: the collective's state is one global per
/// backend type, so two runs at once would mix their peers.
static RUN: Mutex<()> = Mutex::new(());

/// Holds the process's collective for one run (released when dropped).
pub fn exclusive_run() -> MutexGuard<'static, ()> {
    RUN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Resets the collective of backend `B`: forgets every peer and releases every waiting call.
pub fn reset_collective<B: AutodiffKernels>() {
    burn_collective::reset_collective::<B::InnerBackend>();
}

impl<B: AutodiffKernels> Peer<B> {
    /// Joins the collective as peer `local` of the `local_peers` of this process (of `cluster`, if
    /// several processes take part) on `device`, the parameters laid out as `module` visits them;
    /// waits (within the board's bound) until every peer has joined.
    pub fn join<M: Module<B>>(
        local: usize,
        local_peers: usize,
        cluster: Option<&Cluster>,
        board: Arc<Board>,
        device: burn::tensor::Device<B::InnerBackend>,
        module: &M,
    ) -> TrainResult<Self> {
        let (config, node, nodes) = match cluster {
            Some(cluster) => (cluster.collective(local_peers)?, cluster.node, cluster.nodes),
            None => (CollectiveConfig::default().with_num_devices(local_peers), 0, 1),
        };
        let rank = node * local_peers + local;
        let layout = parameter_layout(module);
        let peer = Self { local, rank, peers: local_peers * nodes, nodes, board, layout, device };
        let (id, device) = (PeerId(rank as u32), peer.device.clone());
        peer.call(Stage::Joining, move || burn_collective::register::<B::InnerBackend>(id, device, config))?;
        Ok(peer)
    }

    /// This peer's rank among all peers of the run (0 writes checkpoints and reports progress).
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Checks that every peer runs with the same `settings` (name, value) and the same weights,
    /// before training: the first difference is named, on every peer.
    pub fn agree(&self, settings: &[(String, String)], weights: &[(String, Vec<f32>)]) -> TrainResult<()> {
        let mut fields: Vec<(String, u32)> =
            settings.iter().map(|(name, value)| (format!("setting `{name}`"), fnv32(value.as_bytes()))).collect();
        for (key, values) in weights {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            fields.push((format!("weights of `{key}`"), fnv32(&bytes)));
        }
        let differ = |what: String| TrainError::Peers { peers: self.peers, reason: format!("the peers do not run alike: {what}") };
        // Every peer adds its own count, then its hashes (16-bit halves, exact in f32 sums): a sum
        // that is not `peers` times this peer's value differs somewhere, and every peer sees where.
        let count = self.all_reduce(Stage::Joining, self.host_tensor(&[fields.len() as f32]))?;
        let count = count.into_data().convert::<f32>().to_vec::<f32>().expect("a float tensor converts to f32")[0];
        if count != (self.peers * fields.len()) as f32 {
            return Err(differ(format!(
                "their settings and weights have other lengths (another network or snnet version; {} here)",
                fields.len()
            )));
        }
        let halves: Vec<f32> = fields.iter().flat_map(|(_, h)| [(h >> 16) as f32, (h & 0xFFFF) as f32]).collect();
        let sums = self.all_reduce(Stage::Joining, self.host_tensor(&halves))?;
        let sums = sums.into_data().convert::<f32>().to_vec::<f32>().expect("a float tensor converts to f32");
        let first = sums.iter().zip(&halves).position(|(sum, mine)| *sum != mine * self.peers as f32);
        match first {
            Some(i) => Err(differ(format!("{} differs between them", fields[i / 2].0))),
            None => Ok(()),
        }
    }

    /// Sums the peers' parts of step `step`: the image counts, the losses and the gradients, each
    /// peer's weighted by its share of the images read, over every parameter that any peer's route
    /// reached (zeros from the peers whose route did not).
    pub fn exchange(&self, step: usize, part: LocalPart<B>) -> TrainResult<Exchanged<B>> {
        let stage = Stage::Exchange(step);
        // First: image and skip counts, loss·images, and which parameters have a gradient.
        let (loss, grads) = match part.result {
            Some((loss, grads)) => (Some(loss), Some(grads)),
            None => (None, None),
        };
        let head = [part.images as f32, part.skipped as f32];
        let flags: Vec<f32> = self.layout.iter().map(|(id, _)| f32::from(grads.as_ref().is_some_and(|g| g.get(id).is_some()))).collect();
        let mut counts = vec![self.host_tensor(&head), self.host_tensor(&flags)];
        counts.push(match &loss {
            Some(loss) => loss.tensor().mul_scalar(part.images as f64),
            None => self.host_tensor(&[0.0]),
        });
        let summed = self.all_reduce(stage, Tensor::cat(counts, 0))?;
        let host: Vec<f32> = summed.clone().into_data().convert::<f32>().to_vec().expect("a float tensor converts to f32");
        let (images, skipped) = (host[0] as usize, host[1] as usize);
        if images == 0 {
            return Ok(Exchanged { images, skipped, result: None });
        }
        let loss = DeviceScalar::new(summed.narrow(0, 2 + self.layout.len(), 1).div_scalar(images as f64));
        // Second: the gradients of every parameter some peer reached, scaled by this peer's share.
        let share = part.images as f64 / images as f64;
        let reached: Vec<&(ParamId, usize)> = self.layout.iter().zip(&host[2..]).filter(|(_, &f)| f > 0.0).map(|(p, _)| p).collect();
        if reached.is_empty() {
            return Ok(Exchanged { images, skipped, result: Some((loss, Grads::from_flat(HashMap::new()))) });
        }
        let pieces: Vec<Tensor<B::InnerBackend, 1>> = reached
            .iter()
            .map(|(id, len)| match grads.as_ref().and_then(|g| g.get(id)) {
                Some(g) => g.clone().mul_scalar(share),
                None => Tensor::zeros([*len], &self.device),
            })
            .collect();
        let summed = self.all_reduce(stage, Tensor::cat(pieces, 0))?;
        let mut by_param = HashMap::with_capacity(reached.len());
        let mut from = 0;
        for (id, len) in reached {
            by_param.insert(*id, summed.clone().narrow(0, from, *len));
            from += len;
        }
        Ok(Exchanged { images, skipped, result: Some((loss, Grads::from_flat(by_param))) })
    }

    /// Leaves the collective at the end of a run.
    pub fn leave(&self) {
        // Failing to unregister changes nothing for the run: the collective is reset after it.
        let _ = burn_collective::finish_collective::<B::InnerBackend>(PeerId(self.rank as u32));
    }

    fn host_tensor(&self, values: &[f32]) -> Tensor<B::InnerBackend, 1> {
        Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), &self.device)
    }

    /// The element-wise sum over all peers of `tensor` (1-D, the same length on every peer). Padded
    /// to at least one element per process: burn-collective's global ring refuses shorter tensors.
    fn all_reduce(&self, stage: Stage, tensor: Tensor<B::InnerBackend, 1>) -> TrainResult<Tensor<B::InnerBackend, 1>> {
        let len = tensor.dims()[0];
        let tensor = match len < self.nodes {
            true => Tensor::cat(vec![tensor, Tensor::zeros([self.nodes - len], &self.device)], 0),
            false => tensor,
        };
        let (id, primitive) = (PeerId(self.rank as u32), tensor.into_primitive().tensor());
        let summed = self.call(stage, move || burn_collective::all_reduce::<B::InnerBackend>(id, primitive, ReduceOperation::Sum))?;
        Ok(Tensor::<B::InnerBackend, 1>::from_primitive(TensorPrimitive::Float(summed)).narrow(0, 0, len))
    }

    /// Runs a collective call on a thread of its own while this one watches the board: a reset
    /// does not release every waiting call (not a pending registration, nor a local server blocked
    /// in an exchange with other processes), so a peer stops waiting when the board records a
    /// failure, leaving that thread blocked until the collective answers or the process ends.
    fn call<T: Send + 'static>(
        &self,
        stage: Stage,
        op: impl FnOnce() -> Result<T, burn_collective::CollectiveError> + Send + 'static,
    ) -> TrainResult<T> {
        let (answer, answered) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = answer.send(op());
        });
        self.board.enter(self.local, stage);
        let outcome = loop {
            match answered.recv_timeout(Duration::from_millis(20)) {
                Ok(outcome) => break outcome.map_err(|e| self.collective_error(stage, e)),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(reason) = self.board.failure() {
                        break Err(TrainError::Peers { peers: self.peers, reason });
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let reason = format!("peer {}: the collective ended {stage} without an answer", self.rank);
                    break Err(TrainError::Peers { peers: self.peers, reason });
                }
            }
        };
        self.board.leave(self.local);
        outcome
    }

    /// The error of a collective call: the failure that released it, if one did.
    fn collective_error(&self, stage: Stage, error: burn_collective::CollectiveError) -> TrainError {
        let reason = self.board.failure().unwrap_or_else(|| format!("the collective failed at {stage}: {error:?}"));
        TrainError::Peers { peers: self.peers, reason }
    }
}

/// FNV-1a, 32 bits: a fingerprint of a setting or a weight tensor.
fn fnv32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811C_9DC5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// Every float parameter of `module` with its number of elements, in visiting order (the same on
/// every peer, whatever the parameters' ids).
fn parameter_layout<B: AutodiffKernels, M: Module<B>>(module: &M) -> Vec<(ParamId, usize)> {
    struct Layout(Vec<(ParamId, usize)>);
    impl<B: AutodiffKernels> ModuleVisitor<B> for Layout {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push((param.id, param.val().shape().num_elements()));
        }
    }
    let mut layout = Layout(Vec::new());
    module.visit(&mut layout);
    layout.0
}
