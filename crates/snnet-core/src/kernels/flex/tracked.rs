//! Operations recorded under autodiff on burn-flex (`Autodiff<Flex>`) as one node each, with
//! backward passes written as GEMMs over burn-flex's buffers.
//!
//! - The token Linear: burn records `x · W + b` as a matmul, a broadcast and an add, and burn-flex's
//!   matmul writes each product (and each of its two gradients) three times: zeroed, copied into an
//!   aligned allocation, then the GEMM's write. Here the forward is [`affine`] and the backward
//!   `∂x = ∂y · Wᵀ`, `∂W = xᵀ · ∂y` (the transposes read in place as strides), `∂b = Σ_rows ∂y`,
//!   each only when that input needs it.
//! - Multi-head attention from the fused projection ([`super::attention`]): burn's formulation
//!   records a reshape, transposes, narrows, two batched matmuls and a softmax, and the backward of
//!   each layout step copies its (strided) gradient element by element — the largest cost of a
//!   training step after the GEMMs. Here the forward keeps the attention probabilities `P` and the
//!   backward is, per (image, head), `∂v = Pᵀ·∂o`, `∂P = ∂o·vᵀ`,
//!   `∂S = P ⊙ (∂P − rowsum(∂P ⊙ P))·d^-½`, `∂q = ∂S·k`, `∂k = ∂Sᵀ·q`, written straight into the
//!   gradient of `qkv`.

use std::any::TypeId;

use burn::tensor::{
    backend::{Backend, BackendTypes},
    Tensor, TensorData,
};
use burn_autodiff::{
    checkpoint::{base::Checkpointer, strategy::NoCheckpointing},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
    Autodiff, NodeId,
};
use burn_flex::{Flex, FlexTensor};

use super::{accumulate_product, affine, attention_forward, for_each_head, primitive_as, tensor_of, AttentionShape, SharedMut};

/// Autodiff's tensor over burn-flex's (burn-autodiff does not export its name).
type AutodiffTensor = <Autodiff<Flex> as BackendTypes>::FloatTensorPrimitive;

/// `x · weight + bias` recorded as one autodiff operation, when `B` is `Autodiff<Flex>`
/// (default checkpointing) and the operands are contiguous f32; `None` otherwise.
pub(super) fn linear<B: Backend>(x: &Tensor<B, 2>, weight: &Tensor<B, 2>, bias: Option<&Tensor<B, 1>>) -> Option<Tensor<B, 2>> {
    if TypeId::of::<B>() != TypeId::of::<Autodiff<Flex>>() {
        return None;
    }
    let ([rows, k], [_, n]) = (x.dims(), weight.dims());
    let x: AutodiffTensor = primitive_as(x.clone())?;
    let weight: AutodiffTensor = primitive_as(weight.clone())?;
    let bias: Option<AutodiffTensor> = match bias {
        Some(b) => Some(primitive_as(b.clone())?),
        None => None,
    };
    let shape = [rows, k, n];
    let out = affine(&x.primitive, &weight.primitive, bias.as_ref().map(|b| &b.primitive), shape)?;
    let out = match bias {
        Some(bias) => record([x, weight, bias], out, shape),
        None => record([x, weight], out, shape),
    };
    tensor_of(out)
}

/// Records the product `out` of `inputs` (`x`, `weight` and perhaps `bias`) in the graph.
fn record<const N: usize>(inputs: [AutodiffTensor; N], out: FlexTensor, shape: [usize; 3]) -> AutodiffTensor {
    let nodes = inputs.each_ref().map(|t| t.node.clone());
    match LinearBackward.prepare::<NoCheckpointing>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let [x, weight] = [&inputs[0], &inputs[1]];
            // ∂W needs x, ∂x needs W.
            let keep_x = weight.is_tracked().then(|| prep.checkpoint(x));
            let keep_weight = x.is_tracked().then(|| prep.checkpoint(weight));
            prep.finish(LinearState { x: keep_x, weight: keep_weight, shape }, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// The backward of [`linear`]: parents `[x, weight]` or `[x, weight, bias]`.
#[derive(Debug)]
struct LinearBackward;

/// What the backward keeps: the input when the weight needs its gradient, the weight when
/// the input does, and `[rows, in, out]`.
#[derive(Debug, Clone)]
struct LinearState {
    x: Option<NodeId>,
    weight: Option<NodeId>,
    shape: [usize; 3],
}

impl<const N: usize> Backward<Flex, N> for LinearBackward {
    type State = LinearState;

    fn backward(self, ops: Ops<LinearState, N>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let LinearState { x, weight, shape: [rows, k, n] } = ops.state;
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        // The forward produced a contiguous f32 `[rows, n]`, so its gradient is one too.
        let g = grad.as_slice::<f32>().expect("the gradient of an f32 Linear is f32");
        let mut parents = ops.parents.into_iter();
        let (x_node, weight_node, bias_node) = (parents.next().flatten(), parents.next().flatten(), parents.next().flatten());
        if let (Some(node), Some(weight)) = (x_node, weight) {
            let weight = contiguous(checkpointer.retrieve_node_output::<FlexTensor>(weight));
            let w = weight.as_slice::<f32>().expect("the Linear's weight was f32");
            let mut dx = vec![0.0f32; rows * k];
            // SAFETY: `g` is `rows × n` row-major, `w` `k × n` row-major read as its
            // transpose `[n, k]` (strides `[1, n]`), `dx` `rows × k`.
            unsafe { accumulate_product(rows, k, n, dx.as_mut_ptr(), k, false, g.as_ptr(), [n, 1], w.as_ptr(), [1, n]) };
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, [rows, k])));
        }
        if let (Some(node), Some(x)) = (weight_node, x) {
            let x = contiguous(checkpointer.retrieve_node_output::<FlexTensor>(x));
            let xs = x.as_slice::<f32>().expect("the Linear's input was f32");
            let mut dw = vec![0.0f32; k * n];
            // SAFETY: `xs` is `rows × k` row-major read as its transpose `[k, rows]`
            // (strides `[1, k]`), `g` `rows × n`, `dw` `k × n`.
            unsafe { accumulate_product(k, n, rows, dw.as_mut_ptr(), n, false, xs.as_ptr(), [1, k], g.as_ptr(), [n, 1]) };
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dw, [k, n])));
        }
        if let Some(node) = bias_node {
            let mut db = vec![0.0f32; n];
            for row in g.chunks_exact(n) {
                db.iter_mut().zip(row).for_each(|(d, v)| *d += v);
            }
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(db, [n])));
        }
    }
}

/// `t` itself when its buffer is contiguous, else a contiguous copy.
fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.is_contiguous() {
        t
    } else {
        t.to_contiguous()
    }
}

/// [`super::attention`] recorded as one autodiff operation, when `B` is `Autodiff<Flex>` (default
/// checkpointing) and `qkv` is contiguous f32; `None` otherwise.
pub(super) fn attention<B: Backend>(qkv: &Tensor<B, 3>, shape: AttentionShape) -> Option<Tensor<B, 3>> {
    if TypeId::of::<B>() != TypeId::of::<Autodiff<Flex>>() {
        return None;
    }
    let qkv: AutodiffTensor = primitive_as(qkv.clone())?;
    let (out, probs) = attention_forward(qkv.primitive.as_slice::<f32>()?, shape)?;
    let out = match AttentionBackward.prepare::<NoCheckpointing>([qkv.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let qkv = prep.checkpoint(&qkv);
            prep.finish(AttentionState { qkv, probs, shape }, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    tensor_of(out)
}

/// The backward of [`attention`]; its one parent is `qkv`.
#[derive(Debug)]
struct AttentionBackward;

/// What the attention's backward keeps: `qkv`, the probabilities `[b, heads, n, n]`, the sizes.
#[derive(Debug, Clone)]
struct AttentionState {
    qkv: NodeId,
    probs: FlexTensor,
    shape: AttentionShape,
}

impl Backward<Flex, 1> for AttentionBackward {
    type State = AttentionState;

    fn backward(self, ops: Ops<AttentionState, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let AttentionState { qkv, probs, shape: s } = ops.state;
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let [Some(parent)] = ops.parents else { return };
        let qkv = contiguous(checkpointer.retrieve_node_output::<FlexTensor>(qkv));
        // The forward read and wrote contiguous f32 buffers of these sizes.
        let (g, qkv, probs) = (
            grad.as_slice::<f32>().expect("the attention's gradient is f32"),
            qkv.as_slice::<f32>().expect("the attention's input was f32"),
            probs.as_slice::<f32>().expect("the probabilities are f32"),
        );
        let (n, d, c) = (s.tokens, s.head_dim, s.width());
        let mut dqkv = vec![0.0f32; qkv.len()];
        let dqkv_ptr = SharedMut(dqkv.as_mut_ptr());
        // One `n × n` scratch block per (image, head) for ∂P, then ∂S.
        let mut scratch = vec![0.0f32; probs.len()];
        // Twice the forward's work: four GEMMs of the same size.
        for_each_head(&mut scratch, n * n, 2 * s.macs_per_head(), |i, dp| {
            let (image, head) = (i / s.heads, i % s.heads);
            let base = image * n * 3 * c + head * d;
            let q = &qkv[base..];
            let (k, v) = (&q[c..], &q[2 * c..]);
            let go = &g[image * n * c + head * d..];
            let p = &probs[i * n * n..(i + 1) * n * n];
            // SAFETY: q, k, v (row stride 3c) and ∂o (row stride c) are `n × d` blocks inside
            // their buffers (sizes from the forward); `p` and `dp` are `n × n`; this call alone
            // writes the (image, head) blocks of ∂q, ∂k, ∂v in `dqkv`.
            unsafe {
                accumulate_product(n, d, n, dqkv_ptr.at(base + 2 * c), 3 * c, false, p.as_ptr(), [1, n], go.as_ptr(), [c, 1]);
                accumulate_product(n, n, d, dp.as_mut_ptr(), n, false, go.as_ptr(), [c, 1], v.as_ptr(), [1, 3 * c]);
                softmax_backward_rows(dp, p, n, s.scale());
                accumulate_product(n, d, n, dqkv_ptr.at(base), 3 * c, false, dp.as_ptr(), [n, 1], k.as_ptr(), [3 * c, 1]);
                accumulate_product(n, d, n, dqkv_ptr.at(base + c), 3 * c, false, dp.as_ptr(), [1, n], q.as_ptr(), [3 * c, 1]);
            }
        });
        let dims = [s.batch, n, 3 * c];
        grads.register::<Flex>(parent.id, FlexTensor::from_data(TensorData::new(dqkv, dims)));
    }
}

/// `dp` (∂P, rows of `row`) becomes the gradient of the unscaled logits `q·kᵀ`:
/// `P ⊙ (∂P − rowsum(∂P ⊙ P)) · scale`.
fn softmax_backward_rows(dp: &mut [f32], p: &[f32], row: usize, scale: f32) {
    for (dp, p) in dp.chunks_exact_mut(row).zip(p.chunks_exact(row)) {
        let dot: f32 = dp.iter().zip(p).map(|(a, b)| a * b).sum();
        dp.iter_mut().zip(p).for_each(|(g, &p)| *g = p * (*g - dot) * scale);
    }
}
