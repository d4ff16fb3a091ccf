//! `kura export`: one row per conversation (id, cluster path and which of its
//! names are borrowed from a member, facets, map coordinates, metadata) as CSV,
//! JSON or Parquet, for spreadsheets, notebooks and other tools. Every format is
//! written whole or not at all.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use kura_core::explore::RunView;
use kura_core::store::write_atomic;
use parquet::basic::{LogicalType, Repetition, Type as PhysicalType};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int32Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;
use serde_json::{Map, Value};

#[derive(Args)]
pub struct ExportArgs {
    /// A run directory (ours or a Python Kura checkpoint directory).
    dir: PathBuf,
    #[arg(long, value_enum)]
    format: ExportFormat,
    /// The file to write (default: standard output, except for Parquet).
    #[arg(long, short)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Csv,
    Json,
    Parquet,
}

/// One column of the export, all rows.
enum Column {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i32>>),
    Bool(Vec<Option<bool>>),
    Float(Vec<f64>),
}

struct Table {
    names: Vec<String>,
    columns: Vec<Column>,
    rows: usize,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let view = RunView::open(&args.dir)?;
    let bytes = match args.format {
        ExportFormat::Csv => csv_bytes(&table(&view))?,
        ExportFormat::Json => json_bytes(&view)?,
        ExportFormat::Parquet => parquet_bytes(&table(&view))?,
    };
    match (&args.out, args.format) {
        (Some(path), _) => write_file(path, &bytes),
        (None, ExportFormat::Parquet) => bail!("--format parquet needs --out FILE"),
        (None, _) => match std::io::stdout().lock().write_all(&bytes) {
            // A reader that stopped early (`| head`) is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other.context("cannot write to standard output"),
        },
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// The rows as a table with flat, typed columns: lists are joined, metadata keys
/// become `metadata.KEY` columns holding each value's JSON text.
fn table(view: &RunView) -> Table {
    let n = view.conversations.len();
    let summary = |f: &dyn Fn(&kura_core::ConversationSummary) -> Option<String>| {
        Column::Text(
            (0..n)
                .map(|i| view.summaries[i].as_ref().and_then(f))
                .collect(),
        )
    };
    // Each conversation's path from its root cluster, walked once for the six
    // columns that read it.
    let paths: Vec<Vec<usize>> = (0..n).map(|i| view.conversation_path(i)).collect();
    let path =
        |f: &dyn Fn(&[usize]) -> Option<String>| Column::Text(paths.iter().map(|p| f(p)).collect());
    // Whether a cluster's name is one of its members' summaries rather than a name
    // the namer wrote (see `Cluster::name_borrowed`), as the tree marks it.
    let borrowed = |f: &dyn Fn(&[usize]) -> Option<usize>| {
        Column::Bool(
            paths
                .iter()
                .map(|p| f(p).map(|c| view.clusters[c].cluster.name_borrowed))
                .collect(),
        )
    };
    let names_of = |p: &[usize]| -> Vec<String> {
        p.iter()
            .map(|&c| view.clusters[c].cluster.name.clone())
            .collect()
    };
    let mut names: Vec<String> = [
        "chat_id",
        "created_at",
        "cluster_path",
        "cluster_ids",
        "top_cluster",
        "base_cluster",
        "top_cluster_name_borrowed",
        "base_cluster_name_borrowed",
        "x",
        "y",
        "summary",
        "request",
        "task",
        "languages",
        "concerning_score",
        "user_frustration",
        "assistant_errors",
    ]
    .map(String::from)
    .to_vec();
    let mut columns = vec![
        Column::Text(
            view.conversations
                .iter()
                .map(|c| Some(c.chat_id.clone()))
                .collect(),
        ),
        Column::Text(
            view.conversations
                .iter()
                .map(|c| Some(c.created_at.clone()))
                .collect(),
        ),
        path(&|p| (!p.is_empty()).then(|| names_of(p).join(" > "))),
        path(&|p| {
            (!p.is_empty()).then(|| {
                p.iter()
                    .map(|&c| view.clusters[c].cluster.id.as_str())
                    .collect::<Vec<_>>()
                    .join(" > ")
            })
        }),
        path(&|p| p.first().map(|&c| view.clusters[c].cluster.name.clone())),
        path(&|p| p.last().map(|&c| view.clusters[c].cluster.name.clone())),
        borrowed(&|p| p.first().copied()),
        borrowed(&|p| p.last().copied()),
        Column::Float(view.points.iter().map(|p| p.x as f64).collect()),
        Column::Float(view.points.iter().map(|p| p.y as f64).collect()),
        summary(&|s| Some(s.summary.clone())),
        summary(&|s| s.request.clone()),
        summary(&|s| s.task.clone()),
        summary(&|s| s.languages.as_ref().map(|l| l.join(", "))),
        Column::Int(score(view, |s| s.concerning_score)),
        Column::Int(score(view, |s| s.user_frustration)),
        summary(&|s| s.assistant_errors.as_ref().map(|e| e.join("; "))),
    ];
    for field in view
        .fields()
        .into_iter()
        .filter(|f| f.starts_with("metadata."))
    {
        let key = &field["metadata.".len()..];
        columns.push(Column::Text(
            (0..n)
                .map(|i| view.metadata(i, key).map(metadata_text))
                .collect(),
        ));
        names.push(field);
    }
    Table {
        names,
        columns,
        rows: n,
    }
}

fn score(
    view: &RunView,
    f: impl Fn(&kura_core::ConversationSummary) -> Option<u8>,
) -> Vec<Option<i32>> {
    view.summaries
        .iter()
        .map(|s| s.as_ref().and_then(&f).map(i32::from))
        .collect()
}

/// A metadata value as a cell: strings as themselves, anything else as JSON.
fn metadata_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn csv_bytes(table: &Table) -> Result<Vec<u8>> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(&table.names)?;
    for row in 0..table.rows {
        let cells = table.columns.iter().map(|c| match c {
            Column::Text(v) => v[row].clone().unwrap_or_default(),
            Column::Int(v) => v[row].map(|x| x.to_string()).unwrap_or_default(),
            Column::Bool(v) => v[row].map(|x| x.to_string()).unwrap_or_default(),
            Column::Float(v) => v[row].to_string(),
        });
        writer.write_record(cells)?;
    }
    writer.into_inner().context("cannot finish the CSV")
}

/// JSON keeps the structure: cluster paths, languages and errors as arrays and
/// metadata as an object.
fn json_bytes(view: &RunView) -> Result<Vec<u8>> {
    let rows: Vec<Value> = (0..view.conversations.len())
        .map(|i| {
            let c = &view.conversations[i];
            let s = view.summaries[i].as_ref();
            let path = view.conversation_path(i);
            let mut row = Map::new();
            row.insert("chat_id".into(), c.chat_id.clone().into());
            row.insert("created_at".into(), c.created_at.clone().into());
            row.insert(
                "cluster_path".into(),
                path.iter()
                    .map(|&p| view.clusters[p].cluster.name.clone())
                    .collect(),
            );
            row.insert(
                "cluster_names_borrowed".into(),
                path.iter()
                    .map(|&p| view.clusters[p].cluster.name_borrowed)
                    .collect(),
            );
            row.insert(
                "cluster_ids".into(),
                path.iter()
                    .map(|&p| view.clusters[p].cluster.id.clone())
                    .collect(),
            );
            row.insert("x".into(), view.points[i].x.into());
            row.insert("y".into(), view.points[i].y.into());
            row.insert("summary".into(), s.map(|s| s.summary.clone()).into());
            row.insert("request".into(), s.and_then(|s| s.request.clone()).into());
            row.insert("task".into(), s.and_then(|s| s.task.clone()).into());
            row.insert(
                "languages".into(),
                s.and_then(|s| s.languages.clone()).into(),
            );
            row.insert(
                "concerning_score".into(),
                s.and_then(|s| s.concerning_score).into(),
            );
            row.insert(
                "user_frustration".into(),
                s.and_then(|s| s.user_frustration).into(),
            );
            row.insert(
                "assistant_errors".into(),
                s.and_then(|s| s.assistant_errors.clone()).into(),
            );
            let mut metadata = c.metadata.clone();
            for (k, v) in s.map(|s| &s.metadata).into_iter().flatten() {
                metadata.entry(k.clone()).or_insert_with(|| v.clone());
            }
            row.insert("metadata".into(), Value::Object(metadata));
            Value::Object(row)
        })
        .collect();
    let mut bytes = serde_json::to_vec_pretty(&rows)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Parquet built in memory (the writer needs an owned sink), then written atomically.
fn parquet_bytes(table: &Table) -> Result<Vec<u8>> {
    let fields = table
        .names
        .iter()
        .zip(&table.columns)
        .map(|(name, column)| {
            let (physical, logical, repetition) = match column {
                Column::Text(_) => (
                    PhysicalType::BYTE_ARRAY,
                    Some(LogicalType::String),
                    Repetition::OPTIONAL,
                ),
                Column::Int(_) => (PhysicalType::INT32, None, Repetition::OPTIONAL),
                Column::Bool(_) => (PhysicalType::BOOLEAN, None, Repetition::OPTIONAL),
                Column::Float(_) => (PhysicalType::DOUBLE, None, Repetition::REQUIRED),
            };
            Type::primitive_type_builder(name, physical)
                .with_repetition(repetition)
                .with_logical_type(logical)
                .build()
                .map(Arc::new)
        })
        .collect::<parquet::errors::Result<Vec<_>>>()?;
    let schema = Arc::new(
        Type::group_type_builder("conversation")
            .with_fields(fields)
            .build()?,
    );
    let mut writer = SerializedFileWriter::new(
        Vec::new(),
        schema,
        Arc::new(WriterProperties::builder().build()),
    )?;
    let mut group = writer.next_row_group()?;
    let mut columns = table.columns.iter();
    while let Some(mut out) = group.next_column()? {
        let Some(column) = columns.next() else {
            bail!("the Parquet schema has more columns than the table");
        };
        match column {
            Column::Text(values) => {
                let (levels, present) = definition_levels(values);
                let bytes: Vec<ByteArray> = present
                    .into_iter()
                    .map(|s| ByteArray::from(s.as_str()))
                    .collect();
                out.typed::<ByteArrayType>()
                    .write_batch(&bytes, Some(&levels), None)?;
            }
            Column::Int(values) => {
                let (levels, present) = definition_levels(values);
                let ints: Vec<i32> = present.into_iter().copied().collect();
                out.typed::<Int32Type>()
                    .write_batch(&ints, Some(&levels), None)?;
            }
            Column::Bool(values) => {
                let (levels, present) = definition_levels(values);
                let bools: Vec<bool> = present.into_iter().copied().collect();
                out.typed::<BoolType>()
                    .write_batch(&bools, Some(&levels), None)?;
            }
            Column::Float(values) => {
                out.typed::<DoubleType>().write_batch(values, None, None)?;
            }
        }
        out.close()?;
    }
    group.close()?;
    writer
        .into_inner()
        .context("cannot finish the Parquet file")
}

/// Parquet's encoding of optional values: a level per row (1 present, 0 null) and
/// the present values alone.
fn definition_levels<T>(values: &[Option<T>]) -> (Vec<i16>, Vec<&T>) {
    let levels = values.iter().map(|v| i16::from(v.is_some())).collect();
    (levels, values.iter().flatten().collect())
}
