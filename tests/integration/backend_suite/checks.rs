//! The checks, generic over the device backend `D`; the CPU backend (`Flex`) is the reference.

use snnet::Kernels;
use std::sync::{RwLock, RwLockReadGuard};

use burn::backend::{Autodiff, Flex};
use snnet::{
    train::{train_step, AdamW, AdamWConfig, StepConfig},
    AnyAnchor, StitchedNet,
};

use super::{
    counting::{Counted, Transfers},
    families::{families, host, relative_error, Family, HostImages, WeightFile},
    Tolerance,
};

/// Checks share the device; the one that measures its memory runs alone.
static DEVICE: RwLock<()> = RwLock::new(());

fn shared_device() -> RwLockReadGuard<'static, ()> {
    DEVICE.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Every route's logits on `D` against the CPU's, for every family.
pub fn every_route_gives_the_cpus_logits<D: Kernels>(device: &D::Device, tolerance: f32) {
    let _device = shared_device();
    for family in families() {
        let (cpu, file) = family.on_cpu(0.0);
        let net = family.load::<D>(device, 0.0, &file);
        let images = HostImages::new(2, family.input(), 11);
        let worst = compare_routes(&family, &cpu, &net, &images, tolerance);
        eprintln!("{}: {} routes, worst relative error {worst:.2e}", family.name, net.num_routes());
        if net.space().settings.lora_rank > 0 {
            // The LoRA layers as inference runs them: merged on the device as on the CPU.
            let (cpu, net) = (cpu.merged_for_inference(), net.merged_for_inference());
            let worst = compare_routes(&family, &cpu, &net, &images, tolerance);
            eprintln!("{} merged: worst relative error {worst:.2e}", family.name);
        }
    }
}

/// The largest relative error over every route; panics past `tolerance`.
fn compare_routes<D: Kernels>(
    family: &Family,
    cpu: &StitchedNet<Flex, AnyAnchor<Flex>>,
    net: &StitchedNet<D, AnyAnchor<D>>,
    images: &HostImages,
    tolerance: f32,
) -> f32 {
    let device = net_device(net);
    let (on_cpu, on_device) = (images.on::<Flex>(&Default::default()), images.on::<D>(&device));
    let mut worst = 0f32;
    for id in 0..cpu.num_routes() {
        let want = host(cpu.forward(on_cpu.clone(), id).unwrap());
        let got = host(net.forward(on_device.clone(), id).unwrap());
        let error = relative_error(&got, &want);
        assert!(error <= tolerance, "{} route {id}: relative error {error:.3e} > {tolerance:.0e}", family.name);
        worst = worst.max(error);
    }
    worst
}

fn net_device<B: Kernels>(net: &StitchedNet<B, AnyAnchor<B>>) -> B::Device {
    use burn::module::Module;
    net.devices().into_iter().next().expect("the network has parameters")
}

/// Least squares on `D` gives the CPU's stitching layers; the device's weight file, loaded on the
/// CPU, holds exactly the device's values and gives its logits.
pub fn least_squares_gives_the_cpus_layers<D: Kernels>(device: &D::Device, tolerance: Tolerance) {
    let _device = shared_device();
    for family in families() {
        let (mut cpu, file) = family.on_cpu(0.0);
        let mut net = family.load::<D>(device, 0.0, &file);
        // LeViT's stage-2 features are nearly collinear: with 8 images its normal equations had a
        // condition number of 9.6e3, which magnified the backends' f32 rounding of the features to
        // 1.4e-4 in the fitted layers on lavapipe; 32 images bring it to 3.9e3 (printed below).
        let calibration = HostImages::new(32, family.input(), 5);
        let report = cpu.init_least_squares(calibration.on::<Flex>(&Default::default()), 4, |_| {}).unwrap();
        net.init_least_squares(calibration.on::<D>(device), 4, |_| {}).unwrap();
        let want = cpu.named_tensors();
        let got = net.named_tensors();
        let (mut fitted, mut worst) = (0, 0f32);
        for ((key, g), (_, w)) in got.iter().zip(&want).filter(|((key, _), _)| key.starts_with("stitch_layers.")) {
            let error = relative_error(&g.data, &w.data);
            assert!(error <= tolerance.least_squares, "{} {key}: relative error {error:.3e}", family.name);
            (fitted, worst) = (fitted + 1, worst.max(error));
        }
        let condition = report.layers.iter().map(|layer| layer.max_condition).fold(0.0, f64::max);
        eprintln!("{}: fitted layers within {worst:.1e} (worst condition number {condition:.1e})", family.name);
        assert!(fitted > 0, "{}: no stitching layer", family.name);

        // Saved on the device, loaded on the CPU: the same values, the same logits.
        let saved = WeightFile::new(family.name);
        net.save(saved.path(), Default::default()).unwrap();
        let back = family.load::<Flex>(&Default::default(), 0.0, &saved);
        for ((key, a), (_, b)) in back.named_tensors().iter().zip(&got) {
            assert_eq!(a.data, b.data, "{} {key}: the file changed the values", family.name);
        }
        compare_routes(&family, &back, &net, &HostImages::new(2, family.input(), 3), tolerance.logits);
    }
}

/// Matrix products at the fixtures' small widths, with either side a transposed view (as a
/// backward pass multiplies: `grad · Wᵀ`, `xᵀ · grad`), equal the CPU's. Found on lavapipe: one of
/// cubecl's matmul kernels is wrong for inner dimension 8 with a transposed right-hand side, and
/// autotune picks it when it measures fastest (docs/design.md, "Every backend, tested").
pub fn products_in_every_layout_give_the_cpus<D: Kernels>(device: &D::Device, tolerance: f32) {
    let _device = shared_device();
    let mut wrong = Vec::new();
    for (m, k, n) in [(64, 8, 16), (1024, 4, 16), (1024, 8, 16), (1024, 8, 32), (1024, 16, 8), (1024, 64, 64)] {
        let lhs = HostImages::new(1, [1, m, k], 31);
        let rhs = HostImages::new(1, [1, k, n], 37);
        for (lhs_transposed, rhs_transposed) in [(false, false), (true, false), (false, true), (true, true)] {
            let want = host(product::<Flex>(&Default::default(), &lhs, &rhs, lhs_transposed, rhs_transposed));
            let got = host(product::<D>(device, &lhs, &rhs, lhs_transposed, rhs_transposed));
            let error = relative_error(&got, &want);
            if error > tolerance {
                let view = |transposed: bool| if transposed { " (a transposed view)" } else { "" };
                wrong.push(format!("{m}×{k}{} · {k}×{n}{}: {error:.1e}", view(lhs_transposed), view(rhs_transposed)));
            }
        }
    }
    assert!(wrong.is_empty(), "products off by more than {tolerance:.0e}: {wrong:#?}");
}

/// `lhs · rhs` on `B`, each side given as its values in the product's layout (`[m, k]`, `[k, n]`)
/// or, when transposed, read as a transposed view of the other layout.
fn product<B: Kernels>(
    device: &B::Device,
    lhs: &HostImages,
    rhs: &HostImages,
    lhs_transposed: bool,
    rhs_transposed: bool,
) -> burn::tensor::Tensor<B, 2> {
    let side = |values: &HostImages, transposed: bool| {
        let t = values.on::<B>(device);
        let [_, _, rows, cols] = t.dims();
        if transposed {
            t.reshape([cols, rows]).transpose()
        } else {
            t.reshape([rows, cols])
        }
    };
    side(lhs, lhs_transposed).matmul(side(rhs, rhs_transposed))
}

/// Convolutions of the kinds the CNN families run, through the seam ([`Kernels::convolve`]) and under
/// autodiff: ResNet's 7×7 stem with stride 2, its 3×3 with stride 1 and 2, its 1×1 with stride 1
/// and 2 (the shortcut), LeViT's 3×3 with stride 2. Values and the input, weight and bias
/// gradients equal the CPU's (gradients, sums over many positions, within the training bound).
/// Found on lavapipe: burn's own strided 1×1 convolution has a wrong input gradient on cubecl
/// (relative error 1.0), which the seam avoids.
pub fn convolutions_and_their_gradients_give_the_cpus<D: Kernels>(device: &D::Device, tolerance: Tolerance) {
    let _device = shared_device();
    let mut wrong = Vec::new();
    for (size, cin, cout, kernel, stride, padding) in [
        (32, 3, 8, 7, 2, 3),
        (8, 8, 8, 3, 1, 1),
        (8, 8, 16, 3, 2, 1),
        (4, 16, 32, 1, 1, 0),
        (4, 16, 32, 1, 2, 0),
        (3, 16, 32, 1, 2, 0),
        (14, 4, 8, 3, 2, 1),
    ] {
        let images = HostImages::new(4, [cin, size, size], 41);
        let weights = HostImages::new(cout, [cin, kernel, kernel], 43);
        let cpu = convolved::<Flex>(&Default::default(), &images, &weights, kernel, stride, padding);
        let got = convolved::<D>(device, &images, &weights, kernel, stride, padding);
        let what = format!("{cin}→{cout} {kernel}×{kernel}, stride {stride}, on {size}×{size}");
        compare_parts(&what, &["output", "input gradient", "weight gradient", "bias gradient"], &got, &cpu, tolerance, &mut wrong);
    }
    assert_none_wrong("convolutions", &wrong, tolerance);
}

/// Each of a layer's `parts` on the device (`got`) against the CPU's (`want`): gradients within
/// the training bound (sums over many positions), the rest within the logits bound; what is off
/// goes to `wrong`, named by `what` and the part.
fn compare_parts(what: &str, parts: &[&str], got: &[Vec<f32>], want: &[Vec<f32>], tolerance: Tolerance, wrong: &mut Vec<String>) {
    for (part, (got, want)) in parts.iter().zip(got.iter().zip(want)) {
        let bound = if part.ends_with("gradient") { tolerance.training } else { tolerance.logits };
        let error = relative_error(got, want);
        if error > bound {
            wrong.push(format!("{what}: {part} off by {error:.1e}"));
        }
    }
}

/// Panics listing `wrong`, the parts of `layers` off by more than their bounds, unless it is empty.
fn assert_none_wrong(layers: &str, wrong: &[String], tolerance: Tolerance) {
    let (values, gradients) = (tolerance.logits, tolerance.training);
    assert!(wrong.is_empty(), "{layers} off by more than {values:.0e} (values), {gradients:.0e} (gradients): {wrong:#?}");
}

/// `B::convolve` of `images` with `weights` (a bias of 0.1 per channel) under autodiff: the output and
/// the gradients of `Σ y·sin(y)` (a loss whose gradient varies by position) for the input, the
/// weight and the bias, on the host.
fn convolved<B: Kernels>(
    device: &B::Device,
    images: &HostImages,
    weights: &HostImages,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> [Vec<f32>; 4] {
    use burn::{
        module::Param,
        nn::{conv::Conv2dConfig, PaddingConfig2d},
        tensor::Tensor,
    };
    let x = images.on::<Autodiff<B>>(device).require_grad();
    let w = weights.on::<Autodiff<B>>(device);
    let [cout, cin, _, _] = w.dims();
    let mut conv = Conv2dConfig::new([cin, cout], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(padding, padding, padding, padding))
        .init::<Autodiff<B>>(device);
    conv.weight = Param::from_tensor(w);
    conv.bias = Some(Param::from_tensor(Tensor::full([cout], 0.1, device)));
    let y = <Autodiff<B> as Kernels>::convolve(x.clone(), &conv);
    let grads = (y.clone() * y.clone().detach().sin()).sum().backward();
    [
        host(y.inner()),
        host(x.grad(&grads).unwrap()),
        host(conv.weight.val().grad(&grads).unwrap()),
        host(conv.bias.as_ref().unwrap().val().grad(&grads).unwrap()),
    ]
}

/// BatchNorm as ResNet and LeViT train with it ([`snnet::anchors::norm::batch_norm`] under autodiff:
/// the batch's statistics, the running ones moved by the momentum): its output, the input, scale
/// and shift gradients and the new running statistics equal the CPU's, on 2-D maps and on token
/// rows. (Those families' own training step is too ill-conditioned to compare, see
/// [`a_training_step_moves_the_weights_as_on_the_cpu`]; this and the convolution check cover their
/// layers on the device.)
pub fn batch_norm_trains_as_on_the_cpu<D: Kernels>(device: &D::Device, tolerance: Tolerance) {
    let _device = shared_device();
    let mut wrong = Vec::new();
    for (shape, as_rows, what) in [([8, 16, 6, 6], false, "maps [8, 16, 6, 6]"), ([1, 24, 49, 4], true, "token rows [196, 24], as LeViT's")]
    {
        let want = normalised::<Flex>(&Default::default(), shape, as_rows);
        let got = normalised::<D>(device, shape, as_rows);
        let parts = ["output", "input gradient", "scale gradient", "shift gradient", "running mean", "running variance"];
        compare_parts(what, &parts, &got, &want, tolerance, &mut wrong);
    }
    assert_none_wrong("BatchNorm", &wrong, tolerance);
}

/// A training-mode BatchNorm on `B` of images of `shape` `[b, c, h, w]` — or, `as_rows`, of their
/// values as rows `[b·h·w, c]` (BatchNorm1d over tokens): its output, the gradients of `Σ y·sin(y)`
/// for the input, the scale and the shift, and its running statistics after the step, on the host.
fn normalised<B: Kernels>(device: &B::Device, shape: [usize; 4], as_rows: bool) -> [Vec<f32>; 6] {
    use burn::{module::Param, nn::BatchNormConfig};
    use snnet::anchors::norm::batch_norm;
    let [b, c, h, w] = shape;
    let images = HostImages::new(b, [c, h, w], 47);
    let scale = HostImages::new(1, [1, 1, c], 53);
    let mut bn = BatchNormConfig::new(c).with_momentum(0.1).init::<Autodiff<B>>(device);
    bn.gamma = Param::from_tensor(scale.on::<Autodiff<B>>(device).reshape([c]) * 0.5 + 1.0);
    bn.beta = Param::from_tensor(scale.on::<Autodiff<B>>(device).reshape([c]) * 0.1);
    let x = images.on::<Autodiff<B>>(device).require_grad();
    let y = if as_rows {
        let rows = x.clone().swap_dims(0, 1).reshape([c, b * h * w]).swap_dims(0, 1);
        batch_norm(&bn, rows).swap_dims(0, 1).reshape([c, b, h, w]).swap_dims(0, 1)
    } else {
        batch_norm(&bn, x.clone())
    };
    let grads = (y.clone() * y.clone().detach().sin()).sum().backward();
    [
        host(y.inner()),
        host(x.grad(&grads).unwrap()),
        host(bn.gamma.val().grad(&grads).unwrap()),
        host(bn.beta.val().grad(&grads).unwrap()),
        host(bn.running_mean.value().inner()),
        host(bn.running_var.value().inner()),
    ]
}

/// One AdamW step on a stitched route (drop path on; clipping off, then on at a norm it cuts) moves
/// every weight on `D` as on the CPU; the loss and the gradient norm agree too. Families named in
/// `left_out` are skipped (with the reason at the call).
pub fn a_training_step_moves_the_weights_as_on_the_cpu<D: Kernels>(device: &D::Device, tolerance: f32, left_out: &[&str]) {
    let _device = shared_device();
    let mut over = Vec::new();
    for family in families().into_iter().filter(|family| !left_out.contains(&family.name)) {
        let (_, file) = family.on_cpu(0.1);
        for clip in [None, Some(0.05)] {
            let (cpu, cpu_before) = step_once::<Flex>(&family, &Default::default(), &file, clip);
            let (net, _) = step_once::<D>(&family, device, &file, clip);
            let what = format!("{} (clipping {clip:?})", family.name);
            if let Some(max) = clip {
                assert!(cpu.grad_norm > max, "{what}: the gradient norm {} is not clipped at {max}", cpu.grad_norm);
            }
            let loss = ((net.loss - cpu.loss).abs() / cpu.loss.abs()) as f32;
            let norm = ((net.grad_norm - cpu.grad_norm).abs() / cpu.grad_norm) as f32;
            let mut worst = (String::from("loss"), loss);
            if norm > worst.1 {
                worst = ("gradient norm".into(), norm);
            }
            let mut moved = 0;
            for (((key, got), (_, want)), (_, start)) in net.weights.iter().zip(&cpu.weights).zip(&cpu_before) {
                let error = relative_error(&got.data, &want.data);
                if error > worst.1 {
                    worst = (key.clone(), error);
                }
                moved += usize::from(want.data != start.data);
            }
            assert!(moved > 2, "{what}: the step moved {moved} tensors");
            eprintln!("{what}: loss {loss:.1e}, gradient norm {norm:.1e}, worst tensor {} {:.1e}", worst.0, worst.1);
            if worst.1 > tolerance {
                over.push(format!("{what}: {} {:.3e}", worst.0, worst.1));
            }
        }
    }
    assert!(over.is_empty(), "relative errors over {tolerance:.0e} after the step: {over:#?}");
}

struct Stepped {
    loss: f64,
    grad_norm: f64,
    weights: Vec<(String, snnet::weights::NamedTensor)>,
}

type Named = Vec<(String, snnet::weights::NamedTensor)>;

/// One training step of the family's middle route on backend `B` with autodiff.
fn step_once<B: Kernels>(family: &Family, device: &B::Device, file: &WeightFile, clip: Option<f64>) -> (Stepped, Named) {
    let net = family.load::<Autodiff<B>>(device, 0.1, file);
    let before = net.named_tensors();
    let images = HostImages::new(4, family.input(), 17);
    // Adam's first step moves each weight by about `lr · sign(g)`: where a gradient element is as
    // small as the rounding differences between backends, its sign is noise and the step differs
    // by 2·lr. A large `eps` makes the step `lr · g / (|g| + eps)`, linear in the gradient, so the
    // weights after it compare the gradients themselves (the same arithmetic, other constants).
    let mut optimizer = AdamW::new(AdamWConfig { eps: 1.0, clip_grad_norm: clip, ..Default::default() });
    let route = net.num_routes() / 2;
    assert!(!net.route(route).unwrap().is_anchor(), "{}: route {route} is stitched", family.name);
    net.reseed(23);
    let (net, outcome) =
        train_step(net, &mut optimizer, images.on(device), images.labels(device), None, route, 0.1, &StepConfig::default()).unwrap();
    (Stepped { loss: outcome.loss.value(), grad_norm: outcome.optimizer.grad_norm.value(), weights: net.named_tensors() }, before)
}

/// Host reads and uploads of an inference forward and of training steps, counted on `D` through
/// [`Counted`]. After a warm-up forward, a forward uploads nothing (the families' index tables and
/// masks are kept on the device) and reads nothing back until its logits are asked for; a
/// training step, with clipping off and with clipping on (the global norm stays on the device),
/// reads and uploads nothing until its loss or gradient norm is read, one read each.
/// Families named in `uncounted` are left out (with the reason at the call).
pub fn host_transfers<D: burn::backend::ir::BackendIr>(device: &D::Device, uncounted: &[&str]) {
    let _device = shared_device();
    for family in families().into_iter().filter(|f| !uncounted.contains(&f.name)) {
        let name = family.name;
        let (_, file) = family.on_cpu(0.0);
        let net = family.load::<Counted<D>>(device, 0.0, &file);
        let images = HostImages::new(2, family.input(), 11);
        let route = net.num_routes() / 2;
        let on_device = images.on::<Counted<D>>(device);
        let _ = host(net.forward(on_device.clone(), route).unwrap());
        let start = Transfers::now();
        let logits = net.forward(on_device.clone(), route).unwrap();
        let forward = Transfers::since(start);
        assert_eq!((forward.reads, forward.uploads), (0, 0), "{name}: the forward's (reads, uploads)");
        let start = Transfers::now();
        let _ = host(logits);
        assert_eq!(Transfers::since(start).reads, 1, "{name}: reading the logits");

        let mut trained = family.load::<Autodiff<Counted<D>>>(device, 0.0, &file);
        let (images, labels) = (images.on(device), images.labels(device));
        let parameters = trained.named_tensors().len();
        for clip in [None, Some(1e-3)] {
            let mut optimizer = AdamW::new(AdamWConfig { clip_grad_norm: clip, ..Default::default() });
            let start = Transfers::now();
            let (next, outcome) =
                train_step(trained, &mut optimizer, images.clone(), labels.clone(), None, route, 1e-3, &StepConfig::default()).unwrap();
            trained = next;
            let step = Transfers::since(start);
            eprintln!(
                "host transfers, {name}: forward {} reads, {} uploads; training step (clipping {clip:?}) {} reads, {} uploads ({parameters} parameter tensors)",
                forward.reads, forward.uploads, step.reads, step.uploads
            );
            assert_eq!((step.reads, step.uploads), (0, 0), "{name}: the training step's (reads, uploads), clipping {clip:?}");
            let start = Transfers::now();
            assert!(outcome.loss.value().is_finite() && outcome.optimizer.grad_norm.value() > 0.0, "{name}: loss and norm");
            assert_eq!(Transfers::since(start).reads, 2, "{name}: reading the loss and the gradient norm");
        }
    }
}

/// After every route has run once, switching among them and running again takes no new device
/// memory: `reserved` is the device's reserved bytes (cubecl's memory pools).
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
pub fn switching_routes_allocates_nothing<D: Kernels>(device: &D::Device, reserved: impl Fn(&D::Device) -> u64) {
    let _alone = DEVICE.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    for family in families() {
        let (_, file) = family.on_cpu(0.0);
        let mut net = family.load::<D>(device, 0.0, &file);
        let images = HostImages::new(2, family.input(), 11).on::<D>(device);
        let run_all = |net: &mut StitchedNet<D, AnyAnchor<D>>| {
            for id in 0..net.num_routes() {
                net.select(id).unwrap();
                let _ = host(net.forward_selected(images.clone()).unwrap());
            }
            D::sync(device).unwrap();
        };
        run_all(&mut net);
        let warm = reserved(device);
        for _ in 0..2 {
            run_all(&mut net);
        }
        let after = reserved(device);
        assert_eq!(after, warm, "{}: {} bytes reserved after warm-up, {after} after switching", family.name, warm);
    }
}
