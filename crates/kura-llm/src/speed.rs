//! Timing of the model's two phases, for `kura bench`: reading a prompt (prefill,
//! many tokens per pass) and writing an answer (decoding, one token per sequence per
//! pass). Decoding ignores stop tokens so every measurement runs its full length.

use std::time::Instant;

use crate::error::LlmError;
use crate::llm::{feed_each, LocalLlm, Session};

/// Tokens processed and the seconds they took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub tokens: usize,
    pub seconds: f64,
}

impl Timing {
    pub fn per_second(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

impl LocalLlm {
    /// Plain text to token ids, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        self.chat().encode_text(text)
    }

    /// Reads `prompt` in one pass from an empty context.
    pub fn time_prefill(&self, prompt: &[u32]) -> Result<Timing, LlmError> {
        let mut session = self.session(0.0, 0);
        let start = Instant::now();
        session.feed(prompt)?;
        Ok(Timing {
            tokens: prompt.len(),
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Decodes `steps` greedy tokens after each of `prompts`, all sequences together
    /// (one sequence is plain single-stream decoding). Reading the prompts is not timed.
    pub fn time_decode(&self, prompts: &[Vec<u32>], steps: usize) -> Result<Timing, LlmError> {
        let mut sessions = prompts
            .iter()
            .map(|prompt| {
                let mut session = self.session(0.0, 0);
                session.feed(prompt)?;
                Ok(session)
            })
            .collect::<Result<Vec<Session<'_>>, LlmError>>()?;
        if let Some(short) = sessions.iter().find(|s| s.remaining() < steps) {
            return Err(LlmError::InvalidOutput(format!(
                "{steps} decoding steps do not fit after a prompt ({} tokens left)",
                short.remaining()
            )));
        }
        let start = Instant::now();
        for _ in 0..steps {
            let tokens = sessions
                .iter_mut()
                .map(Session::sample)
                .collect::<Result<Vec<u32>, _>>()?;
            let mut all: Vec<&mut Session<'_>> = sessions.iter_mut().collect();
            feed_each(&mut all, &tokens)?;
        }
        Ok(Timing {
            tokens: steps * prompts.len(),
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}
