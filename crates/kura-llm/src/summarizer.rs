//! [`LlmSummarizer`]: Clio's facets of a conversation, written by a local model through
//! template-forced JSON (see `structured`), validated, and retried with light sampling
//! when a value is unusable. Two facets are not left to the model's words: the
//! concerning score comes from its odds (see [`concerning_score`]), and the languages
//! from a detector wherever it can place the text (see `language`). (The email
//! addresses and file paths the model copies are taken out by the pipeline, for
//! every summariser: see `kura_core::privacy`.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use kura_core::text::capitalized;
use kura_core::{BoxError, Conversation, ConversationSummary, Role, Summarizer};

use crate::batch::{Leaving, StepBatcher};
use crate::chat::ChatRole;
use crate::error::LlmError;
use crate::fit::{fit_transcript, Turn};
use crate::language::detect_languages;
use crate::llm::{LocalLlm, Session, Word};
use crate::prefix::SharedPrefix;
use crate::prompts::{
    REQUEST_PREFIX, SAFETY_OPTIONS, SAFETY_PREFIX, SUMMARY_PREFIX, SUMMARY_PROMPT_VERSION,
    SUMMARY_REQUEST, SUMMARY_SYSTEM, TASK_PREFIX,
};
use crate::structured::{any_end, split_errors, split_list, FieldRules, FormWriter};

/// Token caps per field; their sum plus the skeleton is kept free in the context.
const SUMMARY_TOKENS: usize = 80;
const REQUEST_TOKENS: usize = 48;
const TASK_TOKENS: usize = 40;
const LANGUAGE_TOKENS: usize = 16;
const ERROR_TOKENS: usize = 48;
const SKELETON_TOKENS: usize = 96;
const RESERVED_TOKENS: usize = SUMMARY_TOKENS
    + REQUEST_TOKENS
    + TASK_TOKENS
    + LANGUAGE_TOKENS
    + ERROR_TOKENS
    + SKELETON_TOKENS;
/// Below this, there is no room to show the conversation at all.
const MIN_TRANSCRIPT_TOKENS: usize = 64;

const SCORES: [u8; 5] = [1, 2, 3, 4, 5];

/// Conversations written at once. Decoding one token costs a pass over the weights
/// whatever the batch (Qwen's 8-bit copies are 500 MB; two cores of the Xeon stream
/// about 20 GB/s); with 32 sequences a pass is bound by arithmetic rather than by
/// memory. Qwen summarised 64 conversations at 0.70 a second with 32 in flight,
/// 0.65 with 16; on the Xeon without AMX, 96 at 0.81 with 48 against 0.81–0.88
/// with 32, for 210 MB more. Their caches cost about 11 MB each.
const SEQUENCES: usize = 32;

pub struct LlmSummarizer {
    llm: Arc<LocalLlm>,
    prefix: SharedPrefix,
}

impl LlmSummarizer {
    /// Refuses a context too small to show any conversation: every one would fail
    /// alike, so the run stops before the first instead of recording each as failed.
    pub fn new(llm: Arc<LocalLlm>) -> Result<Self, LlmError> {
        let summarizer = LlmSummarizer {
            llm,
            prefix: SharedPrefix::new(SUMMARY_SYSTEM),
        };
        summarizer.check_context()?;
        Ok(summarizer)
    }

    fn check_context(&self) -> Result<(), LlmError> {
        let max_context = self.llm.max_context();
        let needed = self.least_context()?;
        if max_context < needed {
            return Err(LlmError::ContextTooSmall {
                max_context,
                needed,
            });
        }
        Ok(())
    }

    /// The facets of one conversation, or why none could be written.
    pub fn summarize_one(
        &self,
        conversation: &Conversation,
    ) -> Result<ConversationSummary, LlmError> {
        self.summarize_with(conversation, None)
    }

    /// [`LlmSummarizer::summarize_one`], decoding through `batcher` when given.
    fn summarize_with(
        &self,
        conversation: &Conversation,
        batcher: Option<&StepBatcher>,
    ) -> Result<ConversationSummary, LlmError> {
        if conversation.messages.is_empty() {
            return Err(LlmError::InvalidOutput(format!(
                "conversation {} has no messages",
                conversation.chat_id
            )));
        }
        let mut prompt = self.prompt_session(conversation)?.with_batcher(batcher);
        // Read once: the odds do not depend on the attempt (sampled retries draw
        // from the same logits), and the feed is taken back.
        let harm = FormWriter::new(&mut prompt).weigh("safety", SAFETY_PREFIX, &SAFETY_OPTIONS)?;
        let concerning_score = concerning_score(harm[1]);
        let languages = detect_languages(conversation);
        let what = format!("conversation {}", conversation.chat_id);
        let facets = prompt.first_valid(&what, |session| {
            let facets = fill_facets(session, concerning_score, languages.as_deref())?;
            Ok(facets.validate().map(|()| facets))
        })?;
        Ok(facets.into_summary(conversation))
    }

    /// The conversation as the model is shown it, fitted into `budget` tokens: the
    /// opening request and the latest turns, with a marker where messages were left out.
    pub fn transcript(
        &self,
        conversation: &Conversation,
        budget: usize,
    ) -> Result<String, LlmError> {
        fit_transcript(
            self.llm.chat().text_tokenizer(),
            &turns(conversation),
            budget,
        )
    }

    /// A session that has read the whole prompt, up to the opening of the answer.
    fn prompt_session(&self, conversation: &Conversation) -> Result<Session<'_>, LlmError> {
        let llm = &*self.llm;
        let chat = llm.chat();
        let mut session = self.prefix.session(llm, 0.0, 0)?;
        let turns = turns(conversation);
        let room = llm
            .max_context()
            .saturating_sub(session_len(&session, llm) + RESERVED_TOKENS);
        let mut budget = room.saturating_sub(self.wrap("")?.len());
        loop {
            if budget < MIN_TRANSCRIPT_TOKENS {
                return Err(LlmError::ContextTooSmall {
                    max_context: llm.max_context(),
                    needed: self.least_context()?,
                });
            }
            let transcript = fit_transcript(chat.text_tokenizer(), &turns, budget)?;
            let ids = self.wrap(&transcript)?;
            // Joining texts can tokenise a little differently from counting them apart.
            if ids.len() <= room {
                session.feed(&ids)?;
                return Ok(session);
            }
            budget = budget * 4 / 5;
        }
    }
}

impl LlmSummarizer {
    /// The context that holds the instructions, the answer's room and
    /// [`MIN_TRANSCRIPT_TOKENS`] of conversation.
    fn least_context(&self) -> Result<usize, LlmError> {
        Ok(self.prefix.tokens(&self.llm)?.len()
            + self.wrap("")?.len()
            + RESERVED_TOKENS
            + MIN_TRANSCRIPT_TOKENS)
    }

    /// The prompt's tokens after the shared prefix: the transcript, the request, and
    /// the opening of the answer.
    fn wrap(&self, transcript: &str) -> Result<Vec<u32>, LlmError> {
        let chat = self.llm.chat();
        let mut ids = chat.encode_text(&format!(
            "<conversation>\n{transcript}</conversation>\n\n{SUMMARY_REQUEST}"
        ))?;
        ids.extend(chat.close()?);
        ids.extend(chat.open(ChatRole::Assistant)?);
        Ok(ids)
    }
}

fn turns(conversation: &Conversation) -> Vec<Turn<'_>> {
    conversation
        .messages
        .iter()
        .map(|m| Turn {
            label: match m.role {
                Role::User => "User",
                Role::Assistant => "Assistant",
            },
            content: &m.content,
        })
        .collect()
}

fn session_len(session: &Session<'_>, llm: &LocalLlm) -> usize {
    llm.max_context() - session.remaining()
}

/// The facets as the model wrote them, before validation.
struct Facets {
    summary: String,
    request: String,
    task: String,
    languages: Vec<String>,
    concerning_score: u8,
    user_frustration: u8,
    assistant_errors: Vec<String>,
}

/// The facets written after the prompt, with the concerning score already read
/// from the model's odds (see [`concerning_score`]). The languages are the
/// detector's where it placed the conversation (written into the answer as the
/// model would have written them, so the facets after them read the same JSON),
/// and the model's otherwise.
fn fill_facets(
    session: &mut Session<'_>,
    concerning_score: u8,
    detected: Option<&[String]>,
) -> Result<Facets, LlmError> {
    let mut form = FormWriter::new(session);
    let summary = form.text_with(
        "summary",
        SUMMARY_PREFIX,
        SUMMARY_TOKENS,
        2,
        FieldRules::PROSE,
    )?;
    let request = form.text_with(
        "request",
        REQUEST_PREFIX,
        REQUEST_TOKENS,
        1,
        FieldRules {
            cut: assistant_clause,
            ..FieldRules::PROSE
        },
    )?;
    let task = form.text_with(
        "task",
        TASK_PREFIX,
        TASK_TOKENS,
        1,
        FieldRules {
            cut: assistant_clause,
            barred: task_barred_words,
            ..FieldRules::PROSE
        },
    )?;
    let languages = match detected {
        Some(languages) => {
            form.string("natural_languages", &as_written(languages));
            languages.to_vec()
        }
        None => normalize_languages(&form.choice_then_text(
            "natural_languages",
            LANGUAGES,
            LANGUAGE_TOKENS,
            false,
            &any_end,
        )?),
    };
    form.number("concerning_score", concerning_score);
    let user_frustration = form.digit("user_frustration", &SCORES)?;
    let assistant_errors = form.text("assistant_errors", "", ERROR_TOKENS, 2)?;
    Ok(Facets {
        summary,
        request,
        task,
        languages,
        concerning_score,
        user_frustration,
        assistant_errors: split_errors(&assistant_errors),
    })
}

/// Where a request or a task goes on to what the assistant did (", and the
/// assistant performed the task of…", ", but the assistant did not…"): the byte
/// index of the comma or space before the conjunction, once something comes
/// before it. That is the summary's to say. Qwen 0.5B ran on so in a fifth of the
/// requests and tasks of 216 real and example conversations (on a Zen 3 at
/// `f9103c9`), and a cluster named after such a request carried the answer in
/// its name.
fn assistant_clause(text: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    ASSISTANT_CLAUSES
        .iter()
        .filter_map(|clause| lower.find(clause))
        .min()
        .map(|at| lower[..at].trim_end_matches(',').len())
        .filter(|&end| !text[..end].trim().is_empty())
}

/// The words a task may not go on with after `text`, what the model has
/// written after "The task is to".
///
/// At the start, "perform" and "the": prompted with "the task the assistant
/// performed", Qwen 0.5B opened 35 of 216 tasks of real and example
/// conversations with "perform", mostly as filler ("perform the task of
/// providing information about…", "perform a greeting") or an echo of the
/// instructions ("perform a task that the assistant performed, in one
/// sentence"), and one with "the assistant performed, in one sentence". Barred,
/// it writes the verb that followed ("provide information about…"). ("The" and
/// the words it begins cannot follow "to" in a task.)
///
/// After a verb of helping and "the", "assistant": the task is what the
/// assistant does, and Qwen 0.5B went on with "assistant" in 19 of 216 tasks
/// ("help the assistant learn Korean vocabulary", "assist the assistant in
/// writing a fantasy story"). Barred, it names whom the assistant helped. After
/// any other word "assistant" stays open: "a cover letter for a Marketing
/// Assistant position".
///
/// Asked before every token of a task, so it reads only the last two words.
fn task_barred_words(text: &str) -> &'static [Word] {
    let mut last = text.split_whitespace().rev();
    match (last.next(), last.next()) {
        (None, _) => &[Word::Perform, Word::The],
        (Some(the), Some(verb))
            if the.eq_ignore_ascii_case("the")
                && HELPING
                    .iter()
                    .any(|helping| verb.eq_ignore_ascii_case(helping)) =>
        {
            &[Word::Assistant]
        }
        _ => &[],
    }
}

const HELPING: &[&str] = &[
    "help", "assist", "perform", "allow", "enable", "support", "guide",
];

const ASSISTANT_CLAUSES: &[&str] = &[
    " and the assistant",
    " but the assistant",
    " while the assistant",
    " whereas the assistant",
];

/// Languages as the instructions ask for them: capitalised English names separated
/// by commas ("German, English").
fn as_written(languages: &[String]) -> String {
    let capitalised: Vec<String> = languages.iter().map(|l| capitalized(l)).collect();
    capitalised.join(", ")
}

/// Clio's 1–5 concerning score from how likely the model finds the request harmful
/// rather than harmless: 1 while it leans to harmless, then 2 to 5 in four equal
/// steps of its odds for harmful, so 5 is a request it is sure is harmful.
fn concerning_score(harmful: f32) -> u8 {
    let lean = ((harmful - 0.5) / 0.125).ceil().clamp(0.0, 4.0);
    1 + lean as u8
}

/// The first language is chosen among these (the most used languages online), so
/// every summary names at least one; the model may add others after it. Capitalised,
/// as models write them, so that each name's first token is the name itself.
const LANGUAGES: &[&str] = &[
    "English",
    "Chinese",
    "Spanish",
    "French",
    "German",
    "Russian",
    "Portuguese",
    "Japanese",
    "Korean",
    "Italian",
    "Arabic",
    "Hindi",
    "Dutch",
    "Turkish",
    "Polish",
    "Vietnamese",
    "Indonesian",
    "Ukrainian",
    "Persian",
    "Swedish",
    "Czech",
    "Greek",
    "Hebrew",
    "Thai",
    "Romanian",
    "Hungarian",
    "Danish",
    "Finnish",
    "Norwegian",
    "Bengali",
];

/// Names small models put among natural languages although the prompt says not to.
const NOT_NATURAL_LANGUAGES: &[&str] = &[
    "python",
    "javascript",
    "typescript",
    "java",
    "c",
    "rust",
    "go",
    "golang",
    "ruby",
    "php",
    "kotlin",
    "swift",
    "scala",
    "perl",
    "haskell",
    "sql",
    "html",
    "css",
    "bash",
    "shell",
    "powershell",
    "json",
    "yaml",
    "xml",
    "markdown",
    "latex",
    "r",
    "matlab",
    "lua",
    "dart",
];

/// Lowercase names made of letters only; anything else the model wrote (symbols,
/// programming languages) is dropped.
fn normalize_languages(value: &str) -> Vec<String> {
    split_list(value)
        .into_iter()
        .map(|l| l.to_lowercase())
        .filter(|l| {
            l.split_whitespace().count() <= 3
                && l.chars().all(|c| c.is_alphabetic() || c == ' ')
                && !NOT_NATURAL_LANGUAGES.contains(&l.as_str())
        })
        .collect()
}

/// True when `value` says something beyond the `prefix` we wrote.
fn continues(value: &str, prefix: &str, min_words: usize) -> bool {
    let rest = value.strip_prefix(prefix).unwrap_or(value);
    rest.split_whitespace()
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .count()
        >= min_words
}

impl Facets {
    fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if !continues(&self.summary, SUMMARY_PREFIX, 2) {
            problems.push(format!("summary is empty: {:?}", self.summary));
        }
        if !continues(&self.request, REQUEST_PREFIX, 1) {
            problems.push(format!("request is empty: {:?}", self.request));
        }
        if !continues(&self.task, TASK_PREFIX, 1) {
            problems.push(format!("task is empty: {:?}", self.task));
        }
        if self.languages.is_empty() {
            problems.push("no natural language named".to_string());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join(", "))
        }
    }

    fn into_summary(self, conversation: &Conversation) -> ConversationSummary {
        ConversationSummary {
            summary: self.summary,
            request: Some(self.request),
            topic: None,
            languages: Some(self.languages),
            task: Some(self.task),
            concerning_score: Some(self.concerning_score),
            user_frustration: Some(self.user_frustration),
            assistant_errors: Some(self.assistant_errors),
            chat_id: conversation.chat_id.clone(),
            metadata: conversation.metadata.clone(),
            embedding: None,
        }
    }
}

impl Summarizer for LlmSummarizer {
    fn id(&self) -> String {
        let options = self.llm.options();
        format!(
            "llm-summarizer/{SUMMARY_PROMPT_VERSION}/{}/ctx{}/t{}/s{}",
            self.llm.model_id(),
            self.llm.max_context(),
            options.temperature,
            options.seed
        )
    }

    fn summarize(
        &self,
        conversations: &[Conversation],
    ) -> Vec<Result<ConversationSummary, BoxError>> {
        let mut results: Vec<Option<Result<ConversationSummary, BoxError>>> =
            conversations.iter().map(|_| None).collect();
        self.summarize_each(conversations, &mut |i, result| results[i] = Some(result));
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err("no result".into())))
            .collect()
    }

    /// Up to `SEQUENCES` conversations in flight, each written by its own thread,
    /// their decoding steps batched (see `batch`); a thread that finishes one takes
    /// the next, so the batch stays full until the list runs out.
    fn summarize_each(
        &self,
        conversations: &[Conversation],
        done: &mut dyn FnMut(usize, Result<ConversationSummary, BoxError>),
    ) {
        let threads = SEQUENCES.min(conversations.len());
        let model = self.llm.model();
        let batcher = StepBatcher::new(threads);
        let next = AtomicUsize::new(0);
        let (sender, results) = mpsc::channel();
        std::thread::scope(|scope| {
            for _ in 0..threads {
                let sender = sender.clone();
                let (batcher, next) = (&batcher, &next);
                scope.spawn(move || {
                    let _leaving = Leaving { batcher, model };
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(conversation) = conversations.get(i) else {
                            break;
                        };
                        let result = self.summarize_with(conversation, Some(batcher));
                        if sender.send((i, result)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(sender);
            for (i, result) in results {
                done(i, result.map_err(BoxError::from));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_concerning_score_is_1_while_the_model_leans_to_harmless() {
        for (harmful, score) in [
            (0.0, 1),
            (0.3, 1),
            (0.5, 1),
            (0.55, 2),
            (0.7, 3),
            (0.8, 4),
            (0.9, 5),
            (1.0, 5),
        ] {
            assert_eq!(concerning_score(harmful), score, "{harmful}");
        }
    }

    #[test]
    fn a_task_may_not_go_on_to_the_assistant_after_a_verb_of_helping() {
        for text in [" help the", " perform the", " Assist the"] {
            assert_eq!(task_barred_words(text), [Word::Assistant], "{text}");
        }
        for text in [" the", " help", " a task that the", " help them"] {
            assert_eq!(task_barred_words(text), [], "{text}");
        }
    }

    #[test]
    fn a_task_may_not_open_with_perform_or_the() {
        for text in ["", " "] {
            assert_eq!(
                task_barred_words(text),
                [Word::Perform, Word::The],
                "{text:?}"
            );
        }
        assert_eq!(task_barred_words(" provide"), []);
    }

    /// Requests and tasks Qwen 0.5B wrote for real conversations.
    #[test]
    fn a_request_ends_before_what_the_assistant_did() {
        for (written, kept) in [
            (
                " translate a language model to Spanish, and the assistant performed this translation.",
                " translate a language model to Spanish",
            ),
            (
                " provide information about a specific topic, but the assistant did not provide any",
                " provide information about a specific topic",
            ),
            (
                " cook the onions without them turning mushy, while the Assistant suggested using a pot",
                " cook the onions without them turning mushy",
            ),
            (
                " explain the uses of the tool and the assistant's natural languages are",
                " explain the uses of the tool",
            ),
        ] {
            let end = assistant_clause(written).expect(written);
            assert_eq!(&written[..end], kept);
        }
        for whole in [
            " provide the first 7 digits of pi.",
            " help the assistant plan a vegetarian meal",
            " and the assistant",
        ] {
            assert_eq!(assistant_clause(whole), None, "{whole}");
        }
    }
}
