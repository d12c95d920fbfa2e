//! The CPU kernels against burn's operations (and f64 references for the elementwise ones).

use burn::{
    backend::{Autodiff, Flex},
    nn::LinearConfig,
    tensor::{activation, DType, Distribution, Tensor, TensorData},
};

use super::cpu;
use crate::Kernels;

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
    let t = Flex::exact_gelu(Tensor::<Flex, 1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &device));
    assert_eq!(t.into_data().to_vec::<f32>().unwrap(), ours);
}

#[test]
fn cpu_softmax_matches_f64() {
    let device = Default::default();
    let x = Tensor::<Flex, 4>::random([2, 3, 197, 197], Distribution::Normal(0.0, 4.0), &device);
    let xs = x.clone().into_data().to_vec::<f32>().unwrap();
    let scale = 0.125f64;
    let ours = Flex::softmax_scaled(x, scale).into_data().to_vec::<f32>().unwrap();
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
    assert_exact_gelu(Autodiff::<Flex>::exact_gelu);
}

/// The GELU node that backends without GELU parts record (the GPU backends): burn's own GELU
/// backward is its tanh approximation's derivative, up to ~1e-3 off.
#[test]
fn recorded_gelu_has_exact_values_and_gradients() {
    assert_exact_gelu(crate::autodiff::record_gelu);
}

/// `gelu` against burn-flex's GELU in f64 (exact, with its exact derivative), values and slopes.
fn assert_exact_gelu(gelu: impl Fn(Tensor<Autodiff<Flex>, 1>) -> Tensor<Autodiff<Flex>, 1>) {
    let device = Default::default();
    let xs: Vec<f64> = (-800..=800).map(|i| i as f64 * 0.01).chain([-30.0, 30.0]).collect();
    let x = Tensor::<Autodiff<Flex>, 1>::from_data(TensorData::new(xs.iter().map(|&v| v as f32).collect::<Vec<_>>(), [xs.len()]), &device)
        .require_grad();
    let y = gelu(x.clone());
    let grads = y.clone().sum().backward();
    let values = y.into_data().to_vec::<f32>().unwrap();
    let slopes = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
    let reference = Tensor::<Autodiff<Flex>, 1>::from_data(TensorData::new(xs.clone(), [xs.len()]), (&device, DType::F64)).require_grad();
    let r = activation::gelu(reference.clone());
    let rg = r.clone().sum().backward();
    let r_values = r.into_data().to_vec::<f64>().unwrap();
    let r_slopes = reference.grad(&rg).unwrap().into_data().to_vec::<f64>().unwrap();
    for i in 0..xs.len() {
        assert!((values[i] as f64 - r_values[i]).abs() <= 1e-6 * xs[i].abs().max(1.0), "gelu({}) = {}", xs[i], values[i]);
        assert!((slopes[i] as f64 - r_slopes[i]).abs() <= 2e-6, "gelu'({}) = {}, expected {}", xs[i], slopes[i], r_slopes[i]);
    }
}

fn max_diff(a: Tensor<Flex, 2>, b: Tensor<Flex, 2>) -> f32 {
    (a - b).abs().max().into_scalar()
}

#[test]
fn fused_gemm_equals_burns_linear() {
    let device = Default::default();
    // 300·128·256 multiply-adds split between threads (above `PARALLEL_MACS`); 5·6·3 do not.
    for (rows, i, o) in [(300, 128, 256), (5, 6, 3)] {
        let x = Tensor::<Flex, 2>::random([rows, i], Distribution::Normal(0.0, 1.0), &device);
        for with_bias in [true, false] {
            let l = LinearConfig::new(i, o).with_bias(with_bias).init::<Flex>(&device);
            let bias = l.bias.as_ref().map(|b| b.val());
            let got = Flex::recorded_affine(&x, &l.weight.val(), bias.as_ref()).expect("flex tensors take the fused path");
            assert_eq!(got.dims(), [rows, o]);
            let diff = max_diff(got, l.forward(x.clone()));
            assert!(diff < 1e-5, "{rows}x{i}x{o} bias {with_bias}: {diff}");
        }
    }
}

/// Asserts that `got` is within `tolerance` of `want`, relative to `want`'s largest magnitude
/// (at least 1).
fn assert_close<const D: usize>(got: Tensor<Autodiff<Flex>, D>, want: Tensor<Autodiff<Flex>, D>, tolerance: f32, what: &str) {
    let scale: f32 = want.clone().abs().max().into_scalar();
    let diff: f32 = (got - want).abs().max().into_scalar();
    assert!(diff <= tolerance * scale.max(1.0), "{what}: {diff} (largest {scale})");
}

#[test]
fn recorded_linear_gives_burns_values_and_gradients() {
    use burn::module::Module;
    type A = Autodiff<Flex>;
    let device = Default::default();
    let normal = Distribution::Normal(0.0, 1.0);
    // 300·128·256 multiply-adds split between threads; 5·6·3 do not.
    for (rows, i, o) in [(300, 128, 256), (5, 6, 3)] {
        for (with_bias, frozen, x_tracked) in (0..8).map(|c| (c & 1 == 0, c & 2 != 0, c & 4 == 0)) {
            let case = format!("{rows}x{i}x{o}, bias {with_bias}, frozen {frozen}, x tracked {x_tracked}");
            let mut l = LinearConfig::new(i, o).with_bias(with_bias).init::<A>(&device);
            if frozen {
                l = l.no_grad();
            }
            let x = Tensor::<A, 2>::random([rows, i], normal.clone(), &device);
            let x = if x_tracked { x.require_grad() } else { x };
            let (w, b) = (l.weight.val(), l.bias.as_ref().map(|b| b.val()));
            let got = A::affine(x.clone(), w.clone(), b.clone());
            let want = l.forward(x.clone());
            assert_close(got.clone(), want.clone(), 1e-5, &format!("{case}: values"));
            if frozen && !x_tracked {
                continue; // nothing to differentiate
            }
            // Weighted so that every entry of every gradient differs.
            let upstream = Tensor::<A, 2>::random([rows, o], normal.clone(), &device);
            let (got, want) = ((got * upstream.clone()).sum().backward(), (want * upstream).sum().backward());
            let grads = [
                ("x", x.grad(&got), x.grad(&want)),
                ("weight", w.grad(&got), w.grad(&want)),
                (
                    "bias",
                    b.as_ref().and_then(|b| b.grad(&got)).map(|g| g.unsqueeze()),
                    b.as_ref().and_then(|b| b.grad(&want)).map(|g| g.unsqueeze()),
                ),
            ];
            for (name, got, want) in grads {
                assert_eq!(got.is_some(), want.is_some(), "{case}: whether {name} has a gradient");
                if let (Some(got), Some(want)) = (got, want) {
                    assert_close(Tensor::from_inner(got), Tensor::from_inner(want), 1e-5, &format!("{case}: ∂{name}"));
                }
            }
        }
    }
}

/// timm's attention in burn's operations: `qkv` `[b, n, 3c]` → `[b, n, c]`.
fn attention_reference<B: burn::tensor::backend::Backend>(qkv: Tensor<B, 3>, heads: usize) -> Tensor<B, 3> {
    let [b, n, c3] = qkv.dims();
    let d = c3 / 3 / heads;
    let parts = qkv.reshape([b, n, 3, heads, d]).permute([2, 0, 3, 1, 4]);
    let [q, k, v] = [0, 1, 2].map(|i| parts.clone().narrow(0, i, 1).reshape([b, heads, n, d]));
    let attn = burn::tensor::activation::softmax(q.matmul(k.swap_dims(2, 3)) * (d as f64).powf(-0.5), 3);
    attn.matmul(v).swap_dims(1, 2).reshape([b, n, heads * d])
}

#[test]
fn attention_gives_timms_values_and_gradients() {
    type A = Autodiff<Flex>;
    let device = Default::default();
    let normal = Distribution::Normal(0.0, 1.0);
    // The second case is enough work to be split between threads.
    for (b, n, heads, d) in [(2, 5, 3, 4), (16, 64, 4, 32)] {
        let case = format!("b {b}, n {n}, {heads} heads of {d}");
        let qkv = Tensor::<Flex, 3>::random([b, n, 3 * heads * d], normal.clone(), &device);
        let plain = Flex::recorded_self_attention(&qkv, heads).expect("flex tensors take the kernel").0;
        let want = attention_reference(qkv.clone(), heads);
        let diff: f32 = (plain - want).abs().max().into_scalar();
        assert!(diff < 1e-5, "{case}, no autodiff: {diff}");

        let qkv = Tensor::<A, 3>::from_inner(qkv).require_grad();
        let got = A::self_attention(qkv.clone(), heads);
        let want = attention_reference(qkv.clone(), heads);
        assert_close(got.clone(), want.clone(), 2e-5, &format!("{case}: values"));
        let upstream = Tensor::<A, 3>::random([b, n, heads * d], normal.clone(), &device);
        let got = qkv.grad(&(got * upstream.clone()).sum().backward()).expect("a gradient");
        let want = qkv.grad(&(want * upstream).sum().backward()).expect("a gradient");
        assert_close(Tensor::from_inner(got), Tensor::from_inner(want), 2e-5, &format!("{case}: ∂qkv"));
    }
    // Untracked input under autodiff: values only.
    let qkv = Tensor::<A, 3>::random([2, 5, 12], normal, &device);
    assert_close(A::self_attention(qkv.clone(), 2), attention_reference(qkv.clone(), 2), 2e-5, "untracked");
}

#[test]
fn attention_declines_what_it_cannot_read_in_place() {
    let device = Default::default();
    let qkv = Tensor::<Flex, 3>::random([2, 5, 12], Distribution::Default, &device);
    // 12 is not 3 × 5 heads of a whole width; no heads at all.
    assert!(Flex::recorded_self_attention(&qkv, 5).is_none());
    assert!(Flex::recorded_self_attention(&qkv, 0).is_none());
    // A strided view, plain and under autodiff.
    let strided = Tensor::<Flex, 3>::random([2, 12, 5], Distribution::Default, &device).swap_dims(1, 2);
    assert!(Flex::recorded_self_attention(&strided, 2).is_none());
    // Declined, the attention is burn's.
    let want = attention_reference(strided.clone(), 2);
    assert!((Flex::self_attention(strided, 2) - want).abs().max().into_scalar() < 1e-6);
}

#[test]
fn patch_tokens_equal_convolution_class_token_and_positions() {
    use burn::nn::conv::Conv2dConfig;
    let device = Default::default();
    let (b, c, e, patch, h, w) = (2, 3, 5, 4, 8, 12);
    let n = (h / patch) * (w / patch);
    let images = Tensor::<Flex, 4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device);
    let cls = Tensor::<Flex, 3>::random([1, 1, e], Distribution::Normal(0.0, 1.0), &device);
    let pos = Tensor::<Flex, 3>::random([1, n + 1, e], Distribution::Normal(0.0, 1.0), &device);
    for with_bias in [true, false] {
        let conv = Conv2dConfig::new([c, e], [patch, patch]).with_stride([patch, patch]).with_bias(with_bias).init::<Flex>(&device);
        let maps = conv.forward(images.clone()).reshape([b, e, n]).swap_dims(1, 2);
        let expected = Tensor::cat(vec![cls.clone().expand([b as i64, 1, e as i64]), maps], 1) + pos.clone();
        let got = Flex::patch_tokens(images.clone(), &conv, cls.clone(), pos.clone());
        assert_eq!(got.dims(), [b, n + 1, e]);
        let diff: f32 = (got - expected).abs().max().into_scalar();
        assert!(diff < 1e-5, "bias {with_bias}: {diff}");
    }
    // Images one row taller than the patches tile: not a patchify of the whole image, so
    // burn's convolution (the same grid) and the tokens placed around its maps.
    let conv = Conv2dConfig::new([c, e], [patch, patch]).with_stride([patch, patch]).init::<Flex>(&device);
    let taller = Tensor::<Flex, 4>::random([b, c, h + 1, w], Distribution::Default, &device);
    let want = crate::reference::patch_tokens(taller.clone(), &conv, cls.clone(), pos.clone());
    let diff: f32 = (Flex::patch_tokens(taller, &conv, cls, pos) - want).abs().max().into_scalar();
    assert!(diff < 1e-5, "taller images: {diff}");
}

#[test]
fn fused_gemm_declines_what_it_cannot_read_in_place() {
    let device = Default::default();
    let l = LinearConfig::new(4, 3).init::<Flex>(&device);
    let (w, b) = (l.weight.val(), l.bias.as_ref().map(|b| b.val()));
    // A transposed view is not contiguous; mismatched widths do not chain.
    let strided = Tensor::<Flex, 2>::random([4, 6], Distribution::Default, &device).transpose();
    assert!(Flex::recorded_affine(&strided, &w, b.as_ref()).is_none());
    let narrow = Tensor::<Flex, 2>::random([6, 5], Distribution::Default, &device);
    assert!(Flex::recorded_affine(&narrow, &w, b.as_ref()).is_none());
    // Declined, the product is burn's.
    assert!(max_diff(Flex::affine(strided.clone(), w.clone(), b.clone()), l.forward(strided)) < 1e-6);
}

#[test]
fn the_default_gradient_hooks_equal_the_kernels() {
    use crate::reference;
    let device = Default::default();
    let normal = Distribution::Normal(0.0, 1.0);
    let (rows, k, n) = (7, 5, 3);
    let x = Tensor::<Flex, 2>::random([rows, k], normal.clone(), &device);
    let w = Tensor::<Flex, 2>::random([k, n], normal.clone(), &device);
    let g = Tensor::<Flex, 2>::random([rows, n], normal.clone(), &device);
    assert!(max_diff(Flex::affine_input_grad(g.clone(), w.clone()), reference::affine_input_grad(g.clone(), w)) < 1e-5);
    assert!(max_diff(Flex::affine_weight_grad(g.clone(), x.clone()), reference::affine_weight_grad(g.clone(), x)) < 1e-5);
    let bias = (Flex::affine_bias_grad(g.clone()) - reference::affine_bias_grad(g)).abs().max().into_scalar();
    assert!(bias < 1e-5, "{bias}");

    let (b, tokens, heads, d) = (2, 5, 3, 4);
    let qkv = Tensor::<Flex, 3>::random([b, tokens, 3 * heads * d], normal.clone(), &device);
    let (_, probs) = Flex::recorded_self_attention(&qkv, heads).expect("flex tensors take the kernel");
    let want_probs = reference::self_attention_probs(qkv.clone(), heads);
    assert!((probs.clone() - want_probs).abs().max().into_scalar() < 1e-6);
    let grad = Tensor::<Flex, 3>::random([b, tokens, heads * d], normal, &device);
    let got = Flex::self_attention_backward(grad.clone(), qkv.clone(), probs.clone(), heads);
    let want = reference::self_attention_backward(grad, qkv, probs, heads);
    let diff = (got - want).abs().max().into_scalar();
    assert!(diff < 1e-5, "∂qkv: {diff}");
}

/// A strided 1×1 convolution run on the strided input (ResNet's shortcut, [`crate::reference::convolve`])
/// gives burn's strided convolution's values and gradients, odd sizes and unequal strides included;
/// other convolutions are burn's.
#[test]
fn strided_pointwise_convolution_equals_burns() {
    use burn::nn::{conv::Conv2dConfig, PaddingConfig2d};
    let device = Default::default();
    for (size, stride, kernel, padding) in [(8, [2, 2], 1, 0), (7, [2, 2], 1, 0), (5, [3, 2], 1, 0), (6, [2, 2], 3, 1), (4, [1, 1], 1, 0)] {
        let conv = Conv2dConfig::new([3, 5], [kernel, kernel])
            .with_stride(stride)
            .with_padding(PaddingConfig2d::Explicit(padding, padding, padding, padding))
            .init::<Autodiff<Flex>>(&device);
        let x = Tensor::<Autodiff<Flex>, 4>::random([2, 3, size, size], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let position_weighted = |y: Tensor<Autodiff<Flex>, 4>| y.clone() * y.detach().sin();
        let ours = crate::reference::convolve(x.clone(), &conv);
        let theirs = conv.forward(x.clone());
        let what = format!("size {size}, stride {stride:?}, kernel {kernel}");
        assert_eq!(ours.dims(), theirs.dims(), "{what}");
        let ours_grads = position_weighted(ours.clone()).sum().backward();
        let theirs_grads = position_weighted(theirs.clone()).sum().backward();
        let close = |a: Tensor<Flex, 4>, b: Tensor<Flex, 4>, part: &str| {
            let diff = (a - b).abs().max().into_scalar();
            assert!(diff <= 1e-5, "{what}: {part} differs by {diff}");
        };
        close(ours.inner(), theirs.inner(), "the output");
        close(x.grad(&ours_grads).unwrap(), x.grad(&theirs_grads).unwrap(), "the input gradient");
        close(conv.weight.val().grad(&ours_grads).unwrap(), conv.weight.val().grad(&theirs_grads).unwrap(), "the weight gradient");
        let bias = conv.bias.as_ref().unwrap().val();
        let diff = (bias.grad(&ours_grads).unwrap() - bias.grad(&theirs_grads).unwrap()).abs().max().into_scalar();
        assert!(diff <= 1e-5, "{what}: the bias gradient differs by {diff}");
    }
}
