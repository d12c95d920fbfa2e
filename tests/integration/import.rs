//! Pretrained weights: timm anchors and official SN-Net checkpoints (safetensors and `.pth`) give
//! the logits PyTorch gives; least squares on the fixture's calibration batch gives the official
//! solution; broken or mismatched files are errors that name the culprit.
//!
//! Fixtures: `tests/fixtures/import/`, made by `tools/make_fixtures.py` (see its README).

use std::path::PathBuf;

use snnet::{
    weights::{read_tensors, read_weights, write_safetensors, NamedTensor, TensorMap},
    AnyAnchor, Description, Error, StatePart, StitchedNet,
};

use super::common::{fixture, rel_err, tensor4, to_vec, B};

fn import_fixture(name: &str) -> PathBuf {
    fixture(&format!("import/{name}"))
}

fn mini() -> Description {
    Description::from_file(&import_fixture("mini_vit.json")).unwrap()
}

fn fresh(seed: u64) -> StitchedNet<B, AnyAnchor<B>> {
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, seed);
    mini().build::<B>(&device).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("snnet-import-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn timm_anchors_reproduce_timm_logits_in_every_format_and_dtype() {
    let (reference, _) = read_tensors(&import_fixture("vit_reference.safetensors")).unwrap();
    let images = tensor4(&reference["images"]);
    // Anchor 0 is stored in f32, anchor 1 in f16, anchor 2 in bf16; .pth files are bare, {"model"}
    // and {"model", "epoch"}; vit0_legacy.pth uses torch's pre-1.6 format.
    let files = [
        (0, "vit0.safetensors", None),
        (0, "vit0.pth", None),
        (0, "vit0_legacy.pth", None),
        (1, "vit1.safetensors", Some("F16")),
        (1, "vit1.pth", Some("F16")),
        (2, "vit2.safetensors", Some("BF16")),
        (2, "vit2.pth", Some("BF16")),
    ];
    for (anchor, file, cast) in files {
        let (net, loaded) = fresh(1).load_anchor(anchor, &import_fixture(file)).unwrap();
        assert_eq!(loaded.cast.keys().next().copied(), cast, "{file}");
        let logits = to_vec(net.forward(images.clone(), anchor).unwrap());
        let err = rel_err(&logits, &reference[&format!("logits.{anchor}")].data);
        assert!(err <= 1e-4, "{file}: relative error {err}");
    }
}

#[test]
fn official_checkpoint_reproduces_every_route_in_both_formats() {
    let (reference, meta) = read_tensors(&import_fixture("snnet_routes.safetensors")).unwrap();
    let images = tensor4(&reference["images"]);
    for file in ["snnet_official.pth", "snnet_official.safetensors"] {
        let (net, loaded, used) = fresh(2).load_with_report(&import_fixture(file)).unwrap();
        assert_eq!(net.num_routes().to_string(), meta["num_routes"]);
        assert_eq!(used, net.named_tensors().len(), "{file}: every parameter comes from the file");
        if file.ends_with(".pth") {
            assert_eq!(loaded.state_dict_entry.as_deref(), Some("model"));
            for entry in ["optimizer", "lr_scheduler", "epoch", "scaler", "args"] {
                assert!(loaded.other_entries.iter().any(|e| e == entry), "{file}: {entry} listed");
            }
        }
        for id in 0..net.num_routes() {
            let logits = to_vec(net.forward(images.clone(), id).unwrap());
            let err = rel_err(&logits, &reference[&format!("logits.{id}")].data);
            assert!(err <= 1e-4, "{file} route {id}: relative error {err}");
        }
    }
}

#[test]
fn least_squares_on_the_calibration_batch_gives_the_official_solution() {
    let (calibration, _) = read_tensors(&import_fixture("calibration.safetensors")).unwrap();
    let (exact, _) = read_tensors(&import_fixture("calibration_f64.safetensors")).unwrap();
    // Anchors from the official checkpoint; the stitching layers are overwritten by the init.
    let (mut net, _) = fresh(3).load(&import_fixture("snnet_official.safetensors")).unwrap();
    net.init_least_squares(tensor4(&calibration["images"]), 5, |_| {}).unwrap();
    let ours: TensorMap = net.named_tensors().into_iter().filter(|(k, _)| k.starts_with("stitch_layers.")).collect();
    assert_eq!(ours.len(), 12, "6 stitching layers, weight and bias");
    for (key, t) in &ours {
        let official = &calibration[key];
        assert_eq!(t.shape, official.shape, "{key}");
        let err = rel_err(&t.data, &official.data);
        assert!(err <= 1e-3, "{key}: relative error {err} against the official f32 solution");
        let err64 = rel_err(&t.data, &exact[key].data);
        assert!(err64 <= 1e-4, "{key}: relative error {err64} against the f64 solution");
    }
}

#[test]
fn mismatched_anchor_names_the_key_and_both_shapes() {
    // The width-24 anchor's file into the width-16 anchor.
    let err = fresh(4).load_anchor(0, &import_fixture("vit1.safetensors")).err().unwrap().to_string();
    assert!(err.contains("vit1.safetensors"), "{err}");
    assert!(err.contains("`anchors.0.cls_token` has shape [1, 1, 24], the network expects [1, 1, 16]"), "{err}");
    // An SN-Net checkpoint given as one anchor's file: its keys are all unexpected.
    let err = fresh(4).load_anchor(0, &import_fixture("snnet_official.safetensors")).err().unwrap().to_string();
    assert!(err.contains("missing tensor `anchors.0.cls_token`"), "{err}");
}

/// A safetensors file written by hand: `(key, dtype, shape, bytes)`.
fn safetensors_bytes(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (key, dtype, shape, bytes) in tensors {
        header.insert(key.to_string(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes.len()]}));
        offset += bytes.len();
    }
    let mut text = serde_json::Value::Object(header).to_string();
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text.as_bytes());
    for (_, _, _, bytes) in tensors {
        out.extend(bytes);
    }
    out
}

/// The f32 anchor-0 file with one tensor replaced (or added) and written to a temporary file.
fn anchor0_with(name: &str, key: &str, dtype: &str, shape: Vec<usize>, bytes: Vec<u8>) -> PathBuf {
    let (tensors, _) = read_tensors(&import_fixture("vit0.safetensors")).unwrap();
    let mut entries: Vec<(String, &str, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .filter(|(k, _)| k.as_str() != key)
        .map(|(k, t)| (k.clone(), "F32", t.shape.clone(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    entries.push((key.to_string(), dtype, shape, bytes));
    let borrowed: Vec<(&str, &str, Vec<usize>, Vec<u8>)> =
        entries.iter().map(|(k, d, s, b)| (k.as_str(), *d, s.clone(), b.clone())).collect();
    let path = tmp(name);
    std::fs::write(&path, safetensors_bytes(&borrowed)).unwrap();
    path
}

#[test]
fn wrong_dtype_non_finite_and_unknown_tensors_are_named() {
    let ints: Vec<u8> = (0..16i64).flat_map(|v| v.to_le_bytes()).collect();
    let path = anchor0_with("int.safetensors", "norm.weight", "I64", vec![16], ints);
    let err = fresh(5).load_anchor(0, &path).err().unwrap().to_string();
    assert!(err.contains("`norm.weight` has dtype I64"), "{err}");

    let mut values = vec![0.5f32; 16];
    values[3] = f32::NAN;
    let path = anchor0_with("nan.safetensors", "norm.bias", "F32", vec![16], values.iter().flat_map(|v| v.to_le_bytes()).collect());
    let err = fresh(5).load_anchor(0, &path).err().unwrap().to_string();
    assert!(err.contains("`norm.bias` holds a non-finite value (NaN) at flat index 3"), "{err}");

    let path = anchor0_with("extra.safetensors", "head_dist.weight", "F32", vec![2], vec![0; 8]);
    let err = fresh(5).load_anchor(0, &path).err().unwrap().to_string();
    assert!(err.contains("unexpected") && err.contains("anchors.0.head_dist.weight"), "{err}");

    // Buffers that snnet recomputes are skipped and reported, not errors.
    let path = anchor0_with("buffer.safetensors", "blocks.0.attn.relative_position_index", "I64", vec![2], vec![0; 16]);
    let (_, loaded) = fresh(5).load_anchor(0, &path).unwrap();
    assert_eq!(loaded.skipped, vec!["blocks.0.attn.relative_position_index".to_string()]);
}

#[test]
fn corrupt_truncated_and_foreign_files_are_errors_not_panics() {
    let pth = std::fs::read(import_fixture("snnet_official.pth")).unwrap();
    let st = std::fs::read(import_fixture("snnet_official.safetensors")).unwrap();
    let mut flipped = st.clone();
    flipped[12] = b'#'; // inside the JSON header
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.pth", Vec::new()),
        ("noise.pth", (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()),
        ("half.pth", pth[..pth.len() / 2].to_vec()),
        ("half.safetensors", st[..st.len() / 2].to_vec()),
        ("header.safetensors", flipped),
        ("text.safetensors", b"{\"not\": \"weights\"}".to_vec()),
    ];
    for (name, bytes) in cases {
        let path = tmp(name);
        std::fs::write(&path, &bytes).unwrap();
        let err = fresh(6).load(&path).err().unwrap_or_else(|| panic!("{name} loaded"));
        let text = err.to_string();
        assert!(matches!(err, Error::WeightFile { .. }), "{name}: {text}");
        assert!(text.contains(name), "{name}: the message names the file: {text}");
    }
    let missing = fresh(6).load(&tmp("does-not-exist.pth")).err().unwrap();
    assert!(matches!(missing, Error::Io { .. }), "{missing}");
}

#[test]
fn partial_state_keeps_other_parameters_and_strips_data_parallel_prefix() {
    let mut state = read_weights(&import_fixture("snnet_official.safetensors")).unwrap().tensors;
    let before = fresh(7);
    let stitch_before: TensorMap = before.named_tensors().into_iter().filter(|(k, _)| k.starts_with("stitch_layers.")).collect();
    let mut prefixed: TensorMap =
        state.iter().filter(|(k, _)| k.starts_with("anchors.1.")).map(|(k, v)| (format!("module.{k}"), v.clone())).collect();
    let net = before.load_state(&mut prefixed, StatePart::Anchor(1), "memory").unwrap();
    let after = net.named_tensors();
    for (k, t) in &after {
        if k.starts_with("anchors.1.") {
            assert_eq!(t.data, state[k].data, "{k} loaded");
        } else if let Some(old) = stitch_before.get(k) {
            assert_eq!(&t.data, &old.data, "{k} untouched");
        }
    }
    let err = net.load_state(&mut state, StatePart::Anchor(3), "memory").err().unwrap().to_string();
    assert!(err.contains("anchor 3 does not exist"), "{err}");
}

#[test]
fn written_weight_file_round_trips_through_read_weights() {
    let t = NamedTensor { shape: vec![2], data: vec![1.0, 2.0], stored_as: "F32" };
    let path = tmp("plain.safetensors");
    write_safetensors(&path, &[("x".into(), t.clone())], Default::default()).unwrap();
    let loaded = read_weights(&path).unwrap();
    assert_eq!(loaded.tensors["x"], t);
    assert!(loaded.cast.is_empty() && loaded.skipped.is_empty());
}
