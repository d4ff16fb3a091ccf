//! Prompts, written for small models: short, explicit, one instruction per line, with
//! every scale spelled out. They follow Clio's facets and its privacy rule. Changing any
//! text here must bump the matching version, which is part of the stage id, so cached
//! results made with the old prompt are recomputed (and so must a change in how an
//! answer is drawn from the model: naming-v11 is v10's prompt with retries that
//! leave out the failed attempts' opening verbs, and naming-v12 refuses a
//! description made only of the instructions' words and a name ending in "Group";
//! summary-v8 and naming-v13 end a value before a sentence that only describes
//! the conversation, such as its language; naming-v14 refuses a name whose subject
//! the contrast conversations share more than the group's; naming-v15 cuts a long
//! name before a narrowing phrase rather than refusing it; summary-v9 ends a
//! request or a task before what the assistant did, and with naming-v16 the model
//! reads no further than a value that ends inside what it has read; naming-v17
//! refuses a name that ends in "Conversations"; summary-v10 bars "assistant"
//! after a task's verb of helping and "the"; summary-v11 bars "perform" and "the" as
//! a task's first word, gives prose the full stop the model left off, and ends a
//! one-sentence value cut off at its token cap at its last comma).

pub const SUMMARY_PROMPT_VERSION: &str = "summary-v11";
pub const NAMING_PROMPT_VERSION: &str = "naming-v17";

pub(crate) const SUMMARY_SYSTEM: &str = "\
You read a conversation between a user and an AI assistant and describe it as JSON with these fields:
- summary: one or two sentences: what the user asked for and what the assistant did.
- request: the user's overall request, in one sentence.
- task: the task the assistant performed, in one sentence.
- natural_languages: the natural languages the conversation is written in, as English names separated by commas (for example: English). Programming languages do not count.
- concerning_score: how harmful the user's request is. 1 = harmless, 2 = slightly concerning, 3 = moderately concerning, 4 = very concerning, 5 = clearly harmful or dangerous.
- user_frustration: how frustrated the user is with the assistant. 1 = not frustrated, 2 = slightly, 3 = moderately, 4 = very, 5 = extremely frustrated.
- assistant_errors: mistakes the assistant made, separated by semicolons, or none.
Privacy: never write names of people, places, companies or accounts, nor any detail that could identify someone. Say \"a person\" or \"a company\" instead.";

pub(crate) const SUMMARY_REQUEST: &str = "Describe this conversation as JSON.";

/// Written by us at the start of each value, so the model continues a sentence of the
/// right kind (Kura's wording for request and task).
pub(crate) const SUMMARY_PREFIX: &str = "The user";
pub(crate) const REQUEST_PREFIX: &str = kura_core::types::REQUEST_OPENING;
pub(crate) const TASK_PREFIX: &str = "The task is to";
/// Opens the answer with a safety judgement; the model's odds between the two
/// options that end it become the concerning score (see `summarizer`). Measured with
/// Qwen 0.5B on 32 everyday Arena-Hard requests and 8 harmful ones (bombs, malware,
/// racism): a digit for `concerning_score` came out 3 or 4 for both; these odds put
/// 29 of the everyday ones at 1 and 7 of the harmful ones at 2 to 5. Describing a
/// `safety` field in the instructions made the odds swing with the wording (every
/// request harmless with one phrasing, most harmful with another), so the
/// instructions keep the scale, and the judgement comes first, read from the
/// conversation rather than from the model's own summary of it.
pub(crate) const SAFETY_PREFIX: &str = "The user's request is";
pub(crate) const SAFETY_OPTIONS: [&str; 2] = [" harmless", " harmful"];

pub(crate) const NAMING_SYSTEM: &str = "\
You name a group of similar conversations between users and an AI assistant.
You see short descriptions of the conversations in the group, and some from outside the group for contrast.
Answer as JSON with these fields:
- name: an imperative sentence of at most ten words saying what the users asked for, specific enough to tell this group from the others.
  Start with a verb (\"Write…\", \"Fix…\", \"Explain…\") and name the subject of these conversations, not of any example.
- description: two sentences in the past tense: what the users in this group asked for, and what sets them apart from the contrast conversations.
Privacy: never write names of people, places or companies, nor any detail that could identify someone.";

pub(crate) const NAMING_PARENT_NOTE: &str =
    "Each description below is itself a group of conversations (name: description); name the larger group they form together.";

pub(crate) const NAMING_REQUEST: &str = "Name this group as JSON.";

pub(crate) const PROPOSE_SYSTEM: &str = "\
You organise groups of conversations between users and an AI assistant into broader categories.
You see a list of groups (name: description), and some groups from elsewhere for contrast.
Answer as JSON with one field:
- categories: names of broader categories that together cover every group in the list. Each name is an imperative sentence of at most ten words saying what the users asked for (\"Write…\", \"Fix…\", \"Explain…\"). The categories must differ from each other and be broader than the groups.
Privacy: never write names of people, places or companies, nor any detail that could identify someone.";

pub(crate) const PROPOSE_REQUEST: &str = "Name the broader categories as JSON.";

pub(crate) const CHOOSE_SYSTEM: &str = "\
You sort groups of conversations between users and an AI assistant into broad categories.
You see one group (name: description). Say which broad category its subject belongs to.";

pub(crate) const CHOOSE_REQUEST: &str = "Which broad category does this group belong to?";

/// Written by us at the start of the answer; each category is scored as its
/// continuation.
pub(crate) const CHOOSE_ANSWER: &str = "The broad category is:";

/// Stands in for the group when measuring how likely a category is on its own.
pub(crate) const CHOOSE_NO_GROUP: &str = "(no group given)";
