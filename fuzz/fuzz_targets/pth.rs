//! Arbitrary bytes through `read_weights` (format detection, zip, legacy,
//! safetensors), then the same bytes as the `data.pkl` of a torch zip with a
//! few storages, so the pickle reader and tensor materialisation are reached
//! without having to get a zip CRC right.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snnet_io::pth::TorchFile;

fn exercise(tf: &TorchFile<'_>) {
    for s in &tf.storages {
        let _ = tf.storage_bytes(&s.key);
    }
    if let Ok(wf) = tf.to_weight_file() {
        for t in wf.tensors.values() {
            assert_eq!(t.bytes.len(), t.numel() * t.dtype.size());
            let _ = t.to_f32();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(wf) = snnet_io::read_weights(data, "fuzz") {
        for t in wf.tensors.values() {
            assert_eq!(t.bytes.len(), t.numel() * t.dtype.size());
        }
    }
    if data.starts_with(b"PK") || data.first() == Some(&0x80) {
        if let Ok(tf) = TorchFile::parse(data, "fuzz") {
            exercise(&tf);
        }
    }
    let storage: Vec<u8> = (0..64u8).collect();
    let zip = snnet_io::zip::write_stored(&[
        ("archive/data.pkl", data),
        ("archive/data/0", &storage),
        ("archive/data/1", &storage[..7]),
        ("archive/data/2", &[]),
        ("archive/data/3", &storage[..24]),
        ("archive/version", b"3\n"),
    ]);
    if let Ok(tf) = TorchFile::parse_zip(&zip, "fuzz") {
        exercise(&tf);
    }
});
