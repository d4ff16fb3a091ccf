//! Chat messages and the ChatML template (`<|im_start|>role\n…<|im_end|>\n`), which both
//! SmolLM2 and Qwen2.5 use. The template is applied as token ids, not as text: the role
//! markers are the control tokens themselves and message text is encoded with control
//! tokens disabled, so a conversation that contains "<|im_end|>" cannot end its own turn.

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

/// The ids of ChatML's markers and a tokenizer for plain text (control tokens off).
pub(crate) struct ChatMl {
    im_start: u32,
    im_end: u32,
    text: Tokenizer,
}

impl ChatMl {
    /// `None` when the vocabulary has no ChatML markers.
    pub(crate) fn new(tokenizer: &Tokenizer) -> Option<Self> {
        let mut text = tokenizer.clone();
        text.set_encode_special_tokens(true);
        Some(ChatMl {
            im_start: tokenizer.token_to_id("<|im_start|>")?,
            im_end: tokenizer.token_to_id("<|im_end|>")?,
            text,
        })
    }

    pub(crate) fn im_end(&self) -> u32 {
        self.im_end
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

    /// `<|im_start|>role\n` — the opening of a turn.
    pub(crate) fn open(&self, role: ChatRole) -> Result<Vec<u32>, LlmError> {
        let mut ids = vec![self.im_start];
        ids.extend(self.encode_text(&format!("{}\n", role.as_str()))?);
        Ok(ids)
    }

    /// `<|im_end|>\n` — the close of a turn.
    pub(crate) fn close(&self) -> Result<Vec<u32>, LlmError> {
        let mut ids = vec![self.im_end];
        ids.extend(self.encode_text("\n")?);
        Ok(ids)
    }

    pub(crate) fn message(&self, message: &ChatMessage) -> Result<Vec<u32>, LlmError> {
        let mut ids = self.open(message.role)?;
        ids.extend(self.encode_text(&message.content)?);
        ids.extend(self.close()?);
        Ok(ids)
    }

    /// All messages followed by the opening of the assistant's turn.
    pub(crate) fn prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, LlmError> {
        let mut ids = Vec::new();
        for message in messages {
            ids.extend(self.message(message)?);
        }
        ids.extend(self.open(ChatRole::Assistant)?);
        Ok(ids)
    }
}
