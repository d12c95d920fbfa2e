//! Descriptions that ask for absurd memory or work are refused before anything is computed, with
//! the number asked for and the limit; description errors name the anchor, the field and what was
//! expected.

use std::time::{Duration, Instant};

use snnet::{
    anchors::limits, core::limits as core_limits, space::count_routes, AnchorSpec, Architecture, Description, LevitConfig, PartCost,
    SpaceSettings, StitchSpace, SwinConfig, VitConfig,
};

use super::common::{layout, mini_vit, B};

fn description_error(json: &str) -> String {
    Description::from_json(json, "probe.json").unwrap_err().to_string()
}

fn vit_json(fields: &str) -> String {
    format!(r#"{{"anchors": [{{"arch": "vit", "img_size": 32, "patch_size": 8, {fields}}}]}}"#)
}

#[test]
fn anchor_errors_name_the_anchor_the_field_and_what_was_expected() {
    // A missing field.
    let msg = description_error(&vit_json(r#""embed_dim": 32, "num_heads": 2"#));
    assert!(msg.contains("anchors[0]") && msg.contains("vit anchor") && msg.contains("missing field `depth`"), "{msg}");
    // A wrong architecture.
    let msg = description_error(r#"{"anchors": ["deit_tiny_patch16_224", {"arch": "vitt", "embed_dim": 32}]}"#);
    assert!(msg.contains("anchors[1]") && msg.contains("unknown architecture `vitt`") && msg.contains("vit, swin, resnet, levit"), "{msg}");
    // An anchor given as a number.
    let msg = description_error(r#"{"anchors": ["deit_tiny_patch16_224", 5]}"#);
    assert!(msg.contains("anchors[1]") && msg.contains("the number 5") && msg.contains("preset name"), "{msg}");
    // A field of the wrong type.
    let msg = description_error(&vit_json(r#""embed_dim": "wide", "depth": 4, "num_heads": 2"#));
    assert!(msg.contains("anchors[0]") && msg.contains("embed_dim") && msg.contains("expected usize"), "{msg}");
    // An unknown field lists the known ones; an object without `arch` says what it needs.
    let msg = description_error(&vit_json(r#""embed_dim": 32, "depth": 4, "num_heads": 2, "heads": 2"#));
    assert!(msg.contains("anchors[0]") && msg.contains("unknown field `heads`") && msg.contains("`num_heads`"), "{msg}");
    let msg = description_error(r#"{"anchors": [{"embed_dim": 32}]}"#);
    assert!(msg.contains("anchors[0]") && msg.contains("needs `arch`") && msg.contains("deit_tiny_patch16_224"), "{msg}");
    // Valid anchors still read, presets and explicit ones.
    let d = Description::from_json(&vit_json(r#""embed_dim": 32, "depth": 4, "num_heads": 2"#), "ok.json").unwrap();
    assert_eq!(d.layouts().unwrap()[0].stages[0].depth, 4);
}

#[test]
fn absurd_anchors_are_refused_with_the_number_and_the_limit() {
    let layouts_error = |fields: &str| {
        let started = Instant::now();
        let d = Description::from_json(&vit_json(fields), "probe.json").unwrap();
        let msg = d.space_with_costs().unwrap_err().to_string();
        assert!(started.elapsed() < Duration::from_secs(5), "refused only after {:?}: {msg}", started.elapsed());
        msg
    };
    // depth 10^9 (an allocation of 24 GB before) and 2^64 − 1 (an overflow panic).
    let msg = layouts_error(r#""embed_dim": 32, "depth": 1000000000, "num_heads": 2"#);
    assert!(msg.contains("anchors[0].depth") && msg.contains("1000000000") && msg.contains("limit of 4096"), "{msg}");
    let msg = layouts_error(r#""embed_dim": 32, "depth": 18446744073709551615, "num_heads": 2"#);
    assert!(msg.contains("anchors[0].depth") && msg.contains("18446744073709551615"), "{msg}");
    // embed_dim 10^9 (a 68 GB allocation in `infer --seed`).
    let msg = layouts_error(r#""embed_dim": 1000000000, "depth": 4, "num_heads": 2"#);
    assert!(msg.contains("anchors[0].embed_dim") && msg.contains("1000000000") && msg.contains("limit of 262144"), "{msg}");
    // Each field within bounds, the whole anchor not: the parameter budget names both numbers.
    let msg = layouts_error(r#""embed_dim": 65536, "depth": 4096, "num_heads": 2"#);
    assert!(msg.contains("anchors[0]") && msg.contains("parameters") && msg.contains("limit of 4294967296"), "{msg}");
    assert!(msg.contains(limits::MAX_PARAMS_VAR), "{msg}");
    // An image side within bounds whose tokens are not.
    let d = Description::from_json(
        r#"{"anchors": [{"arch": "vit", "img_size": 16384, "patch_size": 8, "embed_dim": 8, "depth": 1, "num_heads": 2}]}"#,
        "probe.json",
    )
    .unwrap();
    let msg = d.layouts().unwrap_err().to_string();
    assert!(msg.contains("4194305 positions") && msg.contains("limit of 65536") && msg.contains(limits::MAX_POSITIONS_VAR), "{msg}");
}

#[test]
fn building_refuses_before_allocating() {
    let vit =
        |embed_dim, depth| AnchorSpec::Explicit(Architecture::Vit(VitConfig { embed_dim, depth, num_heads: 1, ..mini_vit(32, 2, 3) }));
    let network = |anchors| Description { anchors, space: Default::default(), behaviour: Default::default() };
    let msg = network(vec![vit(1_000_000_000, 4)]).build::<B>(&Default::default()).map(|_| ()).unwrap_err().to_string();
    assert!(msg.contains("embed_dim") && msg.contains("1000000000"), "{msg}");
    // Two anchors of 2.5 billion parameters each: each within the budget, the network not.
    let two = network(vec![vit(14_336, 1), vit(14_336, 1)]);
    two.layouts().unwrap();
    let msg = two.build::<B>(&Default::default()).map(|_| ()).unwrap_err().to_string();
    assert!(msg.contains("parameters in the network") && msg.contains(limits::MAX_PARAMS_VAR), "{msg}");
}

#[test]
fn index_tables_count_against_the_parameter_budget() {
    // A narrow LeViT at 4096 px: few parameters, but n² attention-bias indices per block.
    let levit =
        LevitConfig { img_size: 4096, embed_dim: vec![8], depth: vec![2], num_heads: vec![1], key_dim: 8, ..LevitConfig::levit_192() };
    let msg = levit.validate().unwrap_err().to_string();
    assert!(msg.contains("index-table entries") && msg.contains("4294967296"), "{msg}");
    // A Swin whose window covers a 256×256 grid: w⁴ relative-position indices per block.
    let swin = SwinConfig {
        img_size: 1024,
        window_size: 256,
        depths: vec![2],
        num_heads: vec![1],
        embed_dim: 8,
        ..SwinConfig::swin_tiny_patch4_window7_224()
    };
    let msg = swin.validate().unwrap_err().to_string();
    assert!(msg.contains("index-table entries"), "{msg}");
}

#[test]
fn real_presets_are_within_every_limit() {
    for name in snnet::anchors::preset_names() {
        let d = Description::from_names(&[name]);
        d.space_with_costs().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let deit = Description::from_names(&["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]);
    let all = Description { space: SpaceSettings { nearest_stitching: false, ..SpaceSettings::default() }, ..deit };
    assert_eq!(all.space_with_costs().unwrap().0.num_routes(), 732);
}

#[test]
fn routes_are_counted_before_they_are_enumerated() {
    // Twelve identical small anchors, every pair and chain: killed for memory after 33 s before.
    let anchor = layout("a", &[(12, 192, 197, snnet::FeatureKind::Tokens)]);
    let anchors = vec![anchor; 12];
    let every = SpaceSettings { nearest_stitching: false, ..SpaceSettings::default() };
    let started = Instant::now();
    let count = count_routes(&anchors, &every).unwrap();
    let msg = StitchSpace::build(&anchors, &every).unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(count > core_limits::DEFAULT_MAX_ROUTES, "{count}");
    assert!(
        msg.contains(&format!("{count} routes")) && msg.contains("limit of 100000") && msg.contains(core_limits::MAX_ROUTES_VAR),
        "{msg}"
    );
    // Far more anchors saturate the count instead of overflowing it.
    let many = vec![layout("a", &[(12, 8, 5, snnet::FeatureKind::Tokens)]); 200];
    assert_eq!(count_routes(&many, &every).unwrap(), u64::MAX);
    let msg = StitchSpace::build(&many, &every).unwrap_err().to_string();
    assert!(msg.contains("more than 18446744073709551614 routes"), "{msg}");
    // Under an explicit limit the same space builds, with exactly the routes counted.
    let three = &anchors[..3];
    let space = StitchSpace::build_with_limit(three, &every, 732).unwrap();
    assert_eq!(space.num_routes() as u64, count_routes(three, &every).unwrap());
    assert!(StitchSpace::build_with_limit(three, &every, 731).is_err());
    // The window's kernel is bounded too (kernel_size² pairs at every position).
    let wide = SpaceSettings { kernel_size: usize::MAX, stride: usize::MAX, ..SpaceSettings::default() };
    let msg = StitchSpace::build(three, &wide).unwrap_err().to_string();
    assert!(msg.contains("kernel_size") && msg.contains("limit of 64"), "{msg}");
    let strided = SpaceSettings { stride: usize::MAX, ..SpaceSettings::default() };
    assert_eq!(StitchSpace::build(three, &strided).unwrap().num_routes(), 3 + 2 * 4);
}

#[test]
fn costs_saturate_instead_of_overflowing() {
    let big = PartCost::saturating(u128::MAX, 1 << 70);
    assert_eq!((big.flops, big.params), (u64::MAX, u64::MAX));
    assert_eq!((big + PartCost::new(1, 1)).flops, u64::MAX);
}
