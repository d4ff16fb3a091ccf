//! [`LlmClusterNamer`]: Clio's cluster names (an imperative sentence of at most ten
//! words) and two-sentence descriptions, filled into a forced JSON skeleton.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use kura_core::text::{name_words, same_name, shorten_name};
use kura_core::{
    BoxError, ChoiceRequest, ClusterName, ClusterNamer, NamingRequest, ProposalRequest,
};

use crate::chat::ChatRole;
use crate::error::LlmError;
use crate::fit::truncate_middle;
use crate::llm::{LocalLlm, Session};
use crate::prefix::SharedPrefix;
use crate::prompts::{
    CHOOSE_SYSTEM, NAMING_PARENT_NOTE, NAMING_PROMPT_VERSION, NAMING_REQUEST, NAMING_SYSTEM,
    PROPOSE_SYSTEM,
};
use crate::structured::FormWriter;

const NAME_TOKENS: usize = 24;
const DESCRIPTION_TOKENS: usize = 96;
const RESERVED_TOKENS: usize = NAME_TOKENS + DESCRIPTION_TOKENS + 48;
/// One description shown to the model is cut to this many tokens.
const ITEM_TOKENS: usize = 96;
/// Contrast descriptions get at most this share (1/n) of the room.
const CONTRAST_SHARE: usize = 4;
const MAX_NAME_WORDS: usize = 10;

/// A name's first word is chosen among these (by the logits of each verb's first
/// token), as the prompt asks: small models otherwise copy a member's description
/// ("The user asked for …"), repeat the instructions ("Group of similar
/// conversations") or describe the format ("An imperative sentence of …").
pub const NAME_VERBS: &[&str] = &[
    "Write",
    "Fix",
    "Explain",
    "Create",
    "Generate",
    "Debug",
    "Solve",
    "Calculate",
    "Translate",
    "Summarize",
    "Analyze",
    "Plan",
    "Design",
    "Build",
    "Implement",
    "Develop",
    "Convert",
    "Optimize",
    "Improve",
    "Edit",
    "Rewrite",
    "Draft",
    "Compose",
    "Compare",
    "Describe",
    "Answer",
    "Recommend",
    "Suggest",
    "Teach",
    "Evaluate",
    "Classify",
    "Extract",
    "Find",
    "Identify",
    "Discuss",
    "Review",
    "Configure",
    "Troubleshoot",
    "Refactor",
    "Prove",
    "Estimate",
    "Interpret",
    "Outline",
    "Brainstorm",
    "Roleplay",
    "Play",
    "Help",
];

pub struct LlmClusterNamer {
    llm: Arc<LocalLlm>,
    prefix: SharedPrefix,
    propose_prefix: SharedPrefix,
    choose_prefix: SharedPrefix,
    /// Each candidate parent's log-probability with no group shown.
    option_priors: Mutex<HashMap<String, f32>>,
}

impl LlmClusterNamer {
    pub fn new(llm: Arc<LocalLlm>) -> Self {
        LlmClusterNamer {
            llm,
            prefix: SharedPrefix::new(NAMING_SYSTEM),
            propose_prefix: SharedPrefix::new(PROPOSE_SYSTEM),
            choose_prefix: SharedPrefix::new(CHOOSE_SYSTEM),
            option_priors: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn llm(&self) -> &LocalLlm {
        &self.llm
    }

    pub(crate) fn propose_prefix(&self) -> &SharedPrefix {
        &self.propose_prefix
    }

    pub(crate) fn choose_prefix(&self) -> &SharedPrefix {
        &self.choose_prefix
    }

    pub(crate) fn option_priors(&self) -> &Mutex<HashMap<String, f32>> {
        &self.option_priors
    }

    pub fn name_cluster(&self, request: &NamingRequest) -> Result<ClusterName, LlmError> {
        if request.members.is_empty() {
            return Err(LlmError::InvalidOutput(
                "a cluster without members cannot be named".into(),
            ));
        }
        let prompt = self.prompt_session(request)?;
        // The opening verb is the model's favourite among the options, the same in
        // every attempt, and a retry that starts alike mostly ends alike: on the
        // example, Qwen 0.5B wrote "Interpret and Analyze Conversations" three times
        // over. Each retry leaves out the verbs of the attempts that failed.
        let mut verbs = NAME_VERBS.to_vec();
        prompt.first_valid("cluster name", |session| {
            let mut form = FormWriter::new(session);
            let taken = |name: &str| is_taken(name, &request.taken);
            let name = form.choice_then_text("name", &verbs, NAME_TOKENS, true, &taken)?;
            let description = form.text("description", "", DESCRIPTION_TOKENS, 2)?;
            let name = name.trim_end_matches(['.', '!']).trim();
            let name = shorten_name(name, MAX_NAME_WORDS).unwrap_or_else(|| name.to_string());
            let valid = validate(&name, &description, &request.taken).and_then(|()| {
                if fits_the_contrast_better(&name, &request.members, &request.contrast) {
                    return Err(format!(
                        "name fits the contrast better than the group: {name:?}"
                    ));
                }
                Ok(())
            });
            if valid.is_err() {
                leave_out_opening_verb(&mut verbs, &name);
            }
            Ok(valid.map(|()| ClusterName { name, description }))
        })
    }

    fn prompt_session(&self, request: &NamingRequest) -> Result<Session<'_>, LlmError> {
        let llm = &*self.llm;
        let chat = llm.chat();
        let mut session = self.prefix.session(llm, 0.0, 0)?;
        let room = session
            .remaining()
            .saturating_sub(RESERVED_TOKENS + ITEM_TOKENS);
        let count = |text: &str| chat.encode_text(text).map(|ids| ids.len());

        let mut body = String::new();
        if request.is_parent {
            body.push_str(NAMING_PARENT_NOTE);
            body.push_str("\n\n");
        }
        let mut used = count(&body)? + count(NAMING_REQUEST)? + 32;
        let contrast_room = if request.contrast.is_empty() {
            0
        } else {
            room / CONTRAST_SHARE
        };
        let mut list = BulletList::new(llm, &mut used);
        list.push(
            "group",
            &request.members,
            room.saturating_sub(contrast_room),
            &mut body,
        )?;
        if !request.contrast.is_empty() {
            list.push("contrast", &request.contrast, room, &mut body)?;
        }
        body.push('\n');
        body.push_str(NAMING_REQUEST);
        end_user_turn(&mut session, &body)?;
        Ok(session)
    }
}

/// Feeds the rest of the user's turn and opens the assistant's, where the answer's
/// JSON begins.
pub(crate) fn end_user_turn(session: &mut Session<'_>, body: &str) -> Result<(), LlmError> {
    let chat = session.llm().chat();
    let mut ids = chat.encode_text(body)?;
    ids.extend(chat.close()?);
    ids.extend(chat.open(ChatRole::Assistant)?);
    session.feed(&ids)
}

/// Tagged bullet lists of descriptions, each cut to [`ITEM_TOKENS`], added while
/// they fit in a token budget: the shape of every prompt that shows clusters.
pub(crate) struct BulletList<'l, 'u> {
    llm: &'l LocalLlm,
    used: &'u mut usize,
}

impl<'l, 'u> BulletList<'l, 'u> {
    pub(crate) fn new(llm: &'l LocalLlm, used: &'u mut usize) -> Self {
        BulletList { llm, used }
    }

    /// Appends `<tag>`, as many `- item` lines as fit until `room` tokens are used,
    /// and `</tag>` to `body`.
    pub(crate) fn push(
        &mut self,
        tag: &str,
        items: &[String],
        room: usize,
        body: &mut String,
    ) -> Result<(), LlmError> {
        let chat = self.llm.chat();
        body.push_str(&format!("<{tag}>\n"));
        for item in items {
            let line = format!(
                "- {}\n",
                truncate_middle(chat.text_tokenizer(), item.trim(), ITEM_TOKENS)?
            );
            let cost = chat.encode_text(&line)?.len();
            if *self.used + cost > room {
                break;
            }
            body.push_str(&line);
            *self.used += cost;
        }
        body.push_str(&format!("</{tag}>\n"));
        Ok(())
    }
}

fn validate(name: &str, description: &str, taken: &[String]) -> Result<(), String> {
    let count = name.split_whitespace().count();
    if count == 0 {
        return Err("empty name".into());
    }
    if count > MAX_NAME_WORDS {
        return Err(format!("name has {count} words: {name:?}"));
    }
    if echoes_the_instructions(name) {
        return Err(format!("name only repeats the instructions: {name:?}"));
    }
    if stutters(name) {
        return Err(format!("name repeats a word over and over: {name:?}"));
    }
    if names_the_group(name) {
        return Err(format!(
            "name labels the cluster, not its subject: {name:?}"
        ));
    }
    if description.trim_end_matches('.').eq_ignore_ascii_case(name) {
        return Err(format!("description repeats the name: {description:?}"));
    }
    if description.split_whitespace().count() < 3 {
        return Err(format!("description too short: {description:?}"));
    }
    if words(description)
        .iter()
        .all(|w| instruction_words().contains(w))
    {
        return Err(format!(
            "description only repeats the instructions: {description:?}"
        ));
    }
    if is_taken(name, taken) {
        return Err(format!("name already given to another cluster: {name:?}"));
    }
    Ok(())
}

/// `verbs` without the one `failed` opens with, unless it is the last left.
fn leave_out_opening_verb(verbs: &mut Vec<&str>, failed: &str) {
    let opening = failed.split_whitespace().next();
    if verbs.len() > 1 {
        verbs.retain(|verb| Some(*verb) != opening);
    }
}

/// Whether `name` reads as one of the names other clusters of its level have.
fn is_taken(name: &str, taken: &[String]) -> bool {
    taken.iter().any(|t| same_name(t, name))
}

/// Whether every word of `name` after its opening verb comes from the naming
/// instructions: small models answer "Group of similar conversations between users
/// and an AI assistant" or "JSON", and after the verb we chose for them "Classify
/// Conversations" or "Suggest Conversations" (two of the example's eight names at
/// `fc764d8`), which name nothing; or, opening with two verbs, "Interpret and Analyze
/// Conversations between Users and AI Assistant" (two of the example's eight at
/// `7dd3ac5`). Numbers do not count as content ("Group 1").
fn echoes_the_instructions(name: &str) -> bool {
    let instructions = instruction_words();
    subject_words(name).iter().all(|w| instructions.contains(w))
}

/// The words of `name` after its opening verbs, one or several joined by "and"
/// ("Interpret and Analyze"): what the name says the cluster is about.
fn subject_words(name: &str) -> Vec<String> {
    let mut words = words(name);
    let opening = words
        .iter()
        .take_while(|w| verbs().contains(*w) || *w == "and")
        .count();
    words.drain(..opening);
    words
}

/// [`NAME_VERBS`] as [`words`] gives them.
fn verbs() -> &'static HashSet<String> {
    static VERBS: OnceLock<HashSet<String>> = OnceLock::new();
    VERBS.get_or_init(|| NAME_VERBS.iter().copied().flat_map(words).collect())
}

/// Whether `name` is about the contrast conversations rather than the group's:
/// some word of its subject is found in a contrast description and none in any
/// of the group's. The subject's words are those after its opening verbs, less
/// the instructions', the opening verbs' (a "create" mid-name says nothing) and
/// words under four letters; they meet a description's words on their first
/// letters (see [`same_stem`]), so "cooking" finds "cook". Qwen 0.5B, shown a
/// cluster's members and then its nearest other conversations, named the
/// example's language-learning cluster "Discuss cooking and cooking techniques"
/// after a contrast summary about cooking rice, and its travel cluster "Explain
/// how to create an emergency fund" after one about an emergency fund (two of
/// the eight at `d7a7c9d`).
fn fits_the_contrast_better(name: &str, members: &[String], contrast: &[String]) -> bool {
    let instructions = instruction_words();
    let subject: Vec<String> = subject_words(name)
        .into_iter()
        .filter(|w| w.chars().count() >= 4 && !instructions.contains(w) && !verbs().contains(w))
        .collect();
    let words_of =
        |texts: &[String]| -> Vec<Vec<String>> { texts.iter().map(|t| words(t)).collect() };
    let (group, others) = (words_of(members), words_of(contrast));
    let found = |word: &str, texts: &[Vec<String>]| {
        texts
            .iter()
            .any(|text| text.iter().any(|w| same_stem(word, w)))
    };
    let borrowed = subject
        .iter()
        .any(|w| found(w, &others) && !found(w, &group));
    let grounded = subject.iter().any(|w| found(w, &group));
    borrowed && !grounded
}

/// Whether two words share their first five letters, or all of the shorter's
/// when it has four: "cook" and "cooking", "emergency" and "emergencies".
fn same_stem(a: &str, b: &str) -> bool {
    const STEM: usize = 5;
    let shorter = a.chars().count().min(b.chars().count());
    let k = shorter.min(STEM);
    k >= 4 && a.chars().take(k).eq(b.chars().take(k))
}

/// The words of the naming instructions. A description made of them alone copies
/// the field's definition: Qwen 0.5B described a cluster of holiday plans as "What
/// the users in this group asked for, and what sets them apart from the contrast
/// conversations." (one of the example's eight at `49c2f5c`).
fn instruction_words() -> &'static HashSet<String> {
    static INSTRUCTIONS: OnceLock<HashSet<String>> = OnceLock::new();
    INSTRUCTIONS.get_or_init(|| {
        [NAMING_SYSTEM, NAMING_PARENT_NOTE, NAMING_REQUEST]
            .into_iter()
            .flat_map(words)
            .collect()
    })
}

/// Whether `name` ends in "Group" or "Conversations": after the verb we chose,
/// Qwen 0.5B wrote "Design and Budgeting Group" and "Interpret and Travel Group"
/// (two of the example's eight at `49c2f5c`), and on real conversations "Calculate
/// and Sum Conversations" and "Develop and Collaborate with a Group of Similar
/// Conversations" (two of 22 at `b47a4ca`): labels for the cluster rather than
/// what its users asked for. One "conversation" is a subject of its own ("Practice
/// French conversation").
fn names_the_group(name: &str) -> bool {
    // `words` drops a plural's "s": "Groups" is "group".
    let plural_conversations = name.split_whitespace().last().is_some_and(|w| {
        w.trim_matches(|c: char| !c.is_alphanumeric())
            .eq_ignore_ascii_case("conversations")
    });
    plural_conversations || words(name).last().is_some_and(|w| w == "group")
}

/// Whether a word comes back three times or more: a small model caught in a loop
/// ("The AI and AI-powered AI-powered AI-powered …") fills the ten words that way.
fn stutters(name: &str) -> bool {
    let words = words(name);
    words
        .iter()
        .any(|w| words.iter().filter(|other| *other == w).count() >= 3)
}

/// The words of `text` as names are compared (see [`name_words`]), numbers left
/// out: they name nothing ("Group 1").
fn words(text: &str) -> Vec<String> {
    let mut words = name_words(text);
    words.retain(|w| !w.chars().all(|c| c.is_ascii_digit()));
    words
}

impl ClusterNamer for LlmClusterNamer {
    fn id(&self) -> String {
        let options = self.llm.options();
        format!(
            "llm-namer/{NAMING_PROMPT_VERSION}/{}/ctx{}/t{}/s{}",
            self.llm.model_id(),
            self.llm.max_context(),
            options.temperature,
            options.seed
        )
    }

    fn name(&self, request: &NamingRequest) -> Result<ClusterName, BoxError> {
        self.name_cluster(request).map_err(BoxError::from)
    }

    fn propose_parents(&self, request: &ProposalRequest) -> Result<Vec<String>, BoxError> {
        self.propose(request).map_err(BoxError::from)
    }

    fn choose_parent(&self, request: &ChoiceRequest) -> Result<usize, BoxError> {
        self.choose(request).map_err(BoxError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::{fits_the_contrast_better, leave_out_opening_verb, validate, NAME_VERBS};

    /// A retry does not open with the verb of an attempt that failed (whole words:
    /// "Play" is not "Plan"), and the last verb is kept.
    #[test]
    fn a_retry_leaves_out_the_verb_of_the_failed_name() {
        let mut verbs = NAME_VERBS.to_vec();
        leave_out_opening_verb(&mut verbs, "Interpret and Analyze Conversations");
        assert!(!verbs.contains(&"Interpret"));
        assert!(verbs.contains(&"Analyze"));
        leave_out_opening_verb(&mut verbs, "Plan Group Conversations");
        assert!(!verbs.contains(&"Plan") && verbs.contains(&"Play"));
        assert_eq!(verbs.len(), NAME_VERBS.len() - 2);
        let mut last = vec!["Help"];
        leave_out_opening_verb(&mut last, "Help Conversations");
        assert_eq!(last, ["Help"]);
    }

    #[test]
    fn a_name_made_only_of_the_instructions_words_is_refused() {
        let description = "Users asked for help with their code. They differ from others.";
        for echo in [
            "Group of similar conversations between users and an AI assistant",
            "JSON",
            "Group 1",
            "Conversation Group",
            "Classify Conversations",
            "Suggest Conversations",
            "Explain",
            "Interpret and Analyze Conversations between Users and AI Assistant",
            "Interpret and Analyze Conversations",
        ] {
            let refused = validate(echo, description, &[]).unwrap_err();
            assert!(refused.contains("repeats the instructions"), "{refused}");
        }
        assert!(validate("Compare AI and Private Equity Firms", description, &[]).is_ok());
        assert!(validate("Fix Rust borrow checker errors", description, &[]).is_ok());
        assert!(validate("Classify customer emails", description, &[]).is_ok());
        assert!(validate("Interpret and Debug Python scripts", description, &[]).is_ok());
    }

    #[test]
    fn a_description_made_only_of_the_instructions_words_is_refused() {
        let name = "Plan trips abroad";
        for echo in [
            "What the users in this group asked for, and what sets them apart from the \
             contrast conversations.",
            "Two sentences in the past tense.",
        ] {
            let refused = validate(name, echo, &[]).unwrap_err();
            assert!(refused.contains("description only repeats"), "{refused}");
        }
        let real = "The users asked for help planning trips abroad. Unlike the contrast \
                    conversations, they wanted day-by-day itineraries.";
        assert!(validate(name, real, &[]).is_ok());
    }

    /// The example's language-learning cluster at `d7a7c9d`: some of its members,
    /// and the nearest summaries outside it, as the model wrote them.
    #[test]
    fn a_name_about_the_contrast_is_refused() {
        let members: Vec<String> = [
            "The user asked for information about the difference between 'fewer people' and 'fewer emails'.",
            "The user asked for a German question about why the preposition 'mit' always takes the dative case in German.",
            "The user asked for help with understanding the present perfect and past simple in English.",
            "The user is learning Korean vocabulary from a list, but they forget most words after a week.",
        ]
        .map(String::from)
        .to_vec();
        let contrast: Vec<String> = [
            "The user asked for advice on how to cook rice to make it mushy, while the assistant suggested using a pot instead of a rice cooker.",
            "The user asked for a recommendation on how to create an emergency fund, and the assistant suggested a high-yield savings account.",
            "The user asked for a final interview and the assistant replied that it's now been 8 days.",
        ]
        .map(String::from)
        .to_vec();
        let refused = |name: &str| fits_the_contrast_better(name, &members, &contrast);
        assert!(refused("Discuss cooking and cooking techniques"));
        assert!(refused("Explain how to create an emergency fund"));
        // A word of the group's grounds the name, whatever else it says.
        assert!(!refused("Explain German grammar and cooking words"));
        assert!(!refused("Learn Korean vocabulary"));
        // Words neither side has, or the instructions' and the verbs', are no
        // evidence: "create" is one of the verbs a name may open with.
        assert!(!refused("Solve Puzzles"));
        assert!(!refused("Answer user questions about conversations"));
        assert!(!refused("Create"));
    }

    #[test]
    fn a_name_that_ends_in_group_or_conversations_is_refused() {
        let description = "Users asked for help with their budgets. They differ from others.";
        for label in ["Design and Budgeting Group", "Interpret and Travel Groups"] {
            let refused = validate(label, description, &[]).unwrap_err();
            assert!(refused.contains("labels the cluster"), "{refused}");
        }
        assert!(validate("Plan group trips and budgets", description, &[]).is_ok());
        for label in [
            "Calculate and Sum Conversations",
            "Develop and Collaborate with a Group of Similar Conversations",
        ] {
            let refused = validate(label, description, &[]).unwrap_err();
            assert!(refused.contains("labels the cluster"), "{refused}");
        }
        assert!(validate("Practice French conversation", description, &[]).is_ok());
    }

    #[test]
    fn a_name_that_loops_on_one_word_is_refused() {
        let description = "Users asked for help with their code. They differ from others.";
        let looped = "The AI and AI-powered AI-powered AI-powered AI-powered";
        let refused = validate(looped, description, &[]).unwrap_err();
        assert!(refused.contains("repeats a word"), "{refused}");
        assert!(validate("Compare AI and non-AI tools", description, &[]).is_ok());
    }
}
