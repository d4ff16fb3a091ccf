//! [`LocalLlm`]: a GGUF chat model loaded once and shared; every call owns its own
//! [`Session`] (KV cache, sampler), so one model serves many threads.

use std::path::Path;
use std::sync::OnceLock;

use candle_core::Device;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokenizers::Tokenizer;

use crate::batch::StepBatcher;
use crate::chat::{ChatMessage, ChatTemplate};
use crate::error::LlmError;
use crate::gguf::Metadata;
use crate::logits::Logits;
use crate::model::{Cache, Config, Model, Tensors, STEP_MAX_TOKENS};
use crate::q8::Layout;
use crate::tokenizer;

#[derive(Debug, Clone, PartialEq)]
pub struct LlmOptions {
    /// Prompt plus output never exceed this many tokens (nor the model's own context).
    pub max_context: usize,
    /// 0 picks the most likely token (deterministic).
    pub temperature: f32,
    pub seed: u64,
}

impl Default for LlmOptions {
    fn default() -> Self {
        LlmOptions {
            max_context: 2048,
            temperature: 0.0,
            seed: 42,
        }
    }
}

pub struct LocalLlm {
    model: Model,
    tokenizer: Tokenizer,
    chat: ChatTemplate,
    stop_tokens: Vec<u32>,
    options: LlmOptions,
    max_context: usize,
    model_id: String,
    /// Per token id: whether it opens a new word (see [`LocalLlm::starts_word`]).
    word_starts: OnceLock<Vec<bool>>,
    /// Per token id: whether it closes a JSON string (see [`LocalLlm::closes_string`]).
    string_closers: OnceLock<Vec<bool>>,
    /// Per [`Word`], per token: whether the token is that word (see [`LocalLlm::is_word`]).
    words: [OnceLock<Vec<bool>>; Word::COUNT],
}

/// A word a form's field may be barred from writing next (see
/// `structured::FieldRules`), recognised in the vocabulary by its stem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Word {
    /// "assistant", "assistants", "assistant's".
    Assistant,
    /// "perform", "performs", "performing", "performed".
    Perform,
    /// "the", and the words it begins ("them", "their", "these", "there", "they").
    The,
}

impl Word {
    /// One vocabulary table each; `The` is the last variant.
    const COUNT: usize = Word::The as usize + 1;

    fn stem(self) -> &'static str {
        match self {
            Word::Assistant => "assistant",
            Word::Perform => "perform",
            Word::The => "the",
        }
    }
}

/// Opens `device`: the first CUDA GPU when `cuda` is set, else the CPU.
pub fn device(cuda: bool) -> Result<Device, LlmError> {
    if cuda {
        Device::new_cuda(0).map_err(|e| {
            LlmError::Device(format!(
                "cannot open CUDA device 0 ({e}); build with `--features cuda` or run on the CPU"
            ))
        })
    } else {
        Ok(Device::Cpu)
    }
}

/// The tokenizer stored in a GGUF file, without loading the weights.
pub fn load_tokenizer(gguf: &Path) -> Result<Tokenizer, LlmError> {
    let content = crate::gguf::read_content(gguf)?;
    tokenizer::from_gguf(&Metadata::new(&content, gguf))
}

impl LocalLlm {
    pub fn load(gguf: &Path, device: &Device, options: LlmOptions) -> Result<Self, LlmError> {
        Self::load_keeping(gguf, device, options, Tensors::Needed, None)
    }

    /// [`LocalLlm::load`] keeping every f32 weight, so that tests can run the model
    /// through candle's ops on the CPU, with the 8-bit copies in panels (whose
    /// products take the activations as they are, as candle's f32 ops do).
    #[cfg(test)]
    pub(crate) fn load_with_all_tensors(gguf: &Path) -> Result<Self, LlmError> {
        let options = LlmOptions::default();
        let layout = Some(Layout::Panels);
        Self::load_keeping(gguf, &Device::Cpu, options, Tensors::All, layout)
    }

    /// [`LocalLlm::load`] with the 8-bit copies in `layout`, on the CPU.
    #[cfg(test)]
    pub(crate) fn load_in_layout(gguf: &Path, layout: Layout) -> Result<Self, LlmError> {
        let options = LlmOptions::default();
        Self::load_keeping(gguf, &Device::Cpu, options, Tensors::Needed, Some(layout))
    }

    fn load_keeping(
        gguf: &Path,
        device: &Device,
        options: LlmOptions,
        tensors: Tensors,
        layout: Option<Layout>,
    ) -> Result<Self, LlmError> {
        let content = crate::gguf::read_content(gguf)?;
        let meta = Metadata::new(&content, gguf);
        let config = Config::from_metadata(&meta)?;
        let layout = layout.unwrap_or_else(|| Layout::for_model(config.heads * config.head_dim));
        let tokenizer = tokenizer::from_gguf(&meta)?;
        let chat = chat_template(&meta, &tokenizer)?;
        let stop_tokens = stop_tokens(&meta, &tokenizer, &chat)?;
        let max_context = options.max_context.min(config.context_length).max(1);
        let model = Model::load(
            &content,
            &meta,
            config,
            max_context,
            device,
            tensors,
            layout,
        )?;
        let model_id = gguf
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "gguf".to_string());
        Ok(LocalLlm {
            model,
            tokenizer,
            chat,
            stop_tokens,
            options,
            max_context,
            model_id,
            word_starts: OnceLock::new(),
            string_closers: OnceLock::new(),
            words: Default::default(),
        })
    }

    /// Names the model in stage ids; the caller passes `name@fingerprint`.
    pub fn with_model_id(mut self, id: String) -> Self {
        self.model_id = id;
        self
    }

    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// How this model's projections are multiplied on this machine (the layout
    /// and kernel picked at load), for reports that compare machines.
    pub fn products(&self) -> String {
        self.model.products()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn options(&self) -> &LlmOptions {
        &self.options
    }

    /// The context actually used: `max_context` capped by the model's own.
    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// Answers the conversation in `messages` (ChatML), stopping at the end of the
    /// assistant's turn or after `max_new_tokens`.
    pub fn generate(
        &self,
        messages: &[ChatMessage],
        max_new_tokens: usize,
    ) -> Result<String, LlmError> {
        let mut session = self.prompted_session(messages)?;
        let mut output = Vec::new();
        while output.len() < max_new_tokens && session.remaining() > 0 {
            let token = session.sample()?;
            if self.is_stop(token) {
                break;
            }
            output.push(token);
            session.feed(&[token])?;
        }
        self.decode(&output)
    }

    /// Answers several conversations at once: each prompt is read on its own, then
    /// all answers are decoded together, every weight read once per step for all of
    /// them. Each answer is the one [`LocalLlm::generate`] gives for its conversation.
    pub fn generate_batch(
        &self,
        conversations: &[Vec<ChatMessage>],
        max_new_tokens: usize,
    ) -> Result<Vec<String>, LlmError> {
        let mut sessions = conversations
            .iter()
            .map(|messages| self.prompted_session(messages))
            .collect::<Result<Vec<_>, _>>()?;
        let mut outputs = vec![Vec::new(); sessions.len()];
        loop {
            let mut running = Vec::new();
            let mut tokens = Vec::new();
            for (session, output) in sessions.iter_mut().zip(outputs.iter_mut()) {
                if output.len() >= max_new_tokens || session.remaining() == 0 {
                    continue;
                }
                let token = session.sample()?;
                if self.is_stop(token) {
                    continue;
                }
                output.push(token);
                running.push(session);
                tokens.push(token);
            }
            if running.is_empty() {
                break;
            }
            feed_each(&mut running, &tokens)?;
        }
        outputs.iter().map(|ids| self.decode(ids)).collect()
    }

    /// A session that has read `messages` and the opening of the assistant's turn.
    fn prompted_session(&self, messages: &[ChatMessage]) -> Result<Session<'_>, LlmError> {
        let prompt = self.chat.prompt(messages)?;
        if prompt.len() >= self.max_context {
            return Err(LlmError::InvalidOutput(format!(
                "the prompt has {} tokens; the context holds {}",
                prompt.len(),
                self.max_context
            )));
        }
        let mut session = self.session(self.options.temperature, self.options.seed);
        session.feed(&prompt)?;
        Ok(session)
    }

    pub(crate) fn model(&self) -> &Model {
        &self.model
    }

    #[cfg(test)]
    pub(crate) fn model_mut(&mut self) -> &mut Model {
        &mut self.model
    }

    pub(crate) fn chat(&self) -> &ChatTemplate {
        &self.chat
    }

    /// Whether token `id` opens a new word: its text starts with a space (GPT-2's
    /// `Ġ`, SentencePiece's `▁`), a line break or punctuation. Ids past the
    /// vocabulary (padding rows of the output matrix) do not.
    pub(crate) fn starts_word(&self, id: u32) -> bool {
        self.vocab_table(&self.word_starts, id, |text| {
            text.chars().next().is_some_and(|c| {
                matches!(c, 'Ġ' | '▁' | 'Ċ' | ' ' | '\n') || c.is_ascii_punctuation()
            })
        })
    }

    /// Whether token `id` would end a string value the form writer decodes: it
    /// holds a quote or a line break (GPT-2's `Ċ` and `č`, SentencePiece's byte
    /// tokens).
    pub(crate) fn closes_string(&self, id: u32) -> bool {
        self.vocab_table(&self.string_closers, id, |text| {
            text.contains(['"', 'Ċ', 'č', '\n', '\r']) || text == "<0x0A>" || text == "<0x0D>"
        })
    }

    /// Whether token `id` is `word` (any case, a space before it or not, any
    /// ending on its stem).
    pub(crate) fn is_word(&self, word: Word, id: u32) -> bool {
        self.vocab_table(&self.words[word as usize], id, |text| {
            text.trim_start_matches(['Ġ', '▁', ' '])
                .to_lowercase()
                .starts_with(word.stem())
        })
    }

    /// `property` of token `id`'s text, worked out once for the whole vocabulary
    /// and kept in `table`. Ids past the vocabulary (padding rows of the output
    /// matrix) have none.
    fn vocab_table(
        &self,
        table: &OnceLock<Vec<bool>>,
        id: u32,
        property: impl Fn(&str) -> bool,
    ) -> bool {
        let table = table.get_or_init(|| {
            let vocab = self.tokenizer.get_vocab(true);
            let mut table = vec![false; vocab.values().max().map_or(0, |&m| m as usize + 1)];
            for (text, id) in vocab {
                table[id as usize] = property(&text);
            }
            table
        });
        table.get(id as usize).copied().unwrap_or(false)
    }

    pub(crate) fn is_stop(&self, token: u32) -> bool {
        self.stop_tokens.contains(&token)
    }

    pub(crate) fn decode(&self, ids: &[u32]) -> Result<String, LlmError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(LlmError::tokenizer)
    }

    pub(crate) fn session(&self, temperature: f32, seed: u64) -> Session<'_> {
        Session {
            llm: self,
            cache: self.model.new_cache(),
            logits: None,
            temperature,
            rng: StdRng::seed_from_u64(seed),
            batcher: None,
        }
    }
}

fn chat_template(meta: &Metadata<'_>, tokenizer: &Tokenizer) -> Result<ChatTemplate, LlmError> {
    let template = meta.optional("tokenizer.chat_template", Metadata::string)?;
    ChatTemplate::detect(tokenizer, template).map_err(|e| meta.error(e))
}

/// The tokens that end an answer: the template's end of turn, the file's
/// end-of-sequence token, and the other ends the model families know.
fn stop_tokens(
    meta: &Metadata<'_>,
    tokenizer: &Tokenizer,
    chat: &ChatTemplate,
) -> Result<Vec<u32>, LlmError> {
    const EOS: &str = "tokenizer.ggml.eos_token_id";
    let mut stops = vec![chat.end_of_turn()];
    if let Some(eos) = meta.optional(EOS, Metadata::u32)? {
        // An id past the vocabulary would never be written, and answers would run
        // on to their length limit.
        if tokenizer.id_to_token(eos).is_none() {
            return Err(meta.error(format!(
                "GGUF metadata `{EOS}` is {eos}, which is not a token of the file's vocabulary ({} tokens)",
                tokenizer.get_vocab_size(true)
            )));
        }
        stops.push(eos);
    }
    for end in ["<|endoftext|>", "<|end_of_text|>", "<|eom_id|>"] {
        stops.extend(tokenizer.token_to_id(end));
    }
    stops.sort_unstable();
    stops.dedup();
    Ok(stops)
}

/// How many times a structured answer is asked for before the item is recorded
/// as failed.
const ATTEMPTS: u64 = 3;
/// Retries sample, so a retry can write something other than the greedy answer.
const RETRY_TEMPERATURE: f32 = 0.5;

/// One decoding pass: the KV cache of everything fed so far and the logits that
/// predict the next token.
pub(crate) struct Session<'a> {
    llm: &'a LocalLlm,
    cache: Cache,
    logits: Option<Logits>,
    temperature: f32,
    rng: StdRng,
    /// Where one-token feeds go to be decoded together with other threads' sessions.
    batcher: Option<&'a StepBatcher>,
}

impl<'a> Session<'a> {
    /// Continues from a cache computed earlier (a shared prompt prefix).
    pub(crate) fn resume(
        llm: &'a LocalLlm,
        cache: Cache,
        logits: Option<Logits>,
        temperature: f32,
        seed: u64,
    ) -> Self {
        Session {
            llm,
            cache,
            logits,
            temperature,
            rng: StdRng::seed_from_u64(seed),
            batcher: None,
        }
    }

    /// Sends this session's one-token feeds (and those of its retries) through
    /// `batcher`.
    pub(crate) fn with_batcher(mut self, batcher: Option<&'a StepBatcher>) -> Self {
        self.batcher = batcher;
        self
    }

    /// Answers the prompt held by this session up to [`ATTEMPTS`] times (greedy at
    /// the configured temperature first, then sampled at [`RETRY_TEMPERATURE`] with
    /// a new seed each time) and returns the first answer `attempt` accepts. Each
    /// attempt continues the prompt's cache, cut back to the prompt's end, so the
    /// prompt is computed once and held once. `attempt` returns `Ok(Err(reason))`
    /// for an answer it refuses; the error after the last attempt lists every
    /// reason, prefixed by `what`.
    pub(crate) fn first_valid<T>(
        self,
        what: &str,
        mut attempt: impl FnMut(&mut Session<'a>) -> Result<Result<T, String>, LlmError>,
    ) -> Result<T, LlmError> {
        let options = self.llm.options();
        let prompt_len = self.cache.len();
        let mut cache = self.cache;
        let mut failures = Vec::new();
        for round in 0..ATTEMPTS {
            let temperature = if round == 0 {
                options.temperature
            } else {
                RETRY_TEMPERATURE
            };
            // The attempt continues the prompt's own cache, cut back to the prompt:
            // a copy kept aside for retries held every conversation's keys and
            // values twice.
            self.llm.model().truncate_cache(&mut cache, prompt_len)?;
            let mut session = Session::resume(
                self.llm,
                cache,
                self.logits.clone(),
                temperature,
                options.seed.wrapping_add(round),
            )
            .with_batcher(self.batcher);
            match attempt(&mut session)? {
                Ok(answer) => return Ok(answer),
                Err(reason) => failures.push(reason),
            }
            cache = session.cache;
        }
        Err(LlmError::InvalidOutput(format!(
            "{what}: no valid answer after {ATTEMPTS} attempts ({})",
            failures.join("; ")
        )))
    }

    pub(crate) fn snapshot(&self) -> (Cache, Option<Logits>) {
        (self.cache.clone(), self.logits.clone())
    }

    pub(crate) fn llm(&self) -> &'a LocalLlm {
        self.llm
    }

    /// Forgets the last `tokens` fed, as if they had never been: the next thing done
    /// must be a feed, since the logits they left are gone with them.
    pub(crate) fn take_back(&mut self, tokens: usize) -> Result<(), LlmError> {
        if tokens == 0 {
            return Ok(());
        }
        let len = self.cache.len().saturating_sub(tokens);
        self.llm.model().truncate_cache(&mut self.cache, len)?;
        self.logits = None;
        Ok(())
    }

    /// Tokens that still fit in the context.
    pub(crate) fn remaining(&self) -> usize {
        self.llm.max_context.saturating_sub(self.cache.len())
    }

    pub(crate) fn feed(&mut self, tokens: &[u32]) -> Result<(), LlmError> {
        if tokens.is_empty() {
            return Ok(());
        }
        if tokens.len() > self.remaining() {
            return Err(LlmError::InvalidOutput(format!(
                "{} more tokens do not fit in the context of {} ({} used)",
                tokens.len(),
                self.llm.max_context,
                self.cache.len()
            )));
        }
        if let Some(batcher) = self.batcher.filter(|_| tokens.len() <= STEP_MAX_TOKENS) {
            let cache = std::mem::take(&mut self.cache);
            let (cache, logits) = batcher.step(&self.llm.model, tokens, cache)?;
            self.cache = cache;
            self.logits = Some(logits);
            return Ok(());
        }
        self.logits = Some(self.llm.model.forward(tokens, &mut self.cache)?);
        Ok(())
    }

    pub(crate) fn feed_text(&mut self, text: &str) -> Result<(), LlmError> {
        let ids = self.llm.chat.encode_text(text)?;
        self.feed(&ids)
    }

    fn logits(&self) -> Result<&[f32], LlmError> {
        self.logits
            .as_deref()
            .ok_or_else(|| LlmError::InvalidOutput("nothing was fed before sampling".into()))
    }

    /// The next token: the most likely one at temperature 0, else a sample.
    pub(crate) fn sample(&mut self) -> Result<u32, LlmError> {
        let temperature = self.temperature;
        if temperature <= 0.0 {
            return argmax(self.logits()?).map(|id| id as u32);
        }
        let logits = self.logits()?;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let weights: Vec<f32> = logits
            .iter()
            .map(|l| ((l - max) / temperature).exp())
            .collect();
        let total: f32 = weights.iter().sum();
        let mut target = self.rng.gen::<f32>() * total;
        for (id, weight) in weights.iter().enumerate() {
            if target < *weight {
                return Ok(id as u32);
            }
            target -= weight;
        }
        argmax(&weights).map(|id| id as u32)
    }

    /// The log-probability of `token` as the next token.
    pub(crate) fn log_prob(&self, token: u32) -> Result<f32, LlmError> {
        let logits = self.logits()?;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let total: f32 = logits.iter().map(|l| (l - max).exp()).sum();
        let logit = logits
            .get(token as usize)
            .copied()
            .unwrap_or(f32::NEG_INFINITY);
        Ok(logit - max - total.ln())
    }

    /// Rules out, for the next token only, every token `allowed` refuses.
    pub(crate) fn restrict_next(&mut self, allowed: impl Fn(u32) -> bool) -> Result<(), LlmError> {
        let logits = self
            .logits
            .as_mut()
            .ok_or_else(|| LlmError::InvalidOutput("nothing was fed before sampling".into()))?;
        for (id, logit) in logits.make_mut().iter_mut().enumerate() {
            if !allowed(id as u32) {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// [`Session::probabilities`] of `candidates` after `text`, which is fed and
    /// taken back: the cache and the logits are left as they were.
    pub(crate) fn weigh_after(
        &mut self,
        text: &str,
        candidates: &[u32],
    ) -> Result<Vec<f32>, LlmError> {
        let (len, logits) = (self.cache.len(), self.logits.clone());
        self.feed_text(text)?;
        let weights = self.probabilities(candidates);
        self.llm.model().truncate_cache(&mut self.cache, len)?;
        self.logits = logits;
        weights
    }

    /// The softmax of the next token's logits over `candidates` alone.
    fn probabilities(&self, candidates: &[u32]) -> Result<Vec<f32>, LlmError> {
        let scores = self.candidate_logits(candidates)?;
        let most = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if !most.is_finite() {
            return Err(LlmError::InvalidOutput(
                "the model gave none of the options a usable logit".into(),
            ));
        }
        let weights: Vec<f32> = scores.iter().map(|s| (s - most).exp()).collect();
        let total: f32 = weights.iter().sum();
        Ok(weights.into_iter().map(|w| w / total).collect())
    }

    /// The index into `candidates` of the most likely candidate token.
    pub(crate) fn choose(&self, candidates: &[u32]) -> Result<usize, LlmError> {
        argmax(&self.candidate_logits(candidates)?)
    }

    /// The next token's logit for each of `candidates` (−∞ for an id past the
    /// vocabulary).
    fn candidate_logits(&self, candidates: &[u32]) -> Result<Vec<f32>, LlmError> {
        let logits = self.logits()?;
        Ok(candidates
            .iter()
            .map(|&id| {
                logits
                    .get(id as usize)
                    .copied()
                    .unwrap_or(f32::NEG_INFINITY)
            })
            .collect())
    }
}

/// Feeds `tokens[i]` to `sessions[i]` in one batched decoding step. Every session
/// must have room for one more token.
pub(crate) fn feed_each(sessions: &mut [&mut Session<'_>], tokens: &[u32]) -> Result<(), LlmError> {
    let Some(first) = sessions.first() else {
        return Ok(());
    };
    let model = &first.llm.model;
    let mut caches: Vec<Cache> = sessions
        .iter_mut()
        .map(|s| std::mem::take(&mut s.cache))
        .collect();
    let logits = model.decode(tokens, &mut caches);
    for (session, cache) in sessions.iter_mut().zip(caches) {
        session.cache = cache;
    }
    for (session, row) in sessions.iter_mut().zip(logits?) {
        session.logits = Some(row);
    }
    Ok(())
}

/// The index of the largest score, the last of equal ones; NaN never wins.
fn argmax(scores: &[f32]) -> Result<usize, LlmError> {
    kura_simd::argmax(scores)
        .ok_or_else(|| LlmError::InvalidOutput("the model produced no usable logits".into()))
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::{LlmOptions, LocalLlm};
    use crate::chat::ChatMessage;
    use crate::model::smollm2;

    /// Every attempt starts from the prompt as it was, its cache cut back to the
    /// prompt's end and its logits those after the prompt, whatever the attempts
    /// before it appended; the first accepted answer is returned.
    #[test]
    fn each_attempt_starts_at_the_end_of_the_prompt() {
        let llm = smollm2();
        let mut prompt = llm.session(0.0, 0);
        prompt.feed(&[1, 520, 2_000, 33, 7_000]).expect("prompt");
        let prompt_logits = prompt.logits.clone();
        let mut starts = Vec::new();
        let answer = prompt.first_valid("test", |session| {
            starts.push(session.cache.len());
            assert_eq!(session.logits, prompt_logits);
            session.feed(&[100, 200])?;
            Ok(match starts.len() {
                1 | 2 => Err(format!("attempt {} refused", starts.len())),
                _ => Ok(session.cache.len()),
            })
        });
        assert_eq!(starts, [5, 5, 5]);
        assert_eq!(answer.expect("the third attempt is accepted"), 7);
    }

    /// Weighing options after a text leaves the session as it was: the next token
    /// is predicted from the same logits and continues to the same bits as in a
    /// session that never weighed; the weights are those of feeding the text.
    #[test]
    fn weighing_after_a_text_takes_the_text_back() {
        let llm = smollm2();
        let prompt = [1, 520, 2_000, 33, 7_000];
        let mut weighed = llm.session(0.0, 0);
        weighed.feed(&prompt).expect("prompt");
        let mut plain = llm.session(0.0, 0);
        plain.feed(&prompt).expect("prompt");

        let candidates = [300, 400];
        let weights = weighed
            .weigh_after("The answer is", &candidates)
            .expect("weigh");
        assert_eq!(weighed.cache.len(), prompt.len());
        assert_eq!(weighed.logits, plain.logits);

        let mut fed = llm.session(0.0, 0);
        fed.feed(&prompt).expect("prompt");
        fed.feed_text("The answer is").expect("text");
        assert_eq!(weights, fed.probabilities(&candidates).expect("weights"));
        assert!(
            (weights.iter().sum::<f32>() - 1.0).abs() < 1e-5,
            "{weights:?}"
        );

        weighed.feed(&[42]).expect("step");
        plain.feed(&[42]).expect("step");
        assert_eq!(weighed.logits, plain.logits);
    }

    /// Tokens taken back are as if never fed: what follows is predicted as in a
    /// session that never read them.
    #[test]
    fn tokens_taken_back_leave_no_trace() {
        let llm = smollm2();
        let prompt = [1, 520, 2_000, 33, 7_000];
        let mut taken = llm.session(0.0, 0);
        taken.feed(&prompt).expect("prompt");
        taken.feed(&[100]).expect("kept");
        taken.feed(&[200, 300]).expect("read past the end");
        taken.take_back(2).expect("take back");
        assert_eq!(taken.cache.len(), prompt.len() + 1);
        assert!(taken.logits.is_none(), "stale logits are dropped");
        taken.feed(&[42]).expect("step");

        let mut plain = llm.session(0.0, 0);
        plain.feed(&prompt).expect("prompt");
        plain.feed(&[100]).expect("kept");
        plain.feed(&[42]).expect("step");
        assert_eq!(taken.logits, plain.logits);
    }

    /// A GGUF shaped like Llama 3.2's, with made-up weights: its vocabulary and
    /// Llama 3.1's template, one small layer, the output tied to the embeddings,
    /// and `rope_factors` as `rope_freqs.weight`. The weights make `<|eot_id|>` the
    /// most likely next token after any text: its embedding's first value is twice
    /// every other token's, the output norm reads only that value, and the layer's
    /// small products cannot change its sign.
    fn write_llama3_gguf(
        path: &std::path::Path,
        rope_factors: &[f32],
        extra: &[(&str, candle_core::quantized::gguf_file::Value)],
    ) {
        write_edited_llama3_gguf(path, rope_factors, extra, |_| {});
    }

    /// [`write_llama3_gguf`] with its tensors changed by `edit` before writing.
    fn write_edited_llama3_gguf(
        path: &std::path::Path,
        rope_factors: &[f32],
        extra: &[(&str, candle_core::quantized::gguf_file::Value)],
        edit: impl FnOnce(&mut Vec<(&'static str, candle_core::quantized::QTensor)>),
    ) {
        use candle_core::quantized::gguf_file::{self, Value};
        use candle_core::quantized::{GgmlDType, QTensor};
        use candle_core::{Device, Tensor};

        let tokenizer = crate::tokenizer::reference::gguf_content("llama-bpe");
        let vocab = match &tokenizer.metadata["tokenizer.ggml.tokens"] {
            Value::Array(tokens) => tokens.len(),
            _ => unreachable!("written as an array"),
        };
        let eot: u32 = 128_009;
        let (width, ffn, kv_width) = (64usize, 128usize, 32usize);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut small = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04
        };
        let mut matrix =
            |rows: usize, cols: usize| -> Vec<f32> { (0..rows * cols).map(|_| small()).collect() };
        let q = |values: Vec<f32>, shape: (usize, usize), dtype| {
            let t = Tensor::from_vec(values, shape, &Device::Cpu).unwrap();
            QTensor::quantize(&t, dtype).unwrap()
        };
        let vector = |values: Vec<f32>| {
            let n = values.len();
            QTensor::quantize(
                &Tensor::from_vec(values, n, &Device::Cpu).unwrap(),
                GgmlDType::F32,
            )
            .unwrap()
        };
        let mut embedding = matrix(vocab, width);
        for (token, row) in embedding.chunks_mut(width).enumerate() {
            row[0] = if token == eot as usize { 20.0 } else { 10.0 };
        }
        let mut output_norm = vec![0.0; width];
        output_norm[0] = 1.0;
        // A projection of `rows` outputs over `cols` inputs, as the file holds it.
        let mut linear =
            |rows: usize, cols: usize| q(matrix(rows, cols), (rows, cols), GgmlDType::Q8_0);
        let tensors = vec![
            (
                "token_embd.weight",
                q(embedding, (vocab, width), GgmlDType::Q8_0),
            ),
            ("blk.0.attn_norm.weight", vector(vec![1.0; width])),
            ("blk.0.attn_q.weight", linear(width, width)),
            ("blk.0.attn_k.weight", linear(kv_width, width)),
            ("blk.0.attn_v.weight", linear(kv_width, width)),
            ("blk.0.attn_output.weight", linear(width, width)),
            ("blk.0.ffn_norm.weight", vector(vec![1.0; width])),
            ("blk.0.ffn_gate.weight", linear(ffn, width)),
            ("blk.0.ffn_up.weight", linear(ffn, width)),
            ("blk.0.ffn_down.weight", linear(width, ffn)),
            ("output_norm.weight", vector(output_norm)),
            ("rope_freqs.weight", vector(rope_factors.to_vec())),
        ];
        let mut tensors = tensors;
        edit(&mut tensors);
        let template = "{{- bos_token }}{{- \"Cutting Knowledge Date: December 2023\\n\" }}\
            {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}";
        let mut metadata: Vec<(String, Value)> = tokenizer.metadata.into_iter().collect();
        metadata.extend([
            (
                "general.architecture".to_string(),
                Value::String("llama".into()),
            ),
            ("llama.block_count".to_string(), Value::U32(1)),
            ("llama.context_length".to_string(), Value::U32(131_072)),
            (
                "llama.embedding_length".to_string(),
                Value::U32(width as u32),
            ),
            (
                "llama.feed_forward_length".to_string(),
                Value::U32(ffn as u32),
            ),
            ("llama.attention.head_count".to_string(), Value::U32(4)),
            ("llama.attention.head_count_kv".to_string(), Value::U32(2)),
            (
                "llama.attention.layer_norm_rms_epsilon".to_string(),
                Value::F32(1e-5),
            ),
            ("llama.rope.freq_base".to_string(), Value::F32(500_000.0)),
            (
                "tokenizer.ggml.bos_token_id".to_string(),
                Value::U32(128_000),
            ),
            ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(eot)),
            (
                "tokenizer.chat_template".to_string(),
                Value::String(template.into()),
            ),
        ]);
        metadata.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (*k, v)).collect();
        let mut file = std::fs::File::create(path).unwrap();
        gguf_file::write(&mut file, &metadata, &tensors).unwrap();
    }

    /// A Llama 3 GGUF loads as one: its tokenizer from the metadata, Llama 3.1's
    /// template read from it, the output tied to the embeddings, the RoPE factors
    /// read; `<|eot_id|>`, the token these weights favour, comes next and is a stop.
    #[test]
    fn a_llama3_gguf_loads_with_its_template_and_stops_at_eot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("llama3.gguf");
        write_llama3_gguf(&path, &[1.0, 1.0, 2.0, 8.0, 32.0, 32.0, 32.0, 32.0], &[]);
        let llm = LocalLlm::load(&path, &Device::Cpu, LlmOptions::default()).expect("loads");
        let (eot, end_of_text) = (128_009, 128_001);
        assert!(llm.is_stop(eot) && llm.is_stop(end_of_text));
        assert!(!llm.is_stop(llm.tokenizer().token_to_id("Hello").unwrap()));

        let messages = [ChatMessage::system("Be brief."), ChatMessage::user("Hello")];
        let prompt = llm.chat().prompt(&messages).unwrap();
        assert_eq!(prompt[0], 128_000, "<|begin_of_text|> first");
        let text = llm.decode(&prompt).unwrap();
        assert!(text.contains("Cutting Knowledge Date"), "{text}");
        let mut session = llm.session(0.0, 0);
        session.feed(&prompt).unwrap();
        assert_eq!(session.sample().unwrap(), eot);
        // The whole answer runs through the Llama 3 prompt. (Its text is empty
        // whether or not it stopped, control tokens being left out of it: the
        // stop itself is `is_stop` above.)
        llm.generate(&messages, 8).expect("an answer");

        // RoPE factors for the wrong head size are refused by name.
        write_llama3_gguf(&path, &[1.0; 5], &[]);
        let error = LocalLlm::load(&path, &Device::Cpu, LlmOptions::default())
            .err()
            .expect("5 factors for 8 pairs");
        let message = error.to_string();
        assert!(
            message.contains("rope_freqs.weight") && message.contains("llama3.gguf"),
            "{message}"
        );
    }

    /// Loading the GGUF at `path` fails with an error that holds every one of `words`.
    fn assert_refused(path: &std::path::Path, words: &[&str]) {
        let error = LocalLlm::load(path, &Device::Cpu, LlmOptions::default())
            .err()
            .expect("refused");
        let message = error.to_string();
        for word in words {
            assert!(message.contains(word), "{word} in {message}");
        }
    }

    /// RoPE that would turn at the wrong rate without a word is refused by name:
    /// YaRN's scaling, and rotating only part of each head. Linear scaling loads.
    #[test]
    fn rope_we_cannot_run_is_refused_by_name() {
        use candle_core::quantized::gguf_file::Value;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scaled.gguf");
        let factors = [1.0; 8];
        let refused = |extra: &[(&str, Value)], words: &[&str]| {
            write_llama3_gguf(&path, &factors, extra);
            assert_refused(&path, words);
        };
        refused(
            &[("llama.rope.scaling.type", Value::String("yarn".into()))],
            &["llama.rope.scaling.type", "`yarn`", "scaled.gguf"],
        );
        refused(
            &[("llama.rope.dimension_count", Value::U32(8))],
            &["llama.rope.dimension_count", "8"],
        );
        write_llama3_gguf(
            &path,
            &factors,
            &[
                ("llama.rope.scaling.type", Value::String("linear".into())),
                ("llama.rope.scaling.factor", Value::F32(4.0)),
                ("llama.rope.dimension_count", Value::U32(16)),
            ],
        );
        LocalLlm::load(&path, &Device::Cpu, LlmOptions::default()).expect("linear scaling loads");
    }

    /// A file whose tensors or settings disagree with each other is refused at
    /// load, naming the tensor or key, instead of failing in a product mid-run
    /// (a panic, before these checks) or writing nothing usable.
    #[test]
    fn a_file_that_contradicts_itself_is_refused_by_name() {
        use candle_core::quantized::gguf_file::Value;
        use candle_core::quantized::{GgmlDType, QTensor};
        use candle_core::{Device, Tensor};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("contradicts.gguf");
        let factors = [1.0; 8];
        let refused = |words: &[&str]| assert_refused(&path, words);
        let zeros = |shape: &[usize]| {
            let t = Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu).unwrap();
            QTensor::quantize(&t, GgmlDType::F32).unwrap()
        };
        let replace = |name: &'static str, shape: &'static [usize]| {
            move |tensors: &mut Vec<(&'static str, QTensor)>| {
                let slot = tensors.iter_mut().find(|(n, _)| *n == name).unwrap();
                slot.1 = zeros(shape);
            }
        };
        // The layer is 64 wide with keys of 32 (see `write_llama3_gguf`).
        write_edited_llama3_gguf(
            &path,
            &factors,
            &[],
            replace("blk.0.attn_k.weight", &[16, 64]),
        );
        refused(&[
            "`blk.0.attn_k.weight`",
            "[16, 64]",
            "[32, 64]",
            "contradicts.gguf",
        ]);
        write_edited_llama3_gguf(&path, &factors, &[], replace("blk.0.ffn_norm.weight", &[7]));
        refused(&["`blk.0.ffn_norm.weight`", "[7]", "[64]"]);
        write_edited_llama3_gguf(
            &path,
            &factors,
            &[],
            replace("blk.0.ffn_down.weight", &[64, 96]),
        );
        refused(&["`blk.0.ffn_down.weight`", "[64, 128]"]);
        write_edited_llama3_gguf(
            &path,
            &factors,
            &[],
            replace("token_embd.weight", &[1000, 64]),
        );
        refused(&["`token_embd.weight`", "only 1000 rows", "the tokenizer has"]);

        for (key, value) in [
            ("llama.context_length", Value::U32(0)),
            ("llama.block_count", Value::U32(0)),
            ("llama.attention.layer_norm_rms_epsilon", Value::F32(0.0)),
            ("llama.rope.freq_base", Value::F32(f32::NAN)),
            ("tokenizer.ggml.eos_token_id", Value::U32(1_000_000_000)),
            // candle divides by it.
            ("general.alignment", Value::U32(0)),
        ] {
            write_llama3_gguf(&path, &factors, &[(key, value)]);
            refused(&[key]);
        }
        // The writer places tensors every 32 bytes: some fall between 64s.
        write_llama3_gguf(&path, &factors, &[("general.alignment", Value::U32(64))]);
        refused(&["alignment (64)", "corrupt"]);

        write_llama3_gguf(&path, &factors, &[]);
        LocalLlm::load(&path, &Device::Cpu, LlmOptions::default())
            .expect("the file as written loads");
    }
}
