//! Chat messages and the two chat templates the supported models use, applied as
//! token ids rather than as text: the turn markers are the control tokens themselves
//! and message text is encoded with control tokens disabled, so a conversation that
//! contains "<|im_end|>" or "<|eot_id|>" cannot end its own turn.
//!
//! - ChatML (`<|im_start|>role\n…<|im_end|>\n`): SmolLM2 and Qwen2.5.
//! - Llama 3 (`<|begin_of_text|>` once, then
//!   `<|start_header_id|>role<|end_header_id|>\n\n…<|eot_id|>`, each message
//!   trimmed), as Meta's reference `ChatFormat` and the models' own templates write
//!   it; Llama 3.1 and later also open the system message with the dates their
//!   template writes.
//!
//! Why not render the GGUF's Jinja template: rendered to text and tokenised, any
//! marker a conversation quotes would become a real one.

use tokenizers::Tokenizer;

use crate::error::LlmError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatRole {
    System,
    User,
    Assistant,
}

impl ChatRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ChatRole::System => "system",
            ChatRole::User => "user",
            ChatRole::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub content: String,
}

impl ChatMessage {
    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage {
            role: ChatRole::System,
            content: content.into(),
        }
    }

    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage {
            role: ChatRole::User,
            content: content.into(),
        }
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        ChatMessage {
            role: ChatRole::Assistant,
            content: content.into(),
        }
    }
}

/// The opening of the system message that Llama 3.1's and 3.2's templates write
/// when no date is given. Kept fixed rather than today's date, so that a prompt,
/// and the results cached under it, do not change from one day to the next.
const LLAMA31_DATES: &str = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n";

/// The control tokens that mark turns.
#[derive(Debug, Clone, Copy)]
enum Markers {
    ChatMl {
        im_start: u32,
        im_end: u32,
    },
    Llama3 {
        begin_of_text: u32,
        start_header: u32,
        end_header: u32,
        eot: u32,
    },
}

impl Markers {
    fn chat_ml(tokenizer: &Tokenizer) -> Option<Self> {
        Some(Markers::ChatMl {
            im_start: tokenizer.token_to_id("<|im_start|>")?,
            im_end: tokenizer.token_to_id("<|im_end|>")?,
        })
    }

    fn llama3(tokenizer: &Tokenizer) -> Option<Self> {
        Some(Markers::Llama3 {
            begin_of_text: tokenizer.token_to_id("<|begin_of_text|>")?,
            start_header: tokenizer.token_to_id("<|start_header_id|>")?,
            end_header: tokenizer.token_to_id("<|end_header_id|>")?,
            eot: tokenizer.token_to_id("<|eot_id|>")?,
        })
    }
}

/// A model's chat template as token ids, and a tokenizer for plain text (control
/// tokens off).
pub(crate) struct ChatTemplate {
    markers: Markers,
    /// Written at the head of every system message.
    system_opening: &'static str,
    text: Tokenizer,
}

impl ChatTemplate {
    /// The template of a model whose GGUF holds `template` (its
    /// `tokenizer.chat_template`, if any) and whose vocabulary `tokenizer` reads;
    /// without a template, the vocabulary's markers decide.
    pub(crate) fn detect(tokenizer: &Tokenizer, template: Option<&str>) -> Result<Self, String> {
        let markers = match template {
            Some(t) if t.contains("<|im_start|>") => Markers::chat_ml(tokenizer).ok_or(
                "the chat template is ChatML but the vocabulary has no <|im_start|>/<|im_end|> tokens",
            )?,
            Some(t) if t.contains("<|start_header_id|>") => Markers::llama3(tokenizer).ok_or(
                "the chat template is Llama 3's but the vocabulary lacks one of <|begin_of_text|>, <|start_header_id|>, <|end_header_id|>, <|eot_id|>",
            )?,
            Some(_) => {
                return Err("tokenizer.chat_template is neither ChatML (<|im_start|>…<|im_end|>) nor Llama 3's (<|start_header_id|>…<|eot_id|>); only these two are supported".into())
            }
            None => Markers::chat_ml(tokenizer)
                .or_else(|| Markers::llama3(tokenizer))
                .ok_or("the vocabulary has neither ChatML's <|im_start|>/<|im_end|> nor Llama 3's <|start_header_id|>/<|eot_id|> tokens")?,
        };
        let dated = template.is_some_and(|t| t.contains("Cutting Knowledge Date"));
        let mut text = tokenizer.clone();
        text.set_encode_special_tokens(true);
        Ok(ChatTemplate {
            markers,
            system_opening: if dated { LLAMA31_DATES } else { "" },
            text,
        })
    }

    /// The token that closes a turn: where the model's answer stops.
    pub(crate) fn end_of_turn(&self) -> u32 {
        match self.markers {
            Markers::ChatMl { im_end, .. } => im_end,
            Markers::Llama3 { eot, .. } => eot,
        }
    }

    /// Plain text to ids; control-token strings in it are encoded as ordinary text.
    pub(crate) fn encode_text(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        Ok(self
            .text
            .encode(text, false)
            .map_err(LlmError::tokenizer)?
            .get_ids()
            .to_vec())
    }

    pub(crate) fn text_tokenizer(&self) -> &Tokenizer {
        &self.text
    }

    /// What a sequence starts with, before its first message.
    pub(crate) fn begin(&self) -> Vec<u32> {
        match self.markers {
            Markers::ChatMl { .. } => Vec::new(),
            Markers::Llama3 { begin_of_text, .. } => vec![begin_of_text],
        }
    }

    /// The opening of a turn: `<|im_start|>role\n` or
    /// `<|start_header_id|>role<|end_header_id|>\n\n`.
    pub(crate) fn open(&self, role: ChatRole) -> Result<Vec<u32>, LlmError> {
        match self.markers {
            Markers::ChatMl { im_start, .. } => {
                let mut ids = vec![im_start];
                ids.extend(self.encode_text(&format!("{}\n", role.as_str()))?);
                Ok(ids)
            }
            Markers::Llama3 {
                start_header,
                end_header,
                ..
            } => {
                let mut ids = vec![start_header];
                ids.extend(self.encode_text(role.as_str())?);
                ids.push(end_header);
                ids.extend(self.encode_text("\n\n")?);
                Ok(ids)
            }
        }
    }

    /// The close of a turn: `<|im_end|>\n` or `<|eot_id|>`.
    pub(crate) fn close(&self) -> Result<Vec<u32>, LlmError> {
        match self.markers {
            Markers::ChatMl { im_end, .. } => {
                let mut ids = vec![im_end];
                ids.extend(self.encode_text("\n")?);
                Ok(ids)
            }
            Markers::Llama3 { eot, .. } => Ok(vec![eot]),
        }
    }

    pub(crate) fn message(&self, message: &ChatMessage) -> Result<Vec<u32>, LlmError> {
        let mut ids = self.open(message.role)?;
        let content = match self.markers {
            Markers::ChatMl { .. } => message.content.as_str(),
            Markers::Llama3 { .. } => message.content.trim(),
        };
        let content = match message.role {
            ChatRole::System if !self.system_opening.is_empty() => {
                format!("{}{content}", self.system_opening)
            }
            _ => content.to_string(),
        };
        ids.extend(self.encode_text(&content)?);
        ids.extend(self.close()?);
        Ok(ids)
    }

    /// A sequence of `messages` followed by the opening of the assistant's turn.
    /// A template that dates its system message writes one even when none is given.
    pub(crate) fn prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, LlmError> {
        let mut ids = self.begin();
        let has_system = messages.first().is_some_and(|m| m.role == ChatRole::System);
        if !self.system_opening.is_empty() && !has_system {
            ids.extend(self.message(&ChatMessage::system(""))?);
        }
        for message in messages {
            ids.extend(self.message(message)?);
        }
        ids.extend(self.open(ChatRole::Assistant)?);
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::reference;

    /// Llama 3.1's template, as far as the detection reads it.
    const LLAMA31_TEMPLATE: &str = "{{- bos_token }}…{{- \"Cutting Knowledge Date: December 2023\\n\" }}…{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}";
    const LLAMA3_TEMPLATE: &str = "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}";

    /// What the model's tokenizer makes of the template's text, markers read as
    /// control tokens.
    fn rendered(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
        tokenizer
            .encode(text, false)
            .expect("encode")
            .get_ids()
            .to_vec()
    }

    /// Our prompt, built from ids, is what Llama 3.1's template writes as text
    /// and the model's own tokenizer reads: the dated system message first, each
    /// message trimmed, the assistant's header last.
    #[test]
    fn llama31_prompts_are_the_templates_text_id_for_id() {
        let tokenizer = reference::llama3();
        let chat = ChatTemplate::detect(&tokenizer, Some(LLAMA31_TEMPLATE)).expect("Llama 3.1");
        let messages = [
            ChatMessage::system("You sort requests."),
            ChatMessage::user("  Which sort is fastest?\n"),
        ];
        let want = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
            Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n\
            You sort requests.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n\
            Which sort is fastest?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
        assert_eq!(chat.prompt(&messages).unwrap(), rendered(&tokenizer, want));

        // The template dates a system message even when none is given.
        let want = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
            Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>\
            <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
            <|start_header_id|>assistant<|end_header_id|>\n\n";
        let prompt = chat.prompt(&[ChatMessage::user("Hi")]).unwrap();
        assert_eq!(prompt, rendered(&tokenizer, want));
        assert_eq!(
            chat.end_of_turn(),
            tokenizer.token_to_id("<|eot_id|>").unwrap()
        );
    }

    #[test]
    fn llama3_prompts_have_no_dates_and_quoted_markers_stay_text() {
        let tokenizer = reference::llama3();
        let chat = ChatTemplate::detect(&tokenizer, Some(LLAMA3_TEMPLATE)).expect("Llama 3");
        let prompt = chat
            .prompt(&[ChatMessage::system("Be brief."), ChatMessage::user("Hi")])
            .unwrap();
        let want =
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
            <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
            <|start_header_id|>assistant<|end_header_id|>\n\n";
        assert_eq!(prompt, rendered(&tokenizer, want));

        let eot = chat.end_of_turn();
        let quoted = chat.message(&ChatMessage::user("a <|eot_id|> b")).unwrap();
        assert_eq!(
            quoted.iter().filter(|&&id| id == eot).count(),
            1,
            "{quoted:?}"
        );
        assert_eq!(quoted.last(), Some(&eot));
    }

    #[test]
    fn the_template_decides_the_format_and_others_are_refused() {
        let llama3 = reference::llama3();
        let chat = ChatTemplate::detect(&llama3, None).expect("by the vocabulary");
        assert_eq!(
            chat.begin(),
            vec![llama3.token_to_id("<|begin_of_text|>").unwrap()]
        );

        let error = ChatTemplate::detect(&llama3, Some("{{ '[INST] ' + content + ' [/INST]' }}"))
            .err()
            .expect("Mistral's template is not supported");
        assert!(error.contains("neither ChatML"), "{error}");
        // A ChatML template over a vocabulary without its markers.
        let error = ChatTemplate::detect(&llama3, Some("<|im_start|>{{ role }}"))
            .err()
            .expect("no ChatML markers");
        assert!(error.contains("<|im_start|>"), "{error}");
    }
}
