//! snnet weight files: official key layout, PyTorch orientation, description checks, bad files.

use std::collections::HashMap;

use snnet::{weights::read_tensors, Error};

use super::common::{max_abs_diff, mini_family, to_vec, uniform_images, B};

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("snnet-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn save_load_round_trip_with_official_keys() {
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, 5);
    let net = mini_family().build::<B>(&device).unwrap();
    let path = tmp("roundtrip.safetensors");
    net.save(&path, HashMap::from([("note".to_string(), "test".to_string())])).unwrap();
    let (tensors, meta) = read_tensors(&path).unwrap();
    assert_eq!(meta["format"], "snnet");
    assert_eq!(meta["note"], "test");
    // timm names, PyTorch orientation.
    assert_eq!(tensors["anchors.0.blocks.0.attn.qkv.weight"].shape, vec![96, 32]);
    assert_eq!(tensors["anchors.1.patch_embed.proj.weight"].shape, vec![48, 3, 8, 8]);
    assert_eq!(tensors["anchors.2.norm.weight"].shape, vec![64]);
    assert_eq!(tensors["anchors.2.cls_token"].shape, vec![1, 1, 64]);
    assert_eq!(tensors["stitch_layers.0.0.transform.weight"].shape, vec![48, 32]);
    assert_eq!(tensors["stitch_layers.1.2.transform.bias"].shape, vec![64]);
    assert!(!tensors.keys().any(|k| k.contains("gamma") || k.contains("Vit")));

    <B as burn::tensor::backend::Backend>::seed(&device, 6);
    let other = mini_family().build::<B>(&device).unwrap();
    let images = uniform_images(2, 3, 32, 7);
    assert_ne!(to_vec(other.forward(images.clone(), 20).unwrap()), to_vec(net.forward(images.clone(), 20).unwrap()));
    let (loaded, _) = other.load(&path).unwrap();
    for id in [0, 2, 20] {
        let (a, b) = (to_vec(loaded.forward(images.clone(), id).unwrap()), to_vec(net.forward(images.clone(), id).unwrap()));
        // Equal up to summation order (the loaded Linear weights are laid out transposed).
        assert!(max_abs_diff(&a, &b) < 1e-5, "route {id}");
    }
}

#[test]
fn a_file_for_another_network_is_refused_naming_the_difference() {
    let device = Default::default();
    let net = mini_family().build::<B>(&device).unwrap();
    let path = tmp("other.safetensors");
    net.save(&path, HashMap::new()).unwrap();
    let mut desc = mini_family();
    if let snnet::AnchorSpec::Explicit(snnet::Architecture::Vit(c)) = &mut desc.anchors[1] {
        c.embed_dim = 40;
        c.num_heads = 2;
    }
    let err = desc.build::<B>(&device).unwrap().load(&path).unwrap_err();
    match err {
        Error::DescriptionMismatch { difference, .. } => {
            assert!(difference.contains("anchors[1]") && difference.contains("48") && difference.contains("40"), "{difference}")
        }
        other => panic!("expected DescriptionMismatch, got {other}"),
    }
    let mut desc = mini_family();
    desc.space.kernel_size = 3;
    let err = desc.build::<B>(&device).unwrap().load(&path).unwrap_err().to_string();
    assert!(err.contains("kernel_size"), "{err}");
}

#[test]
fn corrupt_truncated_and_mismatched_files_are_errors() {
    let device = Default::default();
    let net = mini_family().build::<B>(&device).unwrap();
    let path = tmp("good.safetensors");
    net.save(&path, HashMap::new()).unwrap();
    let bytes = std::fs::read(&path).unwrap();

    let truncated = tmp("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = mini_family().build::<B>(&device).unwrap().load(&truncated).unwrap_err().to_string();
    assert!(err.contains("truncated.safetensors"), "{err}");

    let garbage = tmp("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file at all").unwrap();
    assert!(matches!(mini_family().build::<B>(&device).unwrap().load(&garbage), Err(Error::WeightFile { .. })));

    let missing = tmp("does-not-exist.safetensors");
    assert!(matches!(mini_family().build::<B>(&device).unwrap().load(&missing), Err(Error::Io { .. })));

    // A tensor removed, a tensor of the wrong shape, an extra tensor: each named.
    let (tensors, meta) = read_tensors(&path).unwrap();
    let write = |name: &str, edit: &dyn Fn(&mut Vec<(String, snnet::weights::NamedTensor)>)| {
        let mut list: Vec<_> = tensors.clone().into_iter().collect();
        edit(&mut list);
        let p = tmp(name);
        snnet::weights::write_safetensors(&p, &list, meta.clone()).unwrap();
        mini_family().build::<B>(&device).unwrap().load(&p).unwrap_err().to_string()
    };
    let err = write("missing.safetensors", &|l| l.retain(|(k, _)| k != "anchors.1.head.bias"));
    assert!(err.contains("missing tensor `anchors.1.head.bias`"), "{err}");
    let err = write("shape.safetensors", &|l| {
        let t = &mut l.iter_mut().find(|(k, _)| k == "stitch_layers.0.2.transform.weight").unwrap().1;
        t.shape = vec![32, 48];
    });
    assert!(err.contains("stitch_layers.0.2.transform.weight") && err.contains("[32, 48]") && err.contains("[48, 32]"), "{err}");
    let err = write("extra.safetensors", &|l| {
        let t = l[0].1.clone();
        l.push(("anchors.0.extra".into(), t));
    });
    assert!(err.contains("anchors.0.extra"), "{err}");
}
