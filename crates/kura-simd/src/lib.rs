//! Vectorisable f32 kernels, each compiled three times: for the build's baseline
//! target, with AVX2 and FMA, and with AVX-512, the best the CPU runs picked at run
//! time.
//!
//! Why plain loops and not intrinsics: written as fixed-width partial sums and
//! branch-free polynomials (no libm calls), LLVM turns them into vector code under
//! `#[target_feature]`, and the same source is the portable fallback, so one binary
//! runs everywhere while the exp of every attention score runs eight or sixteen at
//! a time on the machines we care about. [`multiversion!`] does the compiling; the
//! helpers here are `#[inline(always)]` so that they take the flavour of the kernel
//! they are inlined into. The embedder and the LLM share them, and
//! [`matmul()`]: the `gemm` crate's product behind a checked, safe signature.

use std::f32::consts::LOG2_E;

mod amx;
pub use amx::in_cpu as cpu_has_amx;
pub mod bf16;
pub mod int16;
mod matmul;
mod scratch;
pub use matmul::{matmul, matmul_strided, MatRef, Threads};
pub use scratch::{with_scratch, Scratch};

/// A buffer's pointer that parallel tasks share, each writing its own disjoint part
/// (the embedder's attention blocks, the tile product's columns): the tasks' writes
/// are their own business, and this makes the pointer `Send` and `Sync`.
#[derive(Clone, Copy)]
pub struct SharedMut(pub *mut f32);

impl SharedMut {
    /// The pointer `offset` values on. A method rather than a field access, so that
    /// a task's closure captures the `Sync` wrapper rather than the bare pointer.
    ///
    /// # Safety
    /// `offset` must be inside the buffer.
    pub unsafe fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: the caller keeps `offset` inside the buffer.
        unsafe { self.0.add(offset) }
    }
}
// SAFETY: whoever shares it writes disjoint parts from each task (see `SharedMut`).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// Runs `pass` on a worker of rayon's pool (in place where it is already on one):
/// an LLM's prompt or step, an embedder's batch.
///
/// Why: a pass is tens to hundreds of parallel products and row-wise steps, and
/// each one started from a thread outside the pool hands its tasks over and sleeps
/// until they are done, then wakes: two context switches a step. On a worker the
/// steps' tasks are split with the other workers and the caller works on them too.
/// On Zen 5, where the profile had spent a quarter of SmolLM2's decoding in the
/// scheduler, `kura bench` in runs taken in turn: SmolLM2 decoding one sequence
/// 139–150 → 201–221 tokens a second, 16 at once 704–732 → 914–924; Qwen 16 at
/// once 459–479 → 485–530, its summariser 1.23–1.31 → 1.29–1.39 conversations a
/// second; the embedder's short texts 1660/1800 → 1934/1908 a second.
pub fn on_a_worker<R: Send>(pass: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| pass())
}

/// Walks rows `0..count` in register blocks, as the narrow products' kernels do:
/// `block(done, left)` multiplies from row `done` the largest block of its
/// kernel that fits in the `left` rows there, and returns how many rows it took
/// (at least one). The kernels differ in their block sizes, not in the walk.
#[inline(always)]
fn in_blocks(count: usize, mut block: impl FnMut(usize, usize) -> usize) {
    let mut done = 0;
    while done < count {
        done += block(done, count - done);
    }
}

/// The rows of a product of `input` values (`rows × k`) into `out` values
/// (`rows × n`), for the narrow products' checks of their callers' shapes.
///
/// # Panics
/// When the two are not whole rows of the same count.
fn product_rows(what: &str, input: usize, out: usize, k: usize, n: usize) -> usize {
    let rows = input / k;
    assert!(
        input == rows * k && out == rows * n,
        "{what} shapes: {input} inputs for {k} columns, {out} outputs for {n} columns"
    );
    rows
}

/// `count` numbers in [-0.5, 0.5) from a fixed generator: the products' tests'
/// inputs and weights, the same for a seed on every machine.
#[cfg(test)]
pub(crate) fn test_numbers(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect()
}

/// Whether this CPU can run the AVX2 + FMA builds of the kernels (std caches the
/// detection, so this is a load and a test).
#[cfg(target_arch = "x86_64")]
#[doc(hidden)]
#[inline]
pub fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Whether this CPU can run the AVX-512 builds of the kernels.
#[cfg(target_arch = "x86_64")]
#[doc(hidden)]
#[inline]
pub fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && has_avx2_fma()
}

/// Whether this is an AMD CPU: where an instruction's speed differs between the
/// vendors' cores (AVX-512 BF16's dot product), the choice of kernel follows it.
#[cfg(target_arch = "x86_64")]
pub fn is_amd() -> bool {
    let leaf = std::arch::x86_64::__cpuid(0);
    // "AuthenticAMD", in the order CPUID gives its three registers.
    [leaf.ebx, leaf.edx, leaf.ecx] == [0x6874_7541, 0x6974_6e65, 0x444d_4163]
}

/// The CPU's family as CPUID reports it (base family, plus the extended family
/// where the base is 15): AMD's Zen 3 and Zen 4 are 25, Zen 5 is 26. Cores of one
/// vendor with the same instructions differ in how fast they run them (Zen 4 splits
/// a 512-bit operation in two halves, Zen 5 does not), which is what a benchmark
/// needs to know to compare like with like.
#[cfg(target_arch = "x86_64")]
pub fn cpu_family() -> u32 {
    family_of(std::arch::x86_64::__cpuid(1).eax)
}

/// The family in CPUID leaf 1's `eax`.
#[cfg(any(target_arch = "x86_64", test))]
fn family_of(eax: u32) -> u32 {
    let base = (eax >> 8) & 0xf;
    match base {
        0xf => base + ((eax >> 20) & 0xff),
        _ => base,
    }
}

/// `a·b + c`, fused into one FMA instruction where the build has them and as a
/// separate multiply and add elsewhere (where `f32::mul_add` would be a slow libm
/// call). The kernels are generic over it.
pub trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// One rounding: compiles to `vfmadd` inside `#[target_feature(enable = "fma")]`.
pub struct Fused;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// Two roundings, for builds without FMA.
pub struct Separate;

impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// Defines `$vis fn $name(..)` that runs `$body` compiled with AVX-512 or else AVX2
/// and FMA (and `M` = [`Fused`]) where the CPU has them, and compiled for the
/// baseline target (with `M` = [`Separate`]) elsewhere. The body's helpers must be
/// `#[inline(always)]`, so that they are compiled in every flavour. On the Xeon
/// the AVX-512 flavour took the softmax and gated activation of a Qwen prompt from
/// 6.0% to 4.1% of its time.
#[macro_export]
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident<$m:ident>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            // A body that needs no fused multiply-add (a comparison) leaves `M` unused.
            #[allow(clippy::extra_unused_type_parameters)]
            fn generic<$m: $crate::MulAdd>($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    generic::<$crate::Fused>($($arg),*)
                }
                if $crate::has_avx512() {
                    // SAFETY: the CPU supports the features `avx512` was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    generic::<$crate::Fused>($($arg),*)
                }
                if $crate::has_avx2_fma() {
                    // SAFETY: the CPU supports the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic::<$crate::Separate>($($arg),*)
        }
    };
}

/// Lanes of the partial sums: one AVX2 register of f32.
pub const LANES: usize = 8;

/// Values a long reduction takes at a time: eight registers of partial results,
/// so that no add waits on the one before it. With one register the adds of a
/// softmax's sum and max were a chain through its latency, 30% of the softmax over
/// a prompt's attention scores.
const WIDE: usize = 8 * LANES;

/// The sum of `xs`: 64 partial sums (eight registers of eight lanes) folded into eight
/// lanes, then the lanes in order.
#[inline(always)]
pub fn sum(xs: &[f32]) -> f32 {
    let lanes = reduce(xs, 0.0, |a, x| a + x);
    lanes.iter().sum()
}

/// The largest of `xs` (`-inf` for none).
#[inline(always)]
pub fn max(xs: &[f32]) -> f32 {
    let lanes = reduce(xs, f32::NEG_INFINITY, larger);
    lanes.iter().fold(f32::NEG_INFINITY, |m, &x| larger(m, x))
}

/// `x` where it is larger than `m`, else `m`: NaN never wins.
#[inline(always)]
fn larger(m: f32, x: f32) -> f32 {
    if x > m {
        x
    } else {
        m
    }
}

/// `xs` reduced by `op` into eight lanes: [`WIDE`] partial results over whole
/// chunks and then the rest of `xs`, folded into eight. The rest went eight at a
/// time into the eight lanes before, a loop the compiler kept in memory: a third of
/// a softmax over attention rows (widths 280 to 820: 0.70 → 0.48 ns a value).
#[inline(always)]
fn reduce(xs: &[f32], start: f32, op: impl Fn(f32, f32) -> f32 + Copy) -> [f32; LANES] {
    // Each partial result takes the value beside it: `xs` is zipped, never indexed.
    let fold_into = |acc: &mut [f32], xs: &[f32]| {
        for (a, &x) in acc.iter_mut().zip(xs) {
            *a = op(*a, x);
        }
    };
    let mut wide = [start; WIDE];
    let mut chunks = xs.chunks_exact(WIDE);
    for chunk in &mut chunks {
        fold_into(&mut wide, chunk);
    }
    fold_into(&mut wide, chunks.remainder());
    let mut acc = [start; LANES];
    for part in wide.chunks_exact(LANES) {
        fold_into(&mut acc, part);
    }
    acc
}

/// Adds 1.5·2²³, so the float's low mantissa bits hold `x` rounded to the nearest
/// integer: rounding without a libm call, in plain vectorisable float arithmetic.
const ROUNDING_SHIFT: f32 = 12_582_912.0;

/// Evaluates the polynomial with `coefficients` (highest degree first) at `x`.
#[inline(always)]
pub fn horner<M: MulAdd, const N: usize>(x: f32, coefficients: [f32; N]) -> f32 {
    let mut acc = coefficients[0];
    for &c in &coefficients[1..] {
        acc = M::mul_add(acc, x, c);
    }
    acc
}

/// e^x for f32, within 2 ulp of libm on [-87, 88] (0 below, +inf above). Cody–Waite
/// range reduction x = n·ln2 + r with |r| ≤ ln2/2, Cephes' degree-6 polynomial for
/// e^r, and 2^n built from its exponent bits.
#[inline(always)]
pub fn exp<M: MulAdd>(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let clamped = x.clamp(-87.0, 88.0);
    let shifted = M::mul_add(clamped, LOG2_E, ROUNDING_SHIFT);
    let n = shifted - ROUNDING_SHIFT;
    let r = M::mul_add(n, -LN2_LO, M::mul_add(n, -LN2_HI, clamped));
    let p = horner::<M, 6>(
        r,
        [
            1.987_569_1e-4,
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ],
    );
    let er = M::mul_add(p, r * r, r) + 1.0;
    // `n` sits in the low bits of `shifted`; moving it into the exponent field is 2^n.
    let n_bits = shifted.to_bits().wrapping_sub(ROUNDING_SHIFT.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    let y = er * scale;
    if x < -87.0 {
        0.0
    } else if x > 88.0 {
        f32::INFINITY
    } else {
        y
    }
}

/// `a · b` in eight lanes, then the lanes in order.
#[inline(always)]
pub fn dot<M: MulAdd>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks_a = a.chunks_exact(LANES);
    let mut chunks_b = b.chunks_exact(LANES);
    for (x, y) in (&mut chunks_a).zip(&mut chunks_b) {
        for ((a, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *a = M::mul_add(x, y, *a);
        }
    }
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// Softmax of `row` in place.
#[inline(always)]
pub fn softmax<M: MulAdd>(row: &mut [f32]) {
    let top = max(row);
    // A plain loop, not one over lanes with the sum folded in: that is the shape
    // LLVM's loop vectoriser turns into eight exps at a time.
    for v in row.iter_mut() {
        *v = exp::<M>(*v - top);
    }
    let inv = 1.0 / sum(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

multiversion! {
    /// Softmax of each row of `width` values in place.
    pub fn softmax_rows<M>(rows: &mut [f32], width: usize) {
        for row in rows.chunks_exact_mut(width.max(1)) {
            softmax::<M>(row);
        }
    }
}

multiversion! {
    /// `gate[i] = silu(gate[i]) · up[i]`: the gated activation of a SwiGLU
    /// feed-forward layer.
    pub fn silu_times<M>(gate: &mut [f32], up: &[f32]) {
        for (g, &u) in gate.iter_mut().zip(up) {
            *g = *g / (1.0 + exp::<M>(-*g)) * u;
        }
    }
}

multiversion! {
    /// The index of the largest of `xs`, the last of equal ones, NaN left out
    /// (`None` when no value is a number): greedy decoding's choice, made over a
    /// vocabulary of 150 000 logits for every sequence of every step. Two passes
    /// that vectorise (the largest value, then the last block holding it) where a
    /// comparison chained through every value was 1.5% of the summariser's time.
    pub fn argmax<M>(xs: &[f32]) -> Option<usize> {
        const BLOCK: usize = 64;
        let top = max(xs);
        let mut end = xs.len();
        for block in xs.rchunks(BLOCK) {
            let start = end - block.len();
            if block.iter().fold(false, |found, &x| found | (x == top)) {
                return block.iter().rposition(|&x| x == top).map(|at| start + at);
            }
            end = start;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::f32::consts::LN_2;

    use super::*;

    /// CPUID signatures of the machine kinds `kura bench` tells apart: the extended
    /// family counts only where the base family is 15 (AMD), so Zen 3 and Zen 4 share
    /// 25 and Zen 5 is 26, while Intel's Xeon stays 6.
    #[test]
    fn the_family_adds_the_extended_family_only_to_base_15() {
        assert_eq!(family_of(0x00A0_0F11), 25, "Zen 3 (Milan)");
        assert_eq!(family_of(0x00A1_0F11), 25, "Zen 4 (Genoa)");
        assert_eq!(family_of(0x00B0_0F21), 26, "Zen 5 (Turin)");
        assert_eq!(family_of(0x0008_06F8), 6, "Xeon (Sapphire Rapids)");
        assert_eq!(family_of(0x0FF0_0600), 6, "extended bits ignored below 15");
    }

    /// A pass started outside the pool runs on one of its workers; one started on a
    /// worker (here of a pool of its own) stays on that pool, and results come back.
    #[test]
    fn a_pass_runs_on_a_worker_of_the_callers_pool() {
        assert_eq!(rayon::current_thread_index(), None);
        assert!(on_a_worker(rayon::current_thread_index).is_some());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let (outer, inner) = pool.install(|| {
            let outer = rayon::current_thread_index();
            (outer, on_a_worker(rayon::current_thread_index))
        });
        assert_eq!(outer, inner);
        assert_eq!(on_a_worker(|| 2 + 2), 4);
    }

    fn grid(lo: f32, hi: f32, steps: usize) -> impl Iterator<Item = f32> {
        (0..=steps).map(move |i| lo + (hi - lo) * i as f32 / steps as f32)
    }

    #[test]
    fn argmax_takes_the_last_of_equal_maxima_and_leaves_out_nan() {
        let mut xs: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32).collect();
        let last_max = xs.iter().rposition(|&x| x == 100.0).unwrap();
        assert_eq!(argmax(&xs), Some(last_max));
        xs[3] = f32::NAN;
        xs[999] = f32::NAN;
        assert_eq!(argmax(&xs), Some(last_max));
        xs[5] = 101.0;
        assert_eq!(argmax(&xs), Some(5), "a single maximum in the first block");
        assert_eq!(
            argmax(&[f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY]),
            Some(2)
        );
        assert_eq!(argmax(&[f32::NAN, f32::NAN]), None);
        assert_eq!(argmax(&[]), None);
    }

    #[test]
    fn exp_matches_std_across_the_float_range() {
        for x in grid(-87.0, 88.0, 400_001) {
            let (ours, exact) = (exp::<Fused>(x), (x as f64).exp());
            let rel = ((ours as f64 - exact) / exact).abs();
            assert!(rel < 3e-7, "exp({x}) = {ours}, exact {exact}");
        }
        for x in grid(-87.0, 88.0, 20_001) {
            let (ours, exact) = (exp::<Separate>(x), (x as f64).exp());
            assert!(
                ((ours as f64 - exact) / exact).abs() < 4e-7,
                "exp({x}) without FMA"
            );
        }
        assert_eq!(exp::<Fused>(-1000.0), 0.0);
        assert_eq!(exp::<Fused>(0.0), 1.0);
        assert!(exp::<Fused>(1000.0).is_infinite());
        assert!((exp::<Fused>(LN_2) - 2.0).abs() < 1e-6);
    }

    /// Every length through each part of a reduction: the wide chunks, the
    /// eight-lane rest and the last few values, with the largest value anywhere.
    #[test]
    fn sums_and_maxima_of_every_length_match_a_plain_fold() {
        for len in 0..3 * WIDE + LANES + 3 {
            let xs: Vec<f32> = (0..len).map(|i| (i as f32 * 1.3).sin()).collect();
            let exact: f64 = xs.iter().map(|&x| x as f64).sum();
            assert!((sum(&xs) as f64 - exact).abs() < 1e-5, "sum of {len}");
            for top in 0..len {
                let mut ys = xs.clone();
                ys[top] = 2.0;
                assert_eq!(max(&ys), 2.0, "max of {len} at {top}");
            }
        }
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        assert_eq!(max(&[f32::NAN, -1.0]), -1.0);
    }

    #[test]
    fn softmax_rows_sum_to_one_and_keep_order() {
        // Width 11 exercises both the vector body and the scalar tail.
        let width = 11;
        let mut rows: Vec<f32> = (0..2 * width)
            .map(|i| (i as f32 * 0.7).sin() * 8.0)
            .collect();
        let input = rows.clone();
        softmax_rows(&mut rows, width);
        for (row, input) in rows.chunks(width).zip(input.chunks(width)) {
            let top = input.iter().copied().fold(f32::MIN, f32::max) as f64;
            let total: f64 = input.iter().map(|&x| (x as f64 - top).exp()).sum();
            for (p, &x) in row.iter().zip(input) {
                let exact = (x as f64 - top).exp() / total;
                assert!((*p as f64 - exact).abs() < 1e-7, "{p} vs {exact}");
            }
        }
        // Huge scores do not overflow: the row maximum is subtracted first.
        let mut big = vec![1000.0f32, 1000.0, -1000.0];
        softmax_rows(&mut big, 3);
        assert_eq!(big, [0.5, 0.5, 0.0]);
    }
}
