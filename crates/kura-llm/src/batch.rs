//! [`StepBatcher`]: the one-token decoding steps of sessions running on several
//! threads, gathered into one batched pass of the model.
//!
//! Why threads that meet here rather than one loop stepping many sessions: the form
//! writer (`structured`) is sequential code that feeds a session token by token,
//! with retries; written again as a state machine for lockstep stepping it would be
//! twice the code. Instead each conversation runs that code on its own thread, and
//! every one-token feed waits here until each running thread has submitted one; the
//! last to arrive runs them all as one pass, in which every weight is read once for
//! all of them. Longer feeds (a prompt, a piece of the JSON skeleton) run on their
//! own thread meanwhile, which costs nothing: each model call already spreads over
//! all cores. A step's result does not depend on the steps beside it (see `q8`), so
//! a conversation is summarised to the same bits in any batch.

use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::LlmError;
use crate::model::{Cache, Model};

pub(crate) struct StepBatcher {
    state: Mutex<Gathering>,
}

struct Gathering {
    /// Threads that may still submit a step.
    running: usize,
    steps: Vec<Step>,
}

/// The cache after the step and the logits of the next token, or why the pass failed.
type Answer = Result<(Cache, Vec<f32>), String>;

struct Step {
    token: u32,
    cache: Cache,
    reply: mpsc::Sender<Answer>,
}

impl Gathering {
    /// The gathered steps, once every running thread has submitted one.
    fn take_if_complete(&mut self) -> Option<Vec<Step>> {
        (!self.steps.is_empty() && self.steps.len() >= self.running)
            .then(|| std::mem::take(&mut self.steps))
    }
}

impl StepBatcher {
    /// A batcher for `threads` threads, each of which must call
    /// [`StepBatcher::leave`] when it will submit no more steps.
    pub(crate) fn new(threads: usize) -> Self {
        StepBatcher {
            state: Mutex::new(Gathering {
                running: threads,
                steps: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Gathering> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Feeds `token` after what `cache` holds, together with the other threads'
    /// steps; returns the extended cache and the logits of the next token.
    pub(crate) fn step(
        &self,
        model: &Model,
        token: u32,
        cache: Cache,
    ) -> Result<(Cache, Vec<f32>), LlmError> {
        let (reply, answer) = mpsc::channel();
        let complete = {
            let mut state = self.lock();
            state.steps.push(Step {
                token,
                cache,
                reply,
            });
            state.take_if_complete()
        };
        if let Some(steps) = complete {
            run(model, steps);
        }
        answer
            .recv()
            .map_err(|_| LlmError::InvalidOutput("a batched decoding step was lost".into()))?
            .map_err(LlmError::InvalidOutput)
    }

    /// This thread submits no more steps; the others no longer wait for it.
    pub(crate) fn leave(&self, model: &Model) {
        let complete = {
            let mut state = self.lock();
            state.running = state.running.saturating_sub(1);
            state.take_if_complete()
        };
        if let Some(steps) = complete {
            run(model, steps);
        }
    }
}

/// Runs one batched pass and answers every step in it.
fn run(model: &Model, steps: Vec<Step>) {
    let tokens: Vec<u32> = steps.iter().map(|s| s.token).collect();
    let (mut caches, replies): (Vec<Cache>, Vec<mpsc::Sender<Answer>>) =
        steps.into_iter().map(|s| (s.cache, s.reply)).unzip();
    match model.decode(&tokens, &mut caches) {
        Ok(rows) => {
            for ((cache, reply), row) in caches.into_iter().zip(replies).zip(rows) {
                // A thread that stopped waiting has nothing left to answer.
                let _ = reply.send(Ok((cache, row)));
            }
        }
        Err(e) => {
            let reason = format!("batched decoding failed: {e}");
            for reply in replies {
                let _ = reply.send(Err(reason.clone()));
            }
        }
    }
}

/// Calls [`StepBatcher::leave`] when dropped, so a thread that fails or panics
/// never leaves the others waiting for its step.
pub(crate) struct Leaving<'a> {
    pub batcher: &'a StepBatcher,
    pub model: &'a Model,
}

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        self.batcher.leave(self.model);
    }
}
