//! [`Kernels`] for burn's autodiff backend over any `B: Kernels`.
//!
//! The Linear and the attention are recorded as one node each when `B` offers a recorded form
//! ([`Kernels::recorded_affine`], [`Kernels::recorded_self_attention`]); the node's backward calls `B`'s
//! gradient hooks. burn would record a matmul, a broadcast and an add for the Linear, and a
//! reshape, transposes, narrows, two batched matmuls and a softmax for the attention, whose
//! backward copies the gradient of every layout step. GELU is built from `B`'s
//! [`Kernels::gelu_parts`] when it has them. Everything else, and every backend without recorded
//! forms, records burn's operations.

use burn::{
    nn::conv::Conv2d,
    tensor::{backend::BackendTypes, Tensor, TensorPrimitive},
};
use burn_autodiff::{
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
    Autodiff, NodeId,
};

use crate::{reference, Kernels};

/// Autodiff's tensor over `B`'s (burn-autodiff does not export its name).
type AutodiffTensor<B> = <Autodiff<B> as BackendTypes>::FloatTensorPrimitive;

impl<B: Kernels, C: CheckpointStrategy> Kernels for Autodiff<B, C> {
    fn affine(x: Tensor<Self, 2>, weight: Tensor<Self, 2>, bias: Option<Tensor<Self, 1>>) -> Tensor<Self, 2> {
        let inner = B::recorded_affine(&x.clone().inner(), &weight.clone().inner(), bias.clone().map(|b| b.inner()).as_ref());
        match inner {
            Some(out) => record_linear::<B, C>(x, weight, bias, out),
            None => reference::affine(x, weight, bias),
        }
    }

    fn self_attention(qkv: Tensor<Self, 3>, heads: usize) -> Tensor<Self, 3> {
        match B::recorded_self_attention(&qkv.clone().inner(), heads) {
            Some((out, probs)) => record_attention::<B, C>(qkv, out, probs, heads),
            None => reference::self_attention(qkv, heads),
        }
    }

    fn patch_tokens(images: Tensor<Self, 4>, conv: &Conv2d<Self>, cls: Tensor<Self, 3>, pos: Tensor<Self, 3>) -> Tensor<Self, 3> {
        reference::patch_tokens(images, conv, cls, pos)
    }

    /// `x·Φ(x) + (x − x̄)·xφ(x)` with `Φ(x)` and `xφ(x)` from `B` as constants and `x̄` the detached
    /// `x`: the second term is zero, so the value is exact GELU, and the gradient is
    /// `Φ(x) + x·φ(x)`, exact GELU's derivative. Without `B`'s parts, one node with that gradient
    /// ([`record_gelu`]).
    fn exact_gelu<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        match B::gelu_parts(x.clone().inner()) {
            Some((cdf, slope)) => x.clone() * Tensor::from_inner(cdf) + (x.clone() - x.detach()) * Tensor::from_inner(slope),
            None => record_gelu(x),
        }
    }
}

/// `t`'s autodiff primitive.
fn primitive<B: Kernels, C: CheckpointStrategy, const D: usize>(t: Tensor<Autodiff<B, C>, D>) -> AutodiffTensor<B> {
    t.into_primitive().tensor()
}

/// `B`'s tensor of primitive `p`.
fn inner_tensor<B: Kernels, const D: usize>(p: B::FloatTensorPrimitive) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// The autodiff tensor of primitive `p`.
fn outer_tensor<B: Kernels, C: CheckpointStrategy, const D: usize>(p: AutodiffTensor<B>) -> Tensor<Autodiff<B, C>, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// `B`'s exact GELU of `x` recorded as one node that keeps `x` and whose backward is exact GELU's
/// derivative, `Φ(x) + x·φ(x)` ([`reference::gelu_slope`]). burn records its GELU with the
/// derivative of GELU's tanh approximation (up to ~1e-3 off), which the GPU backends use.
pub(crate) fn record_gelu<B: Kernels, C: CheckpointStrategy, const D: usize>(x: Tensor<Autodiff<B, C>, D>) -> Tensor<Autodiff<B, C>, D> {
    let out = reference::exact_gelu(x.clone().inner()).into_primitive().tensor();
    let x = primitive(x);
    let out = match GeluBackward.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let kept = prep.checkpoint(&x);
            prep.finish(kept, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    outer_tensor(out)
}

/// The backward of [`record_gelu`]: `∂y · (Φ(x) + x·φ(x))` from the kept input.
#[derive(Debug)]
struct GeluBackward;

impl<B: Kernels> Backward<B, 1> for GeluBackward {
    type State = NodeId;

    fn backward(self, ops: Ops<NodeId, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(ops.state);
        let grad = grads.consume::<B>(&ops.node);
        let [parent] = ops.parents;
        if let Some(node) = parent {
            grads.register::<B>(node.id, B::float_mul(grad, reference::gelu_slope::<B>(x)));
        }
    }
}

/// Records `out`, `B`'s product of `x`, `weight` and perhaps `bias`, as one node.
fn record_linear<B: Kernels, C: CheckpointStrategy>(
    x: Tensor<Autodiff<B, C>, 2>,
    weight: Tensor<Autodiff<B, C>, 2>,
    bias: Option<Tensor<Autodiff<B, C>, 1>>,
    out: Tensor<B, 2>,
) -> Tensor<Autodiff<B, C>, 2> {
    let (x, weight) = (primitive(x), primitive(weight));
    let out = out.into_primitive().tensor();
    let out = match bias.map(primitive) {
        Some(bias) => finish_linear::<B, C, 3>([x, weight, bias], out),
        None => finish_linear::<B, C, 2>([x, weight], out),
    };
    outer_tensor(out)
}

/// Records the product `out` of `inputs` (`x`, `weight` and perhaps `bias`) in the graph.
fn finish_linear<B: Kernels, C: CheckpointStrategy, const N: usize>(
    inputs: [AutodiffTensor<B>; N],
    out: B::FloatTensorPrimitive,
) -> AutodiffTensor<B> {
    let nodes = inputs.each_ref().map(|t| t.node.clone());
    match <LinearBackward as Backward<B, N>>::prepare::<C>(LinearBackward, nodes).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let [x, weight] = [&inputs[0], &inputs[1]];
            // ∂W needs x, ∂x needs W.
            let keep_x = weight.is_tracked().then(|| prep.checkpoint(x));
            let keep_weight = x.is_tracked().then(|| prep.checkpoint(weight));
            prep.finish(LinearState { x: keep_x, weight: keep_weight }, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// The backward of a recorded Linear: parents `[x, weight]` or `[x, weight, bias]`.
#[derive(Debug)]
struct LinearBackward;

/// What the Linear's backward keeps: the input when the weight needs its gradient, the weight when
/// the input does.
#[derive(Debug, Clone)]
struct LinearState {
    x: Option<NodeId>,
    weight: Option<NodeId>,
}

impl<B: Kernels, const N: usize> Backward<B, N> for LinearBackward {
    type State = LinearState;

    fn backward(self, ops: Ops<LinearState, N>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let LinearState { x, weight } = ops.state;
        let grad: Tensor<B, 2> = inner_tensor(grads.consume::<B>(&ops.node));
        let mut parents = ops.parents.into_iter();
        let (x_node, weight_node, bias_node) = (parents.next().flatten(), parents.next().flatten(), parents.next().flatten());
        if let (Some(node), Some(weight)) = (x_node, weight) {
            let weight = inner_tensor(checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight));
            grads.register::<B>(node.id, B::affine_input_grad(grad.clone(), weight).into_primitive().tensor());
        }
        if let (Some(node), Some(x)) = (weight_node, x) {
            let x = inner_tensor(checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x));
            grads.register::<B>(node.id, B::affine_weight_grad(grad.clone(), x).into_primitive().tensor());
        }
        if let Some(node) = bias_node {
            grads.register::<B>(node.id, B::affine_bias_grad(grad).into_primitive().tensor());
        }
    }
}

/// Records `out` and `probs`, `B`'s attention over `qkv`, as one node.
fn record_attention<B: Kernels, C: CheckpointStrategy>(
    qkv: Tensor<Autodiff<B, C>, 3>,
    out: Tensor<B, 3>,
    probs: Tensor<B, 4>,
    heads: usize,
) -> Tensor<Autodiff<B, C>, 3> {
    let qkv = primitive(qkv);
    let out = out.into_primitive().tensor();
    let out = match <AttentionBackward as Backward<B, 1>>::prepare::<C>(AttentionBackward, [qkv.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let qkv = prep.checkpoint(&qkv);
            prep.finish(AttentionState { qkv, probs: probs.into_primitive().tensor(), heads }, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    outer_tensor(out)
}

/// The backward of a recorded attention; its one parent is `qkv`.
#[derive(Debug)]
struct AttentionBackward;

/// What the attention's backward keeps: `qkv`, the probabilities `[b, heads, n, n]`, the heads.
#[derive(Debug, Clone)]
struct AttentionState<P> {
    qkv: NodeId,
    probs: P,
    heads: usize,
}

impl<B: Kernels> Backward<B, 1> for AttentionBackward {
    type State = AttentionState<B::FloatTensorPrimitive>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let AttentionState { qkv, probs, heads } = ops.state;
        let grad = inner_tensor(grads.consume::<B>(&ops.node));
        let [Some(parent)] = ops.parents else { return };
        let qkv = inner_tensor(checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(qkv));
        let dqkv = B::self_attention_backward(grad, qkv, inner_tensor(probs), heads);
        grads.register::<B>(parent.id, dqkv.into_primitive().tensor());
    }
}
