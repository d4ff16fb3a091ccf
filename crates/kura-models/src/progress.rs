//! Progress reporting, as a trait so the CLI can draw bars while libraries and
//! tests stay quiet.

/// Receives progress of downloads and verification.
pub trait DownloadProgress: Send + Sync {
    /// A transfer of `what` begins; `total_bytes` when known.
    fn start(&self, what: &str, total_bytes: Option<u64>);
    fn advance(&self, bytes: u64);
    fn finish(&self, what: &str);
    /// A line for the user ("trying the Hugging Face hub", ...).
    fn message(&self, text: &str);
}

/// Reports nothing but log lines.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogProgress;

impl DownloadProgress for LogProgress {
    fn start(&self, what: &str, total_bytes: Option<u64>) {
        tracing::debug!(what, ?total_bytes, "transfer started");
    }
    fn advance(&self, _bytes: u64) {}
    fn finish(&self, what: &str) {
        tracing::debug!(what, "transfer finished");
    }
    fn message(&self, text: &str) {
        tracing::info!("{text}");
    }
}
