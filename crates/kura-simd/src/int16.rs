//! [`Int16Weights`] and [`matmul_int16`]: f32 products in 16-bit integers with
//! 32-bit sums, for CPUs whose widest unit is AVX2 (AMD's Zen 3, where it was
//! measured) and Intel's with AVX-512 VNNI but no AMX.
//!
//! Why 16-bit integers: AVX2's `vpmaddwd` multiplies sixteen 16-bit integers by
//! sixteen and adds each two products into a 32-bit sum, twice the multiply-adds
//! of an f32 FMA at the same two instructions a cycle, and AVX2 has no bfloat16 or
//! 8-bit product that keeps a sentence encoder's vectors within parity (8-bit ones
//! fell to 0.9983 cosine). Thirteen bits a value do keep it (MiniLM's worst
//! reference text at 0.99999 cosine): each weight column is rounded against its
//! own largest value, and each input row against its largest value in every
//! [`CHUNK`] inputs, so an outlier coarsens only its own chunk. On a Zen 3 core the
//! embedder's products ran at about 60 G multiply-adds a second against `gemm`'s
//! f32 at 43 (the best of 20 runs each, taken in turn), short of twice: each
//! product needs an add of its own (AVX2 has no multiply-accumulate on integers)
//! and each row a broadcast, so the vector pipes, not the multipliers, set the pace.
//!
//! With AVX-512 VNNI, `vpdpwssd` does the multiply and the add in one
//! instruction on 32 values: on one core of a Xeon (Emerald Rapids) 173 G
//! multiply-adds a second in a loop of independent sums, against 84 for f32 FMAs
//! and 43 for `vdpbf16ps`, so the same layout serves Intel's cores where AMX's
//! tiles are not offered. Both kernels add the same integers and scale them with
//! the same f32 operations, so their sums are the same bits.
//!
//! Why chunks of 128: the integer sums must not wrap. A product of two values
//! within ±4095 is under 2^24, and 128 of them under 2^31, so the 32-bit sums of a
//! chunk are exact and are then scaled into f32 sums, once a chunk.

use rayon::prelude::*;

use crate::SharedMut;

/// Inputs whose integer sums are scaled into f32 together (see the module docs).
pub const CHUNK: usize = 128;
/// The largest rounded value: 4095 × 4095 × 128 < 2^31.
const LARGEST: f32 = 4095.0;
/// Columns of a panel of weights: two AVX2 registers of 32-bit sums.
const PANEL: usize = 16;

/// Whether [`matmul_int16`] multiplies faster than f32 here, on the cores it was
/// measured on: AMD's from Zen 3 on (family 25 and later) where AVX2 is the widest
/// unit, and Intel's with AVX-512 VNNI (see the module docs; a caller takes AMX's
/// tiles first where it has them). Older Intel cores run `vpmaddwd` at other rates
/// against their FMAs and keep f32 until measured, and AMD's cores with AVX-512
/// have a bfloat16 unit that multiplies more. `KURA_INT16=0` says no, to compare
/// with f32.
pub fn faster_than_f32() -> bool {
    static FASTER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FASTER.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let faster = match Kernel::detect() {
            Some(Kernel::Vnni) => !crate::is_amd(),
            Some(Kernel::Avx2) => crate::is_amd() && crate::cpu_family() >= 25,
            None => false,
        };
        #[cfg(not(target_arch = "x86_64"))]
        let faster = false;
        faster && !std::env::var("KURA_INT16").is_ok_and(|v| v == "0")
    })
}

/// The kernels that multiply the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 VNNI: `vpdpwssd`, a panel's 16 columns a register.
    Vnni,
    /// AVX2: `vpmaddwd` then an add, a panel in two registers.
    Avx2,
}

impl Kernel {
    /// Every kernel, the fastest first.
    const ALL: [Kernel; 2] = [Kernel::Vnni, Kernel::Avx2];

    /// The fastest kernel this CPU runs, if any.
    pub fn detect() -> Option<Kernel> {
        Self::ALL.into_iter().find(|k| k.runs_here())
    }

    fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return match self {
            Kernel::Vnni => {
                crate::has_avx512() && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            Kernel::Avx2 => crate::has_avx2_fma(),
        };
        #[cfg(not(target_arch = "x86_64"))]
        false
    }
}

/// Whether this CPU runs one of [`matmul_int16`]'s kernels (AVX2 and FMA at
/// least).
pub fn runs_here() -> bool {
    Kernel::detect().is_some()
}

/// A weight matrix `inputs × outputs` (row-major, as `x · W` reads it) rounded to
/// 16-bit integers, one scale a column, and laid out in panels of 16 columns:
/// for each pair of inputs, the 16 columns' two weights side by side (64 bytes),
/// the operand `vpmaddwd` multiplies by a broadcast pair of inputs.
pub struct Int16Weights {
    inputs: usize,
    outputs: usize,
    panels: Vec<Pairs>,
    scales: Vec<f32>,
}

/// One pair of inputs' weights for a panel's 16 columns, on a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Pairs([i16; 2 * PANEL]);

impl Int16Weights {
    /// `weight` (`inputs × outputs`, row-major) rounded, or `None` when the shape
    /// does not fill whole chunks and panels (inputs a multiple of 128, outputs of
    /// 16) or a weight is not finite.
    pub fn new(weight: &[f32], inputs: usize, outputs: usize) -> Option<Self> {
        if inputs == 0
            || !inputs.is_multiple_of(CHUNK)
            || !outputs.is_multiple_of(PANEL)
            || weight.len() != inputs * outputs
            || !weight.iter().all(|w| w.is_finite())
        {
            return None;
        }
        let scales: Vec<f32> = (0..outputs)
            .map(|c| {
                let largest = (0..inputs).fold(0f32, |m, i| m.max(weight[i * outputs + c].abs()));
                largest / LARGEST
            })
            .collect();
        let inverses: Vec<f32> = scales.iter().map(|&s| inverse(s)).collect();
        let steps = inputs / 2;
        let mut panels = vec![Pairs([0; 2 * PANEL]); outputs / PANEL * steps];
        for (at, pairs) in panels.iter_mut().enumerate() {
            let (panel, step) = (at / steps, at % steps);
            for c in 0..PANEL {
                let output = panel * PANEL + c;
                for e in 0..2 {
                    let w = weight[(2 * step + e) * outputs + output];
                    pairs.0[2 * c + e] = rounded(w, inverses[output]);
                }
            }
        }
        Some(Int16Weights {
            inputs,
            outputs,
            panels,
            scales,
        })
    }
}

/// `1 / scale`, or 0 where that is not finite: a zero scale (all values zero) or
/// one so small (values under 1e-35) that its inverse overflows, whose values then
/// count as zeros rather than as what an infinite factor makes of them.
#[inline(always)]
fn inverse(scale: f32) -> f32 {
    let inverse = 1.0 / scale;
    if inverse.is_finite() {
        inverse
    } else {
        0.0
    }
}

/// `value / scale` rounded to the nearest integer (ties to even), for `value`
/// within the scale's range (±4095 after scaling), as the callers' scales make it.
/// Rounded by adding [`crate::ROUNDING_SHIFT`] and reading the low bits, which
/// vectorises, where `as` conversions went one value at a time with their checks
/// for NaN and range (a tenth of a product's time).
#[inline(always)]
fn rounded(value: f32, inverse: f32) -> i16 {
    (value * inverse + crate::ROUNDING_SHIFT).to_bits() as i16
}

crate::multiversion! {
    /// `rows` of `k` inputs rounded chunk by chunk into `to`, each chunk's scale
    /// into `scales` (`rows × k / CHUNK`).
    fn round_rows<M>(to: &mut [i16], scales: &mut [f32], from: &[f32]) {
        for ((to, scale), from) in to
            .chunks_exact_mut(CHUNK)
            .zip(scales.iter_mut())
            .zip(from.chunks_exact(CHUNK))
        {
            let lanes = crate::reduce(from, 0.0, |m, x| crate::larger(m, x.abs()));
            let largest = lanes.iter().fold(0f32, |m, &x| crate::larger(m, x));
            *scale = largest / LARGEST;
            let inverse = inverse(*scale);
            for (to, &from) in to.iter_mut().zip(from) {
                *to = rounded(from, inverse);
            }
        }
    }
}

/// Rows of inputs a task takes through its panels, and panels a task takes: a
/// chunk of the task's rows (48 × 128 inputs, 12 KiB), of its panels (2 × 4 KiB)
/// and its sums (48 × 32 f32, 6 KiB) stay in the core's L1 cache while the task
/// goes through them, chunk after chunk.
const TASK_ROWS: usize = 48;
const TASK_PANELS: usize = 2;

/// `out = input · W (+ out, when accumulate)` in 16-bit integers, for `input` of
/// `rows × inputs` and `out` of `rows × outputs` (the weights' shape), row-major.
/// Each row's sums depend on that row alone, in one fixed order, so a row gives the
/// same bits in any batch.
///
/// # Panics
/// When the CPU lacks AVX2 or FMA ([`runs_here()`]) or the shapes do not match.
pub fn matmul_int16(out: &mut [f32], input: &[f32], weights: &Int16Weights, accumulate: bool) {
    let kernel =
        Kernel::detect().expect("matmul_int16 needs AVX2 and FMA (check `runs_here` first)");
    matmul_with(kernel, out, input, weights, accumulate);
}

/// [`matmul_int16`] by `kernel`, which the CPU runs.
fn matmul_with(
    kernel: Kernel,
    out: &mut [f32],
    input: &[f32],
    weights: &Int16Weights,
    accumulate: bool,
) {
    let (k, n) = (weights.inputs, weights.outputs);
    let rows = crate::product_rows("matmul_int16", input.len(), out.len(), k, n);
    if rows == 0 {
        return;
    }
    let chunks = k / CHUNK;
    crate::with_scratch(input.len(), |rounded: &mut [i16]| {
        crate::with_scratch(rows * chunks, |scales: &mut [f32]| {
            rounded
                .par_chunks_mut(k * TASK_ROWS)
                .zip(scales.par_chunks_mut(chunks * TASK_ROWS))
                .zip(input.par_chunks(k * TASK_ROWS))
                .for_each(|((to, scales), from)| round_rows(to, scales, from));
            let rounded = Rounded {
                values: rounded,
                scales,
                k,
            };
            products(kernel, out, &rounded, rows, weights, accumulate);
        })
    });
}

/// Input rows rounded chunk by chunk, and each chunk's scale.
struct Rounded<'a> {
    values: &'a [i16],
    scales: &'a [f32],
    k: usize,
}

/// Tasks of [`TASK_ROWS`] rows by [`TASK_PANELS`] panels, each written by one
/// task.
fn products(
    kernel: Kernel,
    out: &mut [f32],
    input: &Rounded<'_>,
    rows: usize,
    weights: &Int16Weights,
    accumulate: bool,
) {
    let (k, n) = (weights.inputs, weights.outputs);
    let steps = k / 2;
    let panels = n / PANEL;
    let row_tasks = rows.div_ceil(TASK_ROWS);
    let panel_tasks = panels.div_ceil(TASK_PANELS);
    let out = SharedMut(out.as_mut_ptr());
    (0..row_tasks * panel_tasks)
        .into_par_iter()
        .for_each(|task| {
            let (row_task, panel_task) = (task / panel_tasks, task % panel_tasks);
            let first_row = row_task * TASK_ROWS;
            let task_rows = TASK_ROWS.min(rows - first_row);
            let first_panel = panel_task * TASK_PANELS;
            for chunk in 0..k / CHUNK {
                for panel in first_panel..(first_panel + TASK_PANELS).min(panels) {
                    let column = panel * PANEL;
                    let tile = Tile {
                        pairs: &weights.panels[panel * steps..(panel + 1) * steps],
                        scales: &weights.scales[column..column + PANEL],
                        chunk,
                    };
                    // SAFETY: each task writes its own rows × 16 columns of `out`,
                    // which has `rows × n` values; the CPU runs `kernel`.
                    unsafe {
                        let out = out.at(first_row * n + column);
                        let add = accumulate || chunk > 0;
                        match kernel {
                            Kernel::Vnni => {
                                vnni::rows(input, first_row, task_rows, &tile, out, n, add)
                            }
                            Kernel::Avx2 => {
                                avx2::rows(input, first_row, task_rows, &tile, out, n, add)
                            }
                        }
                    }
                }
            }
        });
}

/// One panel's weights and column scales, and the chunk of inputs to multiply.
struct Tile<'a> {
    pairs: &'a [Pairs],
    scales: &'a [f32],
    chunk: usize,
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Rounded, Tile, CHUNK, PANEL};

    /// Rows a block holds in registers: 6 × 2 sums, two weight registers, the
    /// broadcast pair and a product fill AVX2's 16.
    const BLOCK: usize = 6;

    /// Rows `first..first + count` of `input` by one chunk of a panel, added into
    /// `out` (`count` rows `n` apart, 16 columns) or, unless `add`, written there.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; the rows are in `input`, and `out` points at
    /// `count` rows of at least 16 writable values `n` apart that no other thread
    /// writes.
    pub(super) unsafe fn rows(
        input: &Rounded<'_>,
        first: usize,
        count: usize,
        tile: &Tile<'_>,
        out: *mut f32,
        n: usize,
        add: bool,
    ) {
        crate::in_blocks(count, |done, left| {
            let row = first + done;
            // SAFETY: the block's rows are inside `input` and `out` (the caller's
            // bounds); the CPU has the features (the caller's promise).
            unsafe {
                let c = out.add(done * n);
                if left >= BLOCK {
                    block::<BLOCK>(input, row, tile, c, n, add)
                } else if left >= 3 {
                    block::<3>(input, row, tile, c, n, add)
                } else {
                    block::<1>(input, row, tile, c, n, add)
                }
            }
        });
    }

    /// `R` rows from row `first` into `c`; returns `R`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn block<const R: usize>(
        input: &Rounded<'_>,
        first: usize,
        tile: &Tile<'_>,
        c: *mut f32,
        n: usize,
        add: bool,
    ) -> usize {
        let k = input.k;
        let chunks = k / CHUNK;
        let start = tile.chunk * CHUNK;
        let a = input.values[first * k..(first + R) * k].as_ptr();
        let mut sums = [[_mm256_setzero_si256(); 2]; R];
        for (p, pair) in tile.pairs[start / 2..(start + CHUNK) / 2]
            .iter()
            .enumerate()
        {
            let w = pair.0.as_ptr().cast::<__m256i>();
            // SAFETY: a `Pairs` is 64 aligned bytes; each row's pair of inputs lies
            // inside its row (the chunk is inside `k`).
            unsafe {
                let w0 = _mm256_load_si256(w);
                let w1 = _mm256_load_si256(w.add(1));
                let at = start + 2 * p;
                for (r, sums) in sums.iter_mut().enumerate() {
                    let x = _mm256_set1_epi32(a.add(r * k + at).cast::<i32>().read_unaligned());
                    sums[0] = _mm256_add_epi32(sums[0], _mm256_madd_epi16(x, w0));
                    sums[1] = _mm256_add_epi32(sums[1], _mm256_madd_epi16(x, w1));
                }
            }
        }
        // SAFETY: the panel has 16 column scales; `c` has `R` rows of 16 writable
        // values `n` apart (the caller's promise).
        unsafe {
            let column_scales = [
                _mm256_loadu_ps(tile.scales.as_ptr()),
                _mm256_loadu_ps(tile.scales.as_ptr().add(PANEL / 2)),
            ];
            for (r, sums) in sums.iter().enumerate() {
                let row_scale = _mm256_set1_ps(input.scales[(first + r) * chunks + tile.chunk]);
                for (half, (&sum, &column_scale)) in sums.iter().zip(&column_scales).enumerate() {
                    let at = c.add(r * n + half * PANEL / 2);
                    let scale = _mm256_mul_ps(row_scale, column_scale);
                    let sum = _mm256_cvtepi32_ps(sum);
                    let value = if add {
                        _mm256_fmadd_ps(sum, scale, _mm256_loadu_ps(at))
                    } else {
                        _mm256_mul_ps(sum, scale)
                    };
                    _mm256_storeu_ps(at, value);
                }
            }
        }
        R
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{Rounded, Tile, CHUNK};

    /// Rows a block holds in registers: 16 sums and the weights take 17 of
    /// AVX-512's 32. A step loads the panel's weights once for 16 `vpdpwssd`, each
    /// taking its row's pair as a broadcast operand from memory: over whole long
    /// texts the kernel ran at about 85% of the instruction's peak on the Xeon.
    const BLOCK: usize = 16;

    /// As [`super::avx2::rows`], with AVX-512 VNNI.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW, VL and VNNI; otherwise as [`super::avx2::rows`].
    pub(super) unsafe fn rows(
        input: &Rounded<'_>,
        first: usize,
        count: usize,
        tile: &Tile<'_>,
        out: *mut f32,
        n: usize,
        add: bool,
    ) {
        crate::in_blocks(count, |done, left| {
            let row = first + done;
            // SAFETY: as in `avx2::rows`.
            unsafe {
                let c = out.add(done * n);
                if left >= BLOCK {
                    block::<BLOCK>(input, row, tile, c, n, add)
                } else if left >= 8 {
                    block::<8>(input, row, tile, c, n, add)
                } else if left >= 4 {
                    block::<4>(input, row, tile, c, n, add)
                } else {
                    block::<1>(input, row, tile, c, n, add)
                }
            }
        });
    }

    /// `sum += w · pair`, the pair of 16-bit values at `pair` broadcast to every
    /// lane. In assembly because LLVM, tuning for a generic x86-64, splits the
    /// intrinsic `_mm512_dpwssd_epi32` into `vpmaddwd` and `vpaddd`, two
    /// instructions where VNNI has one, which ran no faster than f32.
    ///
    /// # Safety
    /// The CPU has AVX-512 VNNI; `pair` points at two readable `i16`.
    #[target_feature(enable = "avx512f,avx512vnni")]
    #[inline]
    unsafe fn dpwssd_broadcast(sum: &mut __m512i, w: __m512i, pair: *const i16) {
        // SAFETY: the caller's promises; the instruction reads 4 bytes at `pair`
        // and writes only `sum`.
        unsafe {
            std::arch::asm!(
                "vpdpwssd {sum}, {w}, dword ptr [{pair}]{{1to16}}",
                sum = inout(zmm_reg) *sum,
                w = in(zmm_reg) w,
                pair = in(reg) pair,
                options(pure, readonly, nostack, preserves_flags),
            );
        }
    }

    /// `R` rows from row `first` into `c`; returns `R`. The sums are the AVX2
    /// kernel's integers, scaled by the same f32 operations lane for lane.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn block<const R: usize>(
        input: &Rounded<'_>,
        first: usize,
        tile: &Tile<'_>,
        c: *mut f32,
        n: usize,
        add: bool,
    ) -> usize {
        let k = input.k;
        let chunks = k / CHUNK;
        let start = tile.chunk * CHUNK;
        let a = input.values[first * k..(first + R) * k].as_ptr();
        let mut sums = [_mm512_setzero_si512(); R];
        for (p, pair) in tile.pairs[start / 2..(start + CHUNK) / 2]
            .iter()
            .enumerate()
        {
            // SAFETY: a `Pairs` is 64 aligned bytes; each row's pair of inputs lies
            // inside its row (the chunk is inside `k`).
            unsafe {
                let w = _mm512_load_si512(pair.0.as_ptr().cast());
                let at = start + 2 * p;
                for (r, sum) in sums.iter_mut().enumerate() {
                    dpwssd_broadcast(sum, w, a.add(r * k + at));
                }
            }
        }
        // SAFETY: the panel has 16 column scales; `c` has `R` rows of 16 writable
        // values `n` apart (the caller's promise).
        unsafe {
            let column_scale = _mm512_loadu_ps(tile.scales.as_ptr());
            for (r, &sum) in sums.iter().enumerate() {
                let row_scale = _mm512_set1_ps(input.scales[(first + r) * chunks + tile.chunk]);
                let at = c.add(r * n);
                let scale = _mm512_mul_ps(row_scale, column_scale);
                let sum = _mm512_cvtepi32_ps(sum);
                let value = if add {
                    _mm512_fmadd_ps(sum, scale, _mm512_loadu_ps(at))
                } else {
                    _mm512_mul_ps(sum, scale)
                };
                _mm512_storeu_ps(at, value);
            }
        }
        R
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx2 {
    use super::{Rounded, Tile};

    pub(super) unsafe fn rows(
        _: &Rounded<'_>,
        _: usize,
        _: usize,
        _: &Tile<'_>,
        _: *mut f32,
        _: usize,
        _: bool,
    ) {
        unreachable!("AVX2 is never available here")
    }
}

#[cfg(not(target_arch = "x86_64"))]
use avx2 as vnni;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_numbers as numbers;

    #[test]
    fn rounding_is_to_the_nearest_even_integer_on_both_sides_of_zero() {
        let cases = [
            (2.5, 2),
            (3.5, 4),
            (-2.5, -2),
            (-3.5, -4),
            (0.49, 0),
            (-0.51, -1),
            (4095.0, 4095),
            (-4095.4, -4095),
        ];
        for (value, want) in cases {
            assert_eq!(rounded(value, 1.0), want, "{value}");
        }
        assert_eq!(rounded(-1.0, 4095.0 / 2.0), -2048);
        assert_eq!(inverse(0.0), 0.0);
        assert_eq!(inverse(1e-40), 0.0, "an inverse past f32's range");
        assert_eq!(inverse(0.5), 2.0);
    }

    #[test]
    #[should_panic(expected = "matmul_int16 shapes: 200 inputs for 128 columns")]
    fn inputs_that_are_not_whole_rows_are_refused() {
        let weights = Int16Weights::new(&[0.5; 128 * 16], 128, 16).unwrap();
        matmul_int16(&mut [0.0; 16], &[1.0; 200], &weights, false);
    }

    #[test]
    fn shapes_that_do_not_fill_chunks_and_panels_are_refused() {
        assert!(Int16Weights::new(&[0.0; 96 * 16], 96, 16).is_none());
        assert!(Int16Weights::new(&[0.0; 128 * 24], 128, 24).is_none());
        let mut weight = vec![0.0; 128 * 16];
        assert!(Int16Weights::new(&weight, 128, 16).is_some());
        weight[7] = f32::NAN;
        assert!(Int16Weights::new(&weight, 128, 16).is_none());
    }

    /// Every kernel this CPU runs: a CPU with VNNI runs the AVX2 kernel too.
    fn kernels() -> impl Iterator<Item = Kernel> {
        Kernel::ALL.into_iter().filter(|k| k.runs_here())
    }

    /// The product is the product of the rounded values: for each kernel, for
    /// blocks of rows whole and partial, with and without accumulating, an input
    /// row with an outlier in one chunk, a row of zeros and a chunk of values too
    /// small to scale, every sum within the rounding's bound of the exact f64
    /// product, and each row's sums the same bits whatever rows share its batch.
    #[test]
    fn products_are_the_rounded_product() {
        if !runs_here() {
            eprintln!("no AVX2 here: the product is not tested");
            return;
        }
        let (k, n) = (384, 48);
        let weight = numbers(k * n, 1);
        let weights = Int16Weights::new(&weight, k, n).unwrap();
        for kernel in kernels() {
            let alone = |row: &[f32]| {
                let mut out = vec![0.0; n];
                matmul_with(kernel, &mut out, row, &weights, false);
                out
            };
            for rows in [1, 2, 5, 6, 7, 13, 17, 48, 50, 101] {
                let mut input = numbers(rows * k, 2 + rows as u64);
                input[5] = 40.0;
                if rows > 2 {
                    input[k..2 * k].fill(0.0);
                    input[2 * k..2 * k + CHUNK].fill(1e-38);
                }
                let start = numbers(rows * n, 100 + rows as u64);
                for accumulate in [false, true] {
                    let mut out = start.clone();
                    matmul_with(kernel, &mut out, &input, &weights, accumulate);
                    for r in 0..rows {
                        let x = &input[r * k..(r + 1) * k];
                        for c in 0..n {
                            let (mut want, mut bound) = (0f64, 0f64);
                            for i in 0..k {
                                let (a, w) = (x[i] as f64, weight[i * n + c] as f64);
                                want += a * w;
                                // Half a step of each rounding, times the other value.
                                let chunk = &x[i / CHUNK * CHUNK..][..CHUNK];
                                let a_step =
                                    chunk.iter().fold(0f32, |m, v| m.max(v.abs())) / LARGEST;
                                bound += 0.5
                                    * (a_step as f64 * w.abs()
                                        + weights.scales[c] as f64 * a.abs());
                            }
                            if accumulate {
                                want += start[r * n + c] as f64;
                            }
                            let got = out[r * n + c] as f64;
                            assert!(
                                (got - want).abs() <= bound * 1.01 + 1e-5,
                                "{kernel:?}, {rows} rows, accumulate {accumulate}: [{r}][{c}] {got} against {want} (bound {bound})"
                            );
                        }
                    }
                }
                let mut out = vec![0.0; rows * n];
                matmul_with(kernel, &mut out, &input, &weights, false);
                let last = &input[(rows - 1) * k..];
                assert_eq!(
                    &out[(rows - 1) * n..],
                    alone(last),
                    "{kernel:?}, {rows} rows"
                );
            }
        }
    }

    /// The kernels add the same integers and scale them alike, so a CPU's choice
    /// of kernel never changes an embedding: the same bits from each, over blocks
    /// of every size each kernel has, accumulating or not.
    #[test]
    fn every_kernel_gives_the_same_bits() {
        let kernels: Vec<Kernel> = kernels().collect();
        if kernels.len() < 2 {
            eprintln!("one kernel here ({kernels:?}): nothing to compare");
            return;
        }
        let (k, n) = (512, 64);
        let weights = Int16Weights::new(&numbers(k * n, 7), k, n).unwrap();
        for rows in [1, 3, 4, 8, 16, 31, 48, 97] {
            let input = numbers(rows * k, 8 + rows as u64);
            let start = numbers(rows * n, 9 + rows as u64);
            for accumulate in [false, true] {
                let outs: Vec<Vec<f32>> = kernels
                    .iter()
                    .map(|&kernel| {
                        let mut out = start.clone();
                        matmul_with(kernel, &mut out, &input, &weights, accumulate);
                        out
                    })
                    .collect();
                for (kernel, out) in kernels.iter().zip(&outs).skip(1) {
                    let same = out
                        .iter()
                        .zip(&outs[0])
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{kernel:?} against {:?}: {rows} rows, accumulate {accumulate}",
                        kernels[0]
                    );
                }
            }
        }
    }
}
