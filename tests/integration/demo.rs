//! The shipped Fashion-MNIST demo: its family stitches into 35 routes, its pretrained anchors load
//! and still classify the test images as their metadata says.

use snnet::{
    demo,
    train::{
        data::{FashionMnist, Split},
        evaluate_routes,
    },
    weights::read_tensors,
};

use super::common::B;

#[test]
fn shipped_anchors_load_and_match_their_recorded_accuracy() {
    let device = Default::default();
    let mut net = demo::description().unwrap().build::<B>(&device).unwrap();
    assert_eq!(net.num_routes(), 35);
    assert_eq!(net.space().layers.len(), 10);
    let mut recorded = Vec::new();
    for i in 0..3 {
        let file = demo::anchor_file(i);
        recorded.push(read_tensors(&file).unwrap().1["snnet.test_acc1"].parse::<f64>().unwrap());
        net = net.load_anchor(i, &file).unwrap().0;
    }
    let mut test = FashionMnist::load(&demo::assets_dir(), Split::Test).unwrap();
    assert_eq!(test.labels().len(), 10_000);
    test.truncate(1000);
    let results = evaluate_routes(&net, &test, &[0, 1, 2], 250, |_| {}).unwrap();
    for (r, acc) in results.iter().zip(&recorded) {
        // 1,000 of the 10,000 images: within 4 points (over 3 binomial standard errors) of the full figure.
        assert!((r.acc1 - acc).abs() < 4.0, "anchor {}: {:.2} % on 1,000 images, {acc:.2} % recorded", r.cfg_id, r.acc1);
    }
    // A file of one anchor refuses to load as another (its stored layout differs).
    let err = net.load_anchor(0, &demo::anchor_file(2)).unwrap_err().to_string();
    assert!(err.contains("anchor2.safetensors") && err.contains("different network"), "{err}");
}

/// The main job's criteria, on made-up accuracies of the demo's 35 routes: anchors at 80/85/90 %,
/// every stitched route at its smaller anchor plus an offset that cycles through −2…+2 points.
#[test]
fn stitching_check_counts_routes_between_their_anchors_and_on_the_frontier() {
    use snnet::{core::RouteMetrics, workflow::check_stitching};
    let net = demo::description().unwrap().build::<B>(&Default::default()).unwrap();
    let anchor_acc = [80.0, 85.0, 90.0];
    let offsets = [-2.0, -0.5, 0.0, 1.0, 2.0];
    let mut expected = (0, 0, 0);
    let rows: Vec<RouteMetrics> = (0..net.num_routes())
        .map(|id| {
            let route = net.route(id).unwrap();
            let acc = if route.is_anchor() {
                anchor_acc[route.comb_id[0]]
            } else {
                let (smaller, larger) = (anchor_acc[route.comb_id[0]], anchor_acc[route.comb_id[1]]);
                let acc = smaller + offsets[id % offsets.len()];
                expected.0 += 1;
                expected.1 += usize::from(acc >= smaller);
                expected.2 += usize::from(acc >= smaller - 1.0 && acc <= larger + 1.0);
                acc
            };
            let values = [("acc1", acc), ("images", 10_000.0), ("gflops", net.costs()[id].flops as f64 / 1e9)];
            RouteMetrics { cfg_id: id, values: values.into_iter().map(|(k, v)| (k.to_string(), v)).collect() }
        })
        .collect();
    let check = check_stitching(&net, &rows, 1.0).unwrap();
    assert_eq!(check.anchor_acc1, anchor_acc);
    assert!(check.anchors_ordered);
    assert_eq!((check.stitched_total, check.stitched_at_or_above_smaller, check.stitched_within), expected);
    assert!(expected.1 > 0 && expected.1 < expected.0 && expected.2 < expected.0, "the offsets exercise both sides: {expected:?}");
    assert_eq!(check.frontier, snnet::workflow::accuracy_frontier(&rows));
    let stitched = check.frontier.iter().filter(|&&id| !net.route(id).unwrap().is_anchor()).count();
    assert_eq!(check.stitched_on_frontier, stitched);
    assert!(check.frontier.contains(&0) && check.frontier.contains(&2), "the smallest and the best anchor: {:?}", check.frontier);
    // A missing anchor row is an error naming the route.
    let err = check_stitching(&net, &rows[1..], 1.0).unwrap_err().to_string();
    assert!(err.contains("anchor route 0"), "{err}");
}

/// Plots of small models read in MFLOPs, of ImageNet-sized ones in GFLOPs.
#[test]
fn the_flops_axis_picks_its_unit() {
    use snnet::{plot::PlotRoute, workflow::flops_axis};
    let point = |x| PlotRoute { cfg_id: 0, x, y: 80.0, size: 1.0, anchor: None };
    let mut small = vec![point(0.0014), point(0.0207)];
    assert_eq!(flops_axis(&mut small), "FLOPs (M)");
    assert!((small[0].x - 1.4).abs() < 1e-12 && (small[1].x - 20.7).abs() < 1e-12);
    let mut large = vec![point(0.5), point(4.6)];
    assert_eq!(flops_axis(&mut large), "FLOPs (G)");
    assert_eq!((large[0].x, large[1].x), (0.5, 4.6));
}
