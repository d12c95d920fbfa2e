//! Swin Transformer anchors and their stage-wise SN-Net against timm 0.6.13 and an independent
//! PyTorch computation of the official stitched forward: anchors in both checkpoint layouts (timm
//! 0.6 / official and timm 0.9), every route of a mini family, least squares, bad input.
//!
//! Fixtures: `tests/fixtures/swin/`, made by `tools/make_swin_fixtures.py`.

use std::path::PathBuf;

use snnet::{
    weights::{read_tensors, TensorMap},
    AnyAnchor, Description, PairedVariant, SpaceSettings, StitchedNet,
};

use super::common::{load_json, rel_err, tensor4, to_vec, B};

fn swin_fixture(name: &str) -> PathBuf {
    super::common::fixture(&format!("swin/{name}"))
}

fn net(description: &str, seed: u64) -> StitchedNet<B, AnyAnchor<B>> {
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, seed);
    Description::from_file(&swin_fixture(description)).unwrap().build::<B>(&device).unwrap()
}

fn reference() -> TensorMap {
    read_tensors(&swin_fixture("reference.safetensors")).unwrap().0
}

#[test]
fn the_mini_family_enumerates_the_official_stage_wise_routes() {
    let desc = Description::from_file(&swin_fixture("mini_swin.json")).unwrap();
    assert_eq!(
        desc.space,
        SpaceSettings::stage_wise(vec![0, 1, 2], PairedVariant::Forward),
        "a Swin family takes the official Swin space by default"
    );
    assert!(desc.behaviour.final_norm_on_stitched);
    let (space, _) = desc.space_with_costs().unwrap();
    let want = load_json("swin/routes.json");
    let want = want.as_array().unwrap();
    assert_eq!(space.num_routes(), want.len());
    for (route, w) in space.routes.iter().zip(want) {
        let comb: Vec<usize> = serde_json::from_value(w["comb"].clone()).unwrap();
        assert_eq!(route.comb_id, comb, "cfg {}", route.cfg_id);
        if !route.is_anchor() {
            assert_eq!(route.stage_id, w["stage"].as_u64().map(|s| s as usize), "cfg {}", route.cfg_id);
            let pos: (usize, usize) = serde_json::from_value(w["pos"].clone()).unwrap();
            assert_eq!(route.stitch_cfgs, [pos], "cfg {}", route.cfg_id);
            assert_eq!(route.stitch_layers, [w["layer"].as_u64().unwrap() as usize], "cfg {}", route.cfg_id);
        }
    }
}

#[test]
fn swin_anchors_reproduce_timm_in_both_checkpoint_layouts() {
    let reference = reference();
    let images = tensor4(&reference["images"]);
    // The official (timm 0.6) layout, and timm 0.9's (merging at the next stage's start, head.fc).
    for (file, logits) in [("swin0.safetensors", "logits.route.0"), ("swin0_timm09.safetensors", "logits.timm09")] {
        let (net, _) = net("mini_swin.json", 1).load_anchor(0, &swin_fixture(file)).unwrap();
        let got = to_vec(net.forward(images.clone(), 0).unwrap());
        let err = rel_err(&got, &reference[logits].data);
        assert!(err <= 1e-4, "{file}: relative error {err}");
    }
    // Window 7 on a 14×14 grid (shift 3, masked), then a 7×7 grid (whole-grid window, no shift).
    let (w7, loaded) = net("swin_w7.json", 1).load_anchor(0, &swin_fixture("swin_w7.safetensors")).unwrap();
    assert!(loaded.skipped.iter().any(|k| k.ends_with("attn_mask")), "the masks are recomputed, not read");
    let got = to_vec(w7.forward(tensor4(&reference["images_w7"]), 0).unwrap());
    let err = rel_err(&got, &reference["logits.w7"].data);
    assert!(err <= 1e-4, "window 7: relative error {err}");
}

#[test]
fn an_official_swin_snnet_checkpoint_reproduces_every_route() {
    let reference = reference();
    let images = tensor4(&reference["images"]);
    // The state dict alone, and the training script's `.pth` (with its pickled yacs config).
    for file in ["snnet_swin.safetensors", "snnet_swin.pth"] {
        let (net, loaded, used) = net("mini_swin.json", 2).load_with_report(&swin_fixture(file)).unwrap();
        assert_eq!(used, net.named_tensors().len(), "{file}: every parameter comes from the file");
        if file.ends_with(".pth") {
            assert_eq!(loaded.state_dict_entry.as_deref(), Some("model"));
            assert!(loaded.other_entries.iter().any(|e| e == "config"), "{:?}", loaded.other_entries);
        }
        for id in 0..net.num_routes() {
            let got = to_vec(net.forward(images.clone(), id).unwrap());
            let err = rel_err(&got, &reference[&format!("logits.route.{id}")].data);
            assert!(err <= 1e-4, "{file} route {id}: relative error {err}");
        }
    }
}

#[test]
fn least_squares_on_swin_features_gives_the_float64_solution() {
    let (ls, _) = read_tensors(&swin_fixture("ls_swin.safetensors")).unwrap();
    let (mut net, _, _) = net("mini_swin.json", 3).load_with_report(&swin_fixture("snnet_swin.safetensors")).unwrap();
    net.init_least_squares(tensor4(&ls["images"]), 4, |_| {}).unwrap();
    let ours: TensorMap = net.named_tensors().into_iter().filter(|(k, _)| k.starts_with("stitch_layers.")).collect();
    assert_eq!(ours.len(), 2 * 9, "9 stitching layers, weight and bias");
    for (key, t) in &ours {
        let err = rel_err(&t.data, &ls[key].data);
        assert!(err <= 1e-3, "{key}: relative error {err}");
    }
}

#[test]
fn a_swin_file_for_another_architecture_names_the_key_and_shapes() {
    // The window-7 anchor's file into the window-2 family's anchor 0.
    let err = net("mini_swin.json", 4).load_anchor(0, &swin_fixture("swin_w7.safetensors")).err().unwrap().to_string();
    assert!(err.contains("swin_w7.safetensors"), "{err}");
    assert!(err.contains("relative_position_bias_table` has shape [169, 2], the network expects [9, 1]"), "{err}");
}

#[test]
fn bad_swin_architectures_name_the_field() {
    let bad = |json: &str| Description::from_json(json, "test.json").unwrap().layouts().unwrap_err().to_string();
    let arch = |extra: &str| format!(r#"{{"anchors": [{{"arch": "swin", "embed_dim": 8, {extra}}}]}}"#);
    assert!(bad(&arch(r#""depths": [2, 2], "num_heads": [1]"#)).contains("num_heads"));
    assert!(bad(&arch(r#""depths": [2, 2], "num_heads": [3, 3]"#)).contains("num_heads"));
    assert!(bad(&arch(r#""depths": [2], "num_heads": [1], "img_size": 36, "patch_size": 4, "window_size": 7"#)).contains("window"));
    assert!(bad(&arch(r#""depths": [2, 2, 2], "num_heads": [1, 2, 4], "img_size": 24, "patch_size": 4"#)).contains("even"));
}
