//! `kura bench`: how fast the configured models run on this machine — embedding
//! sentences per second (short and long texts), LLM prompt reading (prefill) and
//! writing (decode) tokens per second, one sequence and batched, and conversations
//! per second through the summariser — beside the Python/llama.cpp reference stack
//! measured on the same kind of machine. Each figure is the best of a few repeats,
//! since other work on a shared machine only ever makes a run slower.

mod data;
mod memory;
mod table;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Result};
use kura_core::pipeline::Progress;
use kura_core::{Embedder, Summarizer};
use kura_llm::{LocalLlm, Timing};
use serde::Serialize;

use crate::backends::Backends;
use crate::config::Config;
use crate::progress::{Mode, Reporter};

pub use table::render as table;

pub struct Options {
    /// Fewer texts, tokens and repeats: checks that every measurement works.
    pub quick: bool,
    /// The shared data set (real texts); synthetic texts are used without it.
    pub data: PathBuf,
    /// Conversations through the summariser, if not the default of the sizes.
    pub conversations: Option<usize>,
}

/// How much work each measurement does.
struct Sizes {
    short_texts: usize,
    long_texts: usize,
    prompt_tokens: usize,
    decode_prompt_tokens: usize,
    decode_steps: usize,
    batch: usize,
    conversations: usize,
    repeats: usize,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Sizes {
                short_texts: 64,
                long_texts: 8,
                prompt_tokens: 128,
                decode_prompt_tokens: 64,
                decode_steps: 8,
                batch: 4,
                conversations: 2,
                repeats: 1,
            }
        } else {
            Sizes {
                short_texts: 1000,
                long_texts: 200,
                prompt_tokens: 512,
                decode_prompt_tokens: 128,
                decode_steps: 64,
                batch: 16,
                conversations: 32,
                repeats: 3,
            }
        }
    }
}

/// Conversations for the summariser figure hold about this many tokens.
const CONVERSATION_TOKENS: std::ops::RangeInclusive<usize> = 350..=650;

#[derive(Debug, Serialize)]
pub struct Report {
    pub version: u32,
    pub quick: bool,
    pub machine: Machine,
    pub data: String,
    pub embedder: String,
    pub llm: String,
    pub products: Products,
    pub figures: Vec<Figure>,
    pub memory: Vec<Memory>,
}

/// How each model's products ran (the layout and kernel picked on this machine),
/// so that runs on different machines can be told apart.
#[derive(Debug, Default, Serialize)]
pub struct Products {
    pub embedder: String,
    pub llm: String,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    /// The kind whose reference figures the ratios are read against.
    pub kind: String,
    pub threads: usize,
    pub load_average: String,
}

#[derive(Debug, Serialize)]
pub struct Figure {
    /// Stable name for comparing runs.
    pub key: &'static str,
    pub name: String,
    pub unit: &'static str,
    pub value: f64,
    pub reference: Option<Reference>,
}

#[derive(Debug, Serialize)]
pub struct Reference {
    pub value: f64,
    pub source: String,
}

#[derive(Debug, Serialize)]
pub struct Memory {
    pub model: String,
    pub peak_rss_mib: f64,
}

/// Each figure as soon as it is measured, in the table's form, so that a run of
/// several minutes shows its results as it goes (and a killed one keeps them).
fn say_each(reporter: &Reporter, figures: &[Figure]) {
    for figure in figures {
        reporter.say(&table::row(figure));
    }
}

pub fn run(config: &Config, options: &Options, reporter: &Reporter) -> Result<Report> {
    let mut sizes = Sizes::new(options.quick);
    if let Some(conversations) = options.conversations {
        sizes.conversations = conversations;
    }
    // Read once: the table's "references of …" and every ratio come from this kind.
    let kind = MachineKind::of_this_cpu();
    let machine = machine(kind);
    let texts = data::load(&options.data, sizes.short_texts, sizes.long_texts)?;
    let mut figures = Vec::new();
    let mut memory = Vec::new();
    let mut products = Products::default();

    // Each model gets its own backends, dropped before the next one loads, so that
    // each phase's peak memory is that model's.
    {
        memory::reset_peak();
        let backends = Backends::new(config, std::sync::Arc::new(Reporter::new(Mode::Quiet)))?;
        reporter.say(&format!("measuring the embedder {}", config.embedder));
        let embedder = backends.candle_embedder()?;
        products.embedder = embedder.products();
        let measured = embedder_figures(
            embedder.as_ref(),
            &texts,
            references(kind, &config.embedder),
            sizes.repeats,
        )?;
        say_each(reporter, &measured);
        figures.extend(measured);
        memory.extend(peak(&config.embedder));
    }
    {
        memory::reset_peak();
        let backends = Backends::new(config, std::sync::Arc::new(Reporter::new(Mode::Quiet)))?;
        reporter.say(&format!("measuring the LLM {}", config.llm));
        let llm = backends.llm()?;
        products.llm = llm.products();
        let reference = references(kind, &config.llm);
        let measured = llm_figures(&llm, &texts, reference, &sizes)?;
        say_each(reporter, &measured);
        figures.extend(measured);
        reporter.say("measuring the summariser");
        let summarizer = backends.summarizer()?;
        let measured = summarizer_figure(
            summarizer.as_ref(),
            &llm,
            &texts,
            sizes.conversations,
            reporter,
        )?;
        say_each(reporter, std::slice::from_ref(&measured));
        figures.push(measured);
        memory.extend(peak(&config.llm));
    }
    Ok(Report {
        version: 1,
        quick: options.quick,
        machine,
        data: texts.source,
        embedder: config.embedder.clone(),
        llm: config.llm.clone(),
        products,
        figures,
        memory,
    })
}

fn peak(model: &str) -> Option<Memory> {
    memory::peak_rss_mib().map(|mib| Memory {
        model: model.to_string(),
        peak_rss_mib: mib,
    })
}

fn machine(kind: MachineKind) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string());
    Machine {
        cpu,
        kind: kind.name().to_string(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average,
    }
}

/// The shortest of `repeats` runs of `work`, which returns how many items it did.
fn best_rate(repeats: usize, mut work: impl FnMut() -> Result<usize>) -> Result<f64> {
    let mut best = 0f64;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        let items = work()?;
        best = best.max(items as f64 / start.elapsed().as_secs_f64().max(1e-9));
    }
    Ok(best)
}

fn embedder_figures(
    embedder: &dyn Embedder,
    texts: &data::Texts,
    reference: References,
    repeats: usize,
) -> Result<Vec<Figure>> {
    let embed = |texts: &[String]| -> Result<usize> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let matrix = embedder
            .embed(&refs)
            .map_err(|e| anyhow!("embedding: {e}"))?;
        Ok(matrix.rows())
    };
    // The first call pays for allocations and thread start-up.
    embed(&texts.short[..texts.short.len().min(8)])?;
    Ok(vec![
        Figure {
            key: "embed_short",
            name: format!("embedding {} short texts", texts.short.len()),
            unit: "sentences/s",
            value: best_rate(repeats, || embed(&texts.short))?,
            reference: reference.embed_short,
        },
        Figure {
            key: "embed_long",
            name: format!("embedding {} long texts", texts.long.len()),
            unit: "sentences/s",
            value: best_rate(repeats, || embed(&texts.long))?,
            reference: reference.embed_long,
        },
    ])
}

fn llm_figures(
    llm: &LocalLlm,
    texts: &data::Texts,
    reference: References,
    sizes: &Sizes,
) -> Result<Vec<Figure>> {
    let tokens = llm.encode(&texts.long.join("\n\n"))?;
    let prompt = tokens
        .get(..sizes.prompt_tokens)
        .ok_or_else(|| anyhow!("the benchmark texts hold only {} tokens", tokens.len()))?;
    let decode_prompts: Vec<Vec<u32>> = tokens
        .chunks_exact(sizes.decode_prompt_tokens)
        .take(sizes.batch)
        .map(<[u32]>::to_vec)
        .collect();
    if decode_prompts.len() < sizes.batch {
        return Err(anyhow!(
            "not enough benchmark text for {} prompts",
            sizes.batch
        ));
    }
    llm.time_prefill(&prompt[..prompt.len().min(16)])?;
    let rate = |timing: Timing| Ok(timing.per_second());
    Ok(vec![
        Figure {
            key: "llm_prefill",
            name: format!("LLM prefill, {}-token prompt", prompt.len()),
            unit: "tokens/s",
            value: best_of(sizes.repeats, || rate(llm.time_prefill(prompt)?))?,
            reference: reference.prefill,
        },
        Figure {
            key: "llm_decode",
            name: "LLM decode, 1 sequence".to_string(),
            unit: "tokens/s",
            value: best_of(sizes.repeats, || {
                rate(llm.time_decode(&decode_prompts[..1], sizes.decode_steps)?)
            })?,
            reference: reference.decode,
        },
        Figure {
            key: "llm_decode_batched",
            name: format!("LLM decode, {} sequences at once", sizes.batch),
            unit: "tokens/s",
            value: best_of(sizes.repeats, || {
                rate(llm.time_decode(&decode_prompts, sizes.decode_steps)?)
            })?,
            reference: None,
        },
    ])
}

fn best_of(repeats: usize, mut measure: impl FnMut() -> Result<f64>) -> Result<f64> {
    let mut best = 0f64;
    for _ in 0..repeats.max(1) {
        best = best.max(measure()?);
    }
    Ok(best)
}

/// Conversations per second through the whole summariser (prompt, template-forced
/// facets, validation), on `count` conversations of about 500 tokens; the shared
/// instruction prefix is read once, as in a real run. Where the data holds fewer,
/// the figure is over those, and says so; where it holds none of that length, over
/// the first `count` of any length.
fn summarizer_figure(
    summarizer: &dyn Summarizer,
    llm: &LocalLlm,
    texts: &data::Texts,
    count: usize,
    reporter: &Reporter,
) -> Result<Figure> {
    let mut chosen = Vec::new();
    for conversation in &texts.conversations {
        let text: Vec<&str> = conversation
            .messages
            .iter()
            .map(|m| m.content.as_str())
            .collect();
        if CONVERSATION_TOKENS.contains(&llm.encode(&text.join("\n"))?.len()) {
            chosen.push(conversation.clone());
        }
        if chosen.len() == count {
            break;
        }
    }
    let sized = !chosen.is_empty();
    if !sized {
        chosen.extend(texts.conversations.iter().take(count).cloned());
    }
    let described = match sized {
        true => format!("{} conversations of ~500 tokens", chosen.len()),
        false => format!("{} conversations (none of ~500 tokens)", chosen.len()),
    };
    if chosen.len() < count {
        reporter.warn(&format!(
            "the data holds {described}: the summariser is measured on those, not on the \
             {count} asked for"
        ));
    }
    let start = Instant::now();
    let results = summarizer.summarize(&chosen);
    let seconds = start.elapsed().as_secs_f64();
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        return Err(anyhow!("the summariser failed: {e}"));
    }
    Ok(Figure {
        key: "summaries",
        name: format!("summariser, {described}"),
        unit: "conversations/s",
        value: chosen.len() as f64 / seconds.max(1e-9),
        reference: Some(Reference {
            value: 1.0,
            source: "target".to_string(),
        }),
    })
}

/// The kinds of 2-core machine the references were measured on. Their CPUs differ
/// in what our kernels use (AVX2 alone, AVX-512 with VNNI and BF16, or AMX too) and
/// in the speed of the reference stacks themselves, so a ratio means something only
/// against the figures of the same kind.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum MachineKind {
    /// AMD EPYC (Zen 3): AVX2 and FMA, no AVX-512.
    Zen3,
    /// AMD EPYC (Zen 4): AVX-512 with VNNI and BF16 on 256-bit units, no AMX.
    Zen4,
    /// AMD EPYC (Zen 5): AVX-512 with VNNI and BF16, no AMX.
    Zen5,
    /// Intel Xeon (Sapphire Rapids): AVX-512 with VNNI, and AMX.
    Xeon,
    /// Intel Xeon (Emerald Rapids: family 6 model 207) whose virtual machine does
    /// not pass AMX through: AVX-512 with VNNI, BF16 and FP16, no AMX. Without the
    /// tiles the embedder multiplies in 16-bit integers, and llama.cpp built for
    /// the CPU runs.
    XeonWithoutAmx,
}

impl MachineKind {
    #[cfg(test)]
    const ALL: [MachineKind; 5] = [
        MachineKind::Zen3,
        MachineKind::Zen4,
        MachineKind::Zen5,
        MachineKind::Xeon,
        MachineKind::XeonWithoutAmx,
    ];

    fn of_this_cpu() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512vnni") {
            return match (kura_simd::is_amd(), kura_simd::cpu_family()) {
                (true, ZEN4_FAMILY) => MachineKind::Zen4,
                (true, _) => MachineKind::Zen5,
                (false, _) if kura_simd::cpu_has_amx() => MachineKind::Xeon,
                (false, _) => MachineKind::XeonWithoutAmx,
            };
        }
        MachineKind::Zen3
    }

    fn name(self) -> &'static str {
        match self {
            MachineKind::Zen3 => "AMD EPYC (Zen 3)",
            MachineKind::Zen4 => "AMD EPYC (Zen 4)",
            MachineKind::Zen5 => "AMD EPYC (Zen 5)",
            MachineKind::Xeon => "Intel Xeon (Sapphire Rapids)",
            MachineKind::XeonWithoutAmx => "Intel Xeon (Emerald Rapids, no AMX)",
        }
    }

    fn figures(self) -> &'static KindFigures {
        match self {
            MachineKind::Zen3 => &ZEN3,
            MachineKind::Zen4 => &ZEN4,
            MachineKind::Zen5 => &ZEN5,
            MachineKind::Xeon => &XEON,
            MachineKind::XeonWithoutAmx => &XEON_WITHOUT_AMX,
        }
    }
}

/// CPUID's family of AMD's Zen 4 (Zen 3 shares it, without AVX-512).
#[cfg(target_arch = "x86_64")]
const ZEN4_FAMILY: u32 = 25;

/// What the reference stacks do with the same models and texts on a 2-core machine
/// of this kind, as `scripts/reference_bench.py` measured them (November 2026; the
/// Zen 4 and Zen 5 kinds in December with sentence-transformers 6.3): sentence-transformers
/// 6.2 on PyTorch 2.15 for the embedder, llama.cpp (through
/// llama-cpp-python 0.3.36, built for the machine) on the same GGUF file and thread
/// count for the LLMs. Machines of one kind differ by up to two times over a day:
/// rerun the script beside `kura bench` before reading much into a ratio.
#[derive(Default)]
struct References {
    embed_short: Option<Reference>,
    embed_long: Option<Reference>,
    prefill: Option<Reference>,
    decode: Option<Reference>,
}

/// The reference figures of one machine kind: (short, long) texts a second for the
/// embedder, (prefill, decode) tokens a second for each LLM, and where the LLMs'
/// figures come from.
struct KindFigures {
    embed: (f64, f64),
    qwen: (f64, f64),
    smollm2: (f64, f64),
    llama_prefill: &'static str,
    llama_decode: &'static str,
}

impl KindFigures {
    /// Figures that the script measured, llama.cpp's included.
    const fn measured(embed: (f64, f64), qwen: (f64, f64), smollm2: (f64, f64)) -> Self {
        KindFigures {
            embed,
            qwen,
            smollm2,
            llama_prefill: "llama.cpp, same GGUF, 2 threads",
            llama_decode: "llama.cpp batch 1, same GGUF, 2 threads",
        }
    }
}

/// AMD EPYC (Zen 3): every figure measured by the script.
const ZEN3: KindFigures = KindFigures::measured((257.0, 20.8), (136.0, 41.4), (265.0, 115.0));

/// AMD EPYC (Zen 4): every figure measured by the script (December 2026, load
/// average 1.7 while it ran).
const ZEN4: KindFigures = KindFigures::measured((324.1, 22.3), (213.9, 42.1), (311.1, 121.2));

/// AMD EPYC (Zen 5): every figure measured by the script (December 2026, load
/// average 1.7 to 2.0 while it ran).
const ZEN5: KindFigures = KindFigures::measured((302.9, 25.1), (301.8, 51.1), (429.3, 134.6));

/// Intel Xeon: sentence-transformers measured by the script. llama.cpp built for that
/// CPU dies there on its first AMX instruction (it never asks Linux for the tile
/// registers, see `kura_simd::bf16`), so its
/// figures are those noted for the machine kind when the project began (SmolLM2's
/// on its Q8_0 file, not the Q4_1 file we ship), and the source says so.
const XEON: KindFigures = KindFigures {
    embed: (476.8, 32.2),
    qwen: (105.0, 22.0),
    smollm2: (306.0, 59.0),
    llama_prefill: "llama.cpp, 2 threads (noted for this machine kind)",
    llama_decode: "llama.cpp batch 1, 2 threads (noted for this machine kind)",
};

/// Intel Xeon without AMX: every figure measured by the script (December 2026,
/// load average 0.5 to 1.6 while it ran). Here llama.cpp built for the CPU runs,
/// as AMX is not offered to it.
const XEON_WITHOUT_AMX: KindFigures =
    KindFigures::measured((440.6, 31.0), (147.0, 26.3), (232.3, 92.7));

/// The reference figures of `kind` for `model`, where it has some.
fn references(kind: MachineKind, model: &str) -> References {
    let r = |value: f64, source: &str| {
        Some(Reference {
            value,
            source: source.to_string(),
        })
    };
    const ST: &str = "sentence-transformers on PyTorch, 2 threads";
    let figures = kind.figures();
    let llm = |(prefill, decode): (f64, f64)| References {
        prefill: r(prefill, figures.llama_prefill),
        decode: r(decode, figures.llama_decode),
        ..References::default()
    };
    match model {
        "all-minilm-l6-v2" => References {
            embed_short: r(figures.embed.0, ST),
            embed_long: r(figures.embed.1, ST),
            ..References::default()
        },
        "qwen2.5-coder-0.5b-instruct" => llm(figures.qwen),
        "smollm2-135m-instruct" => llm(figures.smollm2),
        _ => References::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every machine kind has every reference figure for the default models, and
    /// no two kinds share a figure (a ratio is read against its own kind).
    #[test]
    fn each_machine_kind_has_its_references() {
        let figures = |kind| {
            let embedder = references(kind, "all-minilm-l6-v2");
            let qwen = references(kind, "qwen2.5-coder-0.5b-instruct");
            let smollm2 = references(kind, "smollm2-135m-instruct");
            [
                embedder.embed_short,
                embedder.embed_long,
                qwen.prefill,
                qwen.decode,
                smollm2.prefill,
                smollm2.decode,
            ]
            .map(|r| r.expect("a reference").value)
        };
        for (i, &a) in MachineKind::ALL.iter().enumerate() {
            for &b in &MachineKind::ALL[i + 1..] {
                let (fa, fb) = (figures(a), figures(b));
                assert!(
                    fa.iter().zip(&fb).all(|(x, y)| x != y),
                    "{a:?} and {b:?} share a figure"
                );
            }
            assert!(references(a, "some-other-model").prefill.is_none());
        }
    }
}
