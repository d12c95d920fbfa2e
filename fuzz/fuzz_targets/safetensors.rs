//! Arbitrary bytes through `parse_safetensors`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(wf) = snnet_io::parse_safetensors(data, "fuzz") {
        for t in wf.tensors.values() {
            assert_eq!(t.bytes.len(), t.numel() * t.dtype.size());
            let _ = t.to_f32();
        }
    }
});
