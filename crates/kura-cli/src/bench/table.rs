//! The `kura bench` table: each figure beside the reference stack's on the same
//! machine, and the ratio (above 1 means faster than the reference).

use std::fmt::Write;

use super::{Figure, Report};

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let m = &report.machine;
    let _ = writeln!(
        out,
        "kura bench: {} ({} threads; references of {}), load average {} at start, {}{}",
        m.cpu,
        m.threads,
        m.kind,
        m.load_average,
        report.data,
        if report.quick { ", quick" } else { "" }
    );
    let _ = writeln!(
        out,
        "products: embedder {}; LLM {}",
        report.products.embedder, report.products.llm
    );
    let _ = writeln!(
        out,
        "{:<58} {:>10} {:>10} {:>7}  reference",
        "measure", "ours", "reference", "ratio"
    );
    for figure in &report.figures {
        let _ = writeln!(out, "{}", row(figure));
    }
    for model in &report.memory {
        let _ = writeln!(
            out,
            "peak memory with {}: {:.0} MiB",
            model.model, model.peak_rss_mib
        );
    }
    out
}

pub(super) fn row(figure: &Figure) -> String {
    let (reference, ratio, source) = match &figure.reference {
        Some(r) => (
            format!("{:.1}", r.value),
            format!("{:.2}", figure.value / r.value),
            r.source.as_str(),
        ),
        None => ("-".to_string(), "-".to_string(), ""),
    };
    format!(
        "{:<58} {:>10.2} {:>10} {:>7}  {}",
        format!("{} ({})", figure.name, figure.unit),
        figure.value,
        reference,
        ratio,
        source
    )
}
