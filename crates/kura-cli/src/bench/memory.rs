//! Peak memory of this process, from Linux's `/proc/self/status`. The peak can be
//! reset (`/proc/self/clear_refs`), so each model's phase of `kura bench` reports
//! its own peak rather than the whole run's.

/// The peak resident set size (`VmHWM`) in MiB, if the system reports it.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Starts a new peak from the current resident size; false where that is not possible.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
