//! Fits a conversation into a token budget. What a conversation is about is mostly in
//! its opening request and its latest turns, so those are kept; the middle is replaced
//! by a marker ("[… 12 messages omitted …]"), and a single message too large for what
//! is left is cut in its middle. The budget is counted in the model's own tokens, so
//! no input ever overflows the context.

use tokenizers::Tokenizer;

use crate::error::LlmError;

/// What the omission marker between the kept messages may cost.
const MARKER_TOKENS: usize = 16;
/// The opening message gets at most this share of the budget (1/n).
const OPENING_SHARE: usize = 3;
/// A cut-down message keeps at least this many tokens, or is dropped.
const MIN_PARTIAL_TOKENS: usize = 48;

/// One message as shown to the model: a label ("User") and its text.
pub(crate) struct Turn<'a> {
    pub label: &'a str,
    pub content: &'a str,
}

fn render(turn: &Turn<'_>) -> String {
    format!("{}: {}\n\n", turn.label, turn.content.trim())
}

fn count(tokenizer: &Tokenizer, text: &str) -> Result<usize, LlmError> {
    Ok(tokenizer
        .encode(text, false)
        .map_err(LlmError::tokenizer)?
        .len())
}

/// The transcript of `turns` in at most `budget` tokens.
pub(crate) fn fit_transcript(
    tokenizer: &Tokenizer,
    turns: &[Turn<'_>],
    budget: usize,
) -> Result<String, LlmError> {
    let rendered: Vec<String> = turns.iter().map(render).collect();
    let costs = rendered
        .iter()
        .map(|text| count(tokenizer, text))
        .collect::<Result<Vec<_>, _>>()?;
    if costs.iter().sum::<usize>() <= budget {
        return Ok(rendered.concat());
    }
    let Some((first, rest)) = rendered.split_first() else {
        return Ok(String::new());
    };
    let opening = truncate_middle(tokenizer, first, budget / OPENING_SHARE)?;
    let mut left = budget.saturating_sub(count(tokenizer, &opening)? + MARKER_TOKENS);

    let mut latest: Vec<String> = Vec::new();
    for (text, &cost) in rest.iter().zip(&costs[1..]).rev() {
        if cost <= left {
            latest.push(text.clone());
            left -= cost;
            continue;
        }
        if latest.is_empty() || left >= MIN_PARTIAL_TOKENS {
            latest.push(truncate_middle(tokenizer, text, left)?);
        }
        break;
    }
    latest.reverse();

    let omitted = rest.len() - latest.len();
    let mut transcript = opening;
    if omitted > 0 {
        let noun = if omitted == 1 { "message" } else { "messages" };
        transcript.push_str(&format!("[… {omitted} {noun} omitted …]\n\n"));
    }
    transcript.extend(latest);
    Ok(transcript)
}

/// `text` cut to about `max_tokens` by removing its middle (marked), at token edges.
pub(crate) fn truncate_middle(
    tokenizer: &Tokenizer,
    text: &str,
    max_tokens: usize,
) -> Result<String, LlmError> {
    let encoding = tokenizer.encode(text, false).map_err(LlmError::tokenizer)?;
    let total = encoding.len();
    if total <= max_tokens {
        return Ok(text.to_string());
    }
    let keep = max_tokens.saturating_sub(MARKER_TOKENS);
    let head = keep * 2 / 3;
    let tail = keep - head;
    let offsets = encoding.get_offsets();
    let head_end = char_floor(text, offsets.get(head).map_or(0, |o| o.0));
    let tail_start = char_floor(text, offsets.get(total - tail).map_or(text.len(), |o| o.0));
    let tail_start = tail_start.max(head_end);
    Ok(format!(
        "{} [… {} tokens omitted …] {}",
        text[..head_end].trim_end(),
        total - head - tail,
        text[tail_start..].trim_start()
    ))
}

fn char_floor(text: &str, index: usize) -> usize {
    let mut index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}
