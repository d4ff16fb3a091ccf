//! Clio's other two hierarchy steps for [`LlmClusterNamer`]: proposing candidate
//! parent names for a neighbourhood of clusters, and placing a cluster under one of
//! a numbered list of candidates. Both answers are forced: the proposal writes
//! exactly the number of names asked for into a JSON list, and the choice is the
//! option whose text the model finds most likely as its answer (mean log-probability
//! per token), so it is always one of the options. Scoring every option's text
//! rather than a number avoids the position bias small models show when asked for
//! an option's number.

use kura_core::{ChoiceRequest, ProposalRequest};

use crate::error::LlmError;
use crate::llm::Session;
use crate::namer::{end_user_turn, BulletList, LlmClusterNamer};
use crate::prompts::{CHOOSE_ANSWER, CHOOSE_NO_GROUP, CHOOSE_REQUEST, PROPOSE_REQUEST};
use crate::structured::FormWriter;

/// Tokens for one proposed name.
const NAME_TOKENS: usize = 24;
/// Room kept for the answer besides the names.
const ANSWER_SLACK: usize = 64;
/// The most candidates asked for at once (more would crowd a small model's answer).
const MAX_PROPOSALS: usize = 12;
/// Each option costs a pass over its tokens; more than this is never offered.
const MAX_OPTIONS: usize = 12;

impl LlmClusterNamer {
    /// Up to `request.count` (at most `MAX_PROPOSALS`) distinct candidate names.
    pub fn propose(&self, request: &ProposalRequest) -> Result<Vec<String>, LlmError> {
        if request.members.is_empty() {
            return Err(LlmError::InvalidOutput(
                "no clusters to propose parents for".into(),
            ));
        }
        let count = request.count.clamp(1, MAX_PROPOSALS);
        let llm = self.llm();
        let mut session = self.propose_prefix().session(llm, 0.0, 0)?;
        let room = session
            .remaining()
            .saturating_sub(count * NAME_TOKENS + ANSWER_SLACK);
        let mut used = llm.chat().encode_text(PROPOSE_REQUEST)?.len() + 32;
        let mut body = String::new();
        let mut list = BulletList::new(llm, &mut used);
        list.push("groups", &request.members, room * 3 / 4, &mut body)?;
        if !request.contrast.is_empty() {
            list.push("contrast", &request.contrast, room, &mut body)?;
        }
        body.push('\n');
        body.push_str(PROPOSE_REQUEST);
        end_user_turn(&mut session, &body)?;

        let mut form = FormWriter::new(&mut session);
        let names = form.text_list("categories", count, NAME_TOKENS)?;
        let mut distinct: Vec<String> = Vec::new();
        for name in names {
            let name = name.trim_end_matches(['.', '!']).trim().to_string();
            if !name.is_empty() && !distinct.iter().any(|d| d.eq_ignore_ascii_case(&name)) {
                distinct.push(name);
            }
        }
        if distinct.is_empty() {
            return Err(LlmError::InvalidOutput(
                "the model proposed only empty names".into(),
            ));
        }
        Ok(distinct)
    }

    /// The index in `request.options` that fits `request.item` best: the option
    /// whose text the model finds most likely as the item's category, measured
    /// against how likely that text is with no item at all (pointwise mutual
    /// information), so generic or first-listed names win nothing by themselves.
    /// The options are not listed in the prompt: small models copy whichever comes
    /// first.
    pub fn choose(&self, request: &ChoiceRequest) -> Result<usize, LlmError> {
        let n = request.options.len();
        if n == 0 || n > MAX_OPTIONS {
            return Err(LlmError::InvalidOutput(format!(
                "a choice needs 1 to {MAX_OPTIONS} options, not {n}"
            )));
        }
        let priors = self.option_priors_for(&request.options)?;
        let answer = self.answer_session(&request.item)?;
        let mut best: Option<(usize, f32)> = None;
        for (index, (option, prior)) in request.options.iter().zip(priors).enumerate() {
            let score = continuation_log_prob(&answer, option)? - prior;
            if best.is_none_or(|(_, b)| score > b) {
                best = Some((index, score));
            }
        }
        best.map(|(index, _)| index)
            .ok_or_else(|| LlmError::InvalidOutput("no option could be scored".into()))
    }

    /// How likely each option is as a category with no group shown. The same for
    /// every item, so each option's prior is computed once per namer, and the
    /// missing ones from one prompt.
    fn option_priors_for(&self, options: &[String]) -> Result<Vec<f32>, LlmError> {
        let mut known = self
            .option_priors()
            .lock()
            .map_err(|_| LlmError::InvalidOutput("option priors poisoned".into()))?;
        if options.iter().any(|o| !known.contains_key(o.trim())) {
            let answer = self.answer_session(CHOOSE_NO_GROUP)?;
            for option in options {
                if !known.contains_key(option.trim()) {
                    let prior = continuation_log_prob(&answer, option)?;
                    known.insert(option.trim().to_string(), prior);
                }
            }
        }
        Ok(options.iter().map(|o| known[o.trim()]).collect())
    }

    /// A session whose next tokens are the category chosen for `item`.
    fn answer_session(&self, item: &str) -> Result<Session<'_>, LlmError> {
        let llm = self.llm();
        let mut session = self.choose_prefix().session(llm, 0.0, 0)?;
        let room = session.remaining().saturating_sub(ANSWER_SLACK);
        let mut used = llm.chat().encode_text(CHOOSE_REQUEST)?.len() + 32;
        let mut body = String::new();
        BulletList::new(llm, &mut used).push("group", &[item.to_string()], room, &mut body)?;
        body.push('\n');
        body.push_str(CHOOSE_REQUEST);
        end_user_turn(&mut session, &body)?;
        session.feed_text(CHOOSE_ANSWER)?;
        Ok(session)
    }
}

/// The mean log-probability of `option`'s tokens as the continuation of `answer`
/// (left as it was: each option continues from a copy of its cache): the model's
/// preference among fixed answers, not swayed by their length.
fn continuation_log_prob(answer: &Session<'_>, option: &str) -> Result<f32, LlmError> {
    let (cache, logits) = answer.snapshot();
    let mut session = Session::resume(answer.llm(), cache, logits, 0.0, 0);
    let tokens = session
        .llm()
        .chat()
        .encode_text(&format!(" {}", option.trim()))?;
    if tokens.is_empty() {
        return Ok(f32::NEG_INFINITY);
    }
    let mut total = 0.0;
    for (i, &token) in tokens.iter().enumerate() {
        total += session.log_prob(token)?;
        if i + 1 < tokens.len() {
            session.feed(&[token])?;
        }
    }
    Ok(total / tokens.len() as f32)
}
