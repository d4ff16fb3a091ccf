//! Small text helpers shared by every stage.

/// A filesystem- and URL-safe slug of at most `max_words` words.
pub fn slugify(text: &str, max_words: usize) -> String {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(max_words)
        .map(|w| w.to_lowercase())
        .collect();
    if words.is_empty() {
        "cluster".to_string()
    } else {
        words.join("_")
    }
}

/// Makes untrusted text safe to print in a terminal: control characters (escape
/// sequences included) become visible `\u{..}` escapes, and newlines become spaces.
pub fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() || is_bidi_control(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// Bidirectional overrides can make a line read differently from what it contains.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

/// Cuts `text` to at most `max_chars` characters on a char boundary, marking the cut.
pub fn truncate_chars(text: &str, max_chars: usize) -> String {
    match first_chars(text, max_chars) {
        head if head.len() < text.len() => format!("{head}…"),
        _ => text.to_string(),
    }
}

/// `text` with its first character in upper case ("german" → "German").
pub fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map_or_else(String::new, |c| c.to_uppercase().chain(chars).collect())
}

/// The first `count` characters of `text` (all of it when shorter).
pub fn first_chars(text: &str, count: usize) -> &str {
    match text.char_indices().nth(count) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// Whether two cluster names read the same once case, punctuation, spacing and a
/// plural `s` are set aside ("Write Python scripts." and "write python script"):
/// two such clusters cannot be told apart in the tree.
pub fn same_name(a: &str, b: &str) -> bool {
    name_words(a) == name_words(b)
}

/// `name`, or where it has more than `max_words` words a cut of it that reads as a
/// name; `None` where no cut does. The cut is its first clause where that is short
/// enough: Qwen 0.5B named a cluster "Plan a vegetarian meal prep for 5 workday
/// lunches, with at least 25 g protein per lunch and no time". Where no clause is,
/// the name is cut before the last word of [`CUT_BEFORE`] that leaves it at most
/// `max_words` (and at least [`MIN_CUT_WORDS`]): the phrase that word opens only
/// narrows the one before. Names the model wrote too long had been a third of the
/// reasons its clusters fell back to a member's request, on the example and two
/// samples of real conversations: "Develop and refine a cover letter for a
/// Marketing Assistant position", "Explain the impact of supernovae on the stars
/// that they occur on". A member's request, named after when the namer fails, is
/// cut the same way.
pub fn shorten_name(name: &str, max_words: usize) -> Option<String> {
    let count = |text: &str| text.split_whitespace().count();
    if count(name) <= max_words {
        return Some(name.to_string());
    }
    let first_clause = name.split([',', ';', ':', '(']).next().map(str::trim);
    if let Some(clause) = first_clause.filter(|c| (2..=max_words).contains(&count(c))) {
        return Some(clause.to_string());
    }
    let words: Vec<&str> = name.split_whitespace().collect();
    let opens_a_phrase = |word: &str| CUT_BEFORE.contains(&word.to_lowercase().as_str());
    (MIN_CUT_WORDS..=max_words)
        .rev()
        .find(|&n| words.get(n).is_some_and(|w| opens_a_phrase(w)))
        .map(|n| {
            words[..n]
                .join(" ")
                .trim_end_matches([',', ';', ':'])
                .to_string()
        })
}

/// Words that open a phrase narrowing what came before: prepositions,
/// conjunctions and relative words.
const CUT_BEFORE: &[&str] = &[
    "about",
    "and",
    "at",
    "because",
    "between",
    "by",
    "for",
    "from",
    "in",
    "including",
    "into",
    "of",
    "on",
    "or",
    "that",
    "to",
    "using",
    "when",
    "where",
    "which",
    "while",
    "who",
    "with",
    "within",
];

/// The fewest words a cut name keeps: a verb and its object.
const MIN_CUT_WORDS: usize = 3;

/// The words of a name as names are compared: runs of letters and digits,
/// lower-cased, a plural `s` dropped ("Conversation Group" and "conversations
/// groups" have the same words).
pub fn name_words(name: &str) -> Vec<String> {
    name.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase().trim_end_matches('s').to_string())
        .collect()
}

/// The names given so far to the clusters of one level, named one after another.
/// Each is told the names before it (`NamingRequest::taken`), and one that still
/// reads as an earlier one (see [`same_name`]) is numbered: the last resort for a
/// namer that keeps giving one name to different clusters.
#[derive(Debug, Default)]
pub struct LevelNames {
    given: Vec<String>,
}

impl LevelNames {
    pub fn given(&self) -> &[String] {
        &self.given
    }

    /// Gives the level's next cluster `name`, or the first of `name (2)`,
    /// `name (3)`, … that no name given before reads as; returns the name given.
    pub fn give(&mut self, name: &str) -> String {
        let free = |candidate: &str| !self.given.iter().any(|g| same_name(g, candidate));
        let name = match free(name) {
            true => name.to_string(),
            false => (2..)
                .map(|n| format!("{name} ({n})"))
                .find(|candidate| free(candidate))
                .unwrap_or_else(|| name.to_string()),
        };
        self.given.push(name.clone());
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_name_keeps_its_first_clause_when_that_is_a_name() {
        assert_eq!(
            shorten_name(
                "Plan a vegetarian meal prep for 5 workday lunches, with at least 25 g \
                 protein per lunch and no time",
                10
            )
            .as_deref(),
            Some("Plan a vegetarian meal prep for 5 workday lunches")
        );
        let short = "Fix bugs, crashes and hangs";
        assert_eq!(shorten_name(short, 10).as_deref(), Some(short));
    }

    /// Qwen 0.5B's names refused for their length alone, cut before the phrase that
    /// narrows them.
    #[test]
    fn a_long_name_without_a_short_clause_is_cut_before_a_narrowing_phrase() {
        for (long, cut) in [
            (
                "Develop and refine a cover letter for a Marketing Assistant position",
                "Develop and refine a cover letter",
            ),
            (
                "Explain the differences between 'fewer people' and 'fewer emails' in English",
                "Explain the differences between 'fewer people' and 'fewer emails'",
            ),
            (
                "Explain the impact of supernovae on the stars that they occur on",
                "Explain the impact of supernovae on the stars",
            ),
            (
                "Teach the User How to Write a Cover Letter for Marketing Assistant Positions",
                "Teach the User How to Write a Cover Letter",
            ),
            (
                "Plan, with at least 25 g protein per lunch and no time on Sundays at all",
                "Plan, with at least 25 g protein per lunch",
            ),
        ] {
            assert_eq!(shorten_name(long, 10).as_deref(), Some(cut));
            assert!(cut.split_whitespace().count() <= 10);
        }
        // No word to cut before within ten words: no name.
        let unbroken = "Summarize twelve long sentences packed dense nouns verbs adjectives adverbs pronouns articles";
        assert_eq!(shorten_name(unbroken, 10), None);
    }

    #[test]
    fn names_that_differ_only_in_case_punctuation_or_plural_are_the_same() {
        assert!(same_name("Write Python scripts.", "write  python script"));
        assert!(!same_name("Write Python scripts", "Write Rust scripts"));
        assert!(!same_name("Fix bugs", "Fix bugs in tests"));
    }

    #[test]
    fn a_taken_name_gets_the_first_free_number() {
        let mut names = LevelNames::default();
        assert_eq!(names.give("Plan trips"), "Plan trips");
        assert_eq!(names.give("plan trip"), "plan trip (2)");
        assert_eq!(names.give("Cook dinners"), "Cook dinners");
        assert_eq!(names.give("Plan trips."), "Plan trips. (3)");
        assert_eq!(
            names.given(),
            [
                "Plan trips",
                "plan trip (2)",
                "Cook dinners",
                "Plan trips. (3)"
            ]
        );
    }

    #[test]
    fn slug_keeps_words_and_drops_punctuation() {
        assert_eq!(
            slugify("Debug Rust's borrow-checker errors!", 3),
            "debug_rust_s"
        );
        assert_eq!(slugify("¿¡!", 3), "cluster");
    }

    #[test]
    fn terminal_safe_neutralises_escape_sequences() {
        let hostile = "ok\x1b[31mred\x07\u{202e}txt\nnext";
        let safe = terminal_safe(hostile);
        assert!(!safe.contains('\x1b'));
        assert!(!safe.contains('\x07'));
        assert!(!safe.contains('\u{202e}'));
        assert!(!safe.contains('\n'));
        assert!(safe.contains("\\u{1b}[31mred"));
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate_chars("héllo", 2), "hé…");
        assert_eq!(truncate_chars("hi", 5), "hi");
    }
}
