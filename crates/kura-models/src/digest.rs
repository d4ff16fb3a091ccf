//! Hashing while copying, so that a file is read once whether it comes from the
//! hub, a wheel or the cache.

use std::io::{Read, Write};

use sha2::{Digest, Sha256};

use crate::progress::DownloadProgress;

/// Hex digits kept in a fingerprint: enough to never collide among a user's models,
/// short enough to read in an id.
const FINGERPRINT_HEX: usize = 16;

pub(crate) fn short_hex(bytes: &[u8]) -> String {
    let mut hex = to_hex(&Sha256::digest(bytes));
    hex.truncate(FINGERPRINT_HEX);
    hex
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Copies `reader` to `writer`, returning the sha256 (hex) and the byte count.
pub(crate) fn copy_hashing(
    reader: &mut dyn Read,
    writer: &mut dyn Write,
    hasher: &mut Sha256,
    progress: &dyn DownloadProgress,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n])?;
        total += n as u64;
        progress.advance(n as u64);
    }
}

/// The sha256 (hex) and size of a file on disk.
pub(crate) fn hash_file(
    path: &std::path::Path,
    progress: &dyn DownloadProgress,
) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let size = copy_hashing(&mut file, &mut std::io::sink(), &mut hasher, progress)?;
    Ok((to_hex(&hasher.finalize()), size))
}
