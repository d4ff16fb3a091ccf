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
    match text.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
