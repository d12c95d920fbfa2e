//! The stitch space against every official vector (tests/fixtures/vectors, copied from the spec).

use serde_json::Value;
use snnet::{
    AnchorLayout,
    FeatureKind::{Map, Tokens},
    PairedVariant, SpaceSettings, StitchSpace,
};

use super::common::{layout, load_json};

fn vit(name: &str, dim: usize) -> AnchorLayout {
    layout(name, &[(12, dim, 197, Tokens)])
}

fn swin(name: &str, depths: [usize; 4], c: usize) -> AnchorLayout {
    let rows = [3136, 784, 196, 49];
    let stages: Vec<_> = (0..4).map(|s| (depths[s], c << s, rows[s], Tokens)).collect();
    layout(name, &stages)
}

fn resnet(name: &str, depths: [usize; 4], widths: [usize; 4]) -> AnchorLayout {
    let rows = [3136, 784, 196, 49];
    let stages: Vec<_> = (0..4).map(|s| (depths[s], widths[s], rows[s], Map)).collect();
    layout(name, &stages)
}

fn levit(name: &str, c: [usize; 3]) -> AnchorLayout {
    layout(name, &[(4, c[0], 196, Tokens), (4, c[1], 49, Tokens), (4, c[2], 16, Tokens)])
}

fn pairs(v: &Value) -> Vec<(usize, usize)> {
    v.as_array().unwrap().iter().map(|p| (p[0].as_u64().unwrap() as usize, p[1].as_u64().unwrap() as usize)).collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

/// Every route of the vector file equals ours, field by field; returns the space.
fn check_routes(file: &str, anchors: &[AnchorLayout], settings: &SpaceSettings) -> StitchSpace {
    let v = load_json(&format!("vectors/{file}"));
    let space = StitchSpace::build(anchors, settings).unwrap();
    assert_eq!(snnet::space::count_routes(anchors, settings).unwrap(), space.num_routes() as u64, "{file}: routes counted");
    let configs = v["configs"].as_array().unwrap();
    assert_eq!(space.num_routes(), v["num_configs"].as_u64().unwrap() as usize, "{file}");
    assert_eq!(space.num_routes(), configs.len());
    for (route, cfg) in space.routes.iter().zip(configs) {
        let id = cfg["cfg_id"].as_u64().unwrap() as usize;
        assert_eq!(route.cfg_id, id);
        assert_eq!(route.comb_id, usizes(&cfg["comb_id"]), "{file} cfg {id} comb");
        assert_eq!(route.stitch_cfgs, pairs(&cfg["stitch_cfgs"]), "{file} cfg {id} stitch_cfgs");
        assert_eq!(route.stitch_layers, usizes(&cfg["stitch_layers"]), "{file} cfg {id} stitch_layers");
        assert_eq!(route.stage_id, cfg.get("stage_id").map(|s| s.as_u64().unwrap() as usize), "{file} cfg {id} stage");
    }
    if let Some(groups) = v.get("ls_init_groups").and_then(Value::as_object) {
        for (name, positions) in groups {
            let expected: Vec<(usize, usize)> = positions
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p["front_block"].as_u64().unwrap() as usize, p["end_block"].as_u64().unwrap() as usize))
                .collect();
            // "layer3" (DeiT: same positions for every pair) or "stage2:0-1:layer5".
            let matches: Vec<_> = space
                .layers
                .iter()
                .filter(|l| {
                    let parts: Vec<&str> = name.split(':').collect();
                    match parts.as_slice() {
                        [layer] => format!("layer{}", l.layer) == *layer,
                        [stage, pair, layer] => {
                            format!("stage{}", l.stage_id.unwrap()) == *stage
                                && format!("{}-{}", l.front, l.end) == *pair
                                && format!("layer{}", l.layer) == *layer
                        }
                        _ => panic!("unexpected group name {name}"),
                    }
                })
                .collect();
            assert!(!matches.is_empty(), "{file}: no layer for {name}");
            for l in matches {
                let mut got = l.positions.clone();
                let mut want = expected.clone();
                got.sort();
                want.sort();
                assert_eq!(got, want, "{file}: positions of {name}");
            }
        }
    }
    space
}

fn stitch_params(space: &StitchSpace) -> usize {
    space.layers.iter().map(|l| l.in_channels * l.out_channels + l.out_channels).sum()
}

fn deit() -> Vec<AnchorLayout> {
    vec![vit("deit_tiny", 192), vit("deit_small", 384), vit("deit_base", 768)]
}

#[test]
fn deit_71_routes() {
    let space = check_routes("stitch_configs_deit.json", &deit(), &SpaceSettings::default());
    assert_eq!(space.layers.len(), 22);
    assert_eq!(stitch_params(&space), 4_067_712);
    assert_eq!(space.layers[11].key(), "stitch_layers.1.0");
}

#[test]
fn deit_without_nearest_732_routes() {
    let settings = SpaceSettings { nearest_stitching: false, ..SpaceSettings::default() };
    let space = check_routes("stitch_configs_deit_no_nearest.json", &deit(), &settings);
    let count = |comb: &[usize]| space.routes.iter().filter(|r| r.comb_id == comb).count();
    assert_eq!((count(&[0, 1]), count(&[0, 2]), count(&[1, 2]), count(&[0, 1, 2])), (34, 34, 34, 627));
}

#[test]
fn swin_41_routes() {
    let anchors = [swin("swin_tiny", [2, 2, 6, 2], 96), swin("swin_small", [2, 2, 18, 2], 96), swin("swin_base", [2, 2, 18, 2], 128)];
    let space = check_routes("stitch_configs_swin.json", &anchors, &SpaceSettings::stage_wise(vec![0, 1, 2], PairedVariant::Forward));
    assert_eq!(stitch_params(&space), 4_346_272);
    assert_eq!(space.layers.last().unwrap().key(), "stitch_layers.2.1.16");
}

#[test]
fn resnet18_resnet50_10_routes() {
    let anchors = [resnet("resnet18", [2, 2, 2, 2], [64, 128, 256, 512]), resnet("resnet50", [3, 4, 6, 3], [256, 512, 1024, 2048])];
    let space = check_routes(
        "stitch_configs_resnet18_resnet50.json",
        &anchors,
        &SpaceSettings::stage_wise(vec![1, 2], PairedVariant::ForwardNoEntry),
    );
    assert_eq!(stitch_params(&space), 658_432);
    assert_eq!(space.layers[0].key(), "stitch_layers.0.0.0", "stage 1 is the first stitched stage");
}

#[test]
fn resnet18_swin_tiny_8_routes() {
    let anchors = [resnet("resnet18", [2, 2, 2, 2], [64, 128, 256, 512]), swin("swin_tiny", [2, 2, 6, 2], 96)];
    let space = check_routes(
        "stitch_configs_resnet18_swin_ti.json",
        &anchors,
        &SpaceSettings::stage_wise(vec![1, 2], PairedVariant::ForwardNoEntry),
    );
    assert_eq!(stitch_params(&space), 222_144);
    assert!(space.layers.iter().all(|l| l.in_kind == Map && l.out_kind == Tokens));
}

#[test]
fn levit_8_routes() {
    let anchors = [levit("levit_192", [192, 288, 384]), levit("levit_256", [256, 384, 512])];
    let space = check_routes("stitch_configs_levit.json", &anchors, &SpaceSettings::stage_wise(vec![0, 1], PairedVariant::Forward));
    assert_eq!(stitch_params(&space), 481_152);
}

/// A two-way space against an SN-Netv2 vector: ids, anchors, stitches, the official
/// `stitch_layer_ids` and `route`, the trained routes; returns the space.
fn check_two_way(file: &str, anchors: &[AnchorLayout]) -> StitchSpace {
    let v = load_json(&format!("vectors/{file}"));
    let settings = SpaceSettings::two_way();
    let space = StitchSpace::build(anchors, &settings).unwrap();
    assert_eq!(snnet::space::count_routes(anchors, &settings).unwrap(), 135, "{file}: routes counted");
    let configs = v["configs"].as_array().unwrap();
    assert_eq!(space.num_routes(), configs.len(), "{file}");
    for (route, cfg) in space.routes.iter().zip(configs) {
        let id = cfg["cfg_id"].as_u64().unwrap() as usize;
        assert_eq!(route.cfg_id, id);
        assert_eq!(route.comb_id, usizes(&cfg["comb_id"]), "{file} cfg {id} comb");
        let stitches = cfg.get("stitch_cfgs").map(pairs).unwrap_or_default();
        assert_eq!(route.stitch_cfgs, stitches, "{file} cfg {id} stitch_cfgs");
        let layer_ids: Vec<i64> =
            cfg.get("stitch_layer_ids").map(|l| l.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()).unwrap_or_default();
        assert_eq!(route.official_stitch_layer_ids(), layer_ids, "{file} cfg {id} stitch_layer_ids");
        let segments: Vec<[usize; 2]> = cfg.get("route").map(|r| pairs(r).into_iter().map(|(a, b)| [a, b]).collect()).unwrap_or_default();
        assert_eq!(route.official_segments(), segments, "{file} cfg {id} route");
        // Each stitch's layer is in the list of the anchor it leaves (0: S→L, 1: L→S).
        for (&slot, &from) in route.slots.iter().zip(&route.comb_id) {
            assert_eq!(space.layers[slot].pair_key, from, "{file} cfg {id}");
        }
    }
    let trained: Vec<usize> =
        v["trained_ids"].as_array().map(|t| usizes(&Value::Array(t.clone()))).unwrap_or_else(|| (0..135).filter(|&i| i != 13).collect());
    assert_eq!(space.trained_routes(), trained, "{file}: trained routes");
    space
}

#[test]
fn deit3_small_large_two_way_135_routes() {
    let anchors = [vit("deit3_small", 384), layout("deit3_large", &[(24, 1024, 197, Tokens)])];
    let space = check_two_way("stitch_configs_deit3_s_l_v2.json", &anchors);
    let keys: Vec<String> = space.layers.iter().map(|l| l.key()).collect();
    assert_eq!(keys.len(), 12 + 11);
    assert_eq!(
        (keys[0].as_str(), keys[11].as_str(), keys[12].as_str(), keys[22].as_str()),
        ("stitch_layers.0.0", "stitch_layers.0.11", "stitch_layers.1.0", "stitch_layers.1.10")
    );
    assert!(space.layers[..12].iter().all(|l| (l.front, l.end, l.in_channels, l.out_channels) == (0, 1, 384, 1024)));
    assert!(space.layers[12..].iter().all(|l| (l.front, l.end, l.in_channels, l.out_channels) == (1, 0, 1024, 384)));
    // Least squares fits each layer at its single-stitch position (spec §11.4), the S→L layer 11
    // from the last small block to the large anchor's end.
    assert_eq!(space.layers[11].positions, vec![(11, 24)]);
    assert_eq!(space.layers[12].positions, vec![(1, 1)]);
    assert_eq!(space.layers[22].positions, vec![(21, 11)]);
    assert_eq!(space.route(13).unwrap().segments[1].blocks, 24..24, "the S→L route from the last small block runs no large block");
}

#[test]
fn deit3_small_base_two_way_135_routes() {
    let space = check_two_way("stitch_configs_deit3_s_b_v2.json", &[vit("deit3_small", 384), vit("deit3_base", 768)]);
    assert_eq!(space.layers.len(), 12 + 11);
    assert_eq!(space.layers[12].positions, vec![(0, 1)], "equal depths: L→S from every large block but the last");
}

#[test]
fn bad_two_way_settings_name_the_culprit() {
    let err = |s: SpaceSettings, a: &[AnchorLayout]| StitchSpace::build(a, &s).unwrap_err().to_string();
    let (small, large) = (vit("deit3_small", 384), layout("deit3_large", &[(24, 1024, 197, Tokens)]));
    let two_way = SpaceSettings::two_way;
    assert!(err(two_way(), &[small.clone(), large.clone(), large.clone()]).contains("exactly two anchors"));
    assert!(err(two_way(), &[large.clone(), small.clone()]).contains("shallower anchor first"));
    assert!(err(two_way(), &[small.clone(), layout("deep", &[(18, 1024, 197, Tokens)])]).contains("twice"));
    assert!(err(two_way(), &[small.clone(), layout("other_grid", &[(24, 1024, 50, Tokens)])]).contains("tokens per image"));
    assert!(err(SpaceSettings { kernel_size: 3, ..two_way() }, &[small.clone(), large.clone()]).contains("kernel_size"));
    let staged = SpaceSettings { stitched_stages: Some(vec![0]), ..two_way() };
    assert!(err(staged, &[small.clone(), large.clone()]).contains("stitched_stages"));
    let swin_pair = [swin("t", [2, 2, 6, 2], 96), swin("s", [2, 2, 18, 2], 96)];
    assert!(err(two_way(), &swin_pair).contains("stage"));
    // The one-way error for unequal depths points to the two-way space.
    assert!(err(SpaceSettings::default(), &[small, large]).contains("--two-way"));
}

#[test]
fn bad_settings_name_the_culprit() {
    let err = |s: SpaceSettings, a: &[AnchorLayout]| StitchSpace::build(a, &s).unwrap_err().to_string();
    assert!(err(SpaceSettings { kernel_size: 0, ..SpaceSettings::default() }, &deit()).contains("kernel_size"));
    assert!(err(SpaceSettings { stride: 0, ..SpaceSettings::default() }, &deit()).contains("stride"));
    let uneven = [vit("a", 192), layout("b", &[(10, 384, 197, Tokens)])];
    assert!(err(SpaceSettings::default(), &uneven).contains("equal depth"));
    let s = SpaceSettings { stitched_stages: Some(vec![7]), paired_variant: PairedVariant::Forward, ..SpaceSettings::default() };
    assert!(err(s, &deit()).contains("stage 7"));
    let decreasing = [swin("s", [2, 2, 18, 2], 96), swin("t", [2, 2, 6, 2], 96)];
    assert!(err(SpaceSettings::stage_wise(vec![0, 1, 2], PairedVariant::Forward), &decreasing).contains("non-decreasing"));
    assert!(StitchSpace::build(&[], &SpaceSettings::default()).is_err());
}

#[test]
fn two_anchors_with_nearest_give_one_pair() {
    let space = StitchSpace::build(&deit()[..2], &SpaceSettings::default()).unwrap();
    assert_eq!(space.num_routes(), 2 + 34);
}
