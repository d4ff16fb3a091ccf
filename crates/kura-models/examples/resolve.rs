//! Resolves models into the cache (as `kura models pull` does), e.g. to prepare a
//! machine for the test suite: `cargo run --release -p kura-models --example resolve -- NAME...`
//! With no names, resolves every model of the manifest.

use std::process::ExitCode;

fn main() -> ExitCode {
    let names: Vec<String> = std::env::args().skip(1).collect();
    let names = if names.is_empty() {
        match kura_models::manifest() {
            Ok(models) => models.iter().map(|m| m.name.clone()).collect(),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        names
    };
    let resolver = kura_models::Resolver::from_env().with_progress(std::sync::Arc::new(Printer));
    let mut failed = false;
    for name in &names {
        match resolver.resolve(name) {
            Ok(model) => println!(
                "{}@{} {}",
                model.name,
                model.fingerprint,
                model.dir.display()
            ),
            Err(e) => {
                eprintln!("{name}: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

struct Printer;

impl kura_models::DownloadProgress for Printer {
    fn start(&self, what: &str, total_bytes: Option<u64>) {
        match total_bytes {
            Some(total) => eprintln!("  {what} ({total} bytes)"),
            None => eprintln!("  {what}"),
        }
    }
    fn advance(&self, _bytes: u64) {}
    fn finish(&self, _what: &str) {}
    fn message(&self, text: &str) {
        eprintln!("{text}");
    }
}
