//! Elementwise kernels that burn-flex runs slowly: exact GELU, the scaled softmax of attention and
//! the bias of token Linears. On burn-flex (f32) they run our vectorised, multi-threaded CPU kernels
//! ([`cpu`]) — GELU in training too; on every other backend, burn's own operations.

use burn::tensor::{activation, backend::Backend, DType, Tensor, TensorData};

/// Exact (erf) GELU, timm's `nn.GELU()`.
///
/// On burn-flex (f32) this runs [`cpu::gelu`] in place on the tensor's buffer: burn-flex's own GELU
/// calls `libm::erff` element by element on one thread, the largest elementwise cost of a DeiT block
/// on the CPU (docs/benchmarks.md, "CPU forward: where the time goes"). Elsewhere: burn's GELU.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if x.dtype() == DType::F32 && B::name(&x.device()) == "autodiff<flex>" {
        return gelu_from_parts(x);
    }
    match cpu::map_in_place(x, cpu::gelu) {
        Ok(y) => y,
        Err(x) => activation::gelu(x),
    }
}

/// GELU under autodiff on burn-flex, from two constants our kernel computes ([`cpu::gelu_parts`]):
/// `x·Φ(x) + (x − x̄)·xφ(x)`, where `x̄` is `x` detached. The second term is zero, so the value is
/// exact GELU, and the gradient is `Φ(x) + x·φ(x)`, exact GELU's derivative — with four cheap
/// elementwise operations recorded instead of burn-flex's scalar, single-threaded erf in both passes.
fn gelu_from_parts<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let (shape, device) = (x.shape(), x.device());
    let data = x.clone().detach().into_data();
    let Ok(values) = data.as_slice::<f32>() else { return activation::gelu(x) };
    let mut cdf = values.to_vec();
    let mut slope = cdf.clone();
    cpu::gelu_parts(&mut cdf, &mut slope);
    let cdf = Tensor::<B, D>::from_data(TensorData::new(cdf, shape.clone()), &device);
    let slope = Tensor::<B, D>::from_data(TensorData::new(slope, shape), &device);
    x.clone() * cdf + (x.clone() - x.detach()) * slope
}

/// `softmax(x · scale)` over the last dimension.
///
/// On burn-flex (f32) this runs [`cpu::softmax_rows`] in place (the scale fused into the row pass,
/// a vectorised `exp`); elsewhere burn's `softmax(x * scale)`.
pub fn softmax_scaled<B: Backend, const D: usize>(x: Tensor<B, D>, scale: f64) -> Tensor<B, D> {
    let row = x.dims()[D - 1];
    match cpu::map_in_place(x, |data| cpu::softmax_rows(data, row, scale as f32)) {
        Ok(y) => y,
        Err(x) => activation::softmax(x * scale, D - 1),
    }
}

pub mod cpu;

#[cfg(feature = "flex")]
pub mod flex;

#[cfg(test)]
mod tests {
    use burn::{
        backend::{Autodiff, Flex},
        tensor::{activation, DType, Distribution, Tensor, TensorData},
    };

    use super::*;

    fn values() -> Vec<f32> {
        let mut v: Vec<f32> = (-16_000..=16_000).map(|i| i as f32 * 5e-4).collect();
        v.extend([-1e30, -100.0, -9.0, -5.5, 5.5, 9.0, 100.0, 1e30, 0.0, -0.0]);
        v
    }

    #[test]
    fn cpu_gelu_matches_exact_gelu() {
        let xs = values();
        let device = Default::default();
        let reference: Vec<f64> = activation::gelu(Tensor::<Flex, 1>::from_data(
            TensorData::new(xs.iter().map(|&x| x as f64).collect::<Vec<_>>(), [xs.len()]),
            (&device, DType::F64),
        ))
        .into_data()
        .to_vec()
        .unwrap();
        let mut ours = xs.clone();
        cpu::gelu(&mut ours);
        for ((&x, &r), &o) in xs.iter().zip(&reference).zip(&ours) {
            let err = (o as f64 - r).abs();
            assert!(err <= 1e-6 * (x as f64).abs().max(1.0), "gelu({x}) = {o}, expected {r}");
        }
        // The burn-flex f32 tensor path runs the same kernel.
        let t = gelu(Tensor::<Flex, 1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &device));
        assert_eq!(t.into_data().to_vec::<f32>().unwrap(), ours);
    }

    #[test]
    fn cpu_softmax_matches_f64() {
        let device = Default::default();
        let x = Tensor::<Flex, 4>::random([2, 3, 197, 197], Distribution::Normal(0.0, 4.0), &device);
        let xs = x.clone().into_data().to_vec::<f32>().unwrap();
        let scale = 0.125f64;
        let ours = softmax_scaled(x, scale).into_data().to_vec::<f32>().unwrap();
        for (row, out) in xs.chunks(197).zip(ours.chunks(197)) {
            let max = row.iter().map(|&v| v as f64 * scale).fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 * scale - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for (&o, &ei) in out.iter().zip(&e) {
                let r = ei / sum;
                assert!((o as f64 - r).abs() <= 1e-6 * r + 1e-9, "softmax {o} vs {r}");
            }
        }
        // Odd row lengths (no full SIMD chunk, a remainder) and a row of equal values.
        let mut short = vec![1.0f32, 2.0, 3.0, 1.0, 1.0, 1.0];
        cpu::softmax_rows(&mut short, 3, 1.0);
        let e: Vec<f64> = [1.0f64, 2.0, 3.0].iter().map(|v| (v - 3.0f64).exp()).collect();
        let s: f64 = e.iter().sum();
        for (o, r) in short[..3].iter().zip(e.iter().map(|v| v / s)) {
            assert!((*o as f64 - r).abs() < 1e-7);
        }
        assert!(short[3..].iter().all(|&v| (v - 1.0 / 3.0).abs() < 1e-7));
    }

    #[test]
    fn maps_become_tokens_with_the_class_token_and_positions() {
        let (b, c, n) = (2, 3, 11); // n not a multiple of the 8-token blocks
        let maps: Vec<f32> = (0..b * c * n).map(|i| i as f32).collect();
        let cls = [0.5, -0.25, 2.0];
        let pos: Vec<f32> = (0..(n + 1) * c).map(|i| 1000.0 * i as f32).collect();
        let tokens = cpu::maps_to_tokens(&maps, [b, c, n], &cls, &pos);
        assert_eq!(tokens.len(), b * (n + 1) * c);
        for image in 0..b {
            for t in 0..=n {
                for ch in 0..c {
                    let value = if t == 0 { cls[ch] } else { maps[(image * c + ch) * n + t - 1] };
                    assert_eq!(tokens[(image * (n + 1) + t) * c + ch], value + pos[t * c + ch], "image {image} token {t} channel {ch}");
                }
            }
        }
    }

    #[test]
    fn last_two_dimensions_transpose() {
        let (b, rows, cols) = (3, 5, 13);
        let data: Vec<f32> = (0..b * rows * cols).map(|i| i as f32).collect();
        let out = cpu::transpose_last_two(&data, [b, rows, cols]);
        for i in 0..b {
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(out[(i * cols + c) * rows + r], data[(i * rows + r) * cols + c]);
                }
            }
        }
        assert!(cpu::transpose_last_two(&[], [2, 0, 3]).is_empty());
    }

    #[test]
    fn cpu_kernels_split_across_threads() {
        // Large enough to be split: the result equals the single-chunk one.
        let n: usize = 4 * 197 * 197 * 8;
        let xs: Vec<f32> = (0..n).map(|i| ((i * 7919) % 2000) as f32 * 0.01 - 10.0).collect();
        let mut whole = xs.clone();
        cpu::gelu(&mut whole);
        let mut by_part = xs.clone();
        by_part.chunks_mut(1000).for_each(cpu::gelu);
        assert_eq!(whole, by_part);
        let mut whole = xs.clone();
        cpu::softmax_rows(&mut whole, 197, 0.5);
        let mut by_part = xs;
        by_part.chunks_mut(197).for_each(|r| cpu::softmax_rows(r, 197, 0.5));
        assert_eq!(whole, by_part);
    }

    #[test]
    fn autodiff_gelu_has_exact_values_and_gradients() {
        let device = Default::default();
        let xs: Vec<f64> = (-800..=800).map(|i| i as f64 * 0.01).chain([-30.0, 30.0]).collect();
        let x =
            Tensor::<Autodiff<Flex>, 1>::from_data(TensorData::new(xs.iter().map(|&v| v as f32).collect::<Vec<_>>(), [xs.len()]), &device)
                .require_grad();
        let y = gelu(x.clone());
        let grads = y.clone().sum().backward();
        let values = y.into_data().to_vec::<f32>().unwrap();
        let slopes = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        let reference =
            Tensor::<Autodiff<Flex>, 1>::from_data(TensorData::new(xs.clone(), [xs.len()]), (&device, DType::F64)).require_grad();
        let r = activation::gelu(reference.clone());
        let rg = r.clone().sum().backward();
        let r_values = r.into_data().to_vec::<f64>().unwrap();
        let r_slopes = reference.grad(&rg).unwrap().into_data().to_vec::<f64>().unwrap();
        for i in 0..xs.len() {
            assert!((values[i] as f64 - r_values[i]).abs() <= 1e-6 * xs[i].abs().max(1.0), "gelu({}) = {}", xs[i], values[i]);
            assert!((slopes[i] as f64 - r_slopes[i]).abs() <= 2e-6, "gelu'({}) = {}, expected {}", xs[i], slopes[i], r_slopes[i]);
        }
    }
}
