//! The checkpoint store: how a run directory is read and written.
//!
//! Two rules make a killed run safe to restart. Finished files are written whole or
//! not at all (a temp file in the same directory, fsynced, then renamed over the
//! old one). Work that is too long to redo — one LLM call per conversation — goes to
//! an append-only *journal* as it is done, one JSON line per item; a line cut short
//! by a kill is dropped on the next open, so a journal never holds half an item.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::matrix::Matrix;

/// A short, stable hex digest of several parts, used as cache keys and ids.
/// Parts are length-prefixed so `["ab", "c"]` and `["a", "bc"]` differ.
pub fn fingerprint<S: AsRef<[u8]>>(parts: &[S]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        let bytes = part.as_ref();
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    hex(&hasher.finalize()[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `path` through a temp file and a rename, so a reader (or a crash) never
/// sees a half-written file.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let file = File::create(&tmp)?;
        let mut writer = BufWriter::new(file);
        write(&mut writer)?;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

pub fn write_jsonl<T: Serialize>(path: &Path, items: &[T]) -> Result<()> {
    write_atomic(path, |w| {
        for item in items {
            serde_json::to_writer(&mut *w, item)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_atomic(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value)?;
        w.write_all(b"\n")
    })
}

/// Reads a JSON Lines file; an error names the file and line.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut items = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line =
            line.map_err(|e| Error::input(path, format!("line {}", i + 1), e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let item = serde_json::from_str(&line)
            .map_err(|e| Error::input(path, format!("line {}", i + 1), e.to_string()))?;
        items.push(item);
    }
    Ok(items)
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::input(
            path,
            format!("line {}, column {}", e.line(), e.column()),
            e.to_string(),
        )
    })
}

/// An append-only JSON Lines file of keyed results: the memory of slow work.
pub struct Journal<T> {
    path: PathBuf,
    writer: Mutex<BufWriter<File>>,
    entries: Mutex<HashMap<String, T>>,
}

#[derive(Serialize, Deserialize)]
struct JournalLine<T> {
    key: String,
    value: T,
}

impl<T: Serialize + DeserializeOwned + Clone> Journal<T> {
    /// Opens (or creates) a journal, keeping every complete line and cutting off a
    /// trailing partial line left by a kill.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| Error::io(path, e))?;
        let mut entries = HashMap::new();
        let mut good_len = 0usize;
        let mut offset = 0usize;
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            offset += line.len();
            if line.last() != Some(&b'\n') {
                break; // cut short by a kill: not a whole item
            }
            match serde_json::from_slice::<JournalLine<T>>(line) {
                Ok(entry) => {
                    entries.insert(entry.key, entry.value);
                    good_len = offset;
                }
                Err(_) if line.iter().all(u8::is_ascii_whitespace) => good_len = offset,
                Err(e) => {
                    tracing::warn!("{}: dropping unreadable journal line: {e}", path.display());
                    good_len = offset;
                }
            }
        }
        if good_len < bytes.len() {
            file.set_len(good_len as u64)
                .map_err(|e| Error::io(path, e))?;
            file.seek(SeekFrom::End(0))
                .map_err(|e| Error::io(path, e))?;
        }
        Ok(Journal {
            path: path.to_path_buf(),
            writer: Mutex::new(BufWriter::new(file)),
            entries: Mutex::new(entries),
        })
    }

    pub fn get(&self, key: &str) -> Option<T> {
        self.entries.lock().ok()?.get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends one result and flushes it to the OS, so a kill after this call
    /// never loses it.
    pub fn append(&self, key: &str, value: &T) -> Result<()> {
        let line = serde_json::to_string(&JournalLine {
            key: key.to_string(),
            value,
        })
        .map_err(|e| Error::Invalid(format!("cannot serialise journal entry: {e}")))?;
        {
            let mut writer = self
                .writer
                .lock()
                .map_err(|_| Error::Invalid("journal writer poisoned".into()))?;
            writer
                .write_all(line.as_bytes())
                .and_then(|_| writer.write_all(b"\n"))
                .and_then(|_| writer.flush())
                .map_err(|e| Error::io(&self.path, e))?;
        }
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(key.to_string(), value.clone());
        }
        Ok(())
    }
}

/// Writes a float32 matrix as NumPy `.npy` (version 1.0, little-endian, C order).
pub fn write_npy(path: &Path, matrix: &Matrix) -> Result<()> {
    write_atomic(path, |w| {
        let dict = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
            matrix.rows(),
            matrix.cols()
        );
        // Magic (6) + version (2) + header length (2) + dict + padding + '\n' is a multiple of 64.
        let unpadded = 10 + dict.len() + 1;
        let padding = (64 - unpadded % 64) % 64;
        let header = format!("{dict}{}\n", " ".repeat(padding));
        w.write_all(b"\x93NUMPY\x01\x00")?;
        w.write_all(&(header.len() as u16).to_le_bytes())?;
        w.write_all(header.as_bytes())?;
        for v in matrix.as_slice() {
            w.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    })
}

/// Reads a 2-D float32 `.npy` written by [`write_npy`] or NumPy.
pub fn read_npy(path: &Path) -> Result<Matrix> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: &str| Error::input(path, "header", msg.to_string());
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad("unsupported .npy version")),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    if !header.contains("'<f4'") || header.contains("'fortran_order': True") {
        return Err(bad("expected little-endian float32 in C order"));
    }
    let shape = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let dims: Vec<usize> = shape
        .trim_start_matches([' ', '('])
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad("bad shape")))
        .collect::<Result<_>>()?;
    let (rows, cols) = match dims.as_slice() {
        [r, c] => (*r, *c),
        [r] => (*r, 1),
        _ => return Err(bad("expected a 2-D array")),
    };
    let data = &bytes[start + header_len..];
    if data.len() != rows * cols * 4 {
        return Err(bad("data length does not match the shape"));
    }
    let values = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Matrix::new(rows, cols, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.npy");
        let m = Matrix::new(2, 3, vec![1.0, -2.5, 3.0, 0.0, 1e-7, f32::MAX]);
        write_npy(&path, &m).unwrap();
        assert_eq!(read_npy(&path).unwrap(), m);
        let bytes = fs::read(&path).unwrap();
        assert_eq!((bytes.len() - 24) % 64, 0, "header must be 64-byte aligned");
    }

    #[test]
    fn journal_drops_a_line_cut_short_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        {
            let j: Journal<String> = Journal::open(&path).unwrap();
            j.append("a", &"one".to_string()).unwrap();
            j.append("b", &"two".to_string()).unwrap();
        }
        // A kill in the middle of the third append.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"key\":\"c\",\"val").unwrap();
        drop(f);
        let j: Journal<String> = Journal::open(&path).unwrap();
        assert_eq!(j.len(), 2);
        assert_eq!(j.get("b").as_deref(), Some("two"));
        j.append("c", &"three".to_string()).unwrap();
        drop(j);
        let j: Journal<String> = Journal::open(&path).unwrap();
        assert_eq!(j.get("c").as_deref(), Some("three"));
        assert_eq!(j.len(), 3);
    }

    #[test]
    fn atomic_write_leaves_no_temp_file_and_replaces_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        write_jsonl(&path, &[1, 2, 3]).unwrap();
        write_jsonl(&path, &[4]).unwrap();
        assert_eq!(read_jsonl::<i32>(&path).unwrap(), vec![4]);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn read_jsonl_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jsonl");
        fs::write(&path, "1\n2\nthree\n").unwrap();
        let err = read_jsonl::<i32>(&path).unwrap_err().to_string();
        assert!(err.contains("bad.jsonl") && err.contains("line 3"), "{err}");
    }

    #[test]
    fn fingerprint_separates_parts() {
        assert_ne!(fingerprint(&["ab", "c"]), fingerprint(&["a", "bc"]));
        assert_eq!(fingerprint(&["x"]), fingerprint(&["x"]));
    }
}
