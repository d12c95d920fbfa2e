//! The map of the official stitching layer, with SN-Netv2's optional low-rank (LoRA) update.

// The official parameter names `lora_A` and `lora_B` are the fields' names (burn keys parameters by
// field), in this module's derived code too.
#![allow(non_snake_case)]

use burn::{
    module::{Module, Param},
    nn::{Initializer, Linear, LinearConfig},
    tensor::{backend::Backend, Tensor, TensorData},
};

use crate::{ops::over_rows, Kernels};

/// The map of a stitching layer, `y = x·W + b`, plus `s·(x·A)·B` when it has LoRA factors
/// (SN-Netv2, spec §11.5: rank `r`, `s = 1/r`). With factors the dense `W` is frozen (it takes no
/// gradient), and `b`, `A` and `B` train, as officially.
///
/// Parameters are stored in burn's orientation and named as the official checkpoints name them:
/// `weight` `[in, out]` (`[out, in]` in files), `bias` `[out]`, `lora_A` `[in, r]` (`[r, in]` in
/// files), `lora_B` `[r, out]` (`[out, r]` in files).
#[derive(Module, Debug)]
pub struct StitchLinear<B: Backend> {
    /// `W`.
    pub weight: Param<Tensor<B, 2>>,
    /// `b`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// `A` (Kaiming-uniform with `a = √5` when new), `None` without LoRA.
    pub lora_A: Option<Param<Tensor<B, 2>>>,
    /// `B` (zeros when new), `None` without LoRA.
    pub lora_B: Option<Param<Tensor<B, 2>>>,
}

impl<B: Kernels> StitchLinear<B> {
    /// PyTorch `nn.Linear`'s default initialisation (weight and bias uniform in `±1/√in`, burn's
    /// `Linear` initialiser, lazily), with LoRA factors of rank `lora_rank` when it is not 0.
    pub fn new(in_channels: usize, out_channels: usize, lora_rank: usize, device: &B::Device) -> Self {
        let Linear { weight, bias } = LinearConfig::new(in_channels, out_channels).init(device);
        let mut linear = Self { weight, bias, lora_A: None, lora_B: None };
        if lora_rank > 0 {
            // Kaiming-uniform with a = √5 over fan-in `in`: gain 1/√3, the same bound 1/√in.
            let kaiming = Initializer::KaimingUniform { gain: 1.0 / 3f64.sqrt(), fan_out_only: false };
            linear.lora_A = Some(kaiming.init_with([in_channels, lora_rank], Some(in_channels), Some(lora_rank), device));
            linear.lora_B = Some(Initializer::Zeros.init([lora_rank, out_channels], device));
            linear.weight = linear.weight.set_require_grad(false);
        }
        linear
    }

    /// The rank of the LoRA factors (0: none).
    pub fn lora_rank(&self) -> usize {
        self.lora_A.as_ref().map_or(0, |a| a.dims()[1])
    }

    /// `y` for `x` `[…, in]`, as 2-D products over all rows (the backend's [`Kernels::affine`]).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        over_rows(x, |x| {
            let y = B::affine(x.clone(), self.weight.val(), self.bias.as_ref().map(|b| b.val()));
            match (&self.lora_A, &self.lora_B) {
                (Some(a), Some(b)) => {
                    let scaling = 1.0 / self.lora_rank() as f64;
                    y + B::affine(B::affine(x, a.val(), None), b.val(), None).mul_scalar(scaling)
                }
                _ => y,
            }
        })
    }

    /// The same map as one dense `W + s·A·B` without factors: what inference runs (the official
    /// `eval()` merge), so a deployed layer costs what the affine one does.
    pub fn merged(self) -> Self {
        let (Some(a), Some(b)) = (&self.lora_A, &self.lora_B) else { return self };
        let scaling = 1.0 / self.lora_rank() as f64;
        let weight = self.weight.val() + a.val().matmul(b.val()).mul_scalar(scaling);
        Self { weight: Param::from_tensor(weight), bias: self.bias, lora_A: None, lora_B: None }
    }

    /// Sets `W` (row-major `[out, in]`, PyTorch orientation) and `b`; the factors are kept, and
    /// `W` stays frozen if the layer has them.
    pub fn set_affine(&mut self, weight: &[f32], bias: &[f32]) {
        let [d_in, d_out] = self.weight.dims();
        let device = self.weight.device();
        // burn's orientation `[in, out]`, transposed on the host into a contiguous tensor: as a
        // transposed view of `[out, in]`, the wgpu backend (with fusion) ran later forwards through
        // it wrongly (the backend suite's least-squares check).
        let w_in_out: Vec<f32> = (0..d_in * d_out).map(|i| weight[(i % d_out) * d_in + i / d_out]).collect();
        let w = Tensor::<B, 2>::from_data(TensorData::new(w_in_out, [d_in, d_out]), &device);
        let b = Tensor::<B, 1>::from_data(TensorData::new(bias.to_vec(), [d_out]), &device);
        self.weight = Param::from_tensor(w).set_require_grad(self.lora_rank() == 0);
        self.bias = Some(Param::from_tensor(b));
    }
}
