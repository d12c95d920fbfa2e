//! The one seam between SN-Net's layers and a burn backend.
//!
//! Anchors and stitching layers run a handful of operations whose fastest form depends on the
//! backend: a Linear over token rows, multi-head attention from a fused qkv projection, the patch
//! embedding of a vision transformer, exact GELU and a scaled softmax. They call them through
//! [`Kernels`], a trait over [`Backend`] whose default bodies are burn's own operations
//! ([`reference`]). A backend overrides what it runs faster; today only the CPU backend does
//! ([`flex`], feature `flex`), with GEMMs over burn-flex's buffers and vectorised elementwise
//! kernels.
//!
//! Training goes through the same seam: [`Autodiff<B>`](burn_autodiff::Autodiff) implements
//! [`Kernels`] for every `B: Kernels`. When `B` offers a recorded form of an operation
//! ([`Kernels::recorded_affine`], [`Kernels::recorded_self_attention`], [`Kernels::gelu_parts`]), the
//! autodiff backend records it as one node whose backward calls `B`'s gradient hooks
//! ([`Kernels::affine_input_grad`], …); otherwise it records burn's operations, exactly as burn
//! would. Rust has no specialisation, so this is how one backend's fast path reaches training
//! without run-time type checks: each backend has one implementation, chosen at compile time.
//!
//! Which backends implement it: `Flex` (feature `flex`), `CubeBackend` (feature `cubecl`: burn's
//! wgpu, Vulkan, Metal and CUDA backends without fusion), `Fusion` (feature `fusion`: the same with
//! fusion, burn's default), `NdArray` (feature `ndarray`), `BackendRouter` (feature `router`) and
//! `Autodiff` over any of them. Another backend needs one `impl Kernels for …` line here (the
//! trait's defaults serve), since Rust allows implementing it only in this crate.

#![warn(missing_docs)]

use std::sync::OnceLock;

use burn::{
    nn::conv::Conv2d,
    tensor::{backend::AutodiffBackend, backend::Backend, Tensor},
};

mod autodiff;
mod backends;
#[cfg(feature = "flex")]
pub mod flex;
pub mod reference;

/// The operations anchors and stitching layers run, per backend. Every method has a default in
/// burn's operations ([`reference`]); a backend overrides those it runs faster. The results must
/// equal the defaults' up to floating-point rounding (the tests hold each override to its default).
pub trait Kernels: Backend {
    /// `x · weight + bias` for `x` `[rows, in]`, `weight` `[in, out]`, `bias` `[out]`.
    fn affine(x: Tensor<Self, 2>, weight: Tensor<Self, 2>, bias: Option<Tensor<Self, 1>>) -> Tensor<Self, 2> {
        reference::affine(x, weight, bias)
    }

    /// Multi-head self-attention from the fused projection `qkv` `[b, n, 3c]` (q, k, v side by
    /// side, each `heads` heads of `c / heads`) to the merged heads `[b, n, c]`: timm's
    /// `softmax(q·kᵀ·d^-½)·v`.
    fn self_attention(qkv: Tensor<Self, 3>, heads: usize) -> Tensor<Self, 3> {
        reference::self_attention(qkv, heads)
    }

    /// A vision transformer's tokens `[b, 1 + n, e]` from `images` `[b, c, h, w]`: the patch
    /// convolution `conv` flattened to `n` tokens, after the class token `cls` `[1, 1, e]`, plus the
    /// position embedding `pos` `[1, 1 + n, e]` (timm's `cat(cls, proj(x).flatten(2).T) + pos`).
    fn patch_tokens(images: Tensor<Self, 4>, conv: &Conv2d<Self>, cls: Tensor<Self, 3>, pos: Tensor<Self, 3>) -> Tensor<Self, 3> {
        reference::patch_tokens(images, conv, cls, pos)
    }

    /// `conv` applied to `x` `[b, c, h, w]`: burn's convolution ([`reference::convolve`]: a strided
    /// 1×1 convolution runs on the strided input).
    fn convolve(x: Tensor<Self, 4>, conv: &Conv2d<Self>) -> Tensor<Self, 4> {
        reference::convolve(x, conv)
    }

    /// Exact (erf) GELU, timm's `nn.GELU()`.
    fn exact_gelu<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        reference::exact_gelu(x)
    }

    /// `softmax(x · scale)` over the last dimension.
    fn softmax_scaled<const D: usize>(x: Tensor<Self, D>, scale: f64) -> Tensor<Self, D> {
        reference::softmax_scaled(x, scale)
    }

    /// For the autodiff backend over this one: [`Kernels::affine`] in a form it can record as one
    /// node, whose backward then calls [`Kernels::affine_input_grad`],
    /// [`Kernels::affine_weight_grad`] and [`Kernels::affine_bias_grad`]. `None` (the default, or
    /// for operands the backend's kernel does not take): burn's operations are recorded instead.
    fn recorded_affine(x: &Tensor<Self, 2>, weight: &Tensor<Self, 2>, bias: Option<&Tensor<Self, 1>>) -> Option<Tensor<Self, 2>> {
        let _ = (x, weight, bias);
        None
    }

    /// The Linear's input gradient `∂y · weightᵀ` (`∂y` `[rows, out]`, `weight` `[in, out]`).
    fn affine_input_grad(grad: Tensor<Self, 2>, weight: Tensor<Self, 2>) -> Tensor<Self, 2> {
        reference::affine_input_grad(grad, weight)
    }

    /// The Linear's weight gradient `xᵀ · ∂y` (`x` `[rows, in]`, `∂y` `[rows, out]`).
    fn affine_weight_grad(grad: Tensor<Self, 2>, x: Tensor<Self, 2>) -> Tensor<Self, 2> {
        reference::affine_weight_grad(grad, x)
    }

    /// The Linear's bias gradient: `∂y` `[rows, out]` summed over its rows.
    fn affine_bias_grad(grad: Tensor<Self, 2>) -> Tensor<Self, 1> {
        reference::affine_bias_grad(grad)
    }

    /// For the autodiff backend over this one: [`Kernels::self_attention`] in a form it can record as
    /// one node, returning the merged heads and the attention probabilities `[b, heads, n, n]`
    /// that [`Kernels::self_attention_backward`] reads. `None` (the default): burn's operations are
    /// recorded instead.
    fn recorded_self_attention(qkv: &Tensor<Self, 3>, heads: usize) -> Option<(Tensor<Self, 3>, Tensor<Self, 4>)> {
        let _ = (qkv, heads);
        None
    }

    /// The attention's input gradient `∂qkv` `[b, n, 3c]` from the output's `grad` `[b, n, c]`, the
    /// input `qkv` and the probabilities `probs` of [`Kernels::recorded_self_attention`].
    fn self_attention_backward(grad: Tensor<Self, 3>, qkv: Tensor<Self, 3>, probs: Tensor<Self, 4>, heads: usize) -> Tensor<Self, 3> {
        reference::self_attention_backward(grad, qkv, probs, heads)
    }

    /// For the autodiff backend over this one: `(Φ(x), x·φ(x))`, the normal CDF and `x` times the
    /// normal density, from which it builds GELU as `x·Φ(x)` with the gradient `Φ(x) + x·φ(x)`
    /// (two constants and four elementwise operations recorded instead of GELU's own). `None` (the
    /// default): GELU is recorded as one node with exact GELU's derivative
    /// ([`reference::gelu_slope`]).
    fn gelu_parts<const D: usize>(x: Tensor<Self, D>) -> Option<(Tensor<Self, D>, Tensor<Self, D>)> {
        let _ = x;
        None
    }
}

/// An autodiff backend whose inner backend (where gradients and optimiser state live) has
/// [`Kernels`] too: what training needs.
pub trait AutodiffKernels: AutodiffBackend<InnerBackend: Kernels> + Kernels {}

impl<B> AutodiffKernels for B where B: AutodiffBackend<InnerBackend: Kernels> + Kernels {}

/// Threads for work split across the CPU: `RAYON_NUM_THREADS` (what burn-flex's pool uses), else
/// the available parallelism.
pub fn cpu_threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&t| t > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
    })
}
