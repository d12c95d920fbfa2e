//! ResNet anchors and the CNN families (ResNet-18 → ResNet-50, ResNet-18 → Swin-T) against timm
//! 0.6.13 and an independent PyTorch computation of the official stitched forward: anchors from
//! `.pth` and safetensors, official checkpoints (split-BN copies skipped), every route, least
//! squares on maps, BatchNorm running statistics in training.
//!
//! Fixtures: `tests/fixtures/resnet/`, made by `tools/make_cnn_fixtures.py`.

use std::path::PathBuf;

use burn::{
    backend::Autodiff,
    tensor::{Tensor, TensorData},
};
use snnet::{
    weights::{read_tensors, TensorMap},
    AnyAnchor, Description, PairedVariant, SpaceSettings, StitchedNet,
};

use super::common::{rel_err, tensor4, to_vec, B};

fn cnn_fixture(name: &str) -> PathBuf {
    super::common::fixture(&format!("resnet/{name}"))
}

fn net_on<BE: snnet::Kernels>(description: &str) -> StitchedNet<BE, AnyAnchor<BE>> {
    let device = Default::default();
    Description::from_file(&cnn_fixture(description)).unwrap().build::<BE>(&device).unwrap()
}

fn net(description: &str) -> StitchedNet<B, AnyAnchor<B>> {
    net_on::<B>(description)
}

fn reference() -> TensorMap {
    read_tensors(&cnn_fixture("reference.safetensors")).unwrap().0
}

#[test]
fn the_cnn_families_take_the_official_resnet_space() {
    for (file, routes) in [("r18_r50.json", 10), ("r18_swin.json", 8)] {
        let desc = Description::from_file(&cnn_fixture(file)).unwrap();
        assert_eq!(desc.space, SpaceSettings::stage_wise(vec![1, 2], PairedVariant::ForwardNoEntry), "{file}");
        let (space, _) = desc.space_with_costs().unwrap();
        assert_eq!(space.num_routes(), routes, "{file}");
    }
}

#[test]
fn a_timm_resnet_reproduces_timm_from_pth_and_safetensors() {
    let reference = reference();
    let images = tensor4(&reference["images"]);
    for file in ["r18.safetensors", "r18.pth"] {
        let (net, loaded) = net("r18_r50.json").load_anchor(0, &cnn_fixture(file)).unwrap();
        assert!(loaded.skipped.iter().any(|k| k.ends_with("num_batches_tracked")), "{file}: BatchNorm step counters skipped");
        let got = to_vec(net.forward(images.clone(), 0).unwrap());
        let err = rel_err(&got, &reference["logits.r18_r50.0"].data);
        assert!(err <= 1e-4, "{file}: relative error {err}");
    }
}

#[test]
fn official_cnn_checkpoints_reproduce_every_route() {
    let reference = reference();
    let images = tensor4(&reference["images"]);
    for (family, description, file) in
        [("r18_r50", "r18_r50.json", "snnet_r18_r50.pth"), ("r18_swin", "r18_swin.json", "snnet_r18_swin.safetensors")]
    {
        let (net, loaded, _) = net(description).load_with_report(&cnn_fixture(file)).unwrap();
        if file.ends_with(".pth") {
            assert_eq!(loaded.state_dict_entry.as_deref(), Some("state_dict"), "timm's CheckpointSaver layout");
            assert!(loaded.skipped.iter().any(|k| k.contains(".aux_bn.")), "split-BN copies are skipped");
        }
        for id in 0..net.num_routes() {
            let got = to_vec(net.forward(images.clone(), id).unwrap());
            let err = rel_err(&got, &reference[&format!("logits.{family}.{id}")].data);
            assert!(err <= 1e-4, "{family} route {id}: relative error {err}");
        }
    }
}

#[test]
fn least_squares_on_maps_gives_the_float64_solution() {
    let (ls, _) = read_tensors(&cnn_fixture("ls_r18_r50.safetensors")).unwrap();
    let (mut net, _) = net("r18_r50.json").load(&cnn_fixture("snnet_r18_r50.pth")).unwrap();
    net.init_least_squares(tensor4(&ls["images"]), 4, |_| {}).unwrap();
    let ours: TensorMap = net.named_tensors().into_iter().filter(|(k, _)| k.starts_with("stitch_layers.")).collect();
    assert_eq!(ours.len(), 2 * 4, "4 stitching layers, weight and bias");
    for (key, t) in &ours {
        assert_eq!(t.shape, ls[key].shape, "{key}: 1×1 convolution layout");
        let err = rel_err(&t.data, &ls[key].data);
        assert!(err <= 1e-3, "{key}: relative error {err}");
    }
}

#[test]
fn a_training_forward_moves_batchnorm_running_statistics_as_pytorch() {
    type AD = Autodiff<B>;
    let reference = reference();
    let (net, _) = net_on::<AD>("r18_r50.json").load_anchor(0, &cnn_fixture("r18.safetensors")).unwrap();
    let images = &reference["images"];
    let images = Tensor::<AD, 4>::from_data(TensorData::new(images.data.clone(), images.shape.clone()), &Default::default());
    let _ = net.forward(images, 0).unwrap();
    let tensors: TensorMap = net.named_tensors().into_iter().collect();
    for stat in ["running_mean", "running_var"] {
        let err = rel_err(&tensors[&format!("anchors.0.bn1.{stat}")].data, &reference[&format!("bn_train.{stat}")].data);
        assert!(err <= 1e-4, "bn1.{stat}: relative error {err}");
    }
}
