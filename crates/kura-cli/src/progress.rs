//! How the `kura` binary reports progress: bars with rate and ETA for people,
//! one JSON object per line for scripts (`--json`), or nothing (`--quiet`).

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kura_core::pipeline::Progress;
use kura_core::text::terminal_safe;
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bars,
    Json,
    Quiet,
}

pub struct Reporter {
    mode: Mode,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    bar: Option<ProgressBar>,
    stage: String,
    done: u64,
    total: u64,
    last_event: Option<Instant>,
}

impl Reporter {
    pub fn new(mode: Mode) -> Self {
        Reporter {
            mode,
            state: Mutex::new(State::default()),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A line for people (stderr), silent in `--json` and `--quiet` modes.
    pub fn say(&self, text: &str) {
        if self.mode == Mode::Bars {
            let line = terminal_safe(text);
            match self.state.lock().ok().and_then(|s| s.bar.clone()) {
                Some(bar) => bar.println(line),
                None => eprintln!("{line}"),
            }
        }
    }

    /// One machine-readable event (stdout), only in `--json` mode.
    pub fn event(&self, value: serde_json::Value) {
        if self.mode == Mode::Json {
            let mut out = std::io::stdout().lock();
            let _ = serde_json::to_writer(&mut out, &value);
            let _ = out.write_all(b"\n");
            let _ = out.flush();
        }
    }
}

impl Progress for Reporter {
    fn begin(&self, stage: &str, total: u64) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if let Some(bar) = state.bar.take() {
            bar.finish_and_clear();
        }
        state.stage = stage.to_string();
        state.done = 0;
        state.total = total;
        state.last_event = None;
        match self.mode {
            Mode::Bars => {
                let bar = if total == 0 {
                    let bar = ProgressBar::new_spinner();
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bar.set_style(
                        ProgressStyle::with_template("{prefix:>12.cyan} {spinner} {elapsed}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar
                } else {
                    let bar = ProgressBar::new(total);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{prefix:>12.cyan} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    bar
                };
                bar.set_draw_target(ProgressDrawTarget::stderr());
                bar.set_prefix(stage.to_string());
                state.bar = Some(bar);
            }
            Mode::Json => {
                self.event(json!({"event": "stage_begin", "stage": stage, "total": total}))
            }
            Mode::Quiet => {}
        }
    }

    fn advance(&self, n: u64) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.done += n;
        if let Some(bar) = &state.bar {
            bar.inc(n);
        }
        // Scripts get at most a few events a second, and always the last one.
        let due = state
            .last_event
            .is_none_or(|t| t.elapsed() > Duration::from_millis(500));
        if self.mode == Mode::Json && (due || state.done == state.total) {
            state.last_event = Some(Instant::now());
            self.event(json!({"event": "progress", "stage": state.stage, "done": state.done, "total": state.total}));
        }
    }

    fn end(&self, stage: &str, message: &str) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if let Some(bar) = state.bar.take() {
            bar.finish_and_clear();
        }
        match self.mode {
            Mode::Bars => eprintln!("{:>12} {}", stage, terminal_safe(message)),
            Mode::Json => {
                self.event(json!({"event": "stage_end", "stage": stage, "message": message}))
            }
            Mode::Quiet => {}
        }
    }

    fn warn(&self, message: &str) {
        match self.mode {
            Mode::Json => self.event(json!({"event": "warning", "message": message})),
            _ => self.say(&format!("warning: {message}")),
        }
    }
}

/// Download progress for model files, drawn the same way.
pub struct DownloadBars {
    reporter: std::sync::Arc<Reporter>,
    bar: Mutex<Option<ProgressBar>>,
}

impl DownloadBars {
    pub fn new(reporter: std::sync::Arc<Reporter>) -> Self {
        DownloadBars {
            reporter,
            bar: Mutex::new(None),
        }
    }
}

impl kura_models::DownloadProgress for DownloadBars {
    fn start(&self, what: &str, total_bytes: Option<u64>) {
        if self.reporter.mode() != Mode::Bars {
            self.reporter
                .event(json!({"event": "download_begin", "file": what, "bytes": total_bytes}));
            return;
        }
        let bar = match total_bytes {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new_spinner(),
        };
        bar.set_style(
            ProgressStyle::with_template("{prefix:>12.cyan} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix("download");
        bar.set_message(terminal_safe(what));
        if let Ok(mut slot) = self.bar.lock() {
            *slot = Some(bar);
        }
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = self.bar.lock().ok().and_then(|b| b.clone()) {
            bar.inc(bytes);
        }
    }

    fn finish(&self, what: &str) {
        if let Some(bar) = self.bar.lock().ok().and_then(|mut b| b.take()) {
            bar.finish_and_clear();
        }
        self.reporter.say(&format!("{:>12} {what}", "fetched"));
        self.reporter
            .event(json!({"event": "download_end", "file": what}));
    }

    fn message(&self, text: &str) {
        self.reporter.say(&format!("{:>12} {text}", "models"));
        self.reporter
            .event(json!({"event": "models", "message": text}));
    }
}
