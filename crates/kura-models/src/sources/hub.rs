//! The Hugging Face hub, through hf-hub's blocking client.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Repo, RepoType};

use crate::manifest::ModelSpec;
use crate::progress::DownloadProgress;

pub(crate) struct Hub {
    repo: ApiRepo,
    progress: Arc<dyn DownloadProgress>,
}

impl Hub {
    /// A client whose own cache lives in the staging directory, so that the hub's
    /// files are moved into our cache rather than kept twice.
    pub(crate) fn new(
        spec: &ModelSpec,
        staging: &Path,
        progress: Arc<dyn DownloadProgress>,
    ) -> Result<Self, String> {
        let mut builder = ApiBuilder::new()
            .with_cache_dir(staging.join("hf"))
            .with_progress(false)
            .with_retries(0)
            .with_token(std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()));
        if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
            builder = builder.with_endpoint(endpoint);
        }
        let api = builder.build().map_err(|e| e.to_string())?;
        let repo = Repo::with_revision(
            spec.hf_repo.clone(),
            RepoType::Model,
            spec.hf_revision.clone(),
        );
        Ok(Hub {
            repo: api.repo(repo),
            progress,
        })
    }

    /// Downloads `file` and returns the path of its bytes (not hf-hub's symlink).
    pub(crate) fn download(&self, file: &str) -> Result<PathBuf, String> {
        let reporter = HubProgress {
            inner: self.progress.clone(),
            what: file.to_string(),
        };
        let pointer = self
            .repo
            .download_with_progress(file, reporter)
            .map_err(|e| format!("{file}: {e}"))?;
        std::fs::canonicalize(&pointer).map_err(|e| format!("{}: {e}", pointer.display()))
    }
}

struct HubProgress {
    inner: Arc<dyn DownloadProgress>,
    what: String,
}

impl hf_hub::api::Progress for HubProgress {
    fn init(&mut self, size: usize, _filename: &str) {
        self.inner.start(&self.what, Some(size as u64));
    }
    fn update(&mut self, size: usize) {
        self.inner.advance(size as u64);
    }
    fn finish(&mut self) {
        self.inner.finish(&self.what);
    }
}
