//! Route costs against the official figures (spec vectors) and fvcore counts (tools/make_cost_fixtures.py).

use serde_json::Value;
use snnet::{AnchorSpec, Description, PairedVariant, SpaceSettings};

use super::common::load_json;

fn deit_description() -> Description {
    Description::from_names(&["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"])
}

#[test]
fn deit_costs_equal_the_official_results_for_all_71_routes() {
    let v = load_json("vectors/stitch_configs_deit.json");
    let (space, costs) = deit_description().space_with_costs().unwrap();
    for (cfg, (route, cost)) in v["configs"].as_array().unwrap().iter().zip(space.routes.iter().zip(&costs)) {
        let id = route.cfg_id;
        assert_eq!(cost.flops, cfg["reported"]["flops"].as_u64().unwrap(), "cfg {id} flops");
        assert_eq!(cost.params, cfg["reported"]["params"].as_u64().unwrap(), "cfg {id} params");
        assert_eq!(cost.flops, cfg["analytic_flops"].as_u64().unwrap());
        // The true count adds the front anchor's class token and position embedding (198·C0) and
        // drops the final norm the stitched path never runs (2·C_L), spec §9 B4.
        if !route.is_anchor() {
            let c0 = [192u64, 384, 768][route.comb_id[0]];
            let cl = [192u64, 384, 768][*route.comb_id.last().unwrap()];
            assert_eq!(cost.params_exact, cost.params + 198 * c0 - 2 * cl, "cfg {id} params_exact");
        } else {
            assert_eq!(cost.params_exact, cost.params);
        }
    }
    // The README's selective-inference examples.
    assert_eq!((costs[24].flops, costs[24].params), (2_758_967_808, 13_038_760));
    assert_eq!((costs[56].flops, costs[56].params), (10_048_040_448, 49_222_120));
    assert_eq!((costs[0].flops, costs[0].params), (1_258_411_200, 5_717_416));
}

#[test]
fn deit3_two_way_flops_equal_sn_netv2s_for_the_134_reported_routes() {
    let v = load_json("vectors/stitch_configs_deit3_s_l_v2.json");
    let mut desc = Description::from_names(&["deit3_small_patch16_224", "deit3_large_patch16_224"]);
    desc.space = SpaceSettings::two_way();
    assert!(!desc.behaviour.final_norm_on_stitched, "a two-way space needs no behaviour entry for the final norm");
    let (space, costs) = desc.space_with_costs().unwrap();
    let mut reported = 0;
    for (cfg, (route, cost)) in v["configs"].as_array().unwrap().iter().zip(space.routes.iter().zip(&costs)) {
        if let Some(flops) = cfg.get("reported").map(|r| r["flops"].as_u64().unwrap()) {
            assert_eq!(cost.flops, flops, "cfg {} flops", route.cfg_id);
            reported += 1;
        }
    }
    assert_eq!(reported, 134);
    // Every stitched route runs the end anchor's final norm (fvcore: 5·197·C), as SN-Netv2 does:
    // the S→L route from the last small block (not reported) costs the small anchor without its
    // norm and head, stitching layer 11, then the large anchor's norm and head.
    let (n, small, large, classes) = (197u64, 384u64, 1024u64, 1000u64);
    let expected = costs[0].flops - 5 * n * small - small * classes + n * small * large + 5 * n * large + large * classes;
    assert_eq!(costs[13].flops, expected);
}

#[test]
fn swin_costs_equal_the_official_results_for_all_41_routes() {
    let v = load_json("vectors/stitch_configs_swin.json");
    let desc = Description::from_names(&["swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224", "swin_base_patch4_window7_224"]);
    assert_eq!(desc.space, SpaceSettings::stage_wise(vec![0, 1, 2], PairedVariant::Forward), "Swin presets take the official Swin space");
    assert!(desc.behaviour.final_norm_on_stitched, "the official Swin stitched path keeps the final norm");
    let (space, costs) = desc.space_with_costs().unwrap();
    let configs = v["configs"].as_array().unwrap();
    assert_eq!(space.num_routes(), configs.len());
    for (cfg, (route, cost)) in configs.iter().zip(space.routes.iter().zip(&costs)) {
        let id = route.cfg_id;
        assert_eq!(cost.flops, cfg["reported"]["flops"].as_u64().unwrap(), "cfg {id} flops");
        assert_eq!(cost.params, cfg["reported"]["params"].as_u64().unwrap(), "cfg {id} params");
        // The official count omits the front anchor's patch merging of the stages before the
        // stitch (spec §9 B3): 74,496 at stage 1 and 370,944 at stage 2 for a Ti/S front.
        let omitted = match (route.is_anchor(), route.stage_id) {
            (false, Some(1)) => 74_496,
            (false, Some(2)) => 370_944,
            _ => 0,
        };
        assert_eq!(cost.params_exact, cost.params + omitted, "cfg {id} params_exact");
    }
    assert_eq!((costs[13].flops, costs[13].params), (7_377_656_064, 42_277_186));
    assert_eq!((costs[28].flops, costs[28].params), (12_936_597_504, 79_548_630));
}

#[test]
fn cnn_family_costs_equal_the_official_results() {
    for (file, names, anchor_params) in [
        ("stitch_configs_resnet18_resnet50.json", ["resnet18", "resnet50"], [11_689_512u64, 25_557_032]),
        ("stitch_configs_resnet18_swin_ti.json", ["resnet18", "swin_tiny_patch4_window7_224"], [11_689_512, 28_288_354]),
    ] {
        let v = load_json(&format!("vectors/{file}"));
        let desc = Description::from_names(&names);
        assert_eq!(desc.space, SpaceSettings::stage_wise(vec![1, 2], PairedVariant::ForwardNoEntry), "{file}");
        let (space, costs) = desc.space_with_costs().unwrap();
        let configs = v["configs"].as_array().unwrap();
        assert_eq!(space.num_routes(), configs.len(), "{file}");
        for (cfg, (route, cost)) in configs.iter().zip(space.routes.iter().zip(&costs)) {
            let id = route.cfg_id;
            assert_eq!(cost.flops, cfg["reported"]["flops"].as_u64().unwrap(), "{file} cfg {id} flops");
            let stitch: Vec<(usize, usize)> = serde_json::from_value(cfg["stitch_cfgs"].clone()).unwrap();
            assert_eq!(route.stitch_cfgs, stitch, "{file} cfg {id}");
            assert_eq!(cost.params, cost.params_exact, "no official parameter count to follow for CNN routes");
        }
        assert_eq!([costs[0].params, costs[1].params], anchor_params, "{file}: timm's parameter counts");
    }
}

#[test]
fn levit_costs_equal_the_official_results_for_all_8_routes() {
    let v = load_json("vectors/stitch_configs_levit.json");
    let desc = Description::from_names(&["levit_192", "levit_256"]);
    assert_eq!(desc.space, SpaceSettings::stage_wise(vec![0, 1], PairedVariant::Forward));
    let (space, costs) = desc.space_with_costs().unwrap();
    let configs = v["configs"].as_array().unwrap();
    assert_eq!(space.num_routes(), configs.len());
    for (cfg, (route, cost)) in configs.iter().zip(space.routes.iter().zip(&costs)) {
        assert_eq!(cost.flops, cfg["reported"]["flops"].as_u64().unwrap(), "cfg {} flops", route.cfg_id);
    }
}

#[test]
fn costs_equal_fvcore_on_non_default_spaces_and_resolutions() {
    let fixture = load_json("costs_fvcore.json");
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let anchors: Vec<AnchorSpec> = serde_json::from_value(case["anchors"].clone()).unwrap();
        let space: SpaceSettings = serde_json::from_value(case["space"].clone()).unwrap();
        let desc = Description { anchors, space, behaviour: Default::default() };
        let (space, costs) = desc.space_with_costs().unwrap();
        let routes = case["routes"].as_array().unwrap();
        assert_eq!(space.num_routes(), routes.len(), "{name}");
        for (want, (route, cost)) in routes.iter().zip(space.routes.iter().zip(&costs)) {
            let id = route.cfg_id;
            let get = |k: &str| want[k].as_u64().unwrap();
            assert_eq!(route.comb_id, serde_json::from_value::<Vec<usize>>(want["comb_id"].clone()).unwrap(), "{name} cfg {id}");
            let stitch: Vec<(usize, usize)> = serde_json::from_value(want["stitch_cfgs"].clone()).unwrap();
            assert_eq!(route.stitch_cfgs, stitch, "{name} cfg {id}");
            assert_eq!(route.stitch_layers, serde_json::from_value::<Vec<usize>>(want["stitch_layers"].clone()).unwrap());
            assert_eq!(cost.flops, get("flops"), "{name} cfg {id} flops");
            assert_eq!(cost.params, get("params"), "{name} cfg {id} params");
            assert_eq!(cost.params_exact, get("params_exact"), "{name} cfg {id} params_exact");
        }
    }
    assert!(fixture["cases"].as_array().unwrap().iter().any(|c| c["space"]["kernel_size"] == Value::from(3)));
}

#[test]
fn correcting_the_final_norm_quirk_adds_its_cost() {
    let mut desc = deit_description();
    let (_, official) = desc.space_with_costs().unwrap();
    desc.behaviour.final_norm_on_stitched = true;
    let (_, corrected) = desc.space_with_costs().unwrap();
    // cfg 24 ends in DeiT-S: + 5·197·384 FLOPs and + 2·384 used parameters; official params unchanged.
    assert_eq!(corrected[24].flops, official[24].flops + 5 * 197 * 384);
    assert_eq!(corrected[24].params_exact, official[24].params_exact + 2 * 384);
    assert_eq!(corrected[24].params, official[24].params);
    assert_eq!(corrected[1], official[1], "anchors are unaffected");
}

#[cfg(feature = "app")]
#[test]
fn frontier_plots_are_written_as_png_and_svg_and_bad_names_are_errors() {
    use snnet::plot::{write_frontier_plot, FrontierPlot, PlotError, PlotRoute};
    let routes: Vec<PlotRoute> = (0..6)
        .map(|i| PlotRoute {
            cfg_id: i,
            x: 1.0 + i as f64,
            y: 70.0 + (i as f64 * 1.7) % 5.0,
            size: 5.0 + i as f64,
            anchor: (i < 2).then(|| format!("anchor {i}")),
        })
        .collect();
    let plot = FrontierPlot { title: "test", x_label: "FLOPs (G)", y_label: "Top-1 (%)", routes: &routes, frontier: &[0, 1, 2] };
    let dir = std::env::temp_dir().join(format!("snnet-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("f.png");
    write_frontier_plot(&plot, &png).unwrap();
    assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
    let svg = dir.join("f.svg");
    write_frontier_plot(&plot, &svg).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("<svg") && text.contains("Top-1 (%)") && text.contains("anchor 1"));
    assert!(matches!(write_frontier_plot(&plot, &dir.join("f.jpg")), Err(PlotError::Extension(_))));
    let nothing = FrontierPlot { routes: &[], ..plot.clone() };
    assert!(matches!(write_frontier_plot(&nothing, &svg), Err(PlotError::Empty(_))));
    assert!(matches!(write_frontier_plot(&plot, &dir.join("missing/f.png")), Err(PlotError::Draw { .. })));
}

#[cfg(feature = "app")]
#[test]
fn serving_plots_are_written_as_png_and_svg_and_bad_names_are_errors() {
    use snnet::plot::{write_serving_plot, PlotError, ServingPlot, ServingSeries};
    let controller: Vec<(f64, f64)> = (0..200).map(|i| (i as f64 * 0.05, 5.0 + (i % 7) as f64)).collect();
    let fixed: Vec<(f64, f64)> = (0..100).map(|i| (i as f64 * 0.1, 12.0 + (i % 5) as f64)).collect();
    let quality: Vec<(f64, f64)> = controller.iter().map(|&(t, _)| (t, if t < 5.0 { 80.0 } else { 77.5 })).collect();
    let series = [ServingSeries { name: "controller", requests: &controller }, ServingSeries { name: "route 2 fixed", requests: &fixed }];
    let plot = ServingPlot {
        title: "serving",
        series: &series,
        target_ms: 10.0,
        target_label: "target: p95 ≤ 10 ms",
        route_quality: &quality,
        quality_label: "top-1 (%)",
        loaded: &[(2.0, 4.0)],
    };
    let dir = std::env::temp_dir().join(format!("snnet-serving-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    write_serving_plot(&plot, &dir.join("s.png")).unwrap();
    assert_eq!(&std::fs::read(dir.join("s.png")).unwrap()[1..4], b"PNG");
    write_serving_plot(&plot, &dir.join("s.svg")).unwrap();
    let text = std::fs::read_to_string(dir.join("s.svg")).unwrap();
    assert!(text.contains("<svg") && text.contains("route 2 fixed") && text.contains("added CPU load"));
    assert!(matches!(write_serving_plot(&plot, &dir.join("s.gif")), Err(PlotError::Extension(_))));
    let empty = [ServingSeries { name: "controller", requests: &[] }];
    assert!(matches!(write_serving_plot(&ServingPlot { series: &empty, ..plot.clone() }, &dir.join("e.png")), Err(PlotError::Empty(_))));
}

#[cfg(feature = "app")]
#[test]
fn curve_plots_are_written_as_png_and_svg_and_bad_names_are_errors() {
    use snnet::plot::{write_curve_plot, CurvePlot, CurveSeries, PlotError};
    let small: Vec<(f64, f64)> = (1..=10).map(|e| (e as f64, 80.0 + (e as f64).ln())).collect();
    let large: Vec<(f64, f64)> = (1..=10).map(|e| (e as f64, 84.0 + (e as f64).ln())).collect();
    let series = [CurveSeries { name: "ViT-32", points: &small }, CurveSeries { name: "ViT-128", points: &large }];
    let plot = CurvePlot { title: "curves", x_label: "epoch", y_label: "Top-1 (%)", series: &series };
    let dir = std::env::temp_dir().join(format!("snnet-curve-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    write_curve_plot(&plot, &dir.join("c.png")).unwrap();
    assert_eq!(&std::fs::read(dir.join("c.png")).unwrap()[1..4], b"PNG");
    write_curve_plot(&plot, &dir.join("c.svg")).unwrap();
    let text = std::fs::read_to_string(dir.join("c.svg")).unwrap();
    assert!(text.contains("<svg") && text.contains("ViT-128") && text.contains("epoch"));
    assert!(matches!(write_curve_plot(&plot, &dir.join("c.bmp")), Err(PlotError::Extension(_))));
    let empty = [CurveSeries { name: "ViT-32", points: &[(1.0, f64::NAN)] }];
    assert!(matches!(write_curve_plot(&CurvePlot { series: &empty, ..plot.clone() }, &dir.join("e.png")), Err(PlotError::Empty(_))));
}
