//! Least squares: the official pseudo-inverse (NumPy f64 reference with torch's cutoff), and the
//! initialisation of a whole network.

use snnet::{lstsq::fit_affine, weights::read_tensors, Anchor, Error, Stitch};

use super::common::{fixture, mini_family, to_vec, uniform_images, B};

fn rel_err(a: &[f64], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn pseudo_inverse_equals_numpy_reference_with_official_cutoff() {
    let (tensors, meta) = read_tensors(&fixture("lstsq_reference.safetensors")).unwrap();
    let cases: Vec<&str> = meta["cases"].split(',').collect();
    assert!(cases.contains(&"ill_conditioned"));
    for case in cases {
        let t = |k: &str| &tensors[&format!("{case}.{k}")];
        let (x, y) = (t("x"), t("y"));
        let (cin, cout) = (x.shape[1], y.shape[1]);
        let sol = fit_affine(&x.data, &y.data, cin, cout).unwrap();
        let rank: usize = meta[&format!("{case}.rank_kept")].parse().unwrap();
        assert_eq!(sol.rank, rank, "{case}: singular values kept");
        let (ew, eb) = (rel_err(&sol.weight, &t("weight").data), rel_err(&sol.bias, &t("bias").data));
        assert!(ew < 1e-5 && eb < 1e-5, "{case}: relative error weight {ew:e}, bias {eb:e}");
        if case == "exact_affine" {
            assert!(rel_err(&sol.weight, &t("true_weight").data) < 1e-5);
            assert!(rel_err(&sol.bias, &t("true_bias").data) < 1e-5);
        }
    }
}

#[test]
fn ill_conditioned_case_really_drops_singular_values() {
    let (tensors, meta) = read_tensors(&fixture("lstsq_reference.safetensors")).unwrap();
    let cond: f64 = meta["ill_conditioned.cond_kept"].parse().unwrap();
    assert!(cond > 1e3, "fixture is not ill-conditioned enough: {cond}");
    let x = &tensors["ill_conditioned.x"];
    assert!(fit_affine(&x.data, &tensors["ill_conditioned.y"].data, x.shape[1], 16).unwrap().rank < x.shape[1] + 1);
}

#[test]
fn network_init_equals_mean_of_per_position_solutions() {
    let device = Default::default();
    let mut net = mini_family().build::<B>(&device).unwrap();
    let images = uniform_images(6, 3, 32, 11);
    let mut seen = Vec::new();
    let report = net.init_least_squares(images.clone(), 4, |p| seen.push(p.images_done)).unwrap();
    assert_eq!(seen, vec![4, 6], "progress per chunk");
    assert_eq!(report.layers.len(), net.space().layers.len());
    // Recompute layer 1 of pair 0-1 by hand: positions (1,2), (2,1), (2,2).
    let slot_index = net.space().layers.iter().position(|l| l.key() == "stitch_layers.0.1").unwrap();
    let slot = net.space().layers[slot_index].clone();
    assert_eq!(slot.positions, vec![(1, 2), (2, 1), (2, 2)]);
    let features = |a: usize, upto: usize| {
        let anchor = &net.anchors[a];
        let f = anchor.blocks(anchor.embed(images.clone()), 0..upto);
        to_vec(f.into_rows())
    };
    let (cin, cout) = (slot.in_channels, slot.out_channels);
    let mut w = vec![0f64; cin * cout];
    let mut b = vec![0f64; cout];
    for &(j, k) in &slot.positions {
        let sol = fit_affine(&features(0, j + 1), &features(1, k), cin, cout).unwrap();
        w.iter_mut().zip(&sol.weight).for_each(|(a, v)| *a += v / 3.0);
        b.iter_mut().zip(&sol.bias).for_each(|(a, v)| *a += v / 3.0);
    }
    let layer = &net.stitch_layers[slot_index].transform;
    let got_w = to_vec(layer.weight.val().transpose());
    let got_b = to_vec(layer.bias.as_ref().unwrap().val());
    assert!(rel_err(&w, &got_w) < 1e-5, "weight rel err {}", rel_err(&w, &got_w));
    assert!(rel_err(&b, &got_b) < 1e-5);
}

#[test]
fn initialised_stitch_maps_front_features_onto_end_features() {
    let device = Default::default();
    let mut net = mini_family().build::<B>(&device).unwrap();
    let images = uniform_images(16, 3, 32, 12);
    // Position (1,1) of layer `stitch_layers.0.0`: Ti output of block 1 → S input of block 1.
    let slot = net.space().layers.iter().position(|l| l.key() == "stitch_layers.0.0").unwrap();
    let residual = |net: &snnet::StitchedNet<B, snnet::AnyAnchor<B>>| {
        let (front, end) = (&net.anchors[0], &net.anchors[1]);
        let x = front.blocks(front.embed(images.clone()), 0..2);
        let target = to_vec(end.blocks(end.embed(images.clone()), 0..1).into_rows());
        let mapped = to_vec(net.stitch_layers[slot].forward(x).into_rows());
        let err: f32 = mapped.iter().zip(&target).map(|(a, b)| (a - b).powi(2)).sum();
        let var: f32 = target.iter().map(|b| b * b).sum();
        err / var
    };
    let before = residual(&net);
    net.init_least_squares(images.clone(), 16, |_| {}).unwrap();
    let after = residual(&net);
    assert!(after < 0.75 * before, "relative residual before {before}, after {after}");
}

#[test]
fn non_finite_or_empty_calibration_data_is_an_error() {
    let device = Default::default();
    let mut net = mini_family().build::<B>(&device).unwrap();
    let images = uniform_images(2, 3, 32, 13);
    let nan = images.clone().mask_fill(images.clone().greater_elem(1.5), f32::NAN);
    assert!(matches!(net.init_least_squares(nan, 2, |_| {}), Err(Error::NonFinite(_))));
    let empty = burn::tensor::Tensor::<B, 4>::zeros([0, 3, 32, 32], &device);
    assert!(net.init_least_squares(empty, 2, |_| {}).is_err());
    let wrong = uniform_images(2, 1, 32, 13);
    assert!(matches!(net.init_least_squares(wrong, 2, |_| {}), Err(Error::Shape { .. })));
}
