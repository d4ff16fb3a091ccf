//! [`StepBatcher`]: the short feeds of sessions running on several threads (a decoded
//! token, or a piece of the JSON skeleton), gathered into one batched pass of the
//! model.
//!
//! Why threads that meet here rather than one loop stepping many sessions: the form
//! writer (`structured`) is sequential code that feeds a session token by token,
//! with retries; written again as a state machine for lockstep stepping it would be
//! twice the code. Instead each conversation runs that code on its own thread, and
//! every short feed waits here until each running thread has submitted one; the
//! last to arrive runs them all as one pass, in which every weight is read once for
//! all of them. The skeleton's pieces ride along: fed on their own, each took a
//! whole pass over the weights while every other thread waited for it. Prompts run
//! on their own thread meanwhile: a prompt's GEMM already spreads over all cores. A
//! step's result does not depend on the steps beside it (see `q8`), so a
//! conversation is summarised to the same bits in any batch.

use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::LlmError;
use crate::logits::Logits;
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
type Answer = Result<(Cache, Logits), String>;

struct Step {
    tokens: Vec<u32>,
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

    /// Feeds `tokens` (at most [`STEP_MAX_TOKENS`]) after what `cache` holds,
    /// together with the other threads' steps; returns the extended cache and the
    /// logits of the next token.
    ///
    /// [`STEP_MAX_TOKENS`]: crate::model::STEP_MAX_TOKENS
    pub(crate) fn step(
        &self,
        model: &Model,
        tokens: &[u32],
        cache: Cache,
    ) -> Result<(Cache, Logits), LlmError> {
        let (reply, answer) = mpsc::channel();
        let complete = {
            let mut state = self.lock();
            state.steps.push(Step {
                tokens: tokens.to_vec(),
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
    let mut feeds = Vec::with_capacity(steps.len());
    let mut caches = Vec::with_capacity(steps.len());
    let mut replies = Vec::with_capacity(steps.len());
    for step in steps {
        feeds.push(step.tokens);
        caches.push(step.cache);
        replies.push(step.reply);
    }
    let feeds: Vec<&[u32]> = feeds.iter().map(Vec::as_slice).collect();
    match model.step(&feeds, &mut caches) {
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
