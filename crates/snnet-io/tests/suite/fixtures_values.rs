//! Every fixture reads back to exactly the values torch saved
//! (tests/fixtures/expected.json, written by make_pth_fixtures.py).

use super::common::*;
use snnet_io::pickle::Value;
use snnet_io::pth::TorchFile;
use snnet_io::{read_weights, read_weights_file, DType, Format, RawTensor};

fn int_values(t: &RawTensor) -> Vec<i64> {
    let b = &t.bytes;
    match t.dtype {
        DType::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
        DType::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
        DType::I16 => b.chunks_exact(2).map(|c| i16::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
        DType::I8 => b.iter().map(|&x| x as i8 as i64).collect(),
        DType::U8 | DType::Bool => b.iter().map(|&x| x as i64).collect(),
        d => panic!("{d} is not an integer type"),
    }
}

#[test]
fn every_fixture_matches_expected_values() {
    let expected: serde_json::Value = serde_json::from_slice(&fixture("expected.json")).expect("expected.json");
    let expected = expected.as_object().unwrap();
    assert!(expected.len() >= 9);
    for (name, exp) in expected {
        let wf = read_weights_file(&fixture_dir().join(name)).unwrap_or_else(|e| panic!("{e}"));
        let want_format = if name.ends_with(".safetensors") {
            Format::Safetensors
        } else if name.starts_with("legacy") {
            Format::TorchLegacy
        } else {
            Format::TorchZip
        };
        assert_eq!(wf.format, want_format, "{name}");
        assert_eq!(wf.state_dict_entry.as_deref(), exp["state_dict_entry"].as_str(), "{name}");
        let other: Vec<&str> = exp["other_entries"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(wf.other_entries, other, "{name}");
        let tensors = exp["tensors"].as_object().unwrap();
        let keys: Vec<&String> = wf.tensors.keys().collect();
        let want_keys: Vec<&String> = tensors.keys().collect();
        assert_eq!(keys, want_keys, "{name}");
        for (key, e) in tensors {
            let t = &wf.tensors[key];
            let ctx = format!("{name}: {key}");
            assert_eq!(format!("{:?}", t.dtype), e["dtype"].as_str().unwrap(), "{ctx}");
            let shape: Vec<usize> = e["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            assert_eq!(t.shape, shape, "{ctx}");
            assert_eq!(t.bytes.len(), t.numel() * t.dtype.size(), "{ctx}");
            // Exact bytes (little-endian, contiguous) as torch holds them.
            let hex: String = t.bytes.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, e["hex"].as_str().unwrap(), "{ctx}: bytes");
            let values = e["values"].as_array().unwrap();
            if t.is_float() {
                // F32/F16/BF16 values are exact in f32; F64 ones were checked as bytes.
                let got = t.to_f32();
                let want: Vec<f32> = values.iter().map(|v| v.as_f64().unwrap() as f32).collect();
                assert_eq!(got.len(), want.len(), "{ctx}");
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g.to_bits(), w.to_bits(), "{ctx}[{i}]: {g} vs {w}");
                }
            } else {
                let want: Vec<i64> = values.iter().map(|v| v.as_i64().unwrap()).collect();
                assert_eq!(int_values(t), want, "{ctx}");
                let as_f32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
                assert_eq!(t.to_f32(), as_f32, "{ctx}");
            }
        }
        if let Some(meta) = exp.get("metadata") {
            for (k, v) in meta.as_object().unwrap() {
                assert_eq!(wf.metadata.get(k).map(String::as_str), v.as_str(), "{name}: metadata {k}");
            }
        } else {
            assert!(wf.metadata.is_empty(), "{name}");
        }
    }
}

#[test]
fn same_result_from_bytes_and_from_file() {
    let bytes = fixture("state_dict.pth");
    let a = read_weights(&bytes, "state_dict.pth").unwrap();
    let b = read_weights_file(&fixture_dir().join("state_dict.pth")).unwrap();
    assert_eq!(a, b);
}

#[test]
fn checkpoint_object_tree() {
    let bytes = fixture("checkpoint.pth");
    let tf = TorchFile::parse(&bytes, "checkpoint.pth").unwrap();
    let root = &tf.root;
    assert_eq!(root.get("epoch"), Some(&Value::Int(3)));
    // args is an argparse.Namespace: a generic object whose BUILD state is its __dict__.
    let Some(Value::Object { class, state: Some(state), .. }) = root.get("args") else { panic!("args: {:?}", root.get("args")) };
    assert_eq!(**class, Value::Class { module: "argparse".into(), name: "Namespace".into() });
    assert_eq!(state.get("model"), Some(&Value::Str("x".into())));
    assert_eq!(state.get("lr"), Some(&Value::Float(5e-4)));
    assert_eq!(state.get("epochs"), Some(&Value::Int(300)));
    assert_eq!(state.get("distributed"), Some(&Value::Bool(false)));
    assert_eq!(state.get("none_val"), Some(&Value::None));
    assert_eq!(state.get("sizes"), Some(&Value::List(vec![Value::Int(1), Value::Int(2)])));
    assert_eq!(state.get("pair"), Some(&Value::Tuple(vec![Value::Int(3), Value::Int(4)])));
    // The optimizer state holds tensor references that are never materialised.
    let opt = root.get("optimizer").unwrap();
    let state = opt.get("state").and_then(Value::as_dict).unwrap();
    assert_eq!(state.len(), 4);
    let (_, p0) = &state[0];
    assert!(matches!(p0.get("exp_avg"), Some(Value::Tensor(_))), "{p0:?}");
    assert!(matches!(p0.get("step"), Some(Value::Tensor(_))), "{p0:?}");
    let groups = opt.get("param_groups").unwrap();
    let Value::List(groups) = groups else { panic!() };
    assert_eq!(groups[0].get("initial_lr"), Some(&Value::Float(5e-4)));
    assert_eq!(groups[0].get("weight_decay"), Some(&Value::Float(0.05)));
    assert!(matches!(root.get("scaler").and_then(|s| s.get("scale")), Some(Value::Float(f)) if *f == 65536.0));
    // lr_scheduler: plain dict of numbers.
    assert_eq!(root.get("lr_scheduler").and_then(|s| s.get("T_max")), Some(&Value::Int(10)));
    // Every storage referenced is listed (model + optimizer).
    assert!(tf.storages.len() >= 4 + 4 * 3, "{}", tf.storages.len());
    let sd = tf.state_dict().unwrap();
    assert_eq!(sd.entry.as_deref(), Some("model"));
    // An optimizer tensor can still be materialised on request.
    let Some(Value::Tensor(t)) = p0.get("exp_avg") else { panic!() };
    let raw = tf.materialize("optimizer.state.0.exp_avg", t).unwrap();
    assert_eq!(raw.dtype, DType::F32);
}

#[test]
fn views_parameters_and_storage_sharing() {
    let bytes = fixture("state_dict.pth");
    let tf = TorchFile::parse(&bytes, "state_dict.pth").unwrap();
    let sd = tf.state_dict().unwrap();
    let get = |k: &str| sd.tensors.iter().find(|(n, _)| n == k).map(|(_, t)| *t).unwrap();
    assert!(get("param").is_parameter);
    assert!(!get("dense.weight").is_parameter);
    assert_eq!(get("dense.weight_t").stride, vec![1, 4]);
    assert_eq!(get("dense.weight_t").storage.key, get("dense.weight").storage.key);
    assert_eq!(get("slice").offset, 5);
    assert_eq!(get("strided").stride, vec![3]);
    assert_eq!(get("expanded").stride, vec![0, 0]);
    assert_eq!(get("num_batches_tracked").shape, Vec::<u64>::new());
    let wf = tf.to_weight_file().unwrap();
    // transposed view == transpose of the original
    let w = wf.tensors["dense.weight"].to_f32();
    let wt = wf.tensors["dense.weight_t"].to_f32();
    for i in 0..3 {
        for j in 0..4 {
            assert_eq!(w[i * 4 + j], wt[j * 3 + i]);
        }
    }
    assert_eq!(wf.tensors["expanded"].to_f32(), vec![1.5; 6]);
    assert_eq!(wf.tensors["scalar"].to_f32(), vec![2.5]);
    assert_eq!(wf.tensors["empty"].shape, vec![0, 3]);
    assert!(wf.tensors["empty"].bytes.is_empty());
}

#[test]
fn big_endian_archive_reads_like_little_endian() {
    let le = read_weights(&fixture("dtypes.pth"), "dtypes.pth").unwrap();
    let be = read_weights(&fixture("bigendian.pth"), "bigendian.pth").unwrap();
    assert_eq!(le.tensors, be.tensors);
    let tf = fixture("bigendian.pth");
    assert!(TorchFile::parse(&tf, "be").unwrap().big_endian);
}

#[test]
fn safetensors_whose_header_length_looks_like_a_pickle() {
    // Header length 0x80 = 128: the first byte equals pickle's PROTO opcode.
    let mut header = br#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#.to_vec();
    header.resize(128, b' ');
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    assert_eq!(file[0], 0x80);
    file.extend_from_slice(&header);
    file.extend_from_slice(&1.5f32.to_le_bytes());
    file.extend_from_slice(&(-2.0f32).to_le_bytes());
    let wf = read_weights(&file, "x.safetensors").unwrap();
    assert_eq!(wf.format, Format::Safetensors);
    assert_eq!(wf.tensors["x"].to_f32(), vec![1.5, -2.0]);
}

#[test]
fn legacy_storage_views() {
    // Old torch wrote storage views as ('storage', type, root_key, location,
    // root_numel, (view_key, offset, view_numel)).
    let mut file = b"\x80\x02\x8a\x0a".to_vec();
    file.extend_from_slice(&snnet_io::pth::LEGACY_MAGIC);
    file.push(b'.');
    file.extend(P::new().int(1001).stop());
    file.extend(P::new().op(b"}").s("little_endian").op(b"\x88s").stop());
    let object = P::new()
        .op(b"}(")
        .s("v")
        .global("torch._utils", "_rebuild_tensor_v2")
        .op(b"((")
        .s("storage")
        .global("torch", "FloatStorage")
        .s("0")
        .s("cpu")
        .int(6)
        .op(b"(")
        .s("1")
        .int(2)
        .int(3)
        .op(b"ttQ")
        .int(1)
        .tuple(&[2])
        .tuple(&[1])
        .op(b"\x89)tR")
        .op(b"u")
        .stop();
    file.extend(object);
    file.extend(P::new().op(b"]").s("0").op(b"a").stop());
    file.extend_from_slice(&6u64.to_le_bytes());
    for i in 0..6 {
        file.extend_from_slice(&(i as f32).to_le_bytes());
    }
    let wf = read_weights(&file, "view.pth").unwrap();
    assert_eq!(wf.format, Format::TorchLegacy);
    // view = storage[2..5]; tensor = view[1..3]
    assert_eq!(wf.tensors["v"].to_f32(), vec![3.0, 4.0]);
    // A view past its root storage is an error naming the storage.
    let mut file2 = file.clone();
    let at = file2.windows(9).position(|w| w == [0x8a, 8, 3, 0, 0, 0, 0, 0, 0]).unwrap();
    file2[at + 2] = 5; // view_numel 3 -> 5: 2 + 5 > 6
    let e = read_weights(&file2, "badview.pth").unwrap_err().to_string();
    assert!(e.contains("storage '0'") && e.contains("exceeds"), "{e}");
}
