//! Embedding many texts outside a run, and a cache of the result: `kura eval`
//! re-clusters the same labelled set many times, and semantic search over a run
//! without embeddings (a Python Kura checkpoint) would otherwise embed every summary
//! on every search. Embedding ten thousand texts takes minutes on a laptop.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use kura_core::pipeline::Progress;
use kura_core::{store, Embedder, Matrix};

/// How many texts go to the embedder at once (it batches further inside).
const CHUNK: usize = 256;

/// The embeddings of `texts` from the cache at `path` when they were made under
/// `key`, else embedded and saved there (a failed save is a warning). Returns whether they came from the cache.
pub fn load_or_embed(
    embedder: &dyn Embedder,
    texts: &[&str],
    path: &Path,
    key: &str,
    progress: &dyn Progress,
) -> Result<(Matrix, bool)> {
    if let Some(matrix) = load(path, key, texts.len()) {
        return Ok((matrix, true));
    }
    let matrix = embed_all(embedder, texts, progress)?;
    // The cache only saves time: a place that cannot be written costs the next
    // run the embedding again, not this run its result.
    if let Err(e) = save(path, key, &matrix) {
        progress.warn(&format!(
            "cannot write the embeddings cache {}: {e:#}",
            path.display()
        ));
    }
    Ok((matrix, false))
}

/// Embeds `texts` in chunks, in order, reporting progress as "embeddings".
pub fn embed_all(
    embedder: &dyn Embedder,
    texts: &[&str],
    progress: &dyn Progress,
) -> Result<Matrix> {
    progress.begin("embeddings", texts.len() as u64);
    let mut data = Vec::with_capacity(texts.len() * embedder.dim());
    for chunk in texts.chunks(CHUNK) {
        let rows = embedder
            .embed(chunk)
            .map_err(|e| anyhow::anyhow!("embedding failed: {e}"))?;
        if rows.rows() != chunk.len() {
            bail!(
                "the embedder returned {} rows for {} texts",
                rows.rows(),
                chunk.len()
            );
        }
        data.extend_from_slice(rows.as_slice());
        progress.advance(chunk.len() as u64);
    }
    let cols = data.len().checked_div(texts.len()).unwrap_or(0);
    let matrix = Matrix::new(texts.len(), cols, data);
    progress.end(
        "embeddings",
        &format!("{} × {}", matrix.rows(), matrix.cols()),
    );
    Ok(matrix)
}

/// The key of one set of embeddings: the embedder (model and checksum) and every
/// text in order. Any change to either misses the cache.
pub fn key(embedder_id: &str, texts: &[&str]) -> String {
    let mut parts: Vec<&[u8]> = vec![b"kura-embeddings-v1", embedder_id.as_bytes()];
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
fn load(path: &Path, key: &str, rows: usize) -> Option<Matrix> {
    let stored = std::fs::read_to_string(key_path(path)).ok()?;
    if stored.trim() != key {
        return None;
    }
    store::read_npy(path).ok().filter(|m| m.rows() == rows)
}

/// Stores `matrix` under `key`, each file written atomically; the key goes last, so
/// an interrupted save is a miss, never a wrong hit.
fn save(path: &Path, key: &str, matrix: &Matrix) -> Result<()> {
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
        let texts = ["a", "b"];
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
