//! [`Kernels`] for the CPU backend, burn-flex (feature `flex`): GEMMs over its buffers ([`gemm`])
//! and vectorised, multi-threaded elementwise kernels ([`cpu`]).
//!
//! Each kernel takes contiguous f32 tensors; for anything else (another dtype, a strided view,
//! shapes that do not chain) the operation runs burn's ([`reference`]). The numbers behind these
//! kernels are in docs/benchmarks.md ("CPU forward: where the time goes").

use burn::{
    backend::Flex,
    nn::{conv::Conv2d, PaddingConfig2d},
    tensor::{DType, Tensor, TensorData, TensorPrimitive},
};
use burn_flex::FlexTensor;

use crate::{reference, Kernels};

pub mod cpu;
mod gemm;

use gemm::{AttentionShape, PatchShape};

impl Kernels for Flex {
    /// One GEMM over burn-flex's buffers accumulating into the bias rows.
    fn affine(x: Tensor<Self, 2>, weight: Tensor<Self, 2>, bias: Option<Tensor<Self, 1>>) -> Tensor<Self, 2> {
        Self::recorded_affine(&x, &weight, bias.as_ref()).unwrap_or_else(|| reference::affine(x, weight, bias))
    }

    /// Two GEMMs per image and head over strided blocks of `qkv`, our softmax between.
    fn self_attention(qkv: Tensor<Self, 3>, heads: usize) -> Tensor<Self, 3> {
        match Self::recorded_self_attention(&qkv, heads) {
            Some((merged, _)) => merged,
            None => reference::self_attention(qkv, heads),
        }
    }

    /// One GEMM per image into rows already holding the class token and positions; for a
    /// convolution that is not a patchify (`stride = kernel`, no padding), burn's convolution and
    /// one pass that places its maps among the tokens ([`cpu::maps_to_tokens`]).
    fn patch_tokens(images: Tensor<Self, 4>, conv: &Conv2d<Self>, cls: Tensor<Self, 3>, pos: Tensor<Self, 3>) -> Tensor<Self, 3> {
        if let Some(tokens) = fused_patch_tokens(&images, conv, &cls, &pos) {
            return tokens;
        }
        let maps = conv.forward(images);
        let [b, e, gh, gw] = maps.dims();
        let n = gh * gw;
        let placed = (|| {
            let (maps, cls, pos) = (contiguous(buffer(&maps)?), buffer(&cls)?, buffer(&pos)?);
            let (maps, cls, pos) = (maps.as_slice::<f32>()?, cls.as_slice::<f32>()?, pos.as_slice::<f32>()?);
            (cls.len() == e && pos.len() == (n + 1) * e).then(|| cpu::maps_to_tokens(maps, [b, e, n], cls, pos))
        })();
        match placed {
            Some(tokens) => from_values(tokens, [b, n + 1, e]),
            None => reference::tokens_from_maps(maps, cls, pos),
        }
    }

    /// [`cpu::gelu`] in place.
    fn exact_gelu<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        map_in_place(x, cpu::gelu).unwrap_or_else(reference::exact_gelu)
    }

    /// [`cpu::softmax_rows`] in place (the scale fused into the row pass, a vectorised `exp`).
    fn softmax_scaled<const D: usize>(x: Tensor<Self, D>, scale: f64) -> Tensor<Self, D> {
        let row = x.dims()[D - 1];
        map_in_place(x, |data| cpu::softmax_rows(data, row, scale as f32)).unwrap_or_else(|x| reference::softmax_scaled(x, scale))
    }

    fn recorded_affine(x: &Tensor<Self, 2>, weight: &Tensor<Self, 2>, bias: Option<&Tensor<Self, 1>>) -> Option<Tensor<Self, 2>> {
        let ([rows, k], [k_w, n]) = (x.dims(), weight.dims());
        if k != k_w || bias.is_some_and(|b| b.dims() != [n]) {
            return None;
        }
        let (x, weight) = (buffer(x)?, buffer(weight)?);
        let bias = bias.map(buffer).map_or(Some(None), |b| b.map(Some))?;
        // `as_slice` is `None` for another dtype or a strided layout.
        let (x, weight) = (x.as_slice::<f32>()?, weight.as_slice::<f32>()?);
        let bias = bias.as_ref().map(|b| b.as_slice::<f32>()).map_or(Some(None), |b| b.map(Some))?;
        if x.len() != rows * k || weight.len() != k * n {
            return None;
        }
        Some(from_values(gemm::affine(x, weight, bias, [rows, k, n]), [rows, n]))
    }

    fn affine_input_grad(grad: Tensor<Self, 2>, weight: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let ([rows, n], [k, _]) = (grad.dims(), weight.dims());
        let product = (|| {
            let (g, w) = (contiguous(buffer(&grad)?), contiguous(buffer(&weight)?));
            Some(gemm::input_grad(g.as_slice::<f32>()?, w.as_slice::<f32>()?, [rows, k, n]))
        })();
        match product {
            Some(dx) => from_values(dx, [rows, k]),
            None => reference::affine_input_grad(grad, weight),
        }
    }

    fn affine_weight_grad(grad: Tensor<Self, 2>, x: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let ([rows, n], [_, k]) = (grad.dims(), x.dims());
        let product = (|| {
            let (g, x) = (contiguous(buffer(&grad)?), contiguous(buffer(&x)?));
            Some(gemm::weight_grad(g.as_slice::<f32>()?, x.as_slice::<f32>()?, [rows, k, n]))
        })();
        match product {
            Some(dw) => from_values(dw, [k, n]),
            None => reference::affine_weight_grad(grad, x),
        }
    }

    fn affine_bias_grad(grad: Tensor<Self, 2>) -> Tensor<Self, 1> {
        let [_, n] = grad.dims();
        let sum = (|| Some(gemm::bias_grad(contiguous(buffer(&grad)?).as_slice::<f32>()?, n)))();
        match sum {
            Some(db) => from_values(db, [n]),
            None => reference::affine_bias_grad(grad),
        }
    }

    fn recorded_self_attention(qkv: &Tensor<Self, 3>, heads: usize) -> Option<(Tensor<Self, 3>, Tensor<Self, 4>)> {
        let s = attention_shape(qkv.dims(), heads)?;
        let qkv = buffer(qkv)?;
        let (merged, probs) = gemm::attention_forward(qkv.as_slice::<f32>()?, s)?;
        Some((from_values(merged, [s.batch, s.tokens, s.heads * s.head_dim]), from_values(probs, [s.batch, s.heads, s.tokens, s.tokens])))
    }

    fn self_attention_backward(grad: Tensor<Self, 3>, qkv: Tensor<Self, 3>, probs: Tensor<Self, 4>, heads: usize) -> Tensor<Self, 3> {
        let dims = qkv.dims();
        let product = (|| {
            let s = attention_shape(dims, heads)?;
            let (g, x, p) = (contiguous(buffer(&grad)?), contiguous(buffer(&qkv)?), contiguous(buffer(&probs)?));
            gemm::self_attention_backward(g.as_slice::<f32>()?, x.as_slice::<f32>()?, p.as_slice::<f32>()?, s)
        })();
        match product {
            Some(dqkv) => from_values(dqkv, dims),
            None => reference::self_attention_backward(grad, qkv, probs, heads),
        }
    }

    /// `Φ(x)` and `x·φ(x)` from our kernel ([`cpu::gelu_parts`]), in place of burn-flex's scalar,
    /// single-threaded erf in both passes.
    fn gelu_parts<const D: usize>(x: Tensor<Self, D>) -> Option<(Tensor<Self, D>, Tensor<Self, D>)> {
        if x.dtype() != DType::F32 {
            return None;
        }
        let (shape, device) = (x.shape(), x.device());
        let data = x.into_data();
        let mut cdf = data.as_slice::<f32>().ok()?.to_vec();
        let mut slope = cdf.clone();
        cpu::gelu_parts(&mut cdf, &mut slope);
        let cdf = Tensor::from_data(TensorData::new(cdf, shape.clone()), &device);
        Some((cdf, Tensor::from_data(TensorData::new(slope, shape), &device)))
    }
}

/// The sizes of an attention over `qkv` `[b, n, 3c]` with `heads` heads; `None` when `3c` is not
/// a multiple of `3·heads` or there are no tokens.
fn attention_shape([batch, tokens, width]: [usize; 3], heads: usize) -> Option<AttentionShape> {
    (heads > 0 && width % (3 * heads) == 0 && tokens > 0).then(|| AttentionShape { batch, tokens, heads, head_dim: width / (3 * heads) })
}

/// The tokens of a patchify convolution (`stride = kernel`, square, no padding, dilation or
/// groups) as one GEMM per image; `None` for another convolution or operands the kernel does not
/// take.
fn fused_patch_tokens(
    images: &Tensor<Flex, 4>,
    conv: &Conv2d<Flex>,
    cls: &Tensor<Flex, 3>,
    pos: &Tensor<Flex, 3>,
) -> Option<Tensor<Flex, 3>> {
    let ([batch, channels, height, width], [embed, c_w, patch, patch_w]) = (images.dims(), conv.weight.dims());
    let patchify = conv.stride == [patch, patch]
        && patch == patch_w
        && patch > 0
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && matches!(conv.padding, PaddingConfig2d::Valid);
    let n = (height / patch.max(1)) * (width / patch.max(1));
    let shapes_fit = patchify
        && channels == c_w
        && height % patch == 0
        && width % patch == 0
        && cls.dims() == [1, 1, embed]
        && pos.dims() == [1, n + 1, embed]
        && conv.bias.as_ref().is_none_or(|b| b.dims() == [embed]);
    if !shapes_fit {
        return None;
    }
    let (images, weight) = (buffer(images)?, buffer(&conv.weight.val())?);
    let (cls, pos) = (buffer(cls)?, buffer(pos)?);
    let bias = conv.bias.as_ref().map(|b| buffer(&b.val())).map_or(Some(None), |b| b.map(Some))?;
    let bias = bias.as_ref().map(|b| b.as_slice::<f32>()).map_or(Some(None), |b| b.map(Some))?;
    let (images, weight, cls, pos) = (images.as_slice::<f32>()?, weight.as_slice::<f32>()?, cls.as_slice::<f32>()?, pos.as_slice::<f32>()?);
    let shape = PatchShape { batch, channels, height, width, embed, patch };
    if images.len() != batch * channels * height * width || weight.len() != embed * channels * patch * patch {
        return None;
    }
    Some(from_values(gemm::patch_tokens(images, weight, bias, cls, pos, shape), [batch, n + 1, embed]))
}

/// burn-flex's tensor behind `t` (`None` when quantised).
fn buffer<const D: usize>(t: &Tensor<Flex, D>) -> Option<FlexTensor> {
    match t.clone().into_primitive() {
        TensorPrimitive::Float(p) => Some(p),
        TensorPrimitive::QFloat(_) => None,
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

/// The f32 tensor of `shape` holding `values`.
fn from_values<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(FlexTensor::from_data(TensorData::new(values, shape))))
}

/// Applies `f` to the buffer of `x` in place when `x` is f32 (burn-flex's `into_data`/`from_data`
/// move the buffer without copying when the tensor is not shared); gives `x` back otherwise.
fn map_in_place<const D: usize>(x: Tensor<Flex, D>, f: impl FnOnce(&mut [f32])) -> Result<Tensor<Flex, D>, Tensor<Flex, D>> {
    if x.dtype() != DType::F32 {
        return Err(x);
    }
    let device = x.device();
    let mut data = x.into_data();
    match data.as_mut_slice::<f32>() {
        Ok(values) => f(values),
        Err(_) => unreachable!("an f32 tensor gives f32 data"),
    }
    Ok(Tensor::from_data(data, (&device, DType::F32)))
}

#[cfg(test)]
mod tests;
