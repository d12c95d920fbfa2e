//! SN-Netv2's two-way networks: every route runs as the official eval forward reads its config
//! (spec §11.3), least squares fits every stitching layer of both directions (§11.4), LoRA
//! stitching layers (§11.5), and official SN-Netv2 checkpoints reproduce the official logits.
//!
//! Fixtures: `tests/fixtures/snnetv2/`, made with the official code by
//! `tools/make_snnetv2_fixtures.py` (reduced DeiT-3 anchors, depths 4→8 and 4→4, LoRA rank 2).

use std::collections::HashMap;

use burn::tensor::Tensor;
use snnet::{
    weights::{read_tensors, NamedTensor},
    Anchor, AnchorSpec, AnyAnchor, Architecture, Description, SpaceSettings, Stitch, StitchedNet, VitConfig,
};

use super::common::{fixture, max_abs_diff, rel_err, tensor4, to_vec, uniform_images, B};

/// Two reduced DeiT-3 anchors (16×16 input, patch 4: 17 tokens), depths 4 and `large_depth`.
fn reduced_pair(large_depth: usize) -> Description {
    let anchor = |dim, depth, heads| {
        let config = VitConfig { img_size: 16, patch_size: 4, num_classes: 10, ..VitConfig::deit3(dim, depth, heads, 0.5) };
        AnchorSpec::Explicit(Architecture::Vit(config))
    };
    Description {
        anchors: vec![anchor(8, 4, 2), anchor(12, large_depth, 3)],
        space: SpaceSettings::two_way(),
        behaviour: Default::default(),
    }
}

#[test]
fn every_two_way_route_runs_as_the_official_forward_reads_its_config() {
    for large_depth in [8, 4] {
        let net = reduced_pair(large_depth).build::<B>(&Default::default()).unwrap();
        let images = uniform_images(2, 3, 16, 5);
        let depths = [4, large_depth];
        assert_eq!(net.num_routes(), 15, "4→{large_depth}");
        for route in &net.space().routes {
            let got = to_vec(net.forward(images.clone(), route.cfg_id).unwrap());
            let want: Tensor<B, 2> = if route.is_anchor() {
                net.anchors[route.comb_id[0]].forward(images.clone())
            } else {
                // The official reading: the first anchor's embedding; for segment s on anchor
                // a = comb[s], blocks route[s][0]..=route[s][1] (clamped to the anchor), then
                // stitching layer stitch_layer_ids[s] of a's list (-1: identity); the end
                // anchor's final norm and head.
                let mut x = net.anchors[route.comb_id[0]].embed(images.clone());
                for (s, (&a, [first, last])) in route.comb_id.iter().zip(route.official_segments()).enumerate() {
                    let blocks = first..(last + 1).min(depths[a]);
                    x = net.anchors[a].blocks(x, blocks);
                    let layer = route.official_stitch_layer_ids()[s];
                    if layer >= 0 {
                        let key = format!("stitch_layers.{a}.{layer}");
                        let slot = net.space().layers.iter().position(|l| l.key() == key).unwrap();
                        x = net.stitch_layers[slot].forward(x);
                    }
                }
                net.anchors[*route.comb_id.last().unwrap()].head(x, true)
            };
            let diff = max_abs_diff(&got, &to_vec(want));
            assert!(diff <= 1e-6, "4→{large_depth} route {}: {diff}", route.cfg_id);
        }
    }
}

#[test]
fn least_squares_fits_both_directions_including_the_stitch_into_the_large_anchors_end() {
    let mut net = reduced_pair(8).build::<B>(&Default::default()).unwrap();
    let report = net.init_least_squares(uniform_images(6, 3, 16, 9), 4, |_| {}).unwrap();
    let keys: Vec<&str> = report.layers.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "stitch_layers.0.0",
            "stitch_layers.0.1",
            "stitch_layers.0.2",
            "stitch_layers.0.3",
            "stitch_layers.1.0",
            "stitch_layers.1.1",
            "stitch_layers.1.2"
        ]
    );
    assert!(report.layers.iter().all(|l| l.positions == 1));
    // S→L layer 3 (small block 3 → the large anchor's end) is the least-squares map from the small
    // anchor's last block output onto the large anchor's last block output: its residual is
    // orthogonal to every input column (and the constant one, for the bias).
    let images = uniform_images(6, 3, 16, 9);
    let small = net.anchors[0].blocks(net.anchors[0].embed(images.clone()), 0..4);
    let large = net.anchors[1].blocks(net.anchors[1].embed(images), 0..8);
    let mapped = to_vec(net.stitch_layers[3].forward(small.clone()).into_rows());
    let (small, large) = (to_vec(small.into_rows()), to_vec(large.into_rows()));
    let (cin, cout) = (8, 12);
    let rows = small.len() / cin;
    for i in 0..=cin {
        for o in 0..cout {
            let input = |r: usize| if i == cin { 1.0 } else { small[r * cin + i] as f64 };
            let dot: f64 = (0..rows).map(|r| input(r) * (mapped[r * cout + o] - large[r * cout + o]) as f64).sum();
            let scale: f64 = (0..rows).map(|r| (input(r) * large[r * cout + o] as f64).abs()).sum();
            assert!(dot.abs() <= 1e-3 * scale.max(1.0), "input {i}, output {o}: residual·input {dot} (scale {scale})");
        }
    }
}

type Net = StitchedNet<B, AnyAnchor<B>>;

const PAIRS: [&str; 2] = ["s4_l8", "s4_s4"];

fn official_network(pair: &str) -> Description {
    Description::from_file(&fixture(&format!("snnetv2/{pair}_description.json"))).unwrap()
}

fn snnetv2_tensors(file: &str) -> snnet::weights::TensorMap {
    read_tensors(&fixture(&format!("snnetv2/{file}"))).unwrap().0
}

/// Logits of every route of `net` on the fixture's probe images, compared with the official eval
/// forward's; returns the largest relative error.
fn worst_route_error(net: &Net, reference: &snnet::weights::TensorMap) -> f32 {
    let images = tensor4(&reference["images"]);
    (0..net.num_routes())
        .map(|id| rel_err(&to_vec(net.forward(images.clone(), id).unwrap()), &reference[&format!("logits.{id}")].data))
        .fold(0.0, f32::max)
}

#[test]
fn official_sn_netv2_checkpoints_give_the_official_logits_of_every_route() {
    for pair in PAIRS {
        let reference = snnetv2_tensors(&format!("{pair}_routes.safetensors"));
        for file in ["official.pth", "official.safetensors"] {
            let net = official_network(pair).build::<B>(&Default::default()).unwrap();
            let (net, _) = net.load(&fixture(&format!("snnetv2/{pair}_{file}"))).unwrap();
            assert_eq!(net.num_routes(), 15);
            // Unmerged (the training form: W x + b + s·B(A x)) and merged (what inference runs).
            let unmerged = worst_route_error(&net, &reference);
            assert!(unmerged <= 1e-4, "{pair} {file} unmerged: relative error {unmerged}");
            let merged_net = net.merged_for_inference();
            let merged = worst_route_error(&merged_net, &reference);
            assert!(merged <= 1e-4, "{pair} {file} merged: relative error {merged}");
        }
    }
}

#[test]
fn least_squares_equals_the_official_initialisation() {
    for pair in PAIRS {
        let calibration = snnetv2_tensors(&format!("{pair}_calibration.safetensors"));
        let net = official_network(pair).build::<B>(&Default::default()).unwrap();
        // The anchors of the official checkpoint (its stitching layers are replaced below).
        let mut state = snnetv2_tensors(&format!("{pair}_official.safetensors"));
        let mut net = net.load_state(&mut state, snnet::StatePart::All, "official").unwrap();
        net.init_least_squares(tensor4(&calibration["images"]), 16, |_| {}).unwrap();
        let ours: HashMap<String, NamedTensor> = net.named_tensors().into_iter().collect();
        let mut compared = 0;
        for (key, official) in calibration.iter().filter(|(k, _)| k.starts_with("stitch_layers.")) {
            let err = rel_err(&ours[key].data, &official.data);
            assert!(err <= 1e-3, "{pair} {key}: relative error {err}");
            compared += 1;
        }
        assert_eq!(compared, 2 * (4 + 3), "{pair}: weight and bias of 4 S→L and 3 L→S layers");
    }
}

#[test]
fn lora_layers_merge_into_the_same_map_and_keep_their_factors_in_files() {
    let net = official_network("s4_l8").build::<B>(&Default::default()).unwrap();
    let (net, _) = net.load(&fixture("snnetv2/s4_l8_official.safetensors")).unwrap();
    // Files keep the factors unmerged, in the official orientation.
    let tensors: HashMap<String, NamedTensor> = net.named_tensors().into_iter().collect();
    assert_eq!(tensors["stitch_layers.0.3.transform.lora_A"].shape, vec![2, 8]);
    assert_eq!(tensors["stitch_layers.1.2.transform.lora_B"].shape, vec![8, 2]);
    let official = snnetv2_tensors("s4_l8_official.safetensors");
    let renamed = |key: &str| key.replace(".gamma_1", ".ls1.gamma").replace(".gamma_2", ".ls2.gamma");
    for (key, t) in &official {
        assert_eq!(tensors[&renamed(key)].data, t.data, "{key} round-trips unchanged");
    }
    assert_eq!(tensors.len(), official.len());
    // Merged inference output equals the unmerged training output.
    let images = uniform_images(3, 3, 16, 21);
    let unmerged: Vec<Vec<f32>> = (0..15).map(|id| to_vec(net.forward(images.clone(), id).unwrap())).collect();
    let merged_net = net.merged_for_inference();
    assert_eq!(merged_net.space().settings.lora_rank, 0, "a merged network describes plain affine layers");
    assert!(merged_net.named_tensors().iter().all(|(k, _)| !k.contains("lora_")));
    for (id, want) in unmerged.iter().enumerate() {
        let got = to_vec(merged_net.forward(images.clone(), id).unwrap());
        let diff = max_abs_diff(&got, want);
        assert!(diff <= 1e-5, "route {id}: merged vs unmerged {diff}");
    }
}

#[test]
fn a_lora_rank_wider_than_a_stitching_layer_is_a_clear_error() {
    let mut description = reduced_pair(8);
    description.space.lora_rank = 9;
    let err = description.build::<B>(&Default::default()).unwrap_err().to_string();
    assert!(err.contains("lora_rank") && err.contains("rank 9") && err.contains("8 channels"), "{err}");
    description.space.lora_rank = 8;
    assert!(description.build::<B>(&Default::default()).is_ok(), "the narrower width itself is allowed");
}
