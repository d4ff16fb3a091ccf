//! Reading a prompt on the CPU on host buffers: the pass of a decoding step (`host`),
//! with the projections multiplied by the int8 kernel where the 8-bit copies are in
//! its layout (`q8`), else by f32 GEMM over the 8-bit weights widened a slab at a
//! time, and causal attention over the cache as blocks of rows (`kv`: the step's
//! kernels with AVX-512, GEMMs elsewhere).
//!
//! Why not candle's ops, as before: the GEMMs were only half of a prompt's time. The
//! rest was the ops between them: the full masked square of scores with a scalar
//! `exp` over all of it (the causal half is never used), grouped keys and values
//! copied to every query head, and a fresh zeroed buffer for every intermediate.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::PoisonError;

use candle_core::Tensor;
use kura_simd::{matmul, matmul_strided, MatRef, Threads};

use super::host::{add_rows, with_host_values, HostWeights, Weights};
use super::{Cache, Linear, Model};
use crate::error::LlmError;
use crate::logits::Logits;
use crate::q8::{Q8Matrix, Widen, BLOCK};

impl Model {
    /// [`Model::forward`] of a prompt of many tokens on host buffers: the pass of a
    /// decoding step, with the int8 kernel or else f32 GEMM over widened slabs for
    /// the products. Returns the logits after its last token.
    ///
    /// One prompt is read at a time: its products already spread over every core, so
    /// several at once go no faster, while each holds its intermediate buffers
    /// (megabytes a layer for a 600-token Qwen prompt). Sixteen summariser threads
    /// reading their prompts together peaked 250 MB higher, at the same rate.
    /// The lock is taken by the calling thread, never by a rayon worker: waiting on
    /// a GEMM, a worker may take up another task, which would wait for a lock its
    /// own thread holds. The pass itself then runs on a worker (see
    /// [`kura_simd::on_a_worker`]), which takes no lock.
    pub(super) fn prefill_on_host(
        &self,
        host: &HostWeights,
        tokens: &[u32],
        cache: &mut Cache,
    ) -> Result<Logits, LlmError> {
        let mut reading = match rayon::current_thread_index() {
            None => Some(
                self.reading_prompt
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            ),
            Some(_) => None,
        };
        // The lock's slab, reused from prompt to prompt (empty, and never grown, when
        // the int8 kernel reads the prompt); a rayon worker's own.
        let slab = reading
            .as_deref_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let int8 = host.reads_prompts_in_int8();
        // The lock is held by this thread while a worker reads the prompt.
        let (logits, slab) = kura_simd::on_a_worker(move || {
            let slab = RefCell::new(slab);
            let weights = match int8 {
                true => Weights::Packed,
                false => Weights::Dense(&slab),
            };
            let cache = std::slice::from_mut(cache);
            let logits = self.run_on_host(host, &[tokens], cache, weights);
            (logits, slab.into_inner())
        });
        if let Some(kept) = reading.as_deref_mut() {
            *kept = slab;
        }
        logits?
            .pop()
            .ok_or_else(|| LlmError::InvalidOutput("a prompt returned no logits".into()))
    }
}

/// Widened weights per GEMM call: 4 MiB of f32, which stays in the last-level cache.
const SLAB_VALUES: usize = 1 << 20;
/// A slab takes every output row when that leaves it at least this many columns;
/// with fewer, each GEMM would re-read and re-write its whole output for too little
/// work, and slabs take a run of rows instead.
const MIN_SLAB_COLS: usize = 256;

/// `xs · W[rows]ᵀ (+ bias)` for a prompt's many rows: with `linear`'s dense weights
/// where it keeps them, its Q6_K blocks, or else rows `rows` of `matrix`, its
/// 8-bit copy (or the stack that holds it), these two widened a slab at a time.
pub(super) fn prompt_product(
    linear: &Linear,
    matrix: &Q8Matrix,
    rows: Range<usize>,
    xs: &[f32],
    bias: Option<&[f32]>,
    slab: &RefCell<Vec<f32>>,
) -> Result<Vec<f32>, LlmError> {
    let slab = &mut slab.borrow_mut();
    let mut ys = match (&linear.dense, &linear.q6k) {
        (Some(dense), _) => dense_product(dense, xs)?,
        (None, Some(blocks)) => widened_product(blocks, 0..blocks.rows(), xs, slab),
        (None, None) => widened_product(matrix, rows, xs, slab),
    };
    if let Some(bias) = bias {
        add_rows(&mut ys, bias);
    }
    Ok(ys)
}

/// `xs · Wᵀ` with dense f32 weights, read in place from candle's storage.
fn dense_product(dense: &Tensor, xs: &[f32]) -> Result<Vec<f32>, LlmError> {
    let (outputs, inputs) = dense.dims2()?;
    let rows = xs.len() / inputs.max(1);
    let mut ys = vec![0.0f32; rows * outputs];
    with_host_values(dense, |weights| {
        // The weights are `outputs × inputs`, read as their transpose.
        let weights = MatRef::row_major(weights, outputs, inputs).t();
        let xs = MatRef::row_major(xs, rows, inputs);
        matmul(&mut ys, xs, weights, 1.0, false, Threads::All);
    })?;
    Ok(ys)
}

/// `xs · W[rows]ᵀ` with the weights widened from their compact form into a slab of
/// f32 at a time, so that a model holds its weights once, at a byte each, instead of
/// also at four. On Qwen 0.5B's shapes for a 600-token prompt this runs within 1–3% of
/// one GEMM over dense weights held whole; widening the 8-bit copy is 2% of it.
/// `slab` is grown to the size needed and kept: a fresh one for each of a prompt's
/// products (five a layer) was mapped and zeroed each time.
fn widened_product(
    matrix: &impl Widen,
    rows: Range<usize>,
    xs: &[f32],
    slab: &mut Vec<f32>,
) -> Vec<f32> {
    let (outputs, inputs) = (rows.len(), matrix.cols());
    let m = xs.len() / inputs;
    let mut ys = vec![0f32; m * outputs];
    let slab_cols = SLAB_VALUES / outputs.max(1) / BLOCK * BLOCK;
    if slab_cols >= inputs.min(MIN_SLAB_COLS) {
        // Every output row, over a run of inputs at a time, summed into `ys`.
        grow(slab, outputs * slab_cols.min(inputs));
        for start in (0..inputs).step_by(slab_cols) {
            let width = slab_cols.min(inputs - start);
            let slab = &mut slab[..outputs * width];
            matrix.dequantize(rows.clone(), start..start + width, slab);
            let xs = MatRef::new(&xs[start..], m, width, inputs, 1);
            let weights = MatRef::row_major(slab, outputs, width).t();
            matmul(&mut ys, xs, weights, 1.0, start > 0, Threads::All);
        }
    } else {
        // A run of output rows at a time, over every input, into their columns.
        let slab_rows = (SLAB_VALUES / inputs).max(1);
        grow(slab, slab_rows.min(outputs) * inputs);
        let xs = MatRef::row_major(xs, m, inputs);
        for first in (0..outputs).step_by(slab_rows) {
            let count = slab_rows.min(outputs - first);
            let slab = &mut slab[..count * inputs];
            let at = rows.start + first;
            matrix.dequantize(at..at + count, 0..inputs, slab);
            let weights = MatRef::row_major(slab, count, inputs).t();
            matmul_strided(
                &mut ys[first..],
                outputs,
                xs,
                weights,
                1.0,
                false,
                Threads::All,
            );
        }
    }
    ys
}

fn grow(slab: &mut Vec<f32>, len: usize) {
    if slab.len() < len {
        slab.resize(len, 0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        argmax, assert_close_logits, cached_model_in, cached_model_with_tensors, host_weights,
        max_difference, smollm2, CLOSE_LOGITS,
    };
    use crate::q8::{Layout, Rounding};

    /// The most KL divergence from the exact products that activations rounded
    /// twice may give. Measured on Zen 5 over the prompt below: SmolLM2 under
    /// 0.000001 (rounded once: up to 0.004), Qwen up to 0.000014 (once: 0.0008);
    /// on Zen 4 with the second byte's scale fixed at 1/256 of the first's, under
    /// 0.000001 and up to 0.000016.
    const TWICE_KL: f64 = 0.0001;

    /// The most KL divergence from the exact products that activations rounded
    /// once with their outliers apart may give: measured on Zen 4 over the prompt
    /// below, SmolLM2 up to 0.0007 and Qwen up to 0.0003 (rounded once: 0.004 and
    /// 0.0008), so SmolLM2 rounded once would fail it.
    const OUTLIERS_KL: f64 = 0.002;

    /// A prompt read on host buffers, with the weights widened from their compact
    /// forms, against candle's tensor path over the f32 weights, on both real models
    /// (SmolLM2: Q4_1 and Q8_0; Qwen: Q5_0, Q8_0, Q4_K and Q6_K), after a cache of
    /// earlier tokens (as a conversation continues the shared instructions): close
    /// logits, the same next token, and caches that continue alike. The prompt is
    /// long enough for the attention's GEMM blocks.
    #[test]
    fn a_prompt_on_host_buffers_matches_the_tensor_path() {
        for name in ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"] {
            let mut llm = cached_model_in(name, Layout::Panels);
            let mut tensors_llm = cached_model_with_tensors(name);
            // In f32, as candle attends: the integer kernels are held to the
            // definition in `kv`.
            llm.model_mut().attend_in_f32();
            tensors_llm.model_mut().attend_in_f32();
            let (model, on_tensors_model) = (llm.model(), tensors_llm.model());
            let host = host_weights(model);
            let earlier: Vec<u32> = (0..20).map(|i| 100 + i * 37).collect();
            let prompt: Vec<u32> = (0..75).map(|i| 500 + i * 101).collect();
            let mut on_host = model.new_cache();
            let mut on_tensors = on_tensors_model.new_cache();
            model
                .prefill_on_host(host, &earlier, &mut on_host)
                .expect("host");
            on_tensors_model
                .forward_through_tensors(&earlier, &mut on_tensors)
                .expect("tensors");

            let got = model
                .prefill_on_host(host, &prompt, &mut on_host)
                .expect("host");
            let want = on_tensors_model
                .forward_through_tensors(&prompt, &mut on_tensors)
                .expect("tensors");
            assert_close_logits(&got, &want, name);
            assert_eq!(on_host.len(), earlier.len() + prompt.len());

            let next = [argmax(&got)];
            let got = model
                .decode(&next, std::slice::from_mut(&mut on_host))
                .expect("step");
            let want = on_tensors_model
                .decode(&next, std::slice::from_mut(&mut on_tensors))
                .expect("step");
            assert!(max_difference(&got[0], &want[0]) < CLOSE_LOGITS, "{name}");
        }
    }

    /// Where the CPU runs an int8 kernel (AVX-512 VNNI or AVX2), the int8 products
    /// (activations rounded to 8 bits a block at a time) read a real prompt and
    /// decode after it close to the exact products on both real models: the
    /// next-token distributions differ by a small KL divergence, and the token the
    /// int8 model likes best is (nearly) the exact model's favourite too.
    #[test]
    fn int8_products_read_and_decode_close_to_exact_ones() {
        if !crate::q8::int8_supported() {
            eprintln!(
                "this CPU has neither AVX-512 VNNI nor AVX2: the int8 layout is not used here"
            );
            return;
        }
        let text = "<|im_start|>user\nMy landlord kept the whole deposit after I moved out, \
            even though the flat was spotless and I have photos. The lease says he must return \
            it within thirty days. What can I do, and should I write him a letter first?<|im_end|>\n\
            <|im_start|>assistant\nYou have a good case. Start with a short, polite letter";
        let roundings = [
            (Rounding::Once, 0.02),
            (Rounding::Twice, TWICE_KL),
            (Rounding::Outliers, OUTLIERS_KL),
        ];
        let models = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"];
        for (name, (rounding, most)) in models
            .into_iter()
            .flat_map(|name| roundings.map(|r| (name, r)))
        {
            let (mut exact, mut int8) = (
                cached_model_in(name, Layout::Panels),
                cached_model_in(name, Layout::Int8(rounding)),
            );
            // Attention in f32, so that the divergence is the products' rounding
            // alone (the integer attention's is measured on its own, below).
            exact.model_mut().attend_in_f32();
            int8.model_mut().attend_in_f32();
            let tokens = exact.tokenizer().encode(text, false).expect("tokens");
            let tokens = tokens.get_ids();
            let mut caches = [exact.model().new_cache(), int8.model().new_cache()];
            let mut next = [0u32; 2];
            for step in 0..8 {
                let logits: Vec<Logits> = [&exact, &int8]
                    .iter()
                    .zip(caches.iter_mut())
                    .zip(next)
                    .map(|((llm, cache), token)| {
                        match step {
                            0 => llm.model().forward(tokens, cache),
                            _ => llm.model().forward(&[token], cache),
                        }
                        .expect("forward")
                    })
                    .collect();
                let divergence = kl_divergence(&logits[0], &logits[1]);
                let difference = max_difference(&logits[0], &logits[1]);
                eprintln!(
                    "{name}, rounded {rounding:?}, step {step}: KL {divergence:.6}, \
                     max difference {difference:.3}"
                );
                assert!(
                    divergence < most,
                    "{name}, rounded {rounding:?}, step {step}: KL {divergence}"
                );
                // Where two tokens are near tied either may come first; the exact
                // model thinks nearly as well of the int8 model's choice.
                let exact = softmax(&logits[0]);
                let (best, chosen) = (
                    exact[argmax(&logits[0]) as usize],
                    exact[argmax(&logits[1]) as usize],
                );
                assert!(
                    chosen > best - 0.05,
                    "{name} step {step}: {chosen} vs {best}"
                );
                // Both continue from the exact model's choice.
                next = [argmax(&logits[0]); 2];
            }
        }
    }

    /// The integer attention kernels (queries and weights rounded to integers)
    /// move Qwen's next-token distribution next to nothing from f32 attention over
    /// the same cache, reading a prompt and then a token at a time, and the token
    /// they like best is f32 attention's favourite. The products are exact, so that
    /// their rounding does not magnify the attention's (with activations rounded
    /// to 8 bits, any change at all moves the distribution by some 0.0005). Measured
    /// on the Xeon over this text: a mean KL divergence of 0.000002 nats, as over
    /// four real conversations (bfloat16 queries and probabilities gave 0.0009 with
    /// the products rounded).
    #[test]
    fn integer_attention_moves_the_model_little() {
        let mut llm = cached_model_in("qwen2.5-coder-0.5b-instruct", Layout::Panels);
        let fastest = llm.model().attention;
        llm.model_mut().attend_in_f32();
        if llm.model().attention == fastest {
            eprintln!("this CPU attends in f32 already: no integer kernels to compare");
            return;
        }
        let text = "<|im_start|>user\nMy landlord kept the whole deposit after I moved out, \
            even though the flat was spotless and I have photos. The lease says he must return \
            it within thirty days. What can I do, and should I write him a letter first?<|im_end|>\n\
            <|im_start|>assistant\nYou have a good case. Start with a short, polite letter that \
            cites the clause of the lease, lists the dates you moved out and handed back the keys, \
            and asks for the full deposit within fourteen days. Attach the photos and keep a copy. \
            If he does not answer, most places have a small claims court or a deposit protection \
            scheme that settles such disputes cheaply, and a judge will look at your photos and \
            the inventory you signed when you moved in.";
        let tokens = llm.tokenizer().encode(text, false).expect("tokens");
        let tokens = tokens.get_ids();
        let split = tokens.len() / 2;
        let read = |llm: &crate::llm::LocalLlm| -> Vec<Logits> {
            let mut cache = llm.model().new_cache();
            let mut rows = vec![llm
                .model()
                .forward(&tokens[..split], &mut cache)
                .expect("prompt")];
            for &token in &tokens[split..tokens.len() - 1] {
                rows.push(llm.model().forward(&[token], &mut cache).expect("step"));
            }
            rows
        };
        let exact = read(&llm);
        llm.model_mut().attention = fastest;
        let rounded = read(&llm);
        let divergences: Vec<f64> = exact
            .iter()
            .zip(&rounded)
            .map(|(p, q)| kl_divergence(p, q))
            .collect();
        let mean = divergences.iter().sum::<f64>() / divergences.len() as f64;
        let worst = divergences.iter().copied().fold(0.0, f64::max);
        eprintln!(
            "{} steps: mean KL {mean:.6}, most {worst:.6}",
            divergences.len()
        );
        assert!(
            mean < 0.0001 && worst < 0.001,
            "mean KL {mean}, most {worst}"
        );
        for (step, (exact, rounded)) in exact.iter().zip(&rounded).enumerate() {
            let p = softmax(exact);
            let (best, chosen) = (p[argmax(exact) as usize], p[argmax(rounded) as usize]);
            assert!(chosen > best - 0.05, "step {step}: {chosen} vs {best}");
        }
    }

    /// KL(p ‖ q) of the softmaxes of two rows of logits, in nats.
    fn kl_divergence(p: &[f32], q: &[f32]) -> f64 {
        let (p, q) = (log_softmax(p), log_softmax(q));
        p.iter().zip(&q).map(|(lp, lq)| lp.exp() * (lp - lq)).sum()
    }

    fn log_softmax(xs: &[f32]) -> Vec<f64> {
        let max = xs.iter().fold(f32::MIN, |m, &x| m.max(x)) as f64;
        let total: f64 = xs.iter().map(|&x| (x as f64 - max).exp()).sum();
        xs.iter().map(|&x| x as f64 - max - total.ln()).collect()
    }

    fn softmax(xs: &[f32]) -> Vec<f64> {
        log_softmax(xs).into_iter().map(f64::exp).collect()
    }

    /// Prompts read from several threads at once, plain and rayon's, give each the
    /// logits it gets alone (one prompt at a time for plain threads, none waiting
    /// on another from a rayon worker).
    #[test]
    fn prompts_from_many_threads_read_as_alone() {
        use rayon::prelude::*;
        let llm = smollm2();
        let model = llm.model();
        let prompts: Vec<Vec<u32>> = (0..6)
            .map(|p| (0..40).map(|i| 300 + p * 1000 + i * 17).collect())
            .collect();
        let read = |prompt: &Vec<u32>| {
            let mut cache = model.new_cache();
            model.forward(prompt, &mut cache).expect("prompt")
        };
        let alone: Vec<Logits> = prompts.iter().map(read).collect();
        let on_rayon: Vec<Logits> = prompts.par_iter().map(read).collect();
        let on_threads: Vec<Logits> = std::thread::scope(|scope| {
            let handles: Vec<_> = prompts
                .iter()
                .map(|p| scope.spawn(move || read(p)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        assert_eq!(on_rayon, alone);
        assert_eq!(on_threads, alone);
    }

    fn numbers(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// Both ways of cutting the weights into slabs (runs of inputs for a matrix of
    /// few rows, runs of rows for one of many), on a window of a stack's rows,
    /// against the definition over the widened weights.
    #[test]
    fn widened_products_match_the_definition_in_both_slab_shapes() {
        for (rows, cols) in [(520, 4096), (8200, 192)] {
            let matrix = Q8Matrix::quantize(Layout::Panels, &numbers(rows * cols, 1), rows, cols)
                .expect("blocks");
            let window = 4..rows - 4;
            let (m, outputs) = (3, window.len());
            // The first shape takes inputs in slabs, the second rows.
            let slab_cols = SLAB_VALUES / outputs / BLOCK * BLOCK;
            assert_eq!(slab_cols >= MIN_SLAB_COLS.min(cols), rows < 1000);
            assert!(outputs * cols > SLAB_VALUES, "more than one slab");

            let xs = numbers(m * cols, 2);
            let got = widened_product(&matrix, window.clone(), &xs, &mut Vec::new());
            let mut weights = vec![0f32; outputs * cols];
            matrix.dequantize(window, 0..cols, &mut weights);
            for i in 0..m {
                for (r, w) in weights.chunks(cols).enumerate() {
                    let want: f64 = (0..cols)
                        .map(|k| xs[i * cols + k] as f64 * w[k] as f64)
                        .sum();
                    let got = got[i * outputs + r] as f64;
                    assert!((got - want).abs() < 1e-3, "({i}, {r}): {got} vs {want}");
                }
            }
        }
    }
}
