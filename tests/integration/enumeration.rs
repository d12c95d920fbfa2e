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
