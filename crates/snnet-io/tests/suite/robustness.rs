//! No input panics: every prefix truncation and many single-byte corruptions
//! of every fixture, both of the raw file and of the pickle inside a zip
//! (re-wrapped with a valid CRC so the pickle reader, not the CRC check, sees it).

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::common::*;
use snnet_io::pth::TorchFile;
use snnet_io::zip::{write_stored, ZipArchive};

fn check(bytes: &[u8], what: &dyn Fn() -> String) {
    let r = catch_unwind(AssertUnwindSafe(|| {
        if bytes.starts_with(b"PK") || bytes.first() == Some(&0x80) {
            // What read_weights does, plus every storage (optimizer state too).
            if let Ok(tf) = TorchFile::parse(bytes, "fuzz") {
                for s in &tf.storages {
                    let _ = tf.storage_bytes(&s.key);
                }
                let _ = tf.to_weight_file();
            }
        } else {
            let _ = snnet_io::read_weights(bytes, "fuzz");
            let _ = snnet_io::parse_safetensors(bytes, "fuzz");
        }
    }));
    if r.is_err() {
        panic!("panicked on {}", what());
    }
}

fn variants(b: u8) -> [u8; 3] {
    [0x00, 0xff, b ^ 0x01]
}

#[test]
fn raw_truncations_and_corruptions_never_panic() {
    let mut n = 0usize;
    for name in weight_fixtures() {
        let full = fixture(&name);
        for len in 0..full.len() {
            check(&full[..len], &|| format!("{name} truncated to {len} bytes"));
            n += 1;
        }
        let mut buf = full.clone();
        for i in 0..full.len() {
            for v in variants(full[i]) {
                buf[i] = v;
                check(&buf, &|| format!("{name} with byte {i} set to {v:#04x}"));
                n += 1;
            }
            buf[i] = full[i];
        }
    }
    assert!(n > 40_000, "{n}");
}

#[test]
fn pickle_truncations_and_corruptions_never_panic() {
    let mut n = 0usize;
    for name in weight_fixtures() {
        let full = fixture(&name);
        let Ok(archive) = ZipArchive::new(&full) else {
            continue;
        };
        let Ok(entries) =
            archive.entries().iter().map(|e| archive.read(e).map(|d| (e.name.clone(), d.into_owned()))).collect::<Result<Vec<_>, _>>()
        else {
            continue;
        };
        let Some(pkl) = entries.iter().position(|(n, _)| n.ends_with("data.pkl")) else {
            continue;
        };
        let original = entries[pkl].1.clone();
        let wrap = |pickle: &[u8]| {
            let list: Vec<(&str, &[u8])> =
                entries.iter().enumerate().map(|(i, (n, d))| (n.as_str(), if i == pkl { pickle } else { d.as_slice() })).collect();
            write_stored(&list)
        };
        for len in 0..original.len() {
            check(&wrap(&original[..len]), &|| format!("{name}: data.pkl truncated to {len} bytes"));
            n += 1;
        }
        let mut p = original.clone();
        for i in 0..original.len() {
            for v in variants(original[i]) {
                p[i] = v;
                check(&wrap(&p), &|| format!("{name}: data.pkl byte {i} set to {v:#04x}"));
                n += 1;
            }
            p[i] = original[i];
        }
    }
    assert!(n > 20_000, "{n}");
}
