//! `kura serve`: the web explorer. A small HTTP server that opens one run
//! directory (ours or a Python Kura checkpoint) and serves the page, whose
//! assets are compiled into the binary, and a read-only JSON API over the run.

mod api;
mod assets;

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Result};
use clap::Args;
use kura_core::explore::RunView;
use tiny_http::{Header, Request, Server};

use crate::config::Config;
use crate::progress::Mode;
use crate::semantic::Semantic;

pub use api::Explorer;

/// Requests answered at once; semantic searches hold a worker while they embed.
const WORKERS: usize = 4;

/// What every response carries: the page may load only its own scripts and
/// styles and talk only to this server, so even text that slipped into markup
/// could not run or call out.
const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
    ("X-Frame-Options", "DENY"),
];

#[derive(Args)]
pub struct ServeArgs {
    /// A run directory (ours or a Python Kura checkpoint directory).
    dir: PathBuf,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Address to listen on. Anything but loopback exposes the conversations to
    /// the network.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Configuration file (for the default embedder).
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let started = Instant::now();
    let view = RunView::open(&args.dir)?;
    let semantic = Semantic::new(&view, &Config::load(args.config.as_deref())?, Mode::Quiet)?;
    let explorer = Arc::new(Explorer::new(view, semantic));
    let server = Server::http((args.host, args.port))
        .map_err(|e| anyhow!("cannot listen on {}:{}: {e}", args.host, args.port))?;
    let address = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| anyhow!("the server has no IP address"))?;
    let loopback = args.host.is_loopback();
    println!(
        "serving {} ({} conversations, opened in {:.1} s) at http://{address}/",
        args.dir.display(),
        explorer.view().conversations.len(),
        started.elapsed().as_secs_f64()
    );
    std::io::stdout().flush()?;
    let server = Arc::new(server);
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let server = server.clone();
            let explorer = explorer.clone();
            std::thread::spawn(move || {
                for request in server.incoming_requests() {
                    respond(&explorer, request, loopback);
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    Ok(())
}

fn respond(explorer: &Explorer, request: Request, loopback: bool) {
    let method = request.method().as_str().to_string();
    let response = if loopback && !local_host(&request) {
        // A page on another site that resolves its own name to 127.0.0.1 must
        // not read the conversations (DNS rebinding).
        api::Response {
            status: 403,
            content_type: "text/plain; charset=utf-8",
            body: b"forbidden host".to_vec(),
        }
    } else {
        explorer.handle(&method, request.url())
    };
    // For HEAD, tiny_http sends the headers (the body's length included) and leaves
    // the body out itself.
    let mut reply = tiny_http::Response::from_data(response.body).with_status_code(response.status);
    for (name, value) in
        std::iter::once(("Content-Type", response.content_type)).chain(SECURITY_HEADERS)
    {
        if let Ok(header) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            reply.add_header(header);
        }
    }
    if let Err(e) = request.respond(reply) {
        tracing::debug!("client went away: {e}");
    }
}

/// Whether the Host header names this machine.
fn local_host(request: &Request) -> bool {
    let host = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Host"))
        .map(|h| h.value.as_str().to_ascii_lowercase());
    let Some(host) = host else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
