//! A small, read-only zip reader for the archives `torch.save` writes
//! (STORED entries, ZIP64 records for large files), plus DEFLATED entries,
//! and a minimal STORED writer for tests and fuzzing.
//!
//! The reader works on a byte slice and never allocates from a length field
//! before checking it against the bytes that are actually there; a DEFLATED
//! entry, whose inflated size the bytes do not bound, is read with
//! [`ZipArchive::read_at_most`] against the size its reader expects.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
const EOCD_LEN: usize = 22;
const CENTRAL_LEN: usize = 46;
const LOCAL_LEN: usize = 30;

/// A malformed archive or entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipError {
    /// The entry concerned, if any.
    pub entry: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ZipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.entry {
            Some(e) => write!(f, "entry '{e}': {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ZipError {}

fn err(message: impl Into<String>) -> ZipError {
    ZipError { entry: None, message: message.into() }
}

/// One file of the archive, as the central directory describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipEntry {
    /// Path inside the archive.
    pub name: String,
    /// Compression method (0 = STORED, 8 = DEFLATED).
    pub method: u16,
    /// General purpose flags (bit 0: encrypted).
    pub flags: u16,
    /// CRC-32 of the uncompressed data.
    pub crc32: u32,
    /// Size of the data as stored.
    pub compressed_size: u64,
    /// Size of the data once uncompressed.
    pub size: u64,
    /// Offset of the entry's local header in the archive.
    pub local_header_offset: u64,
}

/// A zip archive over a byte slice.
#[derive(Debug, Clone)]
pub struct ZipArchive<'a> {
    data: &'a [u8],
    entries: Vec<ZipEntry>,
    by_name: HashMap<String, usize>,
}

fn u16_at(d: &[u8], at: usize) -> Option<u16> {
    let b = d.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    let b = d.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    let b = d.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

fn to_usize(v: u64, what: &str) -> Result<usize, ZipError> {
    usize::try_from(v).map_err(|_| err(format!("{what} {v} does not fit in memory")))
}

/// Where the central directory is and how many entries it declares.
struct Directory {
    offset: u64,
    size: u64,
    count: u64,
}

fn find_eocd(data: &[u8]) -> Result<usize, ZipError> {
    if data.len() < EOCD_LEN {
        return Err(err(format!(
            "truncated: {} bytes is too short to hold the end-of-central-directory record ({EOCD_LEN} bytes)",
            data.len()
        )));
    }
    let last = data.len() - EOCD_LEN;
    let first = last.saturating_sub(u16::MAX as usize);
    let mut fallback = None;
    for pos in (first..=last).rev() {
        if u32_at(data, pos) == Some(EOCD_SIG) {
            let comment = u16_at(data, pos + 20).unwrap_or(0) as usize;
            if pos + EOCD_LEN + comment == data.len() {
                return Ok(pos);
            }
            fallback.get_or_insert(pos);
        }
    }
    fallback.ok_or_else(|| err("no end-of-central-directory record: the file is truncated or not a zip archive"))
}

fn read_directory(data: &[u8], eocd: usize) -> Result<Directory, ZipError> {
    let count16 = u16_at(data, eocd + 10).unwrap_or(0);
    let size32 = u32_at(data, eocd + 12).unwrap_or(0);
    let offset32 = u32_at(data, eocd + 16).unwrap_or(0);
    // A ZIP64 locator sits right before the end-of-central-directory record.
    if eocd >= 20 && u32_at(data, eocd - 20) == Some(ZIP64_LOCATOR_SIG) {
        let rec = u64_at(data, eocd - 16).unwrap_or(u64::MAX);
        let rec = usize::try_from(rec).ok().filter(|&r| r < eocd - 20);
        let rec = rec.filter(|&r| u32_at(data, r) == Some(ZIP64_EOCD_SIG));
        match rec {
            Some(r) => {
                let (Some(count), Some(size), Some(offset)) = (u64_at(data, r + 32), u64_at(data, r + 40), u64_at(data, r + 48)) else {
                    return Err(err("truncated ZIP64 end-of-central-directory record"));
                };
                return Ok(Directory { offset, size, count });
            }
            None => {
                if count16 == u16::MAX || size32 == u32::MAX || offset32 == u32::MAX {
                    return Err(err("the ZIP64 locator points outside the file: truncated or corrupt archive"));
                }
            }
        }
    }
    Ok(Directory { offset: offset32 as u64, size: size32 as u64, count: count16 as u64 })
}

impl<'a> ZipArchive<'a> {
    /// Reads the central directory of the archive in `data`.
    pub fn new(data: &'a [u8]) -> Result<Self, ZipError> {
        let eocd = find_eocd(data)?;
        let dir = read_directory(data, eocd)?;
        let start = to_usize(dir.offset, "central directory offset")?;
        let size = to_usize(dir.size, "central directory size")?;
        let end = start.checked_add(size).filter(|&e| e <= data.len()).ok_or_else(|| {
            err(format!(
                "the central directory (offset {start}, {size} bytes) lies outside the file ({} bytes): truncated archive",
                data.len()
            ))
        })?;
        let cd = &data[start..end];
        // Each record is at least CENTRAL_LEN bytes: never trust `count` more than that.
        if dir.count > (cd.len() / CENTRAL_LEN) as u64 {
            return Err(err(format!(
                "the central directory declares {} entries but its {} bytes hold at most {}",
                dir.count,
                cd.len(),
                cd.len() / CENTRAL_LEN
            )));
        }
        let mut entries = Vec::with_capacity(dir.count as usize);
        let mut pos = 0usize;
        for i in 0..dir.count {
            let entry = parse_central(cd, pos).ok_or_else(|| err(format!("central directory record {i} is truncated or corrupt")))?;
            pos = entry.1;
            entries.push(entry.0);
        }
        let mut by_name = HashMap::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            by_name.entry(e.name.clone()).or_insert(i);
        }
        Ok(Self { data, entries, by_name })
    }

    /// All entries, in central-directory order.
    pub fn entries(&self) -> &[ZipEntry] {
        &self.entries
    }

    /// The entry with this exact name (the first one, if repeated).
    pub fn find(&self, name: &str) -> Option<&ZipEntry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    /// The uncompressed bytes of an entry, borrowed when it is STORED.
    /// Checks sizes and the CRC-32. A DEFLATED entry is inflated up to the size
    /// its directory record declares, whatever that is: for untrusted archives
    /// use [`read_at_most`](Self::read_at_most).
    pub fn read(&self, entry: &ZipEntry) -> Result<Cow<'a, [u8]>, ZipError> {
        self.read_at_most(entry, u64::MAX)
    }

    /// [`read`](Self::read), refusing a DEFLATED entry whose directory record
    /// declares more than `max_size` inflated bytes before inflating anything
    /// (a STORED entry is borrowed from the input, which bounds it already).
    pub fn read_at_most(&self, entry: &ZipEntry, max_size: u64) -> Result<Cow<'a, [u8]>, ZipError> {
        self.read_inner(entry, max_size).map_err(|message| ZipError { entry: Some(entry.name.clone()), message })
    }

    fn read_inner(&self, e: &ZipEntry, max_size: u64) -> Result<Cow<'a, [u8]>, String> {
        if e.flags & 1 != 0 {
            return Err("encrypted entries are not supported".into());
        }
        if e.method != 0 && e.size > max_size {
            return Err(format!(
                "inflates to {} bytes by its directory record, more than the {max_size} bytes expected of it: refused before inflating",
                e.size
            ));
        }
        let data = self.data;
        let off = usize::try_from(e.local_header_offset)
            .ok()
            .filter(|&o| o.checked_add(LOCAL_LEN).is_some_and(|end| end <= data.len()))
            .ok_or_else(|| {
                format!("local header at offset {} lies outside the file ({} bytes): truncated archive", e.local_header_offset, data.len())
            })?;
        if u32_at(data, off) != Some(LOCAL_SIG) {
            return Err(format!("no local header signature at offset {off}: corrupt archive"));
        }
        let name_len = u16_at(data, off + 26).unwrap_or(0) as usize;
        let extra_len = u16_at(data, off + 28).unwrap_or(0) as usize;
        let start = off + LOCAL_LEN + name_len + extra_len;
        let stored = usize::try_from(e.compressed_size).unwrap_or(usize::MAX);
        let raw = start.checked_add(stored).and_then(|end| data.get(start..end)).ok_or_else(|| {
            format!(
                "its data ({} bytes at offset {start}) runs past the end of the file ({} bytes): truncated archive",
                e.compressed_size,
                data.len()
            )
        })?;
        let out: Cow<'a, [u8]> = match e.method {
            0 => {
                if e.compressed_size != e.size {
                    return Err(format!("STORED entry has compressed size {} but size {}", e.compressed_size, e.size));
                }
                Cow::Borrowed(raw)
            }
            8 => {
                let limit = usize::try_from(e.size).unwrap_or(usize::MAX);
                let v = miniz_oxide::inflate::decompress_to_vec_with_limit(raw, limit)
                    .map_err(|x| format!("cannot inflate DEFLATED data: {x}"))?;
                if v.len() as u64 != e.size {
                    return Err(format!("inflated to {} bytes but the directory says {}", v.len(), e.size));
                }
                Cow::Owned(v)
            }
            m => return Err(format!("unsupported compression method {m} (only STORED and DEFLATED)")),
        };
        let crc = crc32(&out);
        if crc != e.crc32 {
            return Err(format!("CRC-32 mismatch (expected {:08x}, computed {crc:08x}): corrupt data", e.crc32));
        }
        Ok(out)
    }
}

/// Parses one central-directory record at `pos`; returns it and the next position.
fn parse_central(cd: &[u8], pos: usize) -> Option<(ZipEntry, usize)> {
    if u32_at(cd, pos)? != CENTRAL_SIG {
        return None;
    }
    let flags = u16_at(cd, pos + 8)?;
    let method = u16_at(cd, pos + 10)?;
    let crc32 = u32_at(cd, pos + 16)?;
    let csize32 = u32_at(cd, pos + 20)?;
    let size32 = u32_at(cd, pos + 24)?;
    let name_len = u16_at(cd, pos + 28)? as usize;
    let extra_len = u16_at(cd, pos + 30)? as usize;
    let comment_len = u16_at(cd, pos + 32)? as usize;
    let off32 = u32_at(cd, pos + 42)?;
    let name_start = pos + CENTRAL_LEN;
    let name = cd.get(name_start..name_start + name_len)?;
    let extra = cd.get(name_start + name_len..name_start + name_len + extra_len)?;
    let next = name_start + name_len + extra_len + comment_len;
    if next > cd.len() {
        return None;
    }
    let mut size = size32 as u64;
    let mut compressed_size = csize32 as u64;
    let mut local_header_offset = off32 as u64;
    // ZIP64 extended information: the 64-bit values of the saturated fields, in order.
    let mut p = 0usize;
    while p + 4 <= extra.len() {
        let id = u16_at(extra, p)?;
        let len = u16_at(extra, p + 2)? as usize;
        let body = extra.get(p + 4..p + 4 + len)?;
        if id == 1 {
            let mut q = 0usize;
            let mut take = |field: &mut u64, saturated: bool| -> Option<()> {
                if saturated {
                    *field = u64_at(body, q)?;
                    q += 8;
                }
                Some(())
            };
            take(&mut size, size32 == u32::MAX)?;
            take(&mut compressed_size, csize32 == u32::MAX)?;
            take(&mut local_header_offset, off32 == u32::MAX)?;
        }
        p += 4 + len;
    }
    let name = String::from_utf8_lossy(name).into_owned();
    Some((ZipEntry { name, method, flags, crc32, compressed_size, size, local_header_offset }, next))
}

const CRC_TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut s = 1;
    while s < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        s += 1;
    }
    t
};

/// CRC-32 (IEEE, as zip uses it) of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    let t = &CRC_TABLES;
    let mut c = !0u32;
    let mut chunks = data.chunks_exact(8);
    for b in &mut chunks {
        let lo = c ^ u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        c = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][b[4] as usize]
            ^ t[2][b[5] as usize]
            ^ t[1][b[6] as usize]
            ^ t[0][b[7] as usize];
    }
    for &b in chunks.remainder() {
        c = (c >> 8) ^ t[0][((c ^ b as u32) & 0xff) as usize];
    }
    !c
}

/// Writes a zip archive of STORED entries (no ZIP64; for tests, fuzzing and
/// small tools — not a general-purpose writer).
///
/// # Panics
/// If an entry or the archive exceeds the 32-bit zip limits.
pub fn write_stored(entries: &[(&str, &[u8])]) -> Vec<u8> {
    write_archive(entries, false)
}

/// [`write_stored`] with every entry DEFLATED (miniz's fast level), as
/// Python's `zipfile.ZIP_DEFLATED` writes them; for tests and fuzzing.
///
/// # Panics
/// As [`write_stored`].
pub fn write_deflated(entries: &[(&str, &[u8])]) -> Vec<u8> {
    write_archive(entries, true)
}

fn write_archive(entries: &[(&str, &[u8])], deflate: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    let small = |v: usize| u32::try_from(v).expect("zip writer: entry too large for a zip32 archive");
    for (name, data) in entries {
        let offset = small(out.len());
        let crc = crc32(data);
        let name_len = u16::try_from(name.len()).expect("zip writer: name too long");
        let stored: Cow<'_, [u8]> = if deflate { Cow::Owned(miniz_oxide::deflate::compress_to_vec(data, 1)) } else { Cow::Borrowed(data) };
        let mut common = Vec::new();
        common.extend_from_slice(&20u16.to_le_bytes()); // version needed
        common.extend_from_slice(&0u16.to_le_bytes()); // flags
        common.extend_from_slice(&(if deflate { 8u16 } else { 0u16 }).to_le_bytes()); // method
        common.extend_from_slice(&0u32.to_le_bytes()); // time, date
        common.extend_from_slice(&crc.to_le_bytes());
        common.extend_from_slice(&small(stored.len()).to_le_bytes());
        common.extend_from_slice(&small(data.len()).to_le_bytes());
        common.extend_from_slice(&name_len.to_le_bytes());
        common.extend_from_slice(&0u16.to_le_bytes()); // extra length
        out.extend_from_slice(&LOCAL_SIG.to_le_bytes());
        out.extend_from_slice(&common);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&stored);
        central.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes()); // version made by
        central.extend_from_slice(&common);
        central.extend_from_slice(&[0u8; 10]); // comment len, disk, attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = small(out.len());
    out.extend_from_slice(&central);
    let count = u16::try_from(entries.len()).expect("zip writer: too many entries");
    out.extend_from_slice(&EOCD_SIG.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&small(central.len()).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        let long: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut c = !0u32;
        for &b in &long {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        assert_eq!(crc32(&long), !c);
    }

    #[test]
    fn roundtrip_stored() {
        let z = write_stored(&[("a/data.pkl", b"hello"), ("a/data/0", b"")]);
        let a = ZipArchive::new(&z).unwrap();
        assert_eq!(a.entries().len(), 2);
        assert_eq!(&*a.read(a.find("a/data.pkl").unwrap()).unwrap(), b"hello");
        assert_eq!(&*a.read(a.find("a/data/0").unwrap()).unwrap(), b"");
    }

    #[test]
    fn roundtrip_deflated_and_bounded() {
        let zeros = vec![0u8; 100_000];
        let z = write_deflated(&[("a/big", &zeros)]);
        assert!(z.len() < 2_000, "{}", z.len());
        let a = ZipArchive::new(&z).unwrap();
        let e = a.find("a/big").unwrap();
        assert_eq!(a.read_at_most(e, 100_000).unwrap().len(), 100_000);
        let refused = a.read_at_most(e, 99_999).unwrap_err().to_string();
        assert!(refused.contains("inflates to 100000 bytes") && refused.contains("99999 bytes"), "{refused}");
    }

    #[test]
    fn truncations_are_errors() {
        let z = write_stored(&[("x", b"payload")]);
        for n in 0..z.len() {
            if let Ok(a) = ZipArchive::new(&z[..n]) {
                for e in a.entries() {
                    let _ = a.read(e);
                }
            }
        }
    }
}
