//! LeViT anchors and their SN-Net against timm 0.6.13 (the original LeViT layout) and an
//! independent PyTorch computation of the official stitched forward: anchors in both checkpoint
//! layouts (original and timm 0.9), an official `.pth` checkpoint with every route, least squares.
//!
//! Fixtures: `tests/fixtures/levit/`, made by `tools/make_levit_fixtures.py`.

use std::path::PathBuf;

use snnet::{
    weights::{read_tensors, TensorMap},
    AnyAnchor, Description, PairedVariant, SpaceSettings, StitchedNet,
};

use super::common::{rel_err, tensor4, to_vec, B};

fn levit_fixture(name: &str) -> PathBuf {
    super::common::fixture(&format!("levit/{name}"))
}

fn net() -> StitchedNet<B, AnyAnchor<B>> {
    Description::from_file(&levit_fixture("mini_levit.json")).unwrap().build::<B>(&Default::default()).unwrap()
}

fn reference() -> TensorMap {
    read_tensors(&levit_fixture("reference.safetensors")).unwrap().0
}

#[test]
fn the_mini_family_takes_the_official_levit_space() {
    let desc = Description::from_file(&levit_fixture("mini_levit.json")).unwrap();
    assert_eq!(desc.space, SpaceSettings::stage_wise(vec![0, 1], PairedVariant::Forward));
    let (space, _) = desc.space_with_costs().unwrap();
    assert_eq!(space.num_routes(), 8);
    assert_eq!(
        (space.routes[4].stage_id, space.routes[4].stitch_cfgs.clone(), space.routes[4].stitch_layers.clone()),
        (Some(0), vec![(2, 3)], vec![2])
    );
    assert_eq!((space.routes[5].stage_id, space.routes[5].stitch_cfgs.clone()), (Some(1), vec![(0, 1)]));
}

#[test]
fn levit_anchors_reproduce_timm_in_both_checkpoint_layouts() {
    let reference = reference();
    let images = tensor4(&reference["images"]);
    for (file, logits) in [("levit0.safetensors", "logits.route.0"), ("levit0_timm09.safetensors", "logits.timm09")] {
        let (net, loaded) = net().load_anchor(0, &levit_fixture(file)).unwrap();
        if file == "levit0.safetensors" {
            assert!(loaded.skipped.iter().any(|k| k.ends_with("attention_bias_idxs")), "index tables are recomputed");
        }
        let got = to_vec(net.forward(images.clone(), 0).unwrap());
        let err = rel_err(&got, &reference[logits].data);
        assert!(err <= 1e-4, "{file}: relative error {err}");
    }
}

#[test]
fn an_official_levit_checkpoint_reproduces_every_route() {
    let reference = reference();
    let images = tensor4(&reference["images"]);
    let (net, loaded, used) = net().load_with_report(&levit_fixture("snnet_levit.pth")).unwrap();
    assert_eq!(loaded.state_dict_entry.as_deref(), Some("model"));
    assert_eq!(used, net.named_tensors().len(), "every parameter and running statistic comes from the file");
    for id in 0..net.num_routes() {
        let got = to_vec(net.forward(images.clone(), id).unwrap());
        let err = rel_err(&got, &reference[&format!("logits.route.{id}")].data);
        assert!(err <= 1e-4, "route {id}: relative error {err}");
    }
}

#[test]
fn least_squares_on_levit_features_gives_the_float64_solution() {
    let (ls, _) = read_tensors(&levit_fixture("ls_levit.safetensors")).unwrap();
    let (mut net, _) = net().load(&levit_fixture("snnet_levit.pth")).unwrap();
    net.init_least_squares(tensor4(&ls["images"]), 2, |_| {}).unwrap();
    let ours: TensorMap = net.named_tensors().into_iter().filter(|(k, _)| k.starts_with("stitch_layers.")).collect();
    assert_eq!(ours.len(), 2 * 6, "6 stitching layers, weight and bias");
    for (key, t) in &ours {
        let err = rel_err(&t.data, &ls[key].data);
        assert!(err <= 1e-3, "{key}: relative error {err}");
    }
}
