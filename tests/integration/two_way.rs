//! SN-Netv2's two-way networks: every route runs as the official eval forward reads its config
//! (spec §11.3), and least squares fits every stitching layer of both directions (§11.4).

use burn::tensor::Tensor;
use snnet::{Anchor, AnchorSpec, Architecture, Description, SpaceSettings, Stitch, VitConfig};

use super::common::{max_abs_diff, to_vec, uniform_images, B};

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
