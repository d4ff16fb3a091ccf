//! Local LLM inference on Candle for GGUF chat models of the llama family (SmolLM2,
//! Llama 3.x) and Qwen2 (Qwen2.5), and the LLM-backed [`LlmSummarizer`] and
//! [`LlmClusterNamer`].
//!
//! Key decisions:
//! - Our own compact transformer (`model`) instead of candle-transformers: the two
//!   families differ in three details, and owning the code lets us keep each weight in
//!   the format that is fastest for its use (dense f32 for prompts, our own 8-bit kernel for decoding)
//!   and make the KV cache a cloneable value, so a shared prompt prefix is computed once.
//! - The tokenizer is built from the GGUF file itself, so model and vocabulary are one
//!   file and cannot disagree; it matches the Hugging Face tokenizers id for id.
//! - Structured output is template-forced: the program writes the JSON skeleton and the
//!   model only fills values, so even a 135M-parameter model cannot break the structure.

mod batch;
mod chat;
mod error;
mod fit;
mod gguf;
mod kv;
mod language;
mod llm;
mod logits;
mod model;
mod namer;
mod parents;
mod prefix;
mod prompts;
mod q6k;
mod q8;
mod speed;
mod structured;
mod summarizer;
mod tokenizer;

pub use chat::{ChatMessage, ChatRole};
pub use error::LlmError;
pub use llm::{device, load_tokenizer, LlmOptions, LocalLlm};
pub use namer::{LlmClusterNamer, NAME_VERBS};
pub use prompts::{NAMING_PROMPT_VERSION, SUMMARY_PROMPT_VERSION};
pub use speed::Timing;
pub use summarizer::LlmSummarizer;
