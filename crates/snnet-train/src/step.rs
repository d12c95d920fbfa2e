//! One joint-training step of a stitched network: forward the sampled route, classification loss
//! (label smoothing, optional distillation from a teacher's logits), backward, AdamW.

use std::collections::HashSet;

use burn::{
    module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId},
    tensor::{activation::log_softmax, backend::Backend, Int, Tensor},
};
use snnet_core::AutodiffKernels;
use snnet_core::{Anchor, Result, Stitch, StitchedNet};

use crate::optim::{timm_decays, AdamW, Grads, ParamRule, StepReport};
use crate::scalar::DeviceScalar;

/// Distillation from a teacher's logits (DeiT's `DistillationLoss`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Distillation {
    /// Cross-entropy against the teacher's arg-max class, weighted `alpha`.
    Hard {
        /// Weight of the distillation term (the official recipe: 0.5).
        alpha: f64,
    },
    /// KL divergence to the teacher's softened distribution at temperature `tau`, weighted `alpha`.
    Soft {
        /// Weight of the distillation term.
        alpha: f64,
        /// Temperature.
        tau: f64,
    },
}

/// How a step is trained.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepConfig {
    /// Label smoothing ε of the classification term (timm `LabelSmoothingCrossEntropy`).
    pub label_smoothing: f64,
    /// Learning-rate scale of the anchors' parameters (0 freezes them; the Swin recipe uses 0.1).
    pub anchor_lr_scale: f64,
    /// Learning-rate scale of the stitching layers.
    pub stitch_lr_scale: f64,
}

impl Default for StepConfig {
    fn default() -> Self {
        Self { label_smoothing: 0.1, anchor_lr_scale: 1.0, stitch_lr_scale: 1.0 }
    }
}

/// The loss and what the optimiser did, left on the device (`B`: the inner backend) until read:
/// a step waits for nothing.
#[derive(Clone, Debug)]
pub struct StepOutcome<B: Backend> {
    /// Mean loss over the step's batch (over the global batch when peers share the step).
    pub loss: DeviceScalar<B>,
    /// Optimiser report (parameters updated, gradient norm).
    pub optimizer: StepReport<B>,
}

/// Mean cross-entropy of `logits` `[batch, classes]` against `labels` with label smoothing `eps`:
/// `(1 − ε)·(−log p_y) + ε·mean_c(−log p_c)`.
pub fn smoothed_cross_entropy<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>, eps: f64) -> Tensor<B, 1> {
    let logp = log_softmax(logits, 1);
    let nll = logp.clone().gather(1, labels.unsqueeze_dim(1)).neg().mean();
    if eps == 0.0 {
        return nll;
    }
    let smooth = logp.neg().mean();
    nll.mul_scalar(1.0 - eps).add(smooth.mul_scalar(eps))
}

/// The distillation term for `logits` given the teacher's logits.
pub fn distillation_loss<B: Backend>(logits: Tensor<B, 2>, teacher: Tensor<B, 2>, kind: Distillation) -> Tensor<B, 1> {
    match kind {
        Distillation::Hard { .. } => {
            let target = teacher.argmax(1).squeeze_dim::<1>(1);
            smoothed_cross_entropy(logits, target, 0.0)
        }
        Distillation::Soft { tau, .. } => {
            // KL(teacher_τ ‖ student_τ)·τ², summed over classes, averaged over the batch (DeiT).
            let [batch, _] = logits.dims();
            let s = log_softmax(logits.div_scalar(tau), 1);
            let t = log_softmax(teacher.div_scalar(tau), 1);
            t.clone().exp().mul(t.sub(s)).sum().mul_scalar(tau * tau / batch as f64)
        }
    }
}

/// What a step trains: a batch (or a peer's shard of the step's global batch), the route, the
/// teacher's logits for it, and the seed of its drop-path masks.
pub struct RouteBatch<B: AutodiffKernels> {
    /// Images `[batch, C, H, W]`.
    pub images: Tensor<B, 4>,
    /// Class labels `[batch]`.
    pub labels: Tensor<B, 1, Int>,
    /// The teacher's logits and the distillation kind, if distilling.
    pub teacher_logits: Option<(Tensor<B, 2>, Distillation)>,
    /// The route trained.
    pub route: usize,
    /// Seed of the stochastic layers for this forward (`None`: leave the network's as set).
    pub noise_seed: Option<u64>,
}

/// One training step of route `route` on `images` with `labels`: returns the updated network.
/// With `teacher_logits` the loss is `(1 − α)·classification + α·distillation`.
#[allow(clippy::too_many_arguments)]
pub fn train_step<B: AutodiffKernels, A: Anchor<B>, L: Stitch<B>>(
    net: StitchedNet<B, A, L>,
    optimizer: &mut AdamW<B>,
    images: Tensor<B, 4>,
    labels: Tensor<B, 1, Int>,
    teacher_logits: Option<(Tensor<B, 2>, Distillation)>,
    route: usize,
    lr: f64,
    config: &StepConfig,
) -> Result<(StitchedNet<B, A, L>, StepOutcome<B::InnerBackend>)> {
    let batch = RouteBatch { images, labels, teacher_logits, route, noise_seed: None };
    let (loss, grads) = route_gradients(&fresh_leaves(&net), batch, config)?;
    let (net, report) = apply_gradients(net, optimizer, &grads, lr, config);
    Ok((net, StepOutcome { loss, optimizer: report }))
}

/// One AdamW step of every parameter of `net` that has a gradient in `grads`, with the learning
/// rates of `config` (anchors' and stitching layers' scales) and timm's decay rule.
pub fn apply_gradients<B: AutodiffKernels, A: Anchor<B>, L: Stitch<B>>(
    net: StitchedNet<B, A, L>,
    optimizer: &mut AdamW<B>,
    grads: &Grads<B>,
    lr: f64,
    config: &StepConfig,
) -> (StitchedNet<B, A, L>, StepReport<B::InnerBackend>) {
    let stitching = parameter_ids(&net.stitch_layers);
    let rule = |id: ParamId, key: &str, rank: usize| ParamRule {
        lr_scale: if stitching.contains(&id) { config.stitch_lr_scale } else { config.anchor_lr_scale },
        decay: timm_decays(key, rank),
    };
    let names = net.clone();
    optimizer.step(net, grads, lr, &|k| names.official_key(k), &rule)
}

/// The ids of every parameter of `module`: for the stitching layers, how the step tells their
/// parameters from the anchors' through the module structure, whatever the layer type.
fn parameter_ids<B: AutodiffKernels, M: Module<B>>(module: &M) -> HashSet<ParamId> {
    struct Ids(HashSet<ParamId>);
    impl<B: AutodiffKernels> ModuleVisitor<B> for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.insert(param.id);
        }
    }
    let mut ids = Ids(HashSet::new());
    module.visit(&mut ids);
    ids.0
}

/// Forward, loss and backward of `batch` on `net` (run it on [`fresh_leaves`] of the network):
/// the mean loss over the batch and its gradients.
pub fn route_gradients<B: AutodiffKernels, A: Anchor<B>, L: Stitch<B>>(
    net: &StitchedNet<B, A, L>,
    batch: RouteBatch<B>,
    config: &StepConfig,
) -> Result<(DeviceScalar<B::InnerBackend>, Grads<B>)> {
    if let Some(seed) = batch.noise_seed {
        net.reseed(seed);
    }
    let logits = net.forward(batch.images, batch.route)?;
    let base = smoothed_cross_entropy(logits.clone(), batch.labels, config.label_smoothing);
    let loss = match batch.teacher_logits {
        None => base,
        Some((teacher, kind)) => {
            let alpha = match kind {
                Distillation::Hard { alpha } | Distillation::Soft { alpha, .. } => alpha,
            };
            base.mul_scalar(1.0 - alpha).add(distillation_loss(logits, teacher.detach(), kind).mul_scalar(alpha))
        }
    };
    let loss_value = DeviceScalar::new(loss.clone().inner());
    let grads = loss.backward();
    Ok((loss_value, Grads::from_backward(&grads, net)))
}

/// `net` with every tracked parameter made a fresh autodiff leaf: the same values (shared, not
/// copied) and parameter ids, but graph nodes that no earlier backward pass has seen.
///
/// Every forward of a step runs on such a copy. burn 0.21 drops a parameter's graph entry when a
/// backward pass consumes it; the next operation on that parameter then starts a one-node graph,
/// which a `backward()` finishing on another thread may sweep as unused while the operation is
/// still being recorded, and the parameter silently gets no gradient (tracel-ai/burn#5573: seen
/// here as lost patch-embedding and class-token gradients while a second worker or another test
/// ran a backward pass). A fresh leaf registers its own root step, so the first operation on it
/// joins that graph instead.
pub fn fresh_leaves<B: AutodiffKernels, A: Anchor<B>, L: Stitch<B>>(net: &StitchedNet<B, A, L>) -> StitchedNet<B, A, L> {
    struct FreshLeaves;
    impl<B: AutodiffKernels> ModuleMapper<B> for FreshLeaves {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            let tracked = tensor.is_require_grad();
            let leaf = Tensor::<B, D>::from_inner(tensor.inner());
            Param::from_mapped_value(id, if tracked { leaf.require_grad() } else { leaf }, mapper)
        }
    }
    net.clone().map(&mut FreshLeaves)
}

/// A copy of `net` for another peer thread: [`fresh_leaves`], so its graph is its own, with
/// anchors whose stochastic layers take their own seed.
pub fn replica<B: AutodiffKernels, A: Anchor<B>, L: Stitch<B>>(net: &StitchedNet<B, A, L>) -> StitchedNet<B, A, L> {
    let mut copy = fresh_leaves(net);
    for anchor in &mut copy.anchors {
        anchor.isolate_noise();
    }
    copy
}
