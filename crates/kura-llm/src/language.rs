//! The natural languages a conversation is written in, read off its text by a
//! language detector (`whatlang`'s trigram profiles and scripts) rather than asked of
//! the model.
//!
//! Why: asked for them, Qwen 0.5B named English for 55 of 56 real conversations
//! written in Arabic, Chinese, French, German, Italian, Japanese, Korean,
//! Portuguese, Russian and Spanish: the instructions (in English, naming English as
//! the example) outweigh the conversation. A detector reads the text itself, costs
//! microseconds, and leaves the model only the conversations it cannot place (a
//! greeting of a word or two), where the model's choice is kept.
//!
//! Code, URLs and markup are not prose and would pull the trigrams toward English or
//! some language they happen to resemble, so they are taken out first; every
//! paragraph is detected on its own, so a request in English about a text in German
//! names both.

use kura_core::text::first_chars;
use kura_core::{Conversation, Role};
use whatlang::{Detector, Lang};

/// A paragraph with fewer letters than this tells too little to place it (see
/// [`letters`]).
const MIN_LETTERS: usize = 12;
/// A language named after the first must hold this share of the placed letters.
const MIN_SHARE: f64 = 0.2;
/// Most languages named.
const MAX_LANGUAGES: usize = 3;
/// Characters read of a message and of a paragraph, and letters placed in a
/// conversation, after which more text would not change the answer. Reading all of it took 11 ms a conversation
/// on ShareGPT (788 ms for the longest), on the summariser's threads, while the
/// others wait for them at the next batched step.
const PARAGRAPH_CHARS: usize = 1_000;
const MESSAGE_CHARS: usize = 16_000;
const ENOUGH_LETTERS: usize = 4_000;
/// What the trigrams name for text that is in no language (a list of romanised
/// company names came out Latin), and seldom what a chat is written in: a paragraph
/// placed there is left unplaced.
const UNLIKELY: [Lang; 2] = [Lang::Lat, Lang::Epo];

/// The conversation's languages, lowercase English names (`"german"`), the users'
/// main language first and then any other that holds a fifth of its prose; `None`
/// when no paragraph could be placed with confidence.
pub(crate) fn detect_languages(conversation: &Conversation) -> Option<Vec<String>> {
    let detector = Detector::new();
    // Letters placed per language: (by users, by anyone).
    let mut placed: Vec<(Lang, usize, usize)> = Vec::new();
    let mut read = 0;
    // The users' messages first, so that a long answer cannot use up the budget.
    let (users, others): (Vec<_>, Vec<_>) = conversation
        .messages
        .iter()
        .partition(|m| m.role == Role::User);
    for message in users.into_iter().chain(others) {
        if read >= ENOUGH_LETTERS {
            break;
        }
        let prose = prose(first_chars(&message.content, MESSAGE_CHARS));
        for paragraph in prose.split('\n') {
            if read >= ENOUGH_LETTERS {
                break;
            }
            let Some((lang, letters)) = place(&detector, paragraph) else {
                continue;
            };
            read += letters;
            let by_user = if message.role == Role::User {
                letters
            } else {
                0
            };
            match placed.iter_mut().find(|(l, ..)| *l == lang) {
                Some((_, user, all)) => {
                    *user += by_user;
                    *all += letters;
                }
                None => placed.push((lang, by_user, letters)),
            }
        }
    }
    let total: usize = placed.iter().map(|&(_, _, all)| all).sum();
    // The users' language first (or, where no user paragraph was placed, the
    // assistant's), then by share; ties keep the order of first appearance.
    placed.sort_by_key(|&(_, user, all)| std::cmp::Reverse((user, all)));
    let (first, rest) = placed.split_first()?;
    let mut rest = rest.to_vec();
    rest.sort_by_key(|&(_, _, all)| std::cmp::Reverse(all));
    let others = rest
        .iter()
        .filter(|&&(_, _, all)| all as f64 >= MIN_SHARE * total as f64);
    Some(
        std::iter::once(first)
            .chain(others)
            .take(MAX_LANGUAGES)
            .map(|&(lang, ..)| name(lang))
            .collect(),
    )
}

/// The paragraph's language and its count of letters, where the detector is sure
/// of it.
fn place(detector: &Detector, paragraph: &str) -> Option<(Lang, usize)> {
    let paragraph = first_chars(paragraph, PARAGRAPH_CHARS);
    let letters = letters(paragraph);
    if letters < MIN_LETTERS {
        return None;
    }
    let info = detector.detect(paragraph)?;
    let lang = info.lang();
    (info.is_reliable() && !UNLIKELY.contains(&lang)).then_some((lang, letters))
}

/// How much text a paragraph holds, in letters of an alphabet: a Chinese or Japanese
/// character or a Korean syllable is about a word, so it counts as three
/// ("你會繁體中文嗎" is 21, "Hola" 4).
fn letters(paragraph: &str) -> usize {
    paragraph
        .chars()
        .filter(|c| c.is_alphabetic())
        .map(|c| match c as u32 {
            // Hiragana and Katakana, CJK ideographs, Hangul syllables.
            0x3040..=0x30FF | 0x3400..=0x9FFF | 0xAC00..=0xD7AF => 3,
            _ => 1,
        })
        .sum()
}

/// The language's lowercase English name, as the summary facet writes it.
fn name(lang: Lang) -> String {
    match lang {
        // whatlang names the written standard of Chinese by its spoken one.
        Lang::Cmn => "chinese".to_string(),
        other => other.eng_name().to_lowercase(),
    }
}

/// The text less what is not prose: fenced and inline code, URLs, and words made
/// of code's characters (`snake_case`, `a.b()`, `<tag>`); each line of a fence is
/// left out whole. A quotation is a paragraph of its own: "translate to English:
/// \"Die Kaution wird …\"" is a request in English about a text in German.
fn prose(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            out.push('\n');
            continue;
        }
        if !in_fence {
            // The parts between backticks are inline code.
            let outside = line.split('`').step_by(2);
            for word in outside.flat_map(str::split_whitespace) {
                if is_prose_word(word) {
                    out.extend(word.chars().map(|c| match c {
                        '"' | '“' | '”' | '«' | '»' => '\n',
                        c => c,
                    }));
                    out.push(' ');
                }
            }
        }
        out.push('\n');
    }
    out
}

/// Whether a whitespace-separated word reads as prose rather than code or an address.
fn is_prose_word(word: &str) -> bool {
    const CODE: &[char] = &[
        '_', '<', '>', '{', '}', '=', '/', '\\', '(', ')', '[', ']', '$', '#', '@', '|',
    ];
    !word.contains("://") && !word.contains(CODE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_core::Message;

    fn conversation(messages: &[(Role, &str)]) -> Conversation {
        Conversation {
            chat_id: "c".to_string(),
            created_at: Default::default(),
            messages: messages
                .iter()
                .map(|&(role, content)| Message {
                    role,
                    content: content.to_string(),
                    created_at: Default::default(),
                })
                .collect(),
            metadata: Default::default(),
        }
    }

    fn languages(messages: &[(Role, &str)]) -> Option<Vec<String>> {
        detect_languages(&conversation(messages))
    }

    #[test]
    fn the_users_language_comes_first_whatever_the_answer_is_in() {
        let german = "Kannst du mir bitte erklären, wie ich meine Heizung richtig entlüfte? \
                      Sie macht seit gestern komische Geräusche.";
        let english = "Of course. First turn the heating off and let the radiators cool \
                       down, then open the bleed valve with a radiator key until water comes out.";
        assert_eq!(
            languages(&[(Role::User, german), (Role::Assistant, english)]),
            Some(vec!["german".to_string(), "english".to_string()])
        );
        assert_eq!(
            languages(&[(Role::User, german), (Role::Assistant, german)]),
            Some(vec!["german".to_string()])
        );
    }

    #[test]
    fn scripts_and_trigrams_place_many_languages() {
        for (text, want) in [
            ("健全的法律制度和良好的法治环境，离不开对法律的传播。", "chinese"),
            ("こんにちは、あなたの名前を教えてください。よろしくお願いします。", "japanese"),
            ("안녕하세요, 오늘 날씨가 정말 좋네요. 산책하러 갈까요?", "korean"),
            (
                "Обработка почвы под бахчевые кормовые культуры включает: выберите один или несколько ответов.",
                "russian",
            ),
            ("Quero que faça um resumo da conversa abaixo em no máximo cinco tópicos.", "portuguese"),
            ("Quelles sont les principales fonctionnalités d'un logiciel de comptabilité ?", "french"),
            ("Explícame cómo funcionan las zonas horarias en los distintos países.", "spanish"),
            ("هل ستربح روسيا الحرب في النهاية أم أن الأمر سيستغرق سنوات طويلة؟", "arabic"),
        ] {
            assert_eq!(languages(&[(Role::User, text)]), Some(vec![want.to_string()]), "{text}");
        }
    }

    #[test]
    fn a_greeting_too_short_to_place_is_left_to_the_model() {
        assert_eq!(
            languages(&[(Role::User, "Hola"), (Role::Assistant, "Hi!")]),
            None
        );
        assert_eq!(languages(&[(Role::User, "")]), None);
    }

    #[test]
    fn code_and_addresses_do_not_count_as_prose() {
        let text = "Warum funktioniert meine Schleife nicht? Sie bricht immer zu früh ab.\n\
                    ```python\nfor item_index in range(len(items)):\n    print(items[item_index])\n```\n\
                    Siehe https://docs.python.org/3/tutorial/controlflow.html und `list_items()`.";
        let prose = prose(text);
        assert!(
            !prose.contains("range") && !prose.contains("https") && !prose.contains("list_items")
        );
        assert_eq!(
            languages(&[(Role::User, text)]),
            Some(vec!["german".to_string()])
        );
    }

    #[test]
    fn a_quotation_is_placed_on_its_own() {
        let request = "translate to english: \"Die Kaution wird pro Produkt, anteilig zum \
                       Neupreis erhoben, und bei Rückgabe vollständig erstattet.\"";
        let answer = "The deposit is charged per product, in proportion to the new price, \
                      and refunded in full on return.";
        let got = languages(&[(Role::User, request), (Role::Assistant, answer)]);
        assert_eq!(got, Some(vec!["german".to_string(), "english".to_string()]));
    }

    /// Only so much text is read; the users' messages first, so a long answer
    /// cannot crowd out the language they wrote in.
    #[test]
    fn a_long_answer_does_not_crowd_out_the_users_language() {
        let german = "Kannst du mir bitte einen langen Bericht über die Geschichte der \
                      Eisenbahn in Europa schreiben?";
        let english = "The history of the railway in Europe begins in the early nineteenth \
                       century with horse-drawn wagonways in the mining districts.\n"
            .repeat(500);
        let got = languages(&[
            (Role::User, "Hi"),
            (Role::Assistant, &english),
            (Role::User, german),
        ]);
        assert_eq!(got, Some(vec!["german".to_string(), "english".to_string()]));
    }

    #[test]
    fn a_minor_language_under_a_fifth_is_left_out() {
        let english = "I am planning a trip through the south of France next summer and would \
                       like some advice on which towns to visit, where to stay and what to eat. \
                       We will travel by train and have about two weeks in total.";
        let french = "Bonjour, merci beaucoup.";
        let got = languages(&[(Role::User, english), (Role::User, french)]);
        assert_eq!(got, Some(vec!["english".to_string()]));
    }
}
