//! Template-forced JSON: the program writes the skeleton (`{"summary": "`, `", "task": "`…)
//! and the model only fills values, so a small model cannot produce invalid structure.
//!
//! A string value ends at the model's first unescaped `"` (or raw newline); a token that
//! carries the quote plus more text (`."}`) is cut at the quote and never fed, and the
//! text before the quote is fed together with the next piece of skeleton, so the KV
//! cache always holds exactly the JSON we record. Integer fields are the argmax over
//! the digit tokens allowed, so they are always in range.

use crate::error::LlmError;
use crate::llm::{Session, Word};

pub(crate) struct FormWriter<'s, 'a> {
    session: &'s mut Session<'a>,
    /// Text the model has not seen yet; it is fed together with the next key.
    pending: String,
    fields: usize,
}

impl<'s, 'a> FormWriter<'s, 'a> {
    pub(crate) fn new(session: &'s mut Session<'a>) -> Self {
        FormWriter {
            session,
            pending: "{".to_string(),
            fields: 0,
        }
    }

    fn open_key(&mut self, key: &str) {
        let opening = self.key_opening(key);
        self.pending.push_str(&opening);
        self.fields += 1;
    }

    /// What opens the next field, `key`: the separator after the fields before it,
    /// the quoted key and the colon.
    fn key_opening(&self, key: &str) -> String {
        let separator = if self.fields > 0 { ", " } else { "" };
        format!("{separator}\"{key}\": ")
    }

    fn flush(&mut self) -> Result<(), LlmError> {
        let text = std::mem::take(&mut self.pending);
        self.session.feed_text(&text)
    }

    /// A string value that starts with `prefix` (written by us, part of the value) and
    /// continues for at most `max_tokens` model tokens and `max_sentences` sentences:
    /// small models rarely close a string on their own and ramble on.
    pub(crate) fn text(
        &mut self,
        key: &str,
        prefix: &str,
        max_tokens: usize,
        max_sentences: usize,
    ) -> Result<String, LlmError> {
        self.text_with(key, prefix, max_tokens, max_sentences, FieldRules::NONE)
    }

    /// [`FormWriter::text`] under a field's own `rules`.
    pub(crate) fn text_with(
        &mut self,
        key: &str,
        prefix: &str,
        max_tokens: usize,
        max_sentences: usize,
        rules: FieldRules,
    ) -> Result<String, LlmError> {
        self.open_key(key);
        self.pending.push('"');
        self.pending.push_str(prefix);
        self.flush()?;
        let (raw, unfed) = self.decode_string(max_tokens, max_sentences, &any_end, rules)?;
        let stop = if rules.full_stop && wants_full_stop(&raw) {
            "."
        } else {
            ""
        };
        self.pending = format!("{unfed}{stop}\"");
        Ok(recorded_value(prefix, &raw, stop))
    }

    /// A list of exactly `count` one-line strings of at most `max_tokens` each: the
    /// program writes the brackets and separators, so the list always has its length.
    pub(crate) fn text_list(
        &mut self,
        key: &str,
        count: usize,
        max_tokens: usize,
    ) -> Result<Vec<String>, LlmError> {
        self.open_key(key);
        self.pending.push('[');
        let mut items = Vec::with_capacity(count);
        for i in 0..count {
            if i > 0 {
                self.pending.push_str(", ");
            }
            self.pending.push('"');
            self.flush()?;
            let (raw, unfed) = self.decode_string(max_tokens, 1, &any_end, FieldRules::NONE)?;
            self.pending = format!("{unfed}\"");
            items.push(clean_value(&raw));
        }
        self.pending.push(']');
        Ok(items)
    }

    /// A string value whose first word is one of `options` (chosen by the logits of
    /// each option's first token, so it is always one of them), then continued freely
    /// like [`FormWriter::text`]. Used where a small model may otherwise write nothing
    /// usable: the conversation's language, and the verb a cluster name opens with.
    /// With `whole_word` the option is written as a whole word: the model's next token
    /// must open a new one, or a chosen "Help" could grow into "Helpful". Where the
    /// model would close the value (option included) on one that `refused` refuses,
    /// it may not close there and says more: where two clusters are alike, their
    /// names read the same unless the second is made to go on. (The names taken
    /// are not shown to the model: shown them, Qwen 0.5B copied one for six of the
    /// example's eight clusters.)
    pub(crate) fn choice_then_text(
        &mut self,
        key: &str,
        options: &[&str],
        max_tokens: usize,
        whole_word: bool,
        refused: &dyn Fn(&str) -> bool,
    ) -> Result<String, LlmError> {
        self.open_key(key);
        self.pending.push('"');
        self.flush()?;
        let first_tokens = self.first_tokens(options)?;
        let chosen = options[self.session.choose(&first_tokens)?];
        self.session.feed_text(chosen)?;
        if whole_word {
            let llm = self.session.llm();
            self.session.restrict_next(|id| llm.starts_word(id))?;
        }
        let refused_end = |raw: &str| refused(&format!("{chosen}{raw}"));
        let (raw, unfed) = self.decode_string(max_tokens, 1, &refused_end, FieldRules::NONE)?;
        self.pending = format!("{unfed}\"");
        Ok(clean_value(&format!("{chosen}{raw}")))
    }

    /// How likely the model finds each of `options` to end a string value `key`
    /// that `prefix` opens, written next (by each option's first token, among the
    /// options alone). Nothing is written: the key, the prefix and the option are
    /// fed, read and taken back, so the answer goes on as if it had not been asked.
    /// Used where a small model has a judgement but no calibrated number for it:
    /// asked for a digit from 1 to 5, Qwen 0.5B answered 3 or 4 for proofs and bomb
    /// recipes alike, while whether a request "is harmless" or "is harmful"
    /// separates the two. Taken back, because SmolLM2 then copied its judgement
    /// into the summary that followed it.
    pub(crate) fn weigh(
        &mut self,
        key: &str,
        prefix: &str,
        options: &[&str],
    ) -> Result<Vec<f32>, LlmError> {
        let question = format!("{}{}\"{prefix}", self.pending, self.key_opening(key));
        let first_tokens = self.first_tokens(options)?;
        if (1..first_tokens.len()).any(|i| first_tokens[..i].contains(&first_tokens[i])) {
            return Err(LlmError::InvalidOutput(format!(
                "the options {options:?} do not all start with different tokens, so the \
                 model's choice between them cannot be read off one set of logits"
            )));
        }
        self.session.weigh_after(&question, &first_tokens)
    }

    /// A string value chosen by the program, written as the model would have.
    pub(crate) fn string(&mut self, key: &str, value: &str) {
        self.open_key(key);
        let quoted = serde_json::Value::from(value).to_string();
        self.pending.push_str(&quoted);
    }

    /// An integer value chosen by the program, written as the model would have.
    pub(crate) fn number(&mut self, key: &str, value: u8) {
        self.open_key(key);
        self.pending.push_str(&value.to_string());
    }

    /// Each option's first token, by which the model's logits choose among them.
    fn first_tokens(&self, options: &[&str]) -> Result<Vec<u32>, LlmError> {
        let chat = self.session.llm().chat();
        let mut first_tokens = Vec::with_capacity(options.len());
        for option in options {
            let ids = chat.encode_text(option)?;
            let first = ids.first().copied().ok_or_else(|| {
                LlmError::InvalidOutput(format!("option {option:?} encodes to no tokens"))
            })?;
            first_tokens.push(first);
        }
        Ok(first_tokens)
    }

    /// An integer in `choices` (single digits), chosen by the model's logits over them.
    pub(crate) fn digit(&mut self, key: &str, choices: &[u8]) -> Result<u8, LlmError> {
        self.open_key(key);
        self.flush()?;
        let chat = self.session.llm().chat();
        let mut ids = Vec::with_capacity(choices.len());
        for choice in choices {
            match chat.encode_text(&choice.to_string())?.as_slice() {
                [id] => ids.push(*id),
                other => {
                    return Err(LlmError::InvalidOutput(format!(
                        "the digit {choice} is {} tokens in this vocabulary",
                        other.len()
                    )))
                }
            }
        }
        let chosen = choices[self.session.choose(&ids)?];
        self.pending = chosen.to_string();
        Ok(chosen)
    }

    /// Decodes until the string's end; returns the value's raw text and the part of it
    /// that the model has not been fed (the text before a quote inside the last token).
    /// Where `refused_end` refuses the value the model would end on, or the end is a
    /// quote that opens a quotation, that end is forbidden once and the model goes on.
    /// The value also ends before an aside, and follows the field's `rules`.
    fn decode_string(
        &mut self,
        max_tokens: usize,
        max_sentences: usize,
        refused_end: &dyn Fn(&str) -> bool,
        rules: FieldRules,
    ) -> Result<(String, String), LlmError> {
        let llm = self.session.llm();
        let mut ids = Vec::new();
        // The text after each token fed, the last of which is all the model has read.
        let mut fed: Vec<String> = Vec::new();
        // The value's length in tokens where a close was last refused: refused once,
        // an end the model cannot avoid (a sentence's) is taken.
        let mut refused_at = None;
        for _ in 0..max_tokens {
            if self.session.remaining() == 0 {
                break;
            }
            let barred = (rules.barred)(fed.last().map_or("", String::as_str));
            if !barred.is_empty() {
                self.session
                    .restrict_next(|id| !barred.iter().any(|&word| llm.is_word(word, id)))?;
            }
            let token = self.session.sample()?;
            if llm.is_stop(token) {
                break;
            }
            ids.push(token);
            let text = llm.decode(&ids)?;
            let end = [
                string_end(&text),
                sentences_end(&text, max_sentences),
                aside_start(&text),
                (rules.cut)(&text),
            ]
            .into_iter()
            .flatten()
            .min();
            if let Some(end) = end {
                let value = text[..end].to_string();
                // A quote that opens a quotation is no end: small models quote
                // unescaped (`converted to "abc"`), which ended the value
                // mid-sentence; barred from the quote once, the model writes the
                // quotation another way (`'abc'`) or not at all.
                let refused = opens_quotation(&text, end) || refused_end(&value);
                if refused && refused_at != Some(ids.len()) {
                    refused_at = Some(ids.len());
                    ids.pop();
                    self.session.restrict_next(|id| !llm.closes_string(id))?;
                    continue;
                }
                let unfed = self.read_no_further_than(&value, &fed)?;
                return Ok((value, unfed));
            }
            self.session.feed(&[token])?;
            fed.push(text);
        }
        // Cut off at its token cap, a value keeps its whole sentences (the summary
        // "… The assistant provided a plan for each step, including" loses the
        // unfinished one), or where none ended, its whole clauses.
        let read = fed.last().map_or("", String::as_str);
        let value = match ids.len() == max_tokens {
            true => whole_sentences(read).to_string(),
            false => read.to_string(),
        };
        let unfed = self.read_no_further_than(&value, &fed)?;
        Ok((value, unfed))
    }

    /// Takes back the tokens `fed` past the end of `value` and returns the part of
    /// `value` the model has not read. A value can end inside what the model has
    /// read: an aside or a cut is seen only once its opening words are written,
    /// and a value at its token cap drops its unfinished sentence. Had the model
    /// kept them, the next fields would follow words that are not in the answer.
    fn read_no_further_than(&mut self, value: &str, fed: &[String]) -> Result<String, LlmError> {
        let kept = fed
            .iter()
            .rposition(|text| value.starts_with(text.as_str()))
            .map_or(0, |last| last + 1);
        self.session.take_back(fed.len() - kept)?;
        let read = kept.checked_sub(1).map_or("", |last| fed[last].as_str());
        Ok(value[read.len()..].to_string())
    }
}

/// What one free-text field may not do beyond the limits every value has, and
/// how it ends; `cut` and `barred` read the text the model has written after the
/// field's prefix.
#[derive(Clone, Copy)]
pub(crate) struct FieldRules {
    /// Where the value ends early, as a byte index into that text, once the model
    /// has written that far: a value of one kind that small models run on into
    /// another.
    pub(crate) cut: fn(&str) -> Option<usize>,
    /// The words the next token may not be, after that text: a value's wording
    /// that small models fall into where it makes no sense.
    pub(crate) barred: fn(&str) -> &'static [Word],
    /// Whether the value is prose that ends with a full stop, written by us where
    /// the model closed it without one (and read by the model as part of the JSON).
    /// Qwen 0.5B left it off 38 of 216 requests and 41 tasks of real and example
    /// conversations, and after a cut no sentence ends at all.
    pub(crate) full_stop: bool,
}

impl FieldRules {
    pub(crate) const NONE: FieldRules = FieldRules {
        cut: |_| None,
        barred: |_| &[],
        full_stop: false,
    };

    /// Prose of whole sentences, with no other rule.
    pub(crate) const PROSE: FieldRules = FieldRules {
        full_stop: true,
        ..FieldRules::NONE
    };
}

/// A value may end wherever the model ends it (see [`FormWriter::choice_then_text`]).
pub(crate) fn any_end(_: &str) -> bool {
    false
}

/// The byte index of the first unescaped `"` or raw newline.
fn string_end(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' | '\n' | '\r' => return Some(i),
            _ => {}
        }
    }
    None
}

/// Whether the string end found at `end` is a quote that opens a quotation rather
/// than closing the value: it follows a space, after some of the value.
fn opens_quotation(text: &str, end: usize) -> bool {
    let before = &text[..end];
    text[end..].starts_with('"')
        && before.ends_with(char::is_whitespace)
        && !before.trim().is_empty()
}

/// The byte index just after each sentence end in `text` (`.`, `!` or `?`
/// followed by whitespace, or by the end of the text when `at_end` says it counts).
fn sentence_ends(text: &str, at_end: bool) -> impl Iterator<Item = usize> + '_ {
    text.char_indices().filter_map(move |(i, c)| {
        let after = i + c.len_utf8();
        let closes = match text[after..].chars().next() {
            Some(next) => next.is_whitespace(),
            None => at_end,
        };
        (matches!(c, '.' | '!' | '?') && closes).then_some(after)
    })
}

/// The byte index just after the `count`-th sentence end, once the text goes on
/// past it.
fn sentences_end(text: &str, count: usize) -> Option<usize> {
    sentence_ends(text, false).nth(count.checked_sub(1)?)
}

/// How a sentence opens that describes the conversation rather than what was asked
/// and done: its language, or that it names no one. Small models add one as a
/// second sentence, echoing the form's other fields and the privacy rule (a fifth
/// of Qwen 0.5B's summaries of 160 WildChat and Arena conversations ended "The
/// conversation is written in English and does not contain any personal
/// information"). It says nothing of the topic, and in a summary it draws
/// conversations together by the words they share with every other.
const ASIDE_OPENINGS: &[&str] = &[
    "the conversation ",
    "this conversation ",
    "the natural language",
    "natural language",
    "the language",
    "the text is written",
    "it is written in",
    "there were no names",
    "there are no names",
    "no names ",
    "no personal ",
];

/// The byte index just after the sentence that an aside (see [`ASIDE_OPENINGS`])
/// follows, once the aside has begun: the value ends there. The first sentence is
/// always kept.
fn aside_start(text: &str) -> Option<usize> {
    sentence_ends(text, false).find(|&end| {
        let next = text[end..].trim_start();
        ASIDE_OPENINGS.iter().any(|opening| {
            next.get(..opening.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(opening))
        })
    })
}

/// `text` up to the end of its last finished sentence, or up to its last comma
/// when none is (see [`whole_clauses`]).
fn whole_sentences(text: &str) -> &str {
    match sentence_ends(text, true).last() {
        Some(end) => &text[..end],
        None => whole_clauses(text),
    }
}

/// The text up to its last comma, once words come before it, or all of it: cut
/// off at its token cap, a one-sentence value (a request, a task) ended
/// mid-clause or mid-word ("… and then placing the cutting in a glass of room-").
fn whole_clauses(text: &str) -> &str {
    match text.rfind(", ") {
        Some(at) if !text[..at].trim().is_empty() => &text[..at],
        _ => text,
    }
}

/// Whether prose `text` (as the model wrote it, JSON escapes and all) wants a
/// full stop after it: it has words, and what ends them (before any closing
/// quotes or brackets) is not a sentence's end. Other punctuation that a stop
/// would not mend (a comma, a colon, a hyphen) is left as written.
fn wants_full_stop(text: &str) -> bool {
    let inside = text
        .trim_end()
        .trim_end_matches(['"', '\'', ')', ']', '`', '\\']);
    !inside.is_empty() && !inside.ends_with(['.', '!', '?', '…', '。', ',', ':', ';', '-'])
}

/// The value recorded for `raw` after `prefix`, with `stop` after its last word:
/// a space the model wrote before closing the string does not come between them.
fn recorded_value(prefix: &str, raw: &str, stop: &str) -> String {
    clean_value(&format!("{prefix}{}{stop}", raw.trim_end()))
}

/// Undoes JSON escapes and collapses whitespace.
fn clean_value(raw: &str) -> String {
    let unescaped = serde_json::from_str::<String>(&format!("\"{raw}\""))
        .unwrap_or_else(|_| raw.replace("\\\"", "\"").replace("\\\\", "\\"));
    unescaped.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Splits a generated list: on semicolons, or on commas when there are none (and on
/// " and "); "none"-like entries are dropped, so "none" is the empty list.
pub(crate) fn split_list(value: &str) -> Vec<String> {
    let separator: &[char] = if value.contains(';') {
        &[';']
    } else {
        &[',', ';']
    };
    let parts = value.split(separator).flat_map(|p| p.split(" and "));
    distinct_items(parts, |item| {
        matches!(
            item.to_lowercase().as_str(),
            "none" | "no" | "n/a" | "na" | "nothing" | "no errors" | "none found"
        )
    })
}

/// `parts` trimmed of spaces and punctuation, less the empty ones, those `dropped`
/// drops and repeats (case aside).
fn distinct_items<'v>(
    parts: impl Iterator<Item = &'v str>,
    dropped: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut items: Vec<String> = Vec::new();
    for part in parts {
        let item = part.trim_matches(|c: char| c.is_ascii_punctuation() || c.is_whitespace());
        let repeat = || {
            items
                .iter()
                .any(|i| i.to_lowercase() == item.to_lowercase())
        };
        if !item.is_empty() && !dropped(item) && !repeat() {
            items.push(item.to_string());
        }
    }
    items
}

/// Splits the assistant's errors: on semicolons alone, as the prompt asks, since an
/// error is a clause that may hold commas and "and" ("wrong formatting of the
/// intervals and the bar heights"); a part that says there was no error ("No
/// mistakes were made by the assistant") is dropped, so such an answer is the empty
/// list.
pub(crate) fn split_errors(value: &str) -> Vec<String> {
    distinct_items(value.split([';', '\n']), says_no_error)
}

/// Whether an entry of the errors list says that there was none.
fn says_no_error(entry: &str) -> bool {
    let lower = entry.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .collect();
    let denial = |w: &str| matches!(w, "no" | "none" | "nothing" | "not" | "didn't" | "never");
    let fault = |w: &str| {
        [
            "error",
            "mistake",
            "issue",
            "problem",
            "inaccurac",
            "fault",
            "wrong",
        ]
        .iter()
        .any(|f| w.starts_with(f))
    };
    match words.as_slice() {
        [] => true,
        ["none" | "n" | "na" | "nothing" | "no", ..] if words.len() <= 2 => true,
        _ => {
            // "No errors were made", "The assistant made no mistakes", "did not
            // make any errors": a denial shortly before the fault it denies.
            let short = words.len() <= 12;
            short
                && words
                    .iter()
                    .enumerate()
                    .any(|(i, w)| denial(w) && words[i + 1..].iter().take(4).any(|w| fault(w)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::smollm2;

    /// A value that ends inside what the model has read (here after its first
    /// word, seen once four are written) leaves the model having read the value
    /// and no further, as the JSON recorded says.
    #[test]
    fn a_value_cut_inside_what_the_model_read_is_all_it_keeps() {
        let llm = smollm2();
        let mut session = llm.session(0.0, 0);
        session
            .feed_text("Describe your favourite animal in a few sentences, as JSON.\n")
            .expect("prompt");
        let room = session.remaining();
        fn first_word(text: &str) -> Option<usize> {
            let words: Vec<&str> = text.split_whitespace().collect();
            (words.len() >= 4).then(|| text.find(words[0]).map(|at| at + words[0].len()))?
        }
        let mut form = FormWriter::new(&mut session);
        let value = form
            .text_with(
                "animal",
                "My favourite",
                40,
                5,
                FieldRules {
                    cut: first_word,
                    ..FieldRules::NONE
                },
            )
            .expect("value");
        assert_eq!(value.split_whitespace().count(), 3, "{value:?}");
        drop(form);
        let read = room - session.remaining();
        let recorded = llm
            .chat()
            .encode_text(&format!("{{\"animal\": \"{value}"))
            .expect("tokens")
            .len();
        assert!(
            read <= recorded + 1,
            "read {read} tokens for {recorded} of recorded JSON ({value:?})"
        );
    }

    #[test]
    fn string_end_skips_escaped_quotes() {
        assert_eq!(string_end(r#"say \"hi\" now". more"#), Some(14));
        assert_eq!(string_end("no end yet"), None);
        assert_eq!(string_end("line\nbreak"), Some(4));
    }

    #[test]
    fn a_quote_after_a_space_opens_a_quotation() {
        let opens = |text: &str| opens_quotation(text, string_end(text).unwrap());
        assert!(opens(" asked how to turn the cards into \"abc"));
        assert!(opens(" asked for a regex that matches \""));
        assert!(!opens(" asked for a regex.\""));
        assert!(!opens(" asked for a regex\", \"request"));
        assert!(!opens("\""));
        assert!(!opens(" \""));
        assert!(!opens(" asked for a regex\n"));
    }

    #[test]
    fn sentences_end_counts_finished_sentences() {
        assert_eq!(sentences_end("One. Two. Three", 2), Some(9));
        assert_eq!(sentences_end("One. Two.", 2), None);
        assert_eq!(sentences_end("Version 1.5 works! Yes", 1), Some(18));
    }

    #[test]
    fn an_aside_about_the_conversation_ends_the_value_before_it() {
        let summary = "The user asked for a joke, and the assistant told one about a bus. ";
        for aside in [
            "The conversation is written in English",
            "The conversation was written in English and does not",
            "The natural languages were English",
            "There were no names mentioned",
            "this conversation is in Spanish",
        ] {
            let text = format!("{summary}{aside}");
            assert_eq!(aside_start(&text), Some(summary.len() - 1), "{aside}");
        }
        // Not yet an aside, or not one: the value goes on.
        for rest in [
            "The conver",
            "The user also asked for another joke.",
            "The conversational tone stayed friendly.",
        ] {
            assert_eq!(aside_start(&format!("{summary}{rest}")), None, "{rest}");
        }
        // The first sentence is kept whatever it says.
        assert_eq!(aside_start("The conversation is about tax law."), None);
    }

    #[test]
    fn whole_sentences_drop_an_unfinished_one() {
        assert_eq!(
            whole_sentences("It asked for a plan. The assistant gave steps, including"),
            "It asked for a plan."
        );
        assert_eq!(
            whole_sentences("Version 1.5 is out! Then"),
            "Version 1.5 is out!"
        );
        assert_eq!(
            whole_sentences("No sentence ends here"),
            "No sentence ends here"
        );
        assert_eq!(whole_sentences("One. Two."), "One. Two.");
    }

    #[test]
    fn whole_sentences_keep_whole_clauses_where_no_sentence_ends() {
        assert_eq!(
            whole_sentences(
                " help propagate a pothos, keeping two leaves, then placing it in room-"
            ),
            " help propagate a pothos, keeping two leaves"
        );
        assert_eq!(whole_sentences(", and then"), ", and then");
    }

    #[test]
    fn prose_wants_a_full_stop_after_words_only() {
        for text in [
            " caramelize onions",
            " explain the word 'weil'",
            r#" print \"Hello World\""#,
            " compare floats (in JavaScript)",
            " write a poem in Portuguese ",
        ] {
            assert!(wants_full_stop(text), "{text:?}");
        }
        for text in [
            "",
            " ",
            " It worked.",
            " Why?",
            r#" it said \"Done.\""#,
            " use these steps:",
            " pour it at room-",
        ] {
            assert!(!wants_full_stop(text), "{text:?}");
        }
    }

    #[test]
    fn a_full_stop_follows_the_last_word() {
        assert_eq!(
            recorded_value("The task is to", " caramelize onions ", "."),
            "The task is to caramelize onions."
        );
        assert_eq!(
            recorded_value("The user", " asked  for a plan. ", ""),
            "The user asked for a plan."
        );
    }

    #[test]
    fn clean_value_unescapes_and_collapses() {
        assert_eq!(clean_value(r#"a \"b\"  \n c"#), "a \"b\" c");
        assert_eq!(clean_value(r"broken \x escape"), r"broken \x escape");
    }

    #[test]
    fn errors_split_on_semicolons_alone_and_denials_are_no_errors() {
        assert_eq!(
            split_errors(
                "The assistant made several mistakes, including wrong formatting of the \
                 intervals and the bar heights; it forgot the legend."
            ),
            [
                "The assistant made several mistakes, including wrong formatting of the \
                 intervals and the bar heights",
                "it forgot the legend"
            ]
        );
        for none in [
            "none",
            "None.",
            "No mistakes made by the assistant",
            "No errors were found",
            "No errors were made in the conversation.",
            "The assistant made no mistakes.",
            "The assistant did not make any errors",
            "n/a",
            "",
        ] {
            assert!(split_errors(none).is_empty(), "{none:?}");
        }
        // A real error that happens to hold "no" or "not" is kept.
        for kept in [
            "The code does not handle the case where the row is already sorted",
            "It said there is no closed form, which is wrong",
        ] {
            assert_eq!(split_errors(kept), [kept], "{kept:?}");
        }
    }

    #[test]
    fn split_list_handles_separators_and_none() {
        assert_eq!(split_list("English, French"), ["English", "French"]);
        assert_eq!(split_list("english and spanish."), ["english", "spanish"]);
        assert_eq!(
            split_list("wrong date; missed a, b case"),
            ["wrong date", "missed a, b case"]
        );
        assert!(split_list("none").is_empty());
        assert!(split_list("None.").is_empty());
        assert_eq!(split_list("english, English"), ["english"]);
    }
}
