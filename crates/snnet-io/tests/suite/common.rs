//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Every weight-file fixture (not the expected values or the generator).
pub fn weight_fixtures() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".pth") || n.ends_with(".safetensors"))
        .collect();
    v.sort();
    v
}

/// A tiny pickle writer (protocol 2) for hand-made test pickles.
#[derive(Default)]
pub struct P(pub Vec<u8>);

impl P {
    pub fn new() -> Self {
        P(b"\x80\x02".to_vec())
    }
    pub fn op(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    pub fn s(mut self, s: &str) -> Self {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    pub fn int(mut self, v: i64) -> Self {
        self.0.push(0x8a);
        self.0.push(8);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn global(self, module: &str, name: &str) -> Self {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }
    pub fn tuple(mut self, ints: &[i64]) -> Self {
        self.0.push(b'(');
        for &i in ints {
            self = self.int(i);
        }
        self.op(b"t")
    }
    /// A `_rebuild_tensor_v2` call over a FloatStorage.
    pub fn tensor(self, key: &str, numel: i64, offset: i64, shape: &[i64], stride: &[i64]) -> Self {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .op(b"((")
            .s("storage")
            .global("torch", "FloatStorage")
            .s(key)
            .s("cpu")
            .int(numel)
            .op(b"tQ")
            .int(offset)
            .tuple(shape)
            .tuple(stride)
            .op(b"\x89")
            .global("collections", "OrderedDict")
            .op(b")Rt")
            .op(b"R")
    }
    pub fn stop(self) -> Vec<u8> {
        let mut v = self.0;
        v.push(b'.');
        v
    }
}

/// A torch-style zip: `archive/data.pkl` plus `archive/data/<key>` storages.
pub fn torch_zip(pickle: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    let names: Vec<String> = storages.iter().map(|(k, _)| format!("archive/data/{k}")).collect();
    let mut entries: Vec<(&str, &[u8])> = vec![("archive/data.pkl", pickle)];
    for (n, (_, d)) in names.iter().zip(storages) {
        entries.push((n.as_str(), d));
    }
    entries.push(("archive/version", b"3\n"));
    snnet_io::zip::write_stored(&entries)
}
