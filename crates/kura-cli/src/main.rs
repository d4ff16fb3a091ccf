//! `kura`: what your users talk to their AI assistant about, computed on your own
//! machine. Reads chat logs, summarises each conversation with a local LLM, embeds
//! the summaries, clusters and names them, builds a hierarchy and a 2-D map, and
//! writes it all to a run directory in Python Kura's file formats.

/// Candle allocates a fresh buffer for every intermediate tensor, many of them
/// larger than the system allocator's mmap threshold, so with glibc's malloc a
/// third of an encoder pass went to the kernel mapping and zeroing pages.
/// mimalloc keeps freed pages for reuse.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod backends;
mod bench;
mod config;
mod embed;
mod embedding_cache;
mod eval;
mod export;
mod progress;
mod records;
mod search;
mod semantic;
mod serve;
mod tree;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use kura_core::loaders::{self, FieldMapping, Format, LoadOptions};
use kura_core::pipeline::{Progress, Run, StageOutcome, META_CLUSTERS};
use kura_core::{store, Cluster, Outliers};
use serde_json::json;

use crate::config::{ClustererKind, Config, Device, MapKind};
use crate::progress::{Mode, Reporter};

#[derive(Parser)]
#[command(name = "kura", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline on chat logs: summaries, embeddings, clusters,
    /// hierarchy and map. Run it again with the same command to resume.
    Run(RunArgs),
    /// Run one stage of the pipeline on a run directory (the stages before it
    /// must be done). Useful to re-run one step after changing its settings.
    Stage(StageArgs),
    /// Print the cluster hierarchy of a run directory (ours or Python Kura's).
    Tree(TreeArgs),
    /// Cluster a labelled data set and score the clusters against its labels
    /// (V-measure, NMI, ARI), beside published reference figures.
    Eval(eval::EvalArgs),
    /// Explore a run directory (ours or Python Kura's) in the browser: the
    /// hierarchy, a map of every conversation, facets and search.
    Serve(serve::ServeArgs),
    /// Find the conversations or clusters of a run that match a query.
    Search(search::SearchArgs),
    /// Write one row per conversation (cluster path, facets, map coordinates,
    /// metadata) as CSV, JSON or Parquet.
    Export(export::ExportArgs),
    /// Embed every line of a text file (or one field of every JSON Lines record)
    /// into a float32 .npy, one row per text in input order.
    Embed(EmbedArgs),
    /// Measure the configured models on this machine (embedding, prompt and
    /// decoding speed, conversations per second) beside reference figures.
    Bench(BenchArgs),
    /// List, download or verify the local models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

#[derive(Args)]
struct Common {
    /// Configuration file (default: ./kura.toml if present). Flags override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// LLM for summaries and names: a name from `kura models list` or a .gguf path.
    #[arg(long, global = true)]
    llm: Option<String>,
    /// Sentence encoder: a name from `kura models list` or a model directory.
    #[arg(long, global = true)]
    embedder: Option<String>,
    /// Where models run.
    #[arg(long, value_enum, global = true)]
    device: Option<Device>,
    /// Seed for clustering, the hierarchy and the map (same seed, same result).
    #[arg(long, global = true)]
    seed: Option<u64>,
    /// Base clustering: k-means (every conversation in a cluster) or HDBSCAN on a
    /// UMAP reduction (finds its own number of clusters; outliers are noise).
    #[arg(long, value_enum, global = true)]
    clusterer: Option<ClustererKind>,
    /// Number of base clusters for k-means (default: chosen from the number of
    /// conversations).
    #[arg(long, global = true)]
    clusters: Option<usize>,
    /// HDBSCAN's smallest cluster.
    #[arg(long, global = true)]
    min_cluster_size: Option<usize>,
    /// HDBSCAN's outliers: `keep` them together as one "Unclustered
    /// conversations" group outside the hierarchy (default), or `assign` each to
    /// its nearest cluster.
    #[arg(long, global = true, value_name = "keep|assign")]
    outliers: Option<Outliers>,
    /// The 2-D map: UMAP, or PCA (faster; keeps only the broadest structure).
    #[arg(long, value_enum, global = true)]
    map: Option<MapKind>,
    /// Target number of clusters at the top of the hierarchy.
    #[arg(long, global = true)]
    top_clusters: Option<usize>,
    /// Most levels above the base clusters (default: as many as needed).
    #[arg(long, global = true)]
    levels: Option<usize>,
    /// LLM context in tokens; longer conversations are cut to fit, keeping the
    /// opening request and the latest turns.
    #[arg(long, global = true)]
    max_context: Option<usize>,
    /// Print nothing but errors.
    #[arg(long, short, global = true, conflicts_with = "json")]
    quiet: bool,
    /// Print machine-readable progress and results, one JSON object per line.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Args)]
struct InputArgs {
    /// Chat logs: Kura JSON Lines or JSON, Claude or ChatGPT exports, or any JSON
    /// Lines with --messages-field / --text-field. `.gz` files are read directly.
    #[arg(required = true)]
    input: Vec<PathBuf>,
    /// Input format (default: detected from the content).
    #[arg(long, default_value = "auto")]
    format: String,
    /// Keep going past invalid records; they are listed in DIR/skipped.jsonl.
    #[arg(long)]
    skip_invalid: bool,
    /// Only the first N conversations.
    #[arg(long)]
    limit: Option<usize>,
    /// Generic JSON Lines: the field with the conversation id.
    #[arg(long)]
    id_field: Option<String>,
    /// Generic JSON Lines: the field with the list of messages.
    #[arg(long)]
    messages_field: Option<String>,
    /// Generic JSON Lines: the role field inside each message.
    #[arg(long, default_value = "role")]
    role_field: String,
    /// Generic JSON Lines: the text field inside each message.
    #[arg(long, default_value = "content")]
    content_field: String,
    /// Generic JSON Lines: a single text field per row (query logs).
    #[arg(long)]
    text_field: Option<String>,
    /// Generic JSON Lines: the timestamp field.
    #[arg(long)]
    created_at_field: Option<String>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    input: InputArgs,
    /// The run directory.
    #[arg(long, short)]
    out: PathBuf,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct StageArgs {
    /// The stage to run.
    #[arg(value_enum)]
    stage: StageName,
    /// The run directory.
    #[arg(long, short)]
    out: PathBuf,
    /// Input files (only for the `conversations` stage).
    input: Vec<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(Clone, Copy, ValueEnum)]
enum StageName {
    Summaries,
    Embeddings,
    Clusters,
    Hierarchy,
    Map,
}

#[derive(Args)]
struct EmbedArgs {
    /// A text file (one text per line) or JSON Lines with --field.
    input: PathBuf,
    /// Embed this string field of every JSON Lines record instead of whole lines.
    #[arg(long)]
    field: Option<String>,
    /// The .npy file to write (float32, one row per text).
    #[arg(long, short)]
    out: PathBuf,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct BenchArgs {
    /// Also write the figures to this JSON file, to compare runs.
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Fewer texts and tokens: a quick check that every measurement works.
    #[arg(long)]
    quick: bool,
    /// Real texts and conversations to measure on.
    #[arg(long, default_value = "../shared/data")]
    data: PathBuf,
    /// Conversations through the summariser (default 32, 2 with --quick). It writes
    /// 32 at once, so 32 is one batch with the end thinning out; more measure the
    /// rate of a long run, where a finished conversation's place is taken at once.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    conversations: Option<u64>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct TreeArgs {
    /// A run directory (ours or a Python Kura checkpoint directory).
    dir: PathBuf,
    /// Show at most this many levels.
    #[arg(long)]
    depth: Option<usize>,
    /// Also show each cluster's description.
    #[arg(long)]
    descriptions: bool,
    /// Print the clusters as JSON Lines instead.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// The models Kura knows, and whether each is in the local cache.
    List,
    /// Download models into the local cache (default: the configured ones).
    Pull { names: Vec<String> },
    /// Re-check the checksums of cached models.
    Verify { names: Vec<String> },
}

fn main() -> ExitCode {
    quiet_library_backtraces();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KURA_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "error: {}",
                kura_core::text::terminal_safe(&format!("{e:#}"))
            );
            ExitCode::FAILURE
        }
    }
}

/// With `RUST_BACKTRACE` set, candle's errors capture a backtrace and print it in
/// their message: dozens of frames inside what we print as one line, burying which
/// file was wrong. Errors follow `RUST_LIB_BACKTRACE` before `RUST_BACKTRACE`, and
/// panics only the latter, so this leaves panics' backtraces as asked and drops the
/// errors' (set `RUST_LIB_BACKTRACE=1` to keep them). Runs first, before any thread.
fn quiet_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => run(args),
        Command::Stage(args) => stage(args),
        Command::Tree(args) => print_tree(args),
        Command::Eval(args) => {
            let reporter = reporter(&args.common);
            eval::eval(args, reporter)
        }
        Command::Serve(args) => serve::run(args),
        Command::Search(args) => search::run(args),
        Command::Export(args) => export::run(args),
        Command::Embed(args) => embed(args),
        Command::Bench(args) => bench(args),
        Command::Models { command } => models(command),
    }
}

fn reporter(common: &Common) -> Arc<Reporter> {
    let mode = if common.json {
        Mode::Json
    } else if common.quiet {
        Mode::Quiet
    } else {
        Mode::Bars
    };
    Arc::new(Reporter::new(mode))
}

fn config(common: &Common) -> Result<Config> {
    let mut c = Config::load(common.config.as_deref())?;
    if let Some(v) = &common.llm {
        c.llm = v.clone();
    }
    if let Some(v) = &common.embedder {
        c.embedder = v.clone();
    }
    c.device = common.device.unwrap_or(c.device);
    c.clusterer = common.clusterer.unwrap_or(c.clusterer);
    c.map = common.map.unwrap_or(c.map);
    c.clusters = common.clusters.unwrap_or(c.clusters);
    c.min_cluster_size = common.min_cluster_size.unwrap_or(c.min_cluster_size);
    c.outliers = common.outliers.unwrap_or(c.outliers);
    c.top_clusters = common.top_clusters.unwrap_or(c.top_clusters);
    c.levels = common.levels.unwrap_or(c.levels);
    c.max_context = common.max_context.unwrap_or(c.max_context);
    if c.top_clusters == 0 {
        bail!("--top-clusters must be at least 1");
    }
    Ok(c)
}

fn load_input(args: &InputArgs) -> Result<loaders::Loaded> {
    let format: Format = args
        .format
        .parse()
        .map_err(|e| anyhow::anyhow!("--format: {e}"))?;
    let mapping = FieldMapping {
        id: args.id_field.clone(),
        messages: args.messages_field.clone(),
        role: args.role_field.clone(),
        content: args.content_field.clone(),
        text: args.text_field.clone(),
        created_at: args.created_at_field.clone(),
    };
    let options = LoadOptions {
        format,
        mapping,
        skip_invalid: args.skip_invalid,
    };
    let mut loaded = loaders::load_files(&args.input, &options)?;
    if let Some(limit) = args.limit {
        loaded.conversations.truncate(limit);
    }
    Ok(loaded)
}

fn run(args: RunArgs) -> Result<()> {
    let reporter = reporter(&args.common);
    let config = config(&args.common)?;
    let loaded = load_input(&args.input)?;
    if !loaded.skipped.is_empty() {
        reporter.warn(&format!(
            "skipped {} input records (see {})",
            loaded.skipped.len(),
            args.out.join(kura_core::pipeline::SKIPPED).display()
        ));
    }
    let run = Run::open(&args.out, config.seed, reporter.clone())?;
    let mut outcomes =
        vec![run.set_conversations(&args.input.input, &loaded.conversations, &loaded.skipped)?];

    let backends = backends::Backends::new(&config, reporter.clone())?;
    run.set_config(serde_json::to_value(&config)?, backends.models_record())?;
    outcomes.push(run.summarize(backends.summarizer()?.as_ref())?);
    outcomes.push(run.embed(backends.embedder()?.as_ref())?);
    let namer = backends.namer()?;
    outcomes.push(run.cluster(
        backends.clusterer().as_ref(),
        namer.as_ref(),
        config.outliers,
    )?);
    outcomes.push(run.build_hierarchy(
        backends.hierarchy().as_ref(),
        namer.as_ref(),
        backends.embedder()?.as_ref(),
    )?);
    outcomes.push(run.project(backends.reducer().as_ref())?);
    run.set_config(serde_json::to_value(&config)?, backends.models_record())?;
    finish(&run, &reporter, &outcomes)
}

fn stage(args: StageArgs) -> Result<()> {
    let reporter = reporter(&args.common);
    let config = config(&args.common)?;
    if !args.input.is_empty() {
        bail!(
            "input files are read by `kura run`; `kura stage` works on an existing run directory"
        );
    }
    if !args.out.join(kura_core::pipeline::RUN_JSON).exists() {
        bail!(
            "{} is not a run directory (no run.json): start it with `kura run`",
            args.out.display()
        );
    }
    let run = Run::open(&args.out, config.seed, reporter.clone())?;
    let backends = backends::Backends::new(&config, reporter.clone())?;
    let outcome = match args.stage {
        StageName::Summaries => run.summarize(backends.summarizer()?.as_ref())?,
        StageName::Embeddings => run.embed(backends.embedder()?.as_ref())?,
        StageName::Clusters => run.cluster(
            backends.clusterer().as_ref(),
            backends.namer()?.as_ref(),
            config.outliers,
        )?,
        StageName::Hierarchy => run.build_hierarchy(
            backends.hierarchy().as_ref(),
            backends.namer()?.as_ref(),
            backends.embedder()?.as_ref(),
        )?,
        StageName::Map => run.project(backends.reducer().as_ref())?,
    };
    finish(&run, &reporter, &[outcome])
}

/// Reports the outcomes and prints the tree, if the hierarchy was built from the
/// clusters the run holds now; otherwise says how to bring it up to date.
fn finish(run: &Run, reporter: &Reporter, outcomes: &[StageOutcome]) -> Result<()> {
    let manifest = run.manifest();
    reporter.event(json!({
        "event": "result",
        "out": run.dir().display().to_string(),
        "stages": outcomes.iter().map(|o| json!({"stage": o.stage, "reused": o.reused, "count": o.count, "failed": o.failed})).collect::<Vec<_>>(),
        "run": manifest,
    }));
    if reporter.mode() == Mode::Bars {
        let meta = run.path(META_CLUSTERS);
        if run.is_current("hierarchy") {
            let clusters: Vec<Cluster> = store::read_jsonl(&meta)?;
            print!("{}", tree::render(&clusters, None, false)?);
        } else if meta.exists() {
            reporter.say(&format!(
                "the hierarchy predates the stages before it, so it is not shown; \
                 bring it up to date with `kura stage hierarchy --out {0}`, then \
                 `kura stage map --out {0}`",
                run.dir().display()
            ));
        }
        eprintln!("results in {}", run.dir().display());
    }
    let failed: usize = outcomes.iter().map(|o| o.failed).sum();
    if failed > 0 {
        reporter.warn(&format!(
            "{failed} conversations failed; reasons in {}",
            run.path(kura_core::pipeline::FAILED).display()
        ));
    }
    Ok(())
}

fn embed(args: EmbedArgs) -> Result<()> {
    let reporter = reporter(&args.common);
    let config = config(&args.common)?;
    let backends = backends::Backends::new(&config, reporter.clone())?;
    let embedder = backends.embedder()?;
    let done = embed::embed_file(
        embedder.as_ref(),
        &args.input,
        args.field.as_deref(),
        &args.out,
    )?;
    reporter.say(&format!(
        "embedded {} texts ({} dimensions) in {:.1} s ({:.0} texts/s) into {}",
        done.rows,
        done.dim,
        done.seconds,
        done.rows as f64 / done.seconds.max(1e-9),
        args.out.display()
    ));
    reporter.event(json!({"event": "result", "out": args.out.display().to_string(), "rows": done.rows, "dim": done.dim, "seconds": done.seconds}));
    Ok(())
}

fn bench(args: BenchArgs) -> Result<()> {
    let reporter = reporter(&args.common);
    let config = config(&args.common)?;
    let options = bench::Options {
        quick: args.quick,
        data: args.data,
        conversations: args.conversations.map(|n| n as usize),
    };
    let report = bench::run(&config, &options, &reporter)?;
    print!("{}", bench::table(&report));
    if let Some(out) = &args.out {
        store::write_json(out, &report)?;
        reporter.say(&format!("figures written to {}", out.display()));
    }
    Ok(())
}

/// Reads the hierarchy of our run directory or of a Python Kura checkpoint
/// directory: the full hierarchy if there is one, else the base clusters.
fn read_hierarchy(dir: &Path) -> Result<Vec<Cluster>> {
    for file in [META_CLUSTERS, kura_core::pipeline::CLUSTERS] {
        let path = dir.join(file);
        if path.exists() {
            return Ok(store::read_jsonl(&path)?);
        }
    }
    bail!(
        "{}: no meta_clusters.jsonl or clusters.jsonl (is this a run directory?)",
        dir.display()
    )
}

fn print_tree(args: TreeArgs) -> Result<()> {
    let clusters = read_hierarchy(&args.dir)?;
    if args.json {
        for c in &clusters {
            println!("{}", serde_json::to_string(c)?);
        }
        return Ok(());
    }
    print!(
        "{}",
        tree::render(&clusters, args.depth, args.descriptions)
            .with_context(|| args.dir.display().to_string())?
    );
    Ok(())
}

fn models(command: ModelsCommand) -> Result<()> {
    let reporter = Arc::new(Reporter::new(Mode::Bars));
    let resolver = backends::resolver(reporter);
    let config = Config::load(None)?;
    let defaults = || vec![config.llm.clone(), config.embedder.clone()];
    match command {
        ModelsCommand::List => {
            println!(
                "{:<30} {:<9} {:<8} {:<10} source",
                "name", "kind", "cached", "licence"
            );
            for m in kura_models::manifest()? {
                println!(
                    "{:<30} {:<9} {:<8} {:<10} hf:{}",
                    m.name,
                    m.kind,
                    if resolver.cached(&m.name) {
                        "yes"
                    } else {
                        "no"
                    },
                    m.licence,
                    m.hf_repo
                );
            }
        }
        ModelsCommand::Pull { names } => {
            let names = if names.is_empty() { defaults() } else { names };
            for name in names {
                let model = resolver.resolve(&name)?;
                println!("{} {}", model.name, model.dir.display());
            }
        }
        ModelsCommand::Verify { names } => {
            let names = if names.is_empty() { defaults() } else { names };
            for name in names {
                let model = resolver.verify(&name)?;
                println!("{} ok ({})", model.name, model.fingerprint);
            }
        }
    }
    Ok(())
}
