//! DeiT-3 anchors (LayerScale, no class position) give timm's logits, from checkpoints in timm's
//! layout and in the DeiT-III release / SN-Netv2 layout (`gamma_1`, `gamma_2`).
//!
//! Fixtures: `tests/fixtures/deit3/`, made by `tools/make_deit3_fixtures.py`.

use snnet::{weights::read_tensors, AnchorSpec, Architecture, Description, VitConfig};

use super::common::{fixture, rel_err, tensor4, to_vec, B};

/// The fixture's architecture: timm `VisionTransformer(img_size=32, patch_size=8, embed_dim=32,
/// depth=3, num_heads=2, num_classes=10, init_values=…, no_embed_class=True)`.
fn reduced_deit3() -> VitConfig {
    VitConfig { img_size: 32, patch_size: 8, num_classes: 10, ..VitConfig::deit3(32, 3, 2, 1e-6) }
}

#[test]
fn deit3_anchors_reproduce_timms_logits_from_either_checkpoint_layout() {
    let (reference, _) = read_tensors(&fixture("deit3/deit3_reference.safetensors")).unwrap();
    let images = tensor4(&reference["images"]);
    let description = Description {
        anchors: vec![AnchorSpec::Explicit(Architecture::Vit(reduced_deit3()))],
        space: Default::default(),
        behaviour: Default::default(),
    };
    for file in ["deit3_timm.safetensors", "deit3_official.safetensors"] {
        let net = description.build::<B>(&Default::default()).unwrap();
        let (net, _) = net.load_anchor(0, &fixture(&format!("deit3/{file}"))).unwrap();
        let logits = to_vec(net.forward(images.clone(), 0).unwrap());
        let err = rel_err(&logits, &reference["logits"].data);
        assert!(err <= 1e-4, "{file}: relative error {err}");
    }
    // Without LayerScale or with the class position, the checkpoint does not fit: named, not a panic.
    for (config, culprit) in [
        (VitConfig { init_values: None, ..reduced_deit3() }, "gamma"),
        (VitConfig { no_embed_class: false, ..reduced_deit3() }, "pos_embed"),
    ] {
        let description = Description { anchors: vec![AnchorSpec::Explicit(Architecture::Vit(config))], ..description.clone() };
        let net = description.build::<B>(&Default::default()).unwrap();
        let err = net.load_anchor(0, &fixture("deit3/deit3_timm.safetensors")).unwrap_err().to_string();
        assert!(err.contains(culprit), "{err}");
    }
}

#[test]
fn deit3_presets_are_known_by_timms_and_sn_netv2s_names() {
    for name in ["deit3_small_patch16_224", "deit3_large_patch16_224", "deit_tiny_patch16_LS", "deit_large_patch16_LS"] {
        let Architecture::Vit(config) = AnchorSpec::Preset(name.to_string()).architecture().unwrap() else { panic!("{name}: not a ViT") };
        assert!(config.no_embed_class && config.init_values.is_some(), "{name}: {config:?}");
    }
}
