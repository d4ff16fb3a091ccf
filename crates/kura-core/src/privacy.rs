//! Identifiers taken out of every summary the pipeline keeps: email addresses and
//! file paths that start at a drive or a user's home.
//!
//! Why: Clio's privacy rule asks summaries to identify no one, and a summariser
//! copies what is in front of it. On 64 Arena-Hard conversations Qwen 0.5B put one
//! user's full name into three facets of one summary, as a folder of the Windows
//! path it quoted (`E:\<first name> <last name>\Backup\…\Android.mk`). A path or an
//! address tells a cluster nothing its words do not, so they are replaced with what
//! they are. The pipeline does it to whatever summariser wrote the facets, so a
//! backend of one's own keeps the rule without knowing of it.

use crate::types::ConversationSummary;

/// Bump when what is redacted changes: it is part of the summaries stage's key, so
/// summaries kept before are redacted again.
pub const REDACTION_VERSION: &str = "redact-v1";

/// The summary with [`redact_identifiers`] applied to every facet written in words.
pub fn redact_summary(mut summary: ConversationSummary) -> ConversationSummary {
    summary.summary = redact_identifiers(&summary.summary);
    let facets = [&mut summary.request, &mut summary.task, &mut summary.topic];
    for text in facets.into_iter().flatten() {
        *text = redact_identifiers(text);
    }
    for error in summary.assistant_errors.iter_mut().flatten() {
        *error = redact_identifiers(error);
    }
    summary
}

/// `text` with each email address and each absolute path from a drive (`E:\…`) or a
/// home (`/home/…`, `/Users/…`, `C:\Users\…`, `~/…`) replaced by a description.
pub fn redact_identifiers(text: &str) -> String {
    let words: Vec<&str> = text.split(' ').collect();
    let mut out: Vec<String> = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        let word = words[i];
        let (lead, core, trail) = split_punctuation(word);
        if is_email(core) {
            out.push(format!("{lead}an email address{trail}"));
        } else if starts_drive_path(core) {
            // A folder's name may hold spaces: the path goes on through each next
            // word that holds a backslash.
            let mut last = i;
            while words.get(last + 1).is_some_and(|w| w.contains('\\')) {
                last += 1;
            }
            let (_, _, trail) = split_punctuation(words[last]);
            out.push(format!("{lead}a file path{trail}"));
            i = last;
        } else if starts_home_path(core) {
            out.push(format!("{lead}a file path{trail}"));
        } else {
            out.push(word.to_string());
        }
        i += 1;
    }
    out.join(" ")
}

/// A word's opening quotes and brackets, its body, and its closing punctuation.
fn split_punctuation(word: &str) -> (&str, &str, &str) {
    let opening = |c: char| matches!(c, '\'' | '"' | '(' | '[' | '`' | '<');
    let closing = |c: char| {
        matches!(
            c,
            '\'' | '"' | ')' | ']' | '`' | '>' | '.' | ',' | ';' | ':' | '!' | '?'
        )
    };
    let body_start = word.len() - word.trim_start_matches(opening).len();
    let rest = &word[body_start..];
    let body = rest.trim_end_matches(closing);
    (&word[..body_start], body, &rest[body.len()..])
}

fn is_email(word: &str) -> bool {
    let Some((local, domain)) = word.split_once('@') else {
        return false;
    };
    let allowed = |c: char| c.is_alphanumeric() || "._%+-".contains(c);
    !local.is_empty()
        && local.chars().all(allowed)
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && domain
            .chars()
            .all(|c| c.is_alphanumeric() || ".-".contains(c))
}

/// `E:\…`: a drive letter, a colon, a backslash and more.
fn starts_drive_path(word: &str) -> bool {
    let mut chars = word.chars();
    matches!(
        (chars.next(), chars.next(), chars.next(), chars.next()),
        (Some(drive), Some(':'), Some('\\'), Some(_)) if drive.is_ascii_alphabetic()
    )
}

/// A path inside a user's home, where the next folder is their name.
fn starts_home_path(word: &str) -> bool {
    ["/home/", "/Users/", "/users/", "~/"]
        .iter()
        .any(|home| word.starts_with(home) && word.len() > home.len())
}

#[cfg(test)]
mod tests {
    use super::redact_identifiers;

    #[test]
    fn a_drive_path_goes_whole_even_where_a_folder_has_spaces() {
        assert_eq!(
            redact_identifiers(
                "The user built a project with the Android NDK using \
                 E:\\Jane Doe\\Backup\\app\\src\\main\\jni\\Android.mk and it failed."
            ),
            "The user built a project with the Android NDK using a file path and it failed."
        );
        assert_eq!(
            redact_identifiers("The script reads 'C:\\Users\\jdoe\\notes.txt'."),
            "The script reads 'a file path'."
        );
    }

    #[test]
    fn addresses_and_home_paths_are_described() {
        assert_eq!(
            redact_identifiers(
                "Send it to jane.doe+work@example.co.uk, then run /home/jdoe/run.sh."
            ),
            "Send it to an email address, then run a file path."
        );
        assert_eq!(
            redact_identifiers("The config lives in ~/.config/app (see /Users/jdoe/x)."),
            "The config lives in a file path (see a file path)."
        );
    }

    #[test]
    fn ordinary_text_and_code_stay_as_they_are() {
        for text in [
            "The user asked for a regex that does not contain the string 'C:\\'.",
            "The user asked how @decorators work in Python and what a@b means.",
            "The user asked about /usr/bin/env and src/main.rs in a Rust project.",
            "The user asked: what is 2:3 as a ratio?",
            "",
        ] {
            assert_eq!(redact_identifiers(text), text);
        }
    }
}
