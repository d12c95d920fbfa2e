//! Broken files give errors that name the culprit.

use super::common::*;
use snnet_io::{parse_safetensors, read_weights, read_weights_file, Error};

fn err(bytes: &[u8], name: &str) -> (Error, String) {
    let e = read_weights(bytes, name).expect_err("expected an error");
    let msg = e.to_string();
    assert!(msg.starts_with(name), "the message must start with the file name: {msg}");
    (e, msg)
}

#[test]
fn truncated_zip() {
    let full = fixture("state_dict.pth");
    // Cut inside the central directory.
    let (e, msg) = err(&full[..full.len() - 30], "cut.pth");
    assert!(matches!(e, Error::Zip { .. }), "{msg}");
    assert!(msg.contains("zip archive"), "{msg}");
    assert!(msg.contains("truncated"), "{msg}");
    // Cut in the middle of the data: no end-of-central-directory record.
    let (e, msg) = err(&full[..full.len() / 2], "half.pth");
    assert!(matches!(e, Error::Zip { .. }), "{msg}");
    assert!(msg.contains("end-of-central-directory"), "{msg}");
}

#[test]
fn truncated_pickle() {
    let (e, msg) = err(&fixture("err_truncated_pickle.pth"), "err_truncated_pickle.pth");
    let Error::Pickle { part, err, .. } = &e else { panic!("{msg}") };
    assert_eq!(part, "archive/data.pkl");
    assert!(err.offset > 0);
    assert!(msg.contains("archive/data.pkl"), "{msg}");
    assert!(msg.contains("pickle error at byte"), "{msg}");
    assert!(msg.contains("opcode"), "{msg}");
    assert!(msg.contains("truncated"), "{msg}");
}

#[test]
fn storage_shorter_than_numel() {
    let (e, msg) = err(&fixture("err_short_storage.pth"), "err_short_storage.pth");
    let Error::Storage { key, location, .. } = &e else { panic!("{msg}") };
    assert_eq!(key, "0");
    assert_eq!(location, "zip entry 'archive/data/0'");
    // 6 f32 = 24 bytes expected, 10 present
    assert!(msg.contains("expected 24"), "{msg}");
    assert!(msg.contains("actual 10"), "{msg}");
}

#[test]
fn missing_storage_file() {
    let (e, msg) = err(&fixture("err_missing_storage.pth"), "err_missing_storage.pth");
    assert!(matches!(&e, Error::Storage { key, .. } if key == "1"), "{msg}");
    assert!(msg.contains("archive/data/1"), "{msg}");
    assert!(msg.contains("missing"), "{msg}");
}

#[test]
fn not_a_weight_file() {
    let (e, msg) = err(b"", "empty.bin");
    assert!(matches!(e, Error::UnknownFormat { .. }), "{msg}");
    assert!(msg.contains("empty"), "{msg}");
    let random: Vec<u8> = (0..300u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 1).collect();
    let (e, msg) = err(&random, "random.bin");
    assert!(matches!(e, Error::UnknownFormat { .. }), "{msg}");
    assert!(msg.contains("300 bytes"), "{msg}");
    // A pickle that is not torch's.
    let (e, msg) = err(b"\x80\x02K\x05.", "plain.pkl");
    assert!(matches!(e, Error::UnknownFormat { .. }), "{msg}");
    assert!(msg.contains("magic"), "{msg}");
    // A zip that is not torch's.
    let z = snnet_io::zip::write_stored(&[("hello.txt", b"hi")]);
    let (_, msg) = err(&z, "other.zip");
    assert!(msg.contains("no data.pkl") && msg.contains("hello.txt"), "{msg}");
    let e = read_weights_file(std::path::Path::new("/nonexistent/w.pth")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }) && e.to_string().contains("/nonexistent/w.pth"), "{e}");
}

#[test]
fn missing_memo_slot() {
    let z = torch_zip(b"\x80\x02}q\x00h\x07.", &[]);
    let (e, msg) = err(&z, "memo.pth");
    let Error::Pickle { err, .. } = &e else { panic!("{msg}") };
    assert_eq!(err.offset, 5);
    assert_eq!(err.opcode, Some(b'h'));
    assert!(msg.contains("byte 5") && msg.contains("BINGET") && msg.contains("memo slot 7"), "{msg}");
}

#[test]
fn no_state_dict_lists_keys() {
    let p = P::new().op(b"}(").s("epoch").int(3).s("model").global("mymodels", "Net").op(b")\x81").op(b"u").stop();
    let (e, msg) = err(&torch_zip(&p, &[]), "whole_model.pth");
    assert!(matches!(e, Error::StateDict { .. }), "{msg}");
    assert!(msg.contains("'epoch'") && msg.contains("'model'"), "{msg}");
    assert!(msg.contains("mymodels.Net object"), "{msg}");
    // A pickled nn.Module as root.
    let p = P::new().global("mymodels", "Net").op(b")\x81").stop();
    let (_, msg) = err(&torch_zip(&p, &[]), "module.pth");
    assert!(msg.contains("not a dict") && msg.contains("state_dict()"), "{msg}");
}

#[test]
fn non_tensor_in_state_dict_is_named() {
    let p = P::new().op(b"}(").s("model").op(b"}(").s("w").tensor("0", 2, 0, &[2], &[1]).s("n_averaged").int(3).op(b"u").op(b"u").stop();
    let (e, msg) = err(&torch_zip(&p, &[("0", &[0u8; 8])]), "mixed.pth");
    assert!(matches!(e, Error::StateDict { .. }), "{msg}");
    assert!(msg.contains("'model'") && msg.contains("'n_averaged'") && msg.contains("int"), "{msg}");
}

#[test]
fn view_out_of_storage_bounds() {
    let p = P::new().op(b"}(").s("w").tensor("0", 2, 1, &[2, 2], &[1, 1]).op(b"u").stop();
    let (e, msg) = err(&torch_zip(&p, &[("0", &[0u8; 8])]), "oob.pth");
    assert!(matches!(&e, Error::Tensor { tensor, .. } if tensor == "w"), "{msg}");
    assert!(msg.contains("reaches element 3") && msg.contains("has 2 elements"), "{msg}");
    // Strides whose products overflow.
    let p = P::new().op(b"}(").s("w").tensor("0", 2, 0, &[3, 3], &[i64::MAX, 1]).op(b"u").stop();
    let (_, msg) = err(&torch_zip(&p, &[("0", &[0u8; 8])]), "ovf.pth");
    assert!(msg.contains("tensor 'w'") && msg.contains("beyond 2^64"), "{msg}");
    // A shape whose element count overflows.
    let p = P::new().op(b"}(").s("w").tensor("0", 2, 0, &[1 << 40, 1 << 40], &[0, 0]).op(b"u").stop();
    let (_, msg) = err(&torch_zip(&p, &[("0", &[0u8; 8])]), "big.pth");
    assert!(msg.contains("tensor 'w'") && msg.contains("overflows"), "{msg}");
    // A broadcast view that would expand a 4-byte storage to 4 GiB.
    let p = P::new().op(b"}(").s("w").tensor("0", 1, 0, &[1 << 30], &[0]).op(b"u").stop();
    let (_, msg) = err(&torch_zip(&p, &[("0", &[0u8; 4])]), "bcast.pth");
    assert!(msg.contains("tensor 'w'") && msg.contains("expand"), "{msg}");
}

#[test]
fn corrupt_entry_crc() {
    let mut z = fixture("small.pth");
    // Flip a byte inside the storage data of entry archive/data/0 (its 24 bytes
    // are stored after the local header, 64-byte aligned).
    let name = b"archive/data/0";
    let at = z.windows(name.len()).position(|w| w == name).unwrap();
    let data_at = (at + name.len()..z.len()).find(|&i| i % 64 == 0).unwrap();
    z[data_at] ^= 0xff;
    let (e, msg) = err(&z, "crc.pth");
    assert!(matches!(&e, Error::Zip { entry: Some(en), .. } if en == "archive/data/0"), "{msg}");
    assert!(msg.contains("CRC"), "{msg}");
}

#[test]
fn truncated_legacy() {
    let full = fixture("legacy.pth");
    let (e, msg) = err(&full[..full.len() - 3], "legacy_cut.pth");
    assert!(matches!(e, Error::Storage { .. }), "{msg}");
    assert!(msg.contains("truncated"), "{msg}");
    let (e, msg) = err(&full[..400], "legacy_cut2.pth");
    assert!(matches!(e, Error::Pickle { ref part, .. } if part == "legacy object pickle"), "{msg}");
}

#[test]
fn safetensors_errors() {
    let full = fixture("mixed.safetensors");
    let e = parse_safetensors(&full[..full.len() - 5], "st.safetensors").unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("st.safetensors: safetensors:"), "{msg}");
    assert!(msg.contains("truncated"), "{msg}");
    let e = parse_safetensors(&full[..4], "st4.safetensors").unwrap_err();
    assert!(e.to_string().contains("truncated header"), "{e}");
    let e = parse_safetensors(&full[..40], "st40.safetensors").unwrap_err();
    assert!(e.to_string().contains("header"), "{e}");
    let mut bad = full.clone();
    bad[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let e = parse_safetensors(&bad, "big.safetensors").unwrap_err();
    assert!(e.to_string().contains("header"), "{e}");
}

/// A DEFLATED storage entry that inflates far past what its tensors declare (a zip bomb) is
/// refused before inflating: the message names the storage, both sizes and the refusal.
#[test]
fn deflated_storage_inflating_past_its_tensors_is_refused() {
    let p = P::new().op(b"}(").s("w").tensor("0", 100, 0, &[100], &[1]).op(b"u").stop();
    let bomb = vec![0u8; 64 << 20];
    let zip = snnet_io::zip::write_deflated(&[("archive/data.pkl", &p), ("archive/data/0", &bomb)]);
    assert!(zip.len() < 1 << 20, "the bomb is small on disk: {} bytes", zip.len());
    let (e, msg) = err(&zip, "bomb.pth");
    assert!(matches!(&e, Error::Storage { key, .. } if key == "0"), "{msg}");
    assert!(msg.contains("inflates to 67108864 bytes") && msg.contains("declares 400 bytes"), "{msg}");
    assert!(msg.contains("refused before inflating"), "{msg}");
    // The same archive with a storage of the declared size reads.
    let exact = vec![0u8; 400];
    let zip = snnet_io::zip::write_deflated(&[("archive/data.pkl", &p), ("archive/data/0", &exact)]);
    assert_eq!(read_weights(&zip, "exact.pth").unwrap().tensors["w"].shape, vec![100]);
}

/// A DEFLATED object pickle larger than `MAX_INFLATED_PICKLE_BYTES` is refused before inflating.
#[test]
fn deflated_pickle_past_the_limit_is_refused() {
    let limit = snnet_io::pth::MAX_INFLATED_PICKLE_BYTES as usize;
    let pickle = vec![b'N'; limit + 1];
    let zip = snnet_io::zip::write_deflated(&[("archive/data.pkl", &pickle)]);
    let (e, msg) = err(&zip, "pickle_bomb.pth");
    assert!(matches!(e, Error::Zip { .. }), "{msg}");
    assert!(msg.contains(&format!("inflates to {} bytes", limit + 1)) && msg.contains(&format!("the {limit} bytes")), "{msg}");
}

/// A named pipe is refused before it is opened (opening it would wait for a writer forever).
#[cfg(unix)]
#[test]
fn named_pipe_is_refused_instead_of_blocking() {
    let fifo = std::env::temp_dir().join(format!("snnet-io-pipe-{}", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let e = read_weights_file(&fifo).expect_err("a FIFO is not a weight file");
    let msg = e.to_string();
    let _ = std::fs::remove_file(&fifo);
    assert!(matches!(&e, Error::Io { err, .. } if err.kind() == std::io::ErrorKind::InvalidInput), "{msg}");
    assert!(msg.contains("not a regular file but a named pipe (FIFO)"), "{msg}");
    let dir = read_weights_file(&std::env::temp_dir()).unwrap_err().to_string();
    assert!(dir.contains("not a regular file but a directory"), "{dir}");
}
