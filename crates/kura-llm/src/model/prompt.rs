//! Reading a prompt on the CPU on host buffers: the pass of a decoding step (`host`),
//! with dense GEMM for the projections, and causal attention over each head's keys
//! as GEMMs over blocks of rows (`kv`).
//!
//! Why not candle's ops, as before: the GEMMs were only half of a prompt's time. The
//! rest was the ops between them: the full masked square of scores with a scalar
//! `exp` over all of it (the causal half is never used), grouped keys and values
//! copied to every query head, and a fresh zeroed buffer for every intermediate.

use kura_simd::{matmul, MatRef, Threads};

use super::host::{add_rows, with_host_values, HostWeights, Weights};
use super::{Cache, Linear, Model};
use crate::error::LlmError;

impl Model {
    /// [`Model::forward`] of a prompt of many tokens on host buffers: the pass of a
    /// decoding step, with the dense weights. Returns the logits after its last token.
    pub(super) fn prefill_on_host(
        &self,
        host: &HostWeights,
        tokens: &[u32],
        cache: &mut Cache,
    ) -> Result<Vec<f32>, LlmError> {
        self.run_on_host(host, &[tokens], std::slice::from_mut(cache), Weights::Dense)?
            .pop()
            .ok_or_else(|| LlmError::InvalidOutput("a prompt returned no logits".into()))
    }
}

/// `xs · Wᵀ (+ bias)` with the dense f32 weights, read in place from candle's storage.
pub(super) fn dense_product(
    linear: &Linear,
    xs: &[f32],
    bias: Option<&[f32]>,
) -> Result<Vec<f32>, LlmError> {
    let (outputs, inputs) = linear.dense.dims2()?;
    let rows = xs.len() / inputs.max(1);
    let mut ys = vec![0.0f32; rows * outputs];
    with_host_values(&linear.dense, |weights| {
        // The weights are `outputs × inputs`, read as their transpose.
        let weights = MatRef::row_major(weights, outputs, inputs).t();
        let xs = MatRef::row_major(xs, rows, inputs);
        matmul(&mut ys, xs, weights, 1.0, false, Threads::All);
    })?;
    if let Some(bias) = bias {
        add_rows(&mut ys, bias);
    }
    Ok(ys)
}

#[cfg(test)]
mod tests {
    use crate::model::{argmax, host_weights, max_difference, smollm2};

    /// A prompt read on host buffers against candle's tensor path on the real model,
    /// after a cache of earlier tokens (as a conversation continues the shared
    /// instructions): close logits, the same next token, and caches that continue
    /// alike. The prompt is long enough for the attention's GEMM blocks.
    #[test]
    fn a_prompt_on_host_buffers_matches_the_tensor_path() {
        let llm = smollm2();
        let model = llm.model();
        let host = host_weights(model);
        let earlier: Vec<u32> = (0..20).map(|i| 100 + i * 37).collect();
        let prompt: Vec<u32> = (0..75).map(|i| 500 + i * 101).collect();
        let mut on_host = model.new_cache();
        let mut on_tensors = model.new_cache();
        model
            .prefill_on_host(host, &earlier, &mut on_host)
            .expect("host");
        model
            .forward_through_tensors(&earlier, &mut on_tensors)
            .expect("tensors");

        let got = model
            .prefill_on_host(host, &prompt, &mut on_host)
            .expect("host");
        let want = model
            .forward_through_tensors(&prompt, &mut on_tensors)
            .expect("tensors");
        assert!(
            max_difference(&got, &want) < 2e-3,
            "{}",
            max_difference(&got, &want)
        );
        assert_eq!(argmax(&got), argmax(&want));
        assert_eq!(on_host.len(), earlier.len() + prompt.len());

        let next = [argmax(&got)];
        let got = model
            .decode(&next, std::slice::from_mut(&mut on_host))
            .expect("step");
        let want = model
            .decode(&next, std::slice::from_mut(&mut on_tensors))
            .expect("step");
        assert!(max_difference(&got[0], &want[0]) < 2e-3);
    }
}
