//! A cache of embeddings for `kura eval`: embedding a labelled set of ten thousand
//! texts takes minutes on a laptop, while clustering it takes seconds, so tuning the
//! clusterer would otherwise be dominated by re-embedding the same texts.

use std::path::{Path, PathBuf};

use anyhow::Result;
use kura_core::{store, Matrix};

/// The key of one set of embeddings: the embedder (model and checksum) and every
/// text in order. Any change to either misses the cache.
pub fn key(embedder_id: &str, texts: &[String]) -> String {
    let mut parts: Vec<&[u8]> = vec![b"kura-eval-embeddings-v1", embedder_id.as_bytes()];
    parts.extend(texts.iter().map(|t| t.as_bytes()));
    store::fingerprint(&parts)
}

/// The file a cache entry lives in: `file` when the user named one, else one file
/// per key under `dir`.
pub fn path(file: Option<&Path>, dir: &Path, key: &str) -> PathBuf {
    file.map_or_else(|| dir.join(format!("{key}.npy")), Path::to_path_buf)
}

/// The key is written beside the matrix, so a named cache file that was made from
/// other texts or another model is recomputed rather than silently reused.
fn key_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".key");
    PathBuf::from(name)
}

/// The cached matrix at `path` if it was made under `key` with `rows` rows.
pub fn load(path: &Path, key: &str, rows: usize) -> Option<Matrix> {
    let stored = std::fs::read_to_string(key_path(path)).ok()?;
    if stored.trim() != key {
        return None;
    }
    store::read_npy(path).ok().filter(|m| m.rows() == rows)
}

/// Stores `matrix` under `key`, each file written atomically; the key goes last, so
/// an interrupted save is a miss, never a wrong hit.
pub fn save(path: &Path, key: &str, matrix: &Matrix) -> Result<()> {
    let key_file = key_path(path);
    if key_file.exists() {
        std::fs::remove_file(&key_file)?;
    }
    store::write_npy(path, matrix)?;
    store::write_atomic(&key_file, |w| w.write_all(key.as_bytes()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hit_needs_the_same_key_and_row_count() {
        let dir = tempfile::tempdir().unwrap();
        let texts = vec!["a".to_string(), "b".to_string()];
        let k = key("model@1", &texts);
        assert_ne!(k, key("model@2", &texts));
        assert_ne!(k, key("model@1", &texts[..1]));
        let file = path(None, dir.path(), &k);
        assert!(load(&file, &k, 2).is_none());
        let m = Matrix::new(2, 3, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        save(&file, &k, &m).unwrap();
        assert_eq!(load(&file, &k, 2), Some(m.clone()));
        assert!(load(&file, &k, 3).is_none());
        assert!(load(&file, &key("model@2", &texts), 2).is_none());
        let named = dir.path().join("mine.npy");
        assert_eq!(path(Some(&named), dir.path(), &k), named);
    }
}
