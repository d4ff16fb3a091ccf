//! `kura search`: the conversations (or clusters) of a run that best match a
//! query, by meaning or by keyword, for people and for scripts (`--json`).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use kura_core::explore::search::{self, Hit};
use kura_core::explore::RunView;
use kura_core::text::{terminal_safe, truncate_chars};
use serde_json::{json, Value};

use crate::config::Config;
use crate::progress::Mode;
use crate::semantic::Semantic;

#[derive(Args)]
pub struct SearchArgs {
    /// A run directory (ours or a Python Kura checkpoint directory).
    dir: PathBuf,
    /// What to look for.
    query: String,
    /// Rank clusters instead of conversations.
    #[arg(long)]
    clusters: bool,
    /// How many results.
    #[arg(long, default_value_t = 10)]
    limit: usize,
    /// By meaning (the query embedded by the run's embedder) or by keyword.
    #[arg(long, value_enum, default_value = "semantic")]
    mode: SearchMode,
    /// Only conversations whose FIELD has VALUE (e.g. `languages=english`,
    /// `metadata.model=gpt-4`). Not with `--clusters`: a cluster holds
    /// conversations with many values.
    #[arg(long, value_name = "FIELD=VALUE", conflicts_with = "clusters")]
    filter: Option<String>,
    /// Print one JSON object per result.
    #[arg(long)]
    json: bool,
    /// Configuration file (for the default embedder).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SearchMode {
    Semantic,
    Keyword,
}

impl SearchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SearchMode::Semantic => "semantic",
            SearchMode::Keyword => "keyword",
        }
    }
}

/// A `FIELD=VALUE` condition on conversations.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub field: String,
    pub value: String,
}

impl Filter {
    pub fn parse(text: &str) -> Result<Filter> {
        match text.split_once('=') {
            Some((field, value)) if !field.is_empty() => Ok(Filter {
                field: field.to_string(),
                value: value.to_string(),
            }),
            _ => anyhow::bail!("--filter must be FIELD=VALUE, not {text:?}"),
        }
    }

    pub fn keeps(&self, view: &RunView, conversation: usize) -> bool {
        view.has_value(conversation, &self.field, &self.value)
    }
}

pub fn run(args: SearchArgs) -> Result<()> {
    let view = RunView::open(&args.dir)?;
    let filter = args.filter.as_deref().map(Filter::parse).transpose()?;
    let keep = |i: usize| filter.as_ref().is_none_or(|f| f.keeps(&view, i));
    let semantic = Semantic::new(&view, &Config::load(args.config.as_deref())?, Mode::Quiet)?;
    let hits = match (args.mode, args.clusters) {
        (SearchMode::Keyword, false) => search::keyword(&view, &args.query, args.limit, keep),
        (SearchMode::Keyword, true) => search::keyword_clusters(&view, &args.query, args.limit),
        (SearchMode::Semantic, clusters) => {
            let (query, embeddings) = semantic.prepare(&view, &args.query)?;
            if clusters {
                search::semantic_clusters(&view, embeddings, &query, args.limit)
            } else {
                search::semantic(embeddings, &query, args.limit, keep)
            }
        }
    };
    for (rank, hit) in hits.iter().enumerate() {
        let record = if args.clusters {
            cluster_record(&view, hit)
        } else {
            conversation_record(&view, hit)
        };
        if args.json {
            println!(
                "{}",
                serde_json::to_string(
                    &json!({"rank": rank + 1, "mode": args.mode.as_str(), "result": record})
                )?
            );
        } else {
            println!("{}", render(rank + 1, hit.score, &record));
        }
    }
    if hits.is_empty() && !args.json {
        eprintln!("no results");
    }
    Ok(())
}

/// A conversation hit with what an analyst needs to judge it.
pub fn conversation_record(view: &RunView, hit: &Hit) -> Value {
    let i = hit.index;
    let path = view.conversation_path(i);
    json!({
        "index": i,
        "chat_id": view.conversations[i].chat_id,
        "score": hit.score,
        "summary": view.summaries[i].as_ref().map(|s| s.summary.as_str()),
        "cluster_path": path.iter().map(|&c| view.clusters[c].cluster.name.as_str()).collect::<Vec<_>>(),
        "cluster_ids": path.iter().map(|&c| view.clusters[c].cluster.id.as_str()).collect::<Vec<_>>(),
    })
}

pub fn cluster_record(view: &RunView, hit: &Hit) -> Value {
    let node = &view.clusters[hit.index];
    json!({
        "index": hit.index,
        "cluster_id": node.cluster.id,
        "score": hit.score,
        "name": node.cluster.name,
        "name_borrowed": node.cluster.name_borrowed,
        "description": node.cluster.description,
        "count": node.cluster.count,
        "level": node.depth,
        "cluster_path": view.cluster_path(hit.index).iter().map(|&c| view.clusters[c].cluster.name.as_str()).collect::<Vec<_>>(),
    })
}

/// One result for the terminal; every piece of run text is made terminal-safe.
fn render(rank: usize, score: f32, record: &Value) -> String {
    let text = |key: &str| terminal_safe(record[key].as_str().unwrap_or(""));
    let path: Vec<String> = record["cluster_path"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(terminal_safe)
        .collect();
    let (id, body) = match record.get("chat_id") {
        Some(_) => (text("chat_id"), text("summary")),
        None => (text("cluster_id"), text("description")),
    };
    format!(
        "{rank:>3}. {score:.3}  {id}\n     {}\n     {}",
        path.join(" > "),
        truncate_chars(&body, 200)
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::SearchArgs;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        args: SearchArgs,
    }

    /// A filter on conversations cannot narrow a ranking of clusters: asking for
    /// both is refused, not half-done.
    #[test]
    fn a_filter_is_refused_beside_clusters() {
        let both = [
            "search",
            "run",
            "q",
            "--clusters",
            "--filter",
            "languages=english",
        ];
        let error = Command::try_parse_from(both).err().expect("refused");
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
        let alone = ["search", "run", "q", "--filter", "languages=english"];
        assert!(Command::try_parse_from(alone).is_ok());
    }
}
