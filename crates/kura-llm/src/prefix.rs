//! A prompt's shared opening (the system message and the start of the user's turn),
//! run through the model once and cloned for every conversation: with a long system
//! prompt and short conversations this is a large share of the work.

use std::sync::{Mutex, PoisonError};

use crate::chat::{ChatMessage, ChatRole};
use crate::error::LlmError;
use crate::llm::{LocalLlm, Session};
use crate::logits::Logits;
use crate::model::Cache;

pub(crate) struct SharedPrefix {
    system: String,
    /// Computed by the first session asked for; a lock, not a race, so that threads
    /// starting together do not each read the prefix.
    computed: Mutex<Option<(Cache, Option<Logits>)>>,
}

impl SharedPrefix {
    pub(crate) fn new(system: impl Into<String>) -> Self {
        SharedPrefix {
            system: system.into(),
            computed: Mutex::new(None),
        }
    }

    /// A session positioned right after the opening of the user's turn.
    pub(crate) fn session<'a>(
        &self,
        llm: &'a LocalLlm,
        temperature: f32,
        seed: u64,
    ) -> Result<Session<'a>, LlmError> {
        let (cache, logits) = {
            let mut computed = self.computed.lock().unwrap_or_else(PoisonError::into_inner);
            match &*computed {
                Some(done) => done.clone(),
                None => computed.insert(self.compute(llm)?).clone(),
            }
        };
        Ok(Session::resume(llm, cache, logits, temperature, seed))
    }

    /// The prefix's tokens: the chat's opening, the system message and the start of
    /// the user's turn.
    pub(crate) fn tokens(&self, llm: &LocalLlm) -> Result<Vec<u32>, LlmError> {
        let chat = llm.chat();
        let mut tokens = chat.begin();
        tokens.extend(chat.message(&ChatMessage::system(self.system.clone()))?);
        tokens.extend(chat.open(ChatRole::User)?);
        Ok(tokens)
    }

    fn compute(&self, llm: &LocalLlm) -> Result<(Cache, Option<Logits>), LlmError> {
        let mut session = llm.session(0.0, 0);
        session.feed(&self.tokens(llm)?)?;
        let (mut cache, logits) = session.snapshot();
        llm.model().freeze_cache(&mut cache);
        Ok((cache, logits))
    }
}
