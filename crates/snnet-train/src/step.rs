//! One joint-training step of a stitched network: forward the sampled route, classification loss
//! (label smoothing, optional distillation from a teacher's logits), backward, AdamW.

use burn::tensor::{activation::log_softmax, backend::AutodiffBackend, ElementConversion, Int, Tensor};
use snnet_core::{Anchor, Result, StitchedNet};

use crate::optim::{timm_decays, AdamW, ParamRule, StepReport};

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

/// The loss and what the optimiser did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutcome {
    /// Mean loss over the batch.
    pub loss: f64,
    /// Optimiser report (parameters updated, gradient norm).
    pub optimizer: StepReport,
}

/// Mean cross-entropy of `logits` `[batch, classes]` against `labels` with label smoothing `eps`:
/// `(1 − ε)·(−log p_y) + ε·mean_c(−log p_c)`.
pub fn smoothed_cross_entropy<B: burn::tensor::backend::Backend>(
    logits: Tensor<B, 2>,
    labels: Tensor<B, 1, Int>,
    eps: f64,
) -> Tensor<B, 1> {
    let logp = log_softmax(logits, 1);
    let nll = logp.clone().gather(1, labels.unsqueeze_dim(1)).neg().mean();
    if eps == 0.0 {
        return nll;
    }
    let smooth = logp.neg().mean();
    nll.mul_scalar(1.0 - eps).add(smooth.mul_scalar(eps))
}

/// The distillation term for `logits` given the teacher's logits.
pub fn distillation_loss<B: burn::tensor::backend::Backend>(
    logits: Tensor<B, 2>,
    teacher: Tensor<B, 2>,
    kind: Distillation,
) -> Tensor<B, 1> {
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

/// One training step of route `route` on `images` with `labels`: returns the updated network.
/// With `teacher_logits` the loss is `(1 − α)·classification + α·distillation`.
#[allow(clippy::too_many_arguments)]
pub fn train_step<B: AutodiffBackend, A: Anchor<B>>(
    net: StitchedNet<B, A>,
    optimizer: &mut AdamW<B>,
    images: Tensor<B, 4>,
    labels: Tensor<B, 1, Int>,
    teacher_logits: Option<(Tensor<B, 2>, Distillation)>,
    route: usize,
    lr: f64,
    config: &StepConfig,
) -> Result<(StitchedNet<B, A>, StepOutcome)> {
    let logits = net.forward(images, route)?;
    let base = smoothed_cross_entropy(logits.clone(), labels, config.label_smoothing);
    let loss = match teacher_logits {
        None => base,
        Some((teacher, kind)) => {
            let alpha = match kind {
                Distillation::Hard { alpha } | Distillation::Soft { alpha, .. } => alpha,
            };
            base.mul_scalar(1.0 - alpha).add(distillation_loss(logits, teacher.detach(), kind).mul_scalar(alpha))
        }
    };
    let loss_value: f64 = loss.clone().into_scalar().elem();
    let grads = loss.backward();
    let rule = |key: &str, rank: usize| ParamRule {
        lr_scale: if key.starts_with("stitch_layers.") { config.stitch_lr_scale } else { config.anchor_lr_scale },
        decay: timm_decays(key, rank),
    };
    let names = net.clone();
    let (net, report) = optimizer.step(net, &grads, lr, &|k| names.official_key(k), &rule);
    Ok((net, StepOutcome { loss: loss_value, optimizer: report }))
}
