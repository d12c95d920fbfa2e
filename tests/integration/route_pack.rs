//! Route packs (deployment): a file holding only what some routes use, its shared tensors once,
//! that opens as a network of those routes without the parts they do not use.

use std::{collections::HashMap, path::PathBuf};

use burn::{
    module::{Module, ModuleVisitor, Param},
    tensor::Tensor,
};
use snnet::{AnyAnchor, Description, Error, SpaceSettings, StitchedNet};

use super::common::{fixture, mini_family, to_vec, uniform_images, B};

type Net = StitchedNet<B, AnyAnchor<B>>;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("snnet-route-pack-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The families: a DeiT-style ViT (random weights), and Swin, ResNet with BatchNorm, ResNet→Swin
/// and LeViT with the official checkpoints of their fixtures (random deep CNNs overflow).
fn families() -> Vec<(&'static str, Description, Option<&'static str>)> {
    let file = |name: &str| Description::from_file(&fixture(name)).unwrap();
    vec![
        ("vit", mini_family(), None),
        ("swin", file("swin/mini_swin.json"), Some("swin/snnet_swin.safetensors")),
        ("resnet", file("resnet/r18_r50.json"), Some("resnet/snnet_r18_r50.pth")),
        ("resnet-swin", file("resnet/r18_swin.json"), Some("resnet/snnet_r18_swin.safetensors")),
        ("levit", file("levit/mini_levit.json"), Some("levit/snnet_levit.pth")),
    ]
}

fn build(desc: &Description, seed: u64) -> Net {
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, seed);
    desc.build::<B>(&device).unwrap()
}

fn build_with(desc: &Description, weights: Option<&str>, seed: u64) -> Net {
    let net = build(desc, seed);
    match weights {
        Some(file) => net.load(&fixture(file)).unwrap().0,
        None => net,
    }
}

fn images_for(net: &Net) -> Tensor<B, 4> {
    let [c, h, _] = net.layouts()[0].input;
    uniform_images(2, c, h, 9)
}

/// Values held by initialised parameters (lazy ones that nothing has read count nothing).
fn initialised_values(net: &Net) -> u64 {
    struct Count(u64);
    impl ModuleVisitor<B> for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if param.is_initialized() {
                self.0 += param.lazy_shape().num_elements() as u64;
            }
        }
    }
    let mut count = Count(0);
    net.visit(&mut count);
    count.0
}

/// The anchor routes, the first and the last stitched route.
fn sample_routes(net: &Net) -> Vec<usize> {
    let stitched: Vec<usize> = (0..net.num_routes()).filter(|&id| !net.route(id).unwrap().is_anchor()).collect();
    let mut routes: Vec<usize> = (0..net.num_routes()).filter(|&id| net.route(id).unwrap().is_anchor()).collect();
    routes.extend([stitched[0], *stitched.last().unwrap()]);
    routes
}

#[test]
fn a_one_route_export_holds_its_parameters_exactly_and_runs_bit_equal() {
    for (family, desc, weights) in families() {
        let net = build_with(&desc, weights, 3);
        let images = images_for(&net);
        let before: Vec<Vec<f32>> = sample_routes(&net).into_iter().map(|id| to_vec(net.forward(images.clone(), id).unwrap())).collect();
        for id in sample_routes(&net) {
            let path = scratch(&format!("{family}-{id}.safetensors"));
            let summary = desc.save_route_pack(&net, &[id], &path, HashMap::new()).unwrap();
            let cost = net.costs()[id];
            assert_eq!(summary.parameters, cost.params_exact, "{family} route {id}: the file's parameters are the route's");
            assert_eq!(summary.bytes, 4 * (summary.parameters + summary.buffers));
            let file_bytes = std::fs::metadata(&path).unwrap().len();
            assert!(file_bytes >= summary.bytes && file_bytes < summary.bytes + 64 * 1024, "{family} route {id}: {file_bytes} bytes");

            let (pack, _, _) = Description::open_route_pack::<B>(&path, &Default::default()).unwrap();
            assert_eq!(pack.available_routes(), vec![id]);
            // Nothing but the route's tensors was initialised, besides the running statistics of
            // the BatchNorms it does not use (burn creates those eagerly).
            let pack_keys = net.route_tensor_keys(&[id]).unwrap();
            let other_statistics: u64 = net
                .named_tensors()
                .iter()
                .filter(|(k, _)| (k.ends_with(".running_mean") || k.ends_with(".running_var")) && !pack_keys.contains(k))
                .map(|(_, t)| t.data.len() as u64)
                .sum();
            let loaded = initialised_values(&pack);
            assert_eq!(loaded, summary.parameters + summary.buffers + other_statistics, "{family} route {id}: values initialised");
            let want = to_vec(net.forward(images.clone(), id).unwrap());
            assert_eq!(to_vec(pack.forward(images.clone(), id).unwrap()), want, "{family} route {id}: bit-equal logits");
            assert_eq!(initialised_values(&pack), loaded, "{family} route {id}: running it initialises nothing more");
            let other = (0..net.num_routes()).find(|&r| r != id).unwrap();
            let err = pack.forward(images.clone(), other).unwrap_err();
            assert!(matches!(err, Error::RouteNotInPack { id: o, ref available } if o == other && available == &[id]), "{err}");
        }
        let after: Vec<Vec<f32>> = sample_routes(&net).into_iter().map(|id| to_vec(net.forward(images.clone(), id).unwrap())).collect();
        assert_eq!(after, before, "{family}: exporting leaves the network as it was (BatchNorm statistics included)");
    }
}

#[test]
fn a_pack_stores_shared_tensors_once_and_runs_every_route_it_holds() {
    for (family, desc, weights) in families() {
        let net = build_with(&desc, weights, 4);
        let routes = sample_routes(&net);
        let path = scratch(&format!("{family}-pack.safetensors"));
        let pack_summary = desc.save_route_pack(&net, &routes, &path, HashMap::new()).unwrap();
        assert_eq!(net.route_pack_summary(&routes).unwrap(), pack_summary, "the summary without writing");
        let separate: u64 = routes.iter().map(|&id| net.route_pack_summary(&[id]).unwrap().bytes).sum();
        assert_eq!(pack_summary.separate_bytes, separate);
        let whole: u64 = net.named_tensors().iter().map(|(_, t)| 4 * t.data.len() as u64).sum();
        assert_eq!(pack_summary.network_bytes, whole);
        let union = net.route_tensor_keys(&routes).unwrap().len();
        assert_eq!(pack_summary.tensors, union);
        assert!(pack_summary.bytes < separate, "{family}: pack {} vs separate exports {separate}", pack_summary.bytes);
        let (pack, _, _) = Description::open_route_pack::<B>(&path, &Default::default()).unwrap();
        assert_eq!(pack.available_routes(), routes);
        assert_eq!(pack.route_pack_summary(&routes).unwrap(), pack_summary, "the opened pack still knows the whole network's size");
        let images = images_for(&net);
        for &id in &routes {
            assert_eq!(
                to_vec(pack.forward(images.clone(), id).unwrap()),
                to_vec(net.forward(images.clone(), id).unwrap()),
                "{family} {id}"
            );
        }
        // Saving the opened pack writes its tensors and routes again.
        let again = scratch(&format!("{family}-again.safetensors"));
        pack.save(&again, HashMap::new()).unwrap();
        let ((a, meta_a), (b, meta_b)) = (snnet::weights::read_tensors(&again).unwrap(), snnet::weights::read_tensors(&path).unwrap());
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        assert!(a.iter().all(|(k, t)| t.data == b[k].data));
        assert_eq!(meta_a[snnet::ROUTES_METADATA], meta_b[snnet::ROUTES_METADATA]);
    }
}

#[test]
fn a_lora_network_exports_merged_and_equal_to_its_merged_routes() {
    let desc = Description { space: SpaceSettings { lora_rank: 4, ..SpaceSettings::two_way() }, ..mini_family() };
    let desc = Description { anchors: desc.anchors[..2].to_vec(), ..desc };
    let net = build(&desc, 5);
    let merged = net.clone().merged_for_inference();
    let stitched: Vec<usize> = (0..net.num_routes()).filter(|&id| !net.route(id).unwrap().is_anchor()).take(3).collect();
    let path = scratch("lora.safetensors");
    let summary = desc.save_route_pack(&net, &stitched, &path, HashMap::new()).unwrap();
    let (pack, stored, _) = Description::open_route_pack::<B>(&path, &Default::default()).unwrap();
    assert_eq!(stored.space.lora_rank, 0, "the pack describes the merged network");
    assert!(net.route_tensor_keys(&stitched).unwrap().iter().any(|k| k.contains("lora_")), "the training network reads its factors");
    let keys = merged.route_tensor_keys(&stitched).unwrap();
    assert!(keys.iter().all(|k| !k.contains("lora_")) && summary.tensors == keys.len());
    let images = images_for(&net);
    for id in stitched {
        assert_eq!(to_vec(pack.forward(images.clone(), id).unwrap()), to_vec(merged.forward(images.clone(), id).unwrap()), "route {id}");
    }
}

#[test]
fn bad_packs_and_bad_route_lists_are_clear_errors() {
    let desc = mini_family();
    let net = build(&desc, 6);
    let path = scratch("errors.safetensors");
    let text = |e: snnet::anchors::Error| e.to_string();
    assert!(text(desc.save_route_pack(&net, &[], &path, HashMap::new()).unwrap_err()).contains("at least one route"));
    let unknown = text(desc.save_route_pack(&net, &[2, 999], &path, HashMap::new()).unwrap_err());
    assert!(unknown.contains("999"), "{unknown}");

    desc.save_route_pack(&net, &[1, 5], &path, HashMap::new()).unwrap();
    // A whole-network load refuses a pack, and a pack load a whole network's file.
    let err = build(&desc, 6).load(&path).unwrap_err().to_string();
    assert!(err.contains("route pack of routes [1,5]"), "{err}");
    let whole = scratch("whole.safetensors");
    net.save(&whole, HashMap::new()).unwrap();
    let err = desc.build_unmaterialized::<B>(&Default::default()).unwrap().load_route_pack(&whole).unwrap_err().to_string();
    assert!(err.contains("not a route pack"), "{err}");
    // Without a description in the file, opening it asks for one.
    let err = Description::open_route_pack::<B>(&whole, &Default::default()).unwrap_err().to_string();
    assert!(err.contains("snnet.description") && err.contains("--config"), "{err}");
    // Another network's description.
    let other = Description { anchors: desc.anchors[..2].to_vec(), ..desc.clone() };
    let err = other.build_unmaterialized::<B>(&Default::default()).unwrap().load_route_pack(&path).unwrap_err().to_string();
    assert!(err.contains("different network"), "{err}");

    // A tensor removed, one added, a corrupt route list, a truncated file.
    let (tensors, meta) = snnet::weights::read_tensors(&path).unwrap();
    let rewrite = |name: &str, edit: &dyn Fn(&mut Vec<(String, snnet::weights::NamedTensor)>, &mut HashMap<String, String>)| {
        let mut t: Vec<_> = tensors.clone().into_iter().collect();
        let mut m = meta.clone();
        edit(&mut t, &mut m);
        let p = scratch(name);
        snnet::weights::write_safetensors(&p, &t, m).unwrap();
        Description::open_route_pack::<B>(&p, &Default::default()).unwrap_err().to_string()
    };
    let err = rewrite("missing.safetensors", &|t, _| t.retain(|(k, _)| k != "anchors.1.head.weight"));
    assert!(err.contains("missing") && err.contains("anchors.1.head.weight"), "{err}");
    let err = rewrite("extra.safetensors", &|t, _| {
        let stray = t.iter().find(|(k, _)| k == "anchors.1.head.bias").unwrap().1.clone();
        t.push(("anchors.2.head.bias".into(), stray));
    });
    assert!(err.contains("none of routes [1, 5]") && err.contains("anchors.2.head.bias"), "{err}");
    let err = rewrite("corrupt.safetensors", &|_, m| {
        m.insert(snnet::ROUTES_METADATA.into(), "[1, five]".into());
    });
    assert!(err.contains("corrupt `snnet.routes`"), "{err}");
    let err = rewrite("unknown.safetensors", &|_, m| {
        m.insert(snnet::ROUTES_METADATA.into(), "[1, 500]".into());
    });
    assert!(err.contains("500"), "{err}");
    let bytes = std::fs::read(&path).unwrap();
    let truncated = scratch("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = Description::open_route_pack::<B>(&truncated, &Default::default()).unwrap_err().to_string();
    assert!(err.contains("truncated.safetensors"), "{err}");
}
