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
