//! The [`Layout::Int8`] product: weights times activations
//! rounded to 8 bits, summed in 32-bit integers (AVX-512 VNNI, or AVX2).
//!
//! Why: `vpdpbusd` does 64 multiply-adds of bytes in one instruction where an f32
//! FMA does 16, and a block's eight of them are paid for by one conversion and one
//! FMA of its scales. On one core of a Xeon with VNNI the tile below ran 3.4 times
//! as many multiply-adds a second as the same tile of f32 FMAs. Without VNNI,
//! AVX2's `vpmaddubsw` and `vpmaddwd` do the same 32 multiply-adds of a register in
//! two instructions: on one core of an AMD EPYC (Zen 3) the AVX2 tile ran about 1.6
//! times the multiply-adds of f32 FMAs. The price is the activations' rounding:
//! each 32 values become bytes times a scale, as ggml's and candle's quantised
//! products round them (Q8_0).
//!
//! Why this layout: the instruction multiplies four bytes of a weight row by four
//! of an activation row into one 32-bit lane. With 16 rows' four bytes side by side,
//! one register of weights and four activation bytes broadcast give 16 outputs (two
//! AVX2 registers give 8 each), so each lane is one output and no horizontal sum is
//! needed; the integers of a whole block are summed before the one conversion to
//! f32.
//!
//! The instructions take one operand unsigned: the weights are stored plus 128, and
//! each block's sum starts at −128 × the sum of the activation bytes, which takes
//! the bias back off exactly. `vpmaddubsw` adds its pairs of products in 16 bits,
//! with saturation, so the AVX2 kernel keeps each pair under 2^15: a matrix whose
//! integers are all within ±16 (the 4- and 5-bit types) is multiplied plus 16 (its
//! sums start at −16 × the activations' sum), and its pairs are small enough that
//! four quads' add up in 16 bits before one `vpmaddwd` widens them; within ±64,
//! plus 64; others (8-bit and 6-bit types) move each weight's sign onto the
//! activation byte first (`vpsignb`), which costs one instruction more. Every kernel gives the same integers, and a row is summed
//! in the same order whatever the batch or the CPU, so a sequence decodes to the
//! same bits alone or beside others.

use std::ops::Range;

use kura_simd::silu_times;
use rayon::prelude::*;

use super::{Layout, LineBytes, BLOCK};

mod narrow;
#[cfg(test)]
pub(super) use narrow::enabled as narrow_on;
pub(crate) use narrow::Narrow;
use narrow::NARROW_ROWS;

/// Weight rows side by side in one register.
pub(super) const GROUP: usize = 16;
/// Bytes of a group's block: 16 rows × 32 values.
pub(super) const GROUP_BLOCK: usize = GROUP * BLOCK;
/// Groups per parallel task.
const GROUPS_PER_TASK: usize = 4;
/// Activation rows per tile at most.
const TILE_ROWS: usize = 6;

/// The largest weight magnitude of the AVX2 kernel's cheapest path, the Q4 and
/// Q5 types': plus 16 the weights are at most 32, so four of `vpmaddubsw`'s
/// pairs (each at most 2 × 32 × 127) add up in 16 bits without saturating, and
/// one `vpmaddwd` widens four quads' sums where each took its own.
/// `vpmaddubsw` and `vpmaddwd` share Zen 3's two multiplying pipes, so a block
/// takes 20 of their slots instead of 32.
const TINY: u8 = 16;

/// The kernels that multiply the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kernel {
    /// AVX-512 VNNI: `vpdpbusd`, 16 rows a register.
    Vnni,
    /// AVX2: `vpmaddubsw` then `vpmaddwd`, 8 rows a register.
    Avx2,
}

impl Kernel {
    /// Every kernel, the fastest first.
    const ALL: [Kernel; 2] = [Kernel::Vnni, Kernel::Avx2];

    /// Whether this CPU has the instructions the kernel is compiled for.
    fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                Kernel::Vnni => has!("avx512f") && has!("avx512bw") && has!("avx512vnni"),
                Kernel::Avx2 => has!("avx2") && has!("fma"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// The fastest kernel this CPU runs, if any.
    pub(super) fn detect() -> Option<Kernel> {
        Self::ALL.into_iter().find(|k| k.runs_here())
    }

    /// Every kernel this CPU runs: a CPU with VNNI runs the AVX2 kernel too, so
    /// its tests hold both to the portable code's bits.
    #[cfg(test)]
    pub(super) fn available() -> impl Iterator<Item = Kernel> {
        Self::ALL.into_iter().filter(|k| k.runs_here())
    }

    /// Groups a tile takes at most, and activation rows, for `m` rows in all,
    /// over weights whose magnitudes are at most `reach`. VNNI: two groups × six
    /// rows = 12 integer and 12 f32 sums of its 32 registers, or four groups for
    /// up to three rows. AVX2 has 16 registers: one group (two registers) × six
    /// rows, or two groups for one or two rows; weights within ±[`TINY`] take
    /// four rows, whose 16-bit sums need registers of their own. (Six rows
    /// spilled them: a Q5_0 product of Qwen's feed-forward shape ran at 46–55 G
    /// multiply-adds a second on one core of a Zen 3 in four rows, about 48 in
    /// six, and 30–38 on the ±64 path it took before.)
    fn tile_shape(self, m: usize, reach: u8) -> (usize, usize) {
        match self {
            Kernel::Vnni if m <= 3 => (4, TILE_ROWS),
            Kernel::Vnni => (2, TILE_ROWS),
            Kernel::Avx2 if m <= 2 => (2, TILE_ROWS),
            Kernel::Avx2 if reach <= TINY => (1, 4),
            Kernel::Avx2 => (1, TILE_ROWS),
        }
    }
}

/// Whether the CPU has the instructions of one of the kernels.
#[cfg(test)]
pub(super) fn supported() -> bool {
    Kernel::detect().is_some()
}

/// The index in a group-layout matrix's bytes of value `k` (of 32) of stored block
/// `at` (counted as the scales are: 16 rows' block `b`, then their block `b + 1`).
#[inline(always)]
pub(super) fn quant_index(at: usize, k: usize) -> usize {
    (at / GROUP) * GROUP_BLOCK + (k / 4) * GROUP * 4 + (at % GROUP) * 4 + k % 4
}

/// How finely the activations are rounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rounding {
    /// To a byte a value, with a scale per 32 (Q8_0).
    Once,
    /// To a byte, and what that leaves to a second byte at 1/256 of the first's
    /// scale: about 15 bits a value, for twice the integer work. Each row becomes
    /// two rows of bytes that share every load of the weights. With the second
    /// scale a fixed fraction of the first, a block's two integer sums combine into
    /// one (the first shifted up by [`RESIDUAL_BITS`]) before the one conversion to
    /// f32 and multiply by the scales, where each sum took its own: the tile's
    /// work after each block is what holds its multiply-adds back (see `vnni`).
    Twice,
    /// To a byte a value, as [`Rounding::Once`], but a value past
    /// [`OUTLIER_RMS`] times its block's root mean square is set aside: left out
    /// of the block's bytes and its scale, and multiplied exactly in f32 after the
    /// integer product (see [`SetAside`]).
    ///
    /// Why: a narrow model's activations have a few values far above the rest of
    /// their block, and the rest then share a handful of the 255 steps. On
    /// SmolLM2 (teacher-forced over 800 tokens of four real conversations) this
    /// takes the KL divergence from the exact products from 0.0019–0.0027 nats
    /// (rounded once) to about 0.0004, near Qwen's once-rounded 0.0003, with about
    /// one value in 60 set aside. The integer work is once's, and the f32 for the
    /// values set aside took about a third of the tile's time, where
    /// [`Rounding::Twice`] doubles the integer work: SmolLM2's prompts about 20%
    /// faster than twice, its summariser about 10%.
    Outliers,
}

/// How far past its block's root mean square a value is set aside
/// ([`Rounding::Outliers`]). A block holds at most three such values: with four
/// equal ones the root mean square alone is past a third of each. Measured on
/// SmolLM2 (mean KL divergence): 2.5 and 3 about the same (0.0003–0.0004), 3.5
/// 0.00047, 4 0.00058, 5 0.00087; 3 sets aside fewer values than 2.5, and 3.5 a
/// third fewer than 3 (see docs/speed-history.md).
const OUTLIER_RMS: f32 = 3.0;

/// The second byte's scale is the first's over 2^8.
const RESIDUAL_BITS: u32 = 8;

impl Rounding {
    /// Rows of bytes a row of activations becomes.
    fn parts(self) -> usize {
        match self {
            Rounding::Once | Rounding::Outliers => 1,
            Rounding::Twice => 2,
        }
    }
}

/// Rows of activations rounded to 8 bits a block at a time, as Q8_0 rounds them:
/// each 32 values are `byte × scale`, with the largest magnitude at ±127. Rounded
/// [`Rounding::Twice`], row `i`'s bytes are rows `2i` (the value) and `2i + 1`
/// (what the first rounding left).
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(super) struct Activations {
    /// Rows of bytes: `parts` a row of activations.
    pub(super) rows: usize,
    parts: usize,
    blocks: usize,
    bytes: LineBytes,
    scales: Vec<f32>,
    /// Each block's −128 × its sum of bytes: the kernel starts the block's integer
    /// sum here (taking off the weights' bias of 128), broadcast straight from
    /// memory where a product computed in a register costs the vector port a
    /// broadcast per block and row.
    biases: Vec<i32>,
    /// Each block's sum of the values it stands for, `scale × sum of bytes` (both
    /// parts' in the first part, zero in the second), which multiplies a weight
    /// offset (types with a minimum, such as Q4_1): computed once here, not per
    /// group in the tile.
    offset_sums: Vec<f32>,
    /// The values set aside from the bytes ([`Rounding::Outliers`]).
    set_aside: SetAside,
}

/// Values left out of their rows' bytes, to be multiplied exactly: for each row
/// of activations, its columns and values in column order.
///
/// Why f32 and after the integer sums: a set-aside value multiplies one column of
/// the weights, 16 rows of which (a group) are one 64-byte line of the layout,
/// already in cache from the tile that just summed the group. SmolLM2 sets aside
/// 1.1% of its 576-wide inputs and 2.2% of its 1536-wide ones, and the correction
/// took about a third of the tile's time.
#[derive(Default)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct SetAside {
    /// Row `i`'s values are `values[starts[i]..starts[i + 1]]`; empty when no row
    /// has any.
    starts: Vec<usize>,
    values: Vec<(u32, f32)>,
    /// The columns that any row set aside, in order.
    columns: Vec<u32>,
    /// For each column of the activations, its place in `columns` (empty where
    /// `columns` is not built).
    slot_of: Vec<u32>,
}

impl SetAside {
    /// From `(row, column, value)` in row order, then column order, of rows of
    /// `cols` values. The columns' table is built only where a column can be set
    /// aside [`WIDEN_REUSE`] times: a decoding step's row alone never can.
    fn from_sorted(rows: usize, cols: usize, found: Vec<(usize, u32, f32)>) -> Self {
        if found.is_empty() {
            return SetAside::default();
        }
        let mut starts = vec![0; rows + 1];
        for &(row, _, _) in &found {
            starts[row + 1] += 1;
        }
        for i in 0..rows {
            starts[i + 1] += starts[i];
        }
        let (mut columns, mut slot_of) = (Vec::new(), Vec::new());
        if rows >= WIDEN_REUSE {
            slot_of = vec![u32::MAX; cols];
            for &(_, column, _) in &found {
                slot_of[column as usize] = 0;
            }
            for (column, slot) in slot_of.iter_mut().enumerate() {
                if *slot == 0 {
                    *slot = columns.len() as u32;
                    columns.push(column as u32);
                }
            }
        }
        let values = found.into_iter().map(|(_, c, v)| (c, v)).collect();
        SetAside {
            starts,
            values,
            columns,
            slot_of,
        }
    }

    /// Whether a product should widen each group's weights of [`SetAside::columns`]
    /// once ([`Widened`]) rather than a column's for every row that set it aside:
    /// where the rows set aside at least [`WIDEN_REUSE`] values a column.
    fn worth_widening(&self) -> bool {
        !self.columns.is_empty() && self.values.len() >= WIDEN_REUSE * self.columns.len()
    }

    /// Row `i`'s columns and values.
    fn of_row(&self, i: usize) -> &[(u32, f32)] {
        match self.starts.get(i..i + 2) {
            Some(&[start, end]) => &self.values[start..end],
            _ => &[],
        }
    }
}

/// Rounds one block of 32 values to bytes; returns its scale and sum of bytes.
type RoundBlock = fn(&[f32], &mut [i8]) -> (f32, i32);

impl Activations {
    /// `xs` rounded by `kernel`'s code (the plain code for `None`).
    pub(super) fn new(xs: &[f32], cols: usize, kernel: Option<Kernel>, rounding: Rounding) -> Self {
        Self::rounded_by(xs, cols, rounder(kernel), rounding)
    }

    /// Room for `rows` rows of activations of `blocks` blocks, rounded `rounding`.
    fn empty(rows: usize, blocks: usize, rounding: Rounding) -> Self {
        let count = rows * rounding.parts() * blocks;
        Activations {
            rows: rows * rounding.parts(),
            parts: rounding.parts(),
            blocks,
            bytes: LineBytes::filled(count * BLOCK, 0),
            scales: vec![0.0; count],
            biases: vec![0; count],
            offset_sums: vec![0.0; count],
            set_aside: SetAside::default(),
        }
    }

    /// Whether a product widens the weights of the columns set aside once for
    /// all rows (see [`Widened`]).
    #[cfg(test)]
    pub(super) fn widens_set_aside(&self) -> bool {
        self.set_aside.worth_widening()
    }

    /// Rows of activations (each `parts` rows of bytes).
    pub(super) fn logical_rows(&self) -> usize {
        self.rows / self.parts
    }

    /// The rows rounded a block at a time by `round`, blocks in parallel.
    fn rounded_by(xs: &[f32], cols: usize, round: RoundBlock, rounding: Rounding) -> Self {
        assert!(
            cols.is_multiple_of(BLOCK) && xs.len().is_multiple_of(cols.max(1)),
            "whole rows of whole blocks"
        );
        let blocks = cols / BLOCK;
        let mut out = Self::empty(xs.len() / cols.max(1), blocks, rounding);
        let rounded = RoundedBlocks::of(&mut out, round, rounding);
        // Rows in order, so the values set aside come in row then column order.
        let set_aside: Vec<Vec<(usize, u32, f32)>> = xs
            .par_chunks(cols.max(1))
            .enumerate()
            .with_min_len(64usize.div_ceil(blocks.max(1)))
            .map(|(row, xs)| {
                let mut found = Vec::new();
                // SAFETY: row `row`'s blocks, inside `out`, this task's alone.
                unsafe { rounded.round_row(row, 0, xs, &mut found) };
                found
            })
            .collect();
        let set_aside = set_aside.into_iter().flatten().collect();
        out.set_aside = SetAside::from_sorted(out.logical_rows(), cols, set_aside);
        out
    }

    /// Row `i`'s value `k` as the product sees it (the sum of its parts).
    #[cfg(test)]
    pub(super) fn value(&self, i: usize, k: usize) -> f32 {
        let set_aside = self
            .set_aside
            .of_row(i)
            .iter()
            .find(|&&(c, _)| c as usize == k);
        if let Some(&(_, value)) = set_aside {
            return value;
        }
        (i * self.parts..(i + 1) * self.parts)
            .map(|row| {
                let byte = self.bytes[row * self.blocks * BLOCK + k] as f32;
                byte * self.scales[row * self.blocks + k / BLOCK]
            })
            .sum()
    }
}

kura_simd::multiversion! {
    /// Rounds a block of 32 values to bytes (its largest magnitude becomes ±127);
    /// returns the scale and the sum of the bytes. Ties round to even, which
    /// `vroundps` does in one instruction: a prompt rounds some 180 000 values a
    /// token on Qwen.
    fn round_block<M>(xs: &[f32], bytes: &mut [i8]) -> (f32, i32) {
        let mut most = [0f32; 8];
        for eight in xs.chunks_exact(8) {
            for (m, x) in most.iter_mut().zip(eight) {
                *m = if x.abs() > *m { x.abs() } else { *m };
            }
        }
        let max = most.iter().fold(0f32, |m, &x| if x > m { x } else { m });
        let inverse = if max > 0.0 { 127.0 / max } else { 0.0 };
        let mut total = 0i32;
        for (byte, &x) in bytes.iter_mut().zip(xs) {
            let q = (x * inverse).round_ties_even().clamp(-127.0, 127.0) as i32;
            *byte = q as i8;
            total += q;
        }
        (max / 127.0, total)
    }
}

/// One part of a rounded block, as [`Activations`] holds it.
struct RoundedPart<'a> {
    bytes: &'a [i8; BLOCK],
    scale: f32,
    /// The sum of the bytes.
    total: i32,
    /// See [`Activations::offset_sums`].
    offset_sum: f32,
}

/// A block of values rounded `rounding` by `round`: `write(part, rounded)` takes
/// each part (the value; then what its rounding left, where rounded twice), and
/// `aside(k, value)` each value set aside ([`Rounding::Outliers`]).
fn round_parts(
    xs: &[f32],
    round: RoundBlock,
    rounding: Rounding,
    aside: impl FnMut(usize, f32),
    write: impl FnMut(usize, RoundedPart<'_>),
) {
    match rounding {
        Rounding::Once => round_once_or_twice(xs, round, false, write),
        Rounding::Twice => round_once_or_twice(xs, round, true, write),
        Rounding::Outliers => {
            let mut kept = [0f32; BLOCK];
            let xs = match set_outliers_aside(xs, &mut kept, aside) {
                true => &kept[..],
                false => xs,
            };
            round_once_or_twice(xs, round, false, write);
        }
    }
}

/// [`round_parts`] of a block with nothing set aside: the second part's bytes
/// computed (and their room cleared) only where rounded twice, on the path every
/// product's activations take.
fn round_once_or_twice(
    xs: &[f32],
    round: RoundBlock,
    twice: bool,
    mut write: impl FnMut(usize, RoundedPart<'_>),
) {
    let mut bytes = [0i8; BLOCK];
    let (scale, total) = round(xs, &mut bytes);
    if !twice {
        let offset_sum = scale * total as f32;
        write(
            0,
            RoundedPart {
                bytes: &bytes,
                scale,
                total,
                offset_sum,
            },
        );
        return;
    }
    let mut left = [0i8; BLOCK];
    let (left_scale, left_total) = round_residual(xs, &bytes, scale, &mut left);
    let offset_sum = scale * total as f32 + left_scale * left_total as f32;
    write(
        0,
        RoundedPart {
            bytes: &bytes,
            scale,
            total,
            offset_sum,
        },
    );
    let second = RoundedPart {
        bytes: &left,
        scale: left_scale,
        total: left_total,
        offset_sum: 0.0,
    };
    write(1, second);
}

/// Copies `xs` into `kept` without the values past [`OUTLIER_RMS`] times their
/// root mean square, which go to `aside(k, value)`; false (and `kept` untouched)
/// when there are none.
fn set_outliers_aside(
    xs: &[f32],
    kept: &mut [f32; BLOCK],
    mut aside: impl FnMut(usize, f32),
) -> bool {
    let (squares, largest) = squares_and_largest(xs);
    // |x| > t · sqrt(Σx² / n)  ⇔  n · x² > t² · Σx²
    let (n, limit) = (xs.len() as f32, OUTLIER_RMS * OUTLIER_RMS * squares);
    if n * largest <= limit {
        return false;
    }
    for (k, (to, &x)) in kept.iter_mut().zip(xs).enumerate() {
        if n * (x * x) > limit {
            aside(k, x);
            *to = 0.0;
        } else {
            *to = x;
        }
    }
    true
}

kura_simd::multiversion! {
    /// A block's sum of squares and its largest square. The sum goes lane by lane
    /// over 16 lanes, then folds them in halves: a fixed order, so every build
    /// sets the same values aside.
    fn squares_and_largest<M>(xs: &[f32]) -> (f32, f32) {
        let (mut sums, mut most) = ([0f32; 16], [0f32; 16]);
        for sixteen in xs.chunks_exact(16) {
            for ((sum, most), &x) in sums.iter_mut().zip(&mut most).zip(sixteen) {
                let square = x * x;
                *sum += square;
                *most = if square > *most { square } else { *most };
            }
        }
        let mut width = 16;
        while width > 1 {
            width /= 2;
            for i in 0..width {
                sums[i] += sums[i + width];
                most[i] = if most[i + width] > most[i] { most[i + width] } else { most[i] };
            }
        }
        (sums[0], most[0])
    }
}

kura_simd::multiversion! {
    /// What rounding `xs` to `bytes × scale` left, rounded to bytes at a scale
    /// 2^[`RESIDUAL_BITS`] times finer (clamped to ±127, which only a leftover of
    /// about half the first step reaches); returns that scale and the sum of the
    /// bytes.
    fn round_residual<M>(
        xs: &[f32],
        bytes: &[i8; BLOCK],
        scale: f32,
        left: &mut [i8; BLOCK],
    ) -> (f32, i32) {
        let left_scale = scale / (1 << RESIDUAL_BITS) as f32;
        let inverse = if left_scale > 0.0 { 1.0 / left_scale } else { 0.0 };
        let mut total = 0i32;
        for ((out, &x), &q) in left.iter_mut().zip(xs).zip(bytes) {
            let rest = x - q as f32 * scale;
            let q = (rest * inverse).round_ties_even().clamp(-127.0, 127.0) as i32;
            *out = q as i8;
            total += q;
        }
        (left_scale, total)
    }
}

/// The rounding of a block by `kernel` (detected on this CPU), or the plain code.
fn rounder(kernel: Option<Kernel>) -> RoundBlock {
    #[cfg(target_arch = "x86_64")]
    match kernel {
        // SAFETY: `kernel` runs on this CPU, which has the features its code is
        // compiled for (and the blocks passed are whole, which the functions check).
        Some(Kernel::Vnni) => return |xs, bytes| unsafe { vnni::round_block(xs, bytes) },
        Some(Kernel::Avx2) => return |xs, bytes| unsafe { avx2::round_block(xs, bytes) },
        None => {}
    }
    let _ = kernel;
    round_block
}

/// The group-layout matrix a product reads.
pub(super) struct Groups<'a> {
    pub(super) rows: usize,
    pub(super) cols: usize,
    /// Weights plus 128, in the order of [`quant_index`].
    pub(super) quants: &'a [i8],
    pub(super) scales: &'a [f32],
    /// Empty when every offset is zero.
    pub(super) offsets: &'a [f32],
    /// The largest magnitude of its integers (read by the AVX2 kernel).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) reach: u8,
    /// The kernel that multiplies it: [`Kernel::detect`]'s, but for tests.
    pub(super) kernel: Option<Kernel>,
    /// How the activations it multiplies are rounded.
    pub(super) rounding: Rounding,
    /// Its integers packed, where they fit in 4 or 5 bits (see `narrow`).
    pub(super) narrow: Option<&'a Narrow>,
}

impl Groups<'_> {
    /// `xs · Wᵀ` for `xs` of `m × cols`, its rows cut into parts of `widths` (all
    /// but the last whole groups): each part `m × width`, row-major. The
    /// activations are rounded once for all parts, and one parallel pass writes
    /// every part where it belongs, with no product to split afterwards.
    pub(super) fn matmul_parts<const N: usize>(
        &self,
        xs: &[f32],
        widths: [usize; N],
    ) -> [Vec<f32>; N] {
        let x = Activations::new(xs, self.cols, self.kernel, self.rounding);
        self.rounded_parts(&x, widths)
    }

    /// [`Groups::matmul_parts`] of activations already rounded.
    pub(super) fn rounded_parts<const N: usize>(
        &self,
        x: &Activations,
        widths: [usize; N],
    ) -> [Vec<f32>; N] {
        let m = x.logical_rows();
        // Not zeroed: the pass below writes every value (each group's lanes, for
        // every row). `memset` was 7% of a Qwen prompt's time before this and the
        // fused feed-forward, 3.5% after.
        let mut outs = widths.map(|width| Vec::<f32>::with_capacity(m * width));
        let aligned = widths[..N.saturating_sub(1)]
            .iter()
            .all(|w| w.is_multiple_of(GROUP));
        assert!(
            aligned && widths.iter().sum::<usize>() == self.rows,
            "parts of a product are whole groups of its rows"
        );
        if m == 0 {
            return outs;
        }
        let mut start = 0;
        let parts: Vec<Part> = outs
            .iter_mut()
            .zip(widths)
            .map(|(out, width)| {
                start += width;
                Part {
                    values: out.as_mut_ptr(),
                    width,
                    first_row: start - width,
                }
            })
            .collect();
        task_runs(self.rows.div_ceil(GROUP)).for_each(|run| {
            self.multiply(run, x, |g, i, sums| {
                let row = g * GROUP;
                let part = parts
                    .iter()
                    .rfind(|p| p.first_row <= row)
                    .unwrap_or(&parts[0]);
                let column = row - part.first_row;
                let lanes = GROUP.min(part.width - column);
                // SAFETY: `column + lanes <= width` and `i < m`, so the write is
                // inside the part's `m × width` values, which outlive the pass;
                // each group belongs to one task, so no two write the same value.
                unsafe { part.write(i * part.width + column, &sums[..lanes]) };
            });
        });
        for (out, width) in outs.iter_mut().zip(widths) {
            // SAFETY: the pass wrote all `m × width` values of each part (see above).
            unsafe { out.set_len(m * width) };
        }
        outs
    }

    /// silu(gate) · up rounded to bytes as a product reads them, `m × rows / 2`,
    /// where the first half of the rows is the gate projection and the second half
    /// the up projection (whole blocks each). Each task takes a run of gate groups
    /// (whole blocks of the result) and the same run of up groups, and rounds the
    /// activation of its columns while they are in cache: the f32 activation is
    /// never written out, nor read back to be rounded.
    pub(super) fn gated_rounded(&self, xs: &[f32]) -> Activations {
        const { assert!((GROUPS_PER_TASK * GROUP).is_multiple_of(BLOCK)) };
        let x = Activations::new(xs, self.cols, self.kernel, self.rounding);
        let (m, width) = (x.logical_rows(), self.rows / 2);
        assert!(
            width.is_multiple_of(BLOCK) && 2 * width == self.rows,
            "a gate and an up projection of the same whole blocks"
        );
        let blocks = width / BLOCK;
        let mut out = Activations::empty(m, blocks, self.rounding);
        let rounded = RoundedBlocks::of(&mut out, rounder(self.kernel), self.rounding);
        let groups = width / GROUP;
        let set_aside: Vec<Vec<(usize, u32, f32)>> = task_runs(groups)
            .map(|gates| {
                let first = gates.start;
                let columns = gates.len() * GROUP;
                let [mut gate, up] = [0, groups].map(|offset| {
                    let mut product = Vec::with_capacity(m * columns);
                    let spare = product.spare_capacity_mut();
                    let groups = gates.start + offset..gates.end + offset;
                    self.multiply(groups, &x, |g, i, sums| {
                        let at = i * columns + (g - offset - first) * GROUP;
                        // One store of the whole group, where a loop over the
                        // lanes stored them one by one.
                        spare[at..at + GROUP].write_copy_of_slice(sums);
                    });
                    // SAFETY: every row's every column (whole groups) was written.
                    unsafe { product.set_len(m * columns) };
                    product
                });
                silu_times(&mut gate, &up);
                let first_block = first * GROUP / BLOCK;
                let mut found = Vec::new();
                for (i, row) in gate.chunks_exact(columns).enumerate() {
                    // SAFETY: row `i < m`, blocks `first_block..` up to `blocks`:
                    // this task's blocks alone, inside `out`.
                    unsafe { rounded.round_row(i, first_block, row, &mut found) };
                }
                found
            })
            .collect();
        // Tasks in column order; a stable sort by row keeps each row's columns in order.
        let mut set_aside: Vec<(usize, u32, f32)> = set_aside.into_iter().flatten().collect();
        set_aside.sort_by_key(|&(row, _, _)| row);
        out.set_aside = SetAside::from_sorted(m, width, set_aside);
        out
    }

    /// Groups `groups` against every activation row; `emit(g, i, sums)` takes
    /// group `g`'s 16 sums for row `i` (of both its parts, where rounded twice).
    /// Rows go a block at a time (see [`rows_in_cache`]).
    ///
    /// A tile's groups are the outer loop: their weights (28 KB for Qwen's 896
    /// columns) stay in the core's first-level cache while every row of activations
    /// streams past, where rows outer streamed the task's weights again for each
    /// tile of rows, five times the bytes a cycle. With the broadcast biases (see
    /// [`Activations::biases`]) this took Qwen's gate and up product from 345 to 383
    /// G multiply-adds a second on two cores.
    ///
    /// The first tile of rows still waits on memory for its groups' weights while
    /// the later ones find them in cache; so the later tiles ask for the next
    /// groups' weights, a few cache lines a block (see [`Lookahead`]).
    fn multiply(
        &self,
        groups: Range<usize>,
        x: &Activations,
        mut emit: impl FnMut(usize, usize, &[f32; GROUP]),
    ) {
        // The kernels trust this, and with it that every column set aside (a
        // column of the activations) is a column of the weights.
        assert_eq!(
            x.blocks * BLOCK,
            self.cols,
            "activations as wide as the weights"
        );
        let m = x.rows;
        let kernel = self.kernel;
        let (wide, tile_rows) = kernel.map_or((1, x.parts), |k| k.tile_shape(m, self.reach));
        // A row's parts share a tile, which combines their sums (see `Rounding::Twice`).
        debug_assert!(tile_rows.is_multiple_of(x.parts));
        let per_block = rows_in_cache(x.blocks * BLOCK, tile_rows);
        let packed = self.packed_for(x);
        let widened = Widened::of_groups(self, groups.clone(), x, packed);
        // Zeroed once: each tile writes every sum that is read after it.
        let mut sums = [[[0f32; GROUP]; TILE_ROWS]; 4];
        for block_start in (0..m).step_by(per_block) {
            let block_end = m.min(block_start + per_block);
            let mut g = groups.start;
            while g < groups.end {
                let width = [4, 2, 1]
                    .into_iter()
                    .find(|&w| w <= wide && w <= groups.end - g)
                    .unwrap_or(1);
                let tiles = (block_end - block_start).div_ceil(tile_rows);
                for (j, start) in (block_start..block_end).step_by(tile_rows).enumerate() {
                    let rows = tile_rows.min(block_end - start);
                    let ahead = Lookahead::share(g + width, width, j, tiles);
                    match packed {
                        // SAFETY: the packed copy exists only where the VNNI
                        // kernel runs (`Narrow::of`); it packs these weights, and
                        // the tile is inside them and the activations.
                        #[cfg(target_arch = "x86_64")]
                        Some(packed) => unsafe {
                            narrow::vnni::tile_any(
                                self, packed, g, width, x, start, rows, &mut sums,
                            )
                        },
                        _ => tile(kernel, self, g, width, x, start, rows, &ahead, &mut sums),
                    }
                    for (w, group_sums) in sums.iter_mut().take(width).enumerate() {
                        for (i, lane_sums) in group_sums[..rows / x.parts].iter_mut().enumerate() {
                            let row = start / x.parts + i;
                            let set_aside = x.set_aside.of_row(row);
                            match widened.as_ref() {
                                Some(widened) => {
                                    widened.add(g + w, &x.set_aside.slot_of, set_aside, lane_sums)
                                }
                                None => self.add_set_aside(g + w, packed, set_aside, lane_sums),
                            }
                            emit(g + w, row, lane_sums);
                        }
                    }
                }
                g += width;
            }
        }
    }
}

impl Groups<'_> {
    /// Checks before a kernel reads group `g`'s weights for the columns set aside:
    /// its scales (and offsets) and its blocks of `block_bytes` in a copy of
    /// `copy_len` bytes are inside the matrix. Called for every group and row,
    /// so the columns are checked in debug builds alone: `multiply` holds the
    /// activations, whose columns they are, to the weights' width once a product.
    fn assert_inside(
        &self,
        g: usize,
        set_aside: &[(u32, f32)],
        copy_len: usize,
        block_bytes: usize,
    ) {
        let blocks = self.cols / BLOCK;
        assert!(
            (g + 1) * blocks * GROUP <= self.scales.len()
                && (g + 1) * blocks * block_bytes <= copy_len
                && (self.offsets.is_empty() || self.offsets.len() == self.scales.len()),
            "group {g}'s weights are inside the matrix"
        );
        debug_assert!(set_aside.iter().all(|&(c, _)| (c as usize) < self.cols));
    }

    /// The packed copy, where the product reads it: a few rows rounded once, which
    /// wait on memory rather than on the arithmetic (see `narrow`).
    fn packed_for(&self, x: &Activations) -> Option<&Narrow> {
        self.narrow
            .filter(|_| x.parts == 1 && x.rows <= NARROW_ROWS && self.kernel == Some(Kernel::Vnni))
    }

    /// Adds to group `g`'s sums the products of the values a row set aside
    /// (column, value) and the weights of their columns, exactly in f32: the same
    /// weight the integer sums use, `(byte − 128) × scale + offset`.
    ///
    /// The weights come from the copy the tile read, `packed` where it read the
    /// packed one: its lines are in cache, where the int8 copy's would come from
    /// memory.
    #[inline]
    fn add_set_aside(
        &self,
        g: usize,
        packed: Option<&Narrow>,
        set_aside: &[(u32, f32)],
        sums: &mut [f32; GROUP],
    ) {
        if set_aside.is_empty() {
            return;
        }
        // SAFETY: the kernel was detected on this CPU, which has the features its
        // code is compiled for; the columns are the weights' (`multiply` checks
        // the activations' width, and the values set aside are their columns).
        #[cfg(target_arch = "x86_64")]
        match (self.kernel, packed) {
            (_, Some(packed)) => {
                return unsafe { narrow::vnni::add_set_aside(self, packed, g, set_aside, sums) }
            }
            (Some(Kernel::Vnni), None) => {
                return unsafe { vnni::add_set_aside(self, g, set_aside, sums) }
            }
            (Some(Kernel::Avx2), None) => {
                return unsafe { avx2::add_set_aside(self, g, set_aside, sums) }
            }
            (None, None) => {}
        }
        let _ = packed;
        self.add_set_aside_plainly(g, set_aside, sums);
    }

    /// [`Groups::add_set_aside`] in plain code, which the kernels match bit for
    /// bit: the values go in turn to two sums (the first starting from the
    /// integer product's), added together at the end.
    fn add_set_aside_plainly(&self, g: usize, set_aside: &[(u32, f32)], sums: &mut [f32; GROUP]) {
        let blocks = self.cols / BLOCK;
        let mut odd = [0f32; GROUP];
        for (j, &(column, value)) in set_aside.iter().enumerate() {
            let (b, k) = (column as usize / BLOCK, column as usize % BLOCK);
            let at = (g * blocks + b) * GROUP;
            // Row `lane`'s byte is `lane × 4` further (see `quant_index`).
            let bytes = &self.quants[quant_index(at, k)..][..(GROUP - 1) * 4 + 1];
            let scales = &self.scales[at..at + GROUP];
            let offsets = self.offsets.get(at..at + GROUP);
            let to = if j % 2 == 0 { &mut *sums } else { &mut odd };
            for (lane, sum) in to.iter_mut().enumerate() {
                let byte = bytes[lane * 4] as u8 as i32 - 128;
                let offset = offsets.map_or(0.0, |o| o[lane]);
                let weight = (byte as f32).mul_add(scales[lane], offset);
                *sum = value.mul_add(weight, *sum);
            }
        }
        for (sum, odd) in sums.iter_mut().zip(odd) {
            *sum += odd;
        }
    }
}

/// Values set aside a column at least for which [`Widened`] pays: widening a
/// group's weights of a column costs about what adding one value set aside did.
const WIDEN_REUSE: usize = 2;

/// Each of a task's groups' weights of the columns that any row set aside, widened
/// to f32 once for all the rows, where each row's values set aside had widened
/// their columns' weights again (a shift, a mask, a conversion and an FMA for
/// every value, group and row).
///
/// Why: a model's outliers sit in a few channels, the same for most rows. In
/// SmolLM2's summariser on the Xeon without AMX, adding the values set aside
/// row by row was 12% of the time. The weights are the very f32 values
/// [`Groups::add_set_aside`] computes, added in its order: the same bits.
struct Widened {
    /// For each of the task's groups, 16 weights a column of
    /// [`SetAside::columns`].
    weights: Vec<[f32; GROUP]>,
    /// The first of the groups.
    first: usize,
    columns: usize,
}

impl Widened {
    /// Groups `groups`' weights of the columns set aside, widened once for all
    /// the rows of the product, where that is worth it and the rows read the int8
    /// copy with the VNNI kernel (where it is written).
    fn of_groups(
        w: &Groups<'_>,
        groups: Range<usize>,
        x: &Activations,
        packed: Option<&Narrow>,
    ) -> Option<Self> {
        let vnni = w.kernel == Some(Kernel::Vnni) && packed.is_none();
        if !(vnni && x.set_aside.worth_widening()) {
            return None;
        }
        let columns = &x.set_aside.columns;
        let mut weights = vec![[0.0; GROUP]; groups.len() * columns.len()];
        for (g, weights) in groups.clone().zip(weights.chunks_exact_mut(columns.len())) {
            // SAFETY: the VNNI kernel was found on this CPU, and every column set
            // aside is a column of the weights (`multiply` checks the width).
            #[cfg(target_arch = "x86_64")]
            unsafe {
                vnni::widen_columns(w, g, columns, weights)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (w, g, weights);
        }
        Some(Widened {
            weights,
            first: groups.start,
            columns: columns.len(),
        })
    }

    /// [`Groups::add_set_aside`] for group `g` from its widened weights.
    fn add(&self, g: usize, slot_of: &[u32], set_aside: &[(u32, f32)], sums: &mut [f32; GROUP]) {
        if set_aside.is_empty() {
            return;
        }
        let weights = &self.weights[(g - self.first) * self.columns..][..self.columns];
        // SAFETY: as in `of_groups`; each column's slot is inside `weights`.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            vnni::add_widened(weights, slot_of, set_aside, sums)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (weights, slot_of, sums);
    }
}

/// Activation bytes that [`Groups::multiply`] streams past a task's groups at a
/// time: a block that stays in the core's second-level cache (2 MB on the Xeon)
/// beside the weights. A prompt's 550 rows of Qwen's feed-forward activation are
/// 2.7 MB, which every pair of groups of the down product read again from the
/// last-level cache: in blocks the product ran at a median 212 G multiply-adds a
/// second against 195 (seven runs of nine faster, taken in turn).
const ROW_BLOCK_BYTES: usize = 512 * 1024;

/// Rows per block of [`ROW_BLOCK_BYTES`] for rows of `row_bytes`, in whole tiles
/// of `tile_rows`.
pub(super) fn rows_in_cache(row_bytes: usize, tile_rows: usize) -> usize {
    (ROW_BLOCK_BYTES / row_bytes.max(1) / tile_rows).max(1) * tile_rows
}

/// Cache lines of the groups after a tile's that the tile asks the second-level
/// cache for, a few with each of its blocks, so that the next groups' first tile
/// of rows finds their weights there rather than waiting on memory.
///
/// Why: a decoding step has few rows, so the first of its tiles (the one that
/// reads a pair of groups from memory) is a large share of the work, and Qwen's
/// 500 MB of weights come from memory at every step. Spreading the next pair's
/// lines over the later tiles took Qwen's steps with 16 sequences from 281 to 315
/// tokens a second (the means of nine runs each, taken in turn with the build
/// before on two cores of an AMD EPYC Zen 4) and cut a pass of 32 sequences by
/// about 5%. Asking for a tile's share all at once, at its start, left the speed as it
/// was. A prompt's many tiles each ask for a line or none: its speed did not move.
///
/// Only the x86 kernels ask; elsewhere the portable tile ignores it.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) struct Lookahead {
    /// The first of the groups asked for.
    first: usize,
    /// The lines this tile asks for with each block, counted over the groups'
    /// [`Lookahead::LINES`] each.
    lines: Range<usize>,
}

impl Lookahead {
    /// Lines of one group block's weights, 64 bytes each.
    const WEIGHT_LINES: usize = GROUP_BLOCK / 64;
    /// Lines of one group's block: its weights, then one of its scales and one of
    /// its offsets.
    const LINES: usize = Self::WEIGHT_LINES + 2;

    /// Tile `tile` of `tiles` over groups that `width` groups from `next` follow:
    /// the first tile asks for nothing (it is the one that waits), the others share
    /// the next groups' lines in equal parts.
    fn share(next: usize, width: usize, tile: usize, tiles: usize) -> Self {
        let lines = width * Self::LINES;
        let lines = match tile {
            0 => 0..0,
            _ => (tile - 1) * lines / (tiles - 1)..tile * lines / (tiles - 1),
        };
        Lookahead { first: next, lines }
    }

    /// Asks for this tile's lines of block `b` (of `blocks` a row). A prefetch is a
    /// hint that never faults, so lines past the matrix's end are harmless.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn prefetch(&self, w: &Groups<'_>, blocks: usize, b: usize) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        for l in self.lines.clone() {
            let at = (self.first + l / Self::LINES) * blocks + b;
            let line = l % Self::LINES;
            let address = if line < Self::WEIGHT_LINES {
                w.quants.as_ptr().wrapping_add(at * GROUP_BLOCK + line * 64)
            } else if line == Self::WEIGHT_LINES {
                w.scales.as_ptr().wrapping_add(at * GROUP) as *const i8
            } else if !w.offsets.is_empty() {
                w.offsets.as_ptr().wrapping_add(at * GROUP) as *const i8
            } else {
                continue;
            };
            // SAFETY: a prefetch reads nothing into the program and never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(address) };
        }
    }
}

/// The runs of groups `0..groups` that the parallel tasks of a product take,
/// [`GROUPS_PER_TASK`] each.
fn task_runs(groups: usize) -> impl ParallelIterator<Item = Range<usize>> {
    (0..groups.div_ceil(GROUPS_PER_TASK))
        .into_par_iter()
        .map(move |task| {
            let first = task * GROUPS_PER_TASK;
            first..groups.min(first + GROUPS_PER_TASK)
        })
}

/// Where a part of a product goes: `m × width` values whose column 0 is the
/// matrix's row `first_row`.
struct Part {
    values: *mut f32,
    width: usize,
    first_row: usize,
}

impl Part {
    /// Writes `values` from value `at` on.
    ///
    /// # Safety
    /// `at + values.len()` is within the part's `m × width` values, and no other
    /// thread writes them.
    unsafe fn write(&self, at: usize, values: &[f32]) {
        match <&[f32; GROUP]>::try_from(values) {
            // A whole group is one store; a copy of any length is a call to `memcpy`.
            Ok(group) => self
                .values
                .add(at)
                .cast::<[f32; GROUP]>()
                .write_unaligned(*group),
            Err(_) => {
                std::ptr::copy_nonoverlapping(values.as_ptr(), self.values.add(at), values.len())
            }
        }
    }
}

/// Where [`Groups::gated_rounded`]'s tasks write their blocks.
struct RoundedBlocks {
    bytes: *mut i8,
    scales: *mut f32,
    biases: *mut i32,
    offset_sums: *mut f32,
    /// Blocks a row.
    blocks: usize,
    round: RoundBlock,
    rounding: Rounding,
}

impl RoundedBlocks {
    fn of(out: &mut Activations, round: RoundBlock, rounding: Rounding) -> Self {
        RoundedBlocks {
            bytes: out.bytes.as_mut_ptr(),
            scales: out.scales.as_mut_ptr(),
            biases: out.biases.as_mut_ptr(),
            offset_sums: out.offset_sums.as_mut_ptr(),
            blocks: out.blocks,
            round,
            rounding,
        }
    }

    /// Rounds blocks `first_block..` of activation row `i`, whose values are
    /// `xs`, and pushes each value set aside to `found` as (row, column, value).
    ///
    /// # Safety
    /// Those blocks are inside the activations written, and no other thread
    /// writes them.
    unsafe fn round_row(
        &self,
        i: usize,
        first_block: usize,
        xs: &[f32],
        found: &mut Vec<(usize, u32, f32)>,
    ) {
        let parts = self.rounding.parts();
        for (b, xs) in xs.chunks_exact(BLOCK).enumerate() {
            let block = first_block + b;
            let aside = |k, value| found.push((i, (block * BLOCK + k) as u32, value));
            round_parts(xs, self.round, self.rounding, aside, |part, rounded| {
                // SAFETY: a part of block `block` of row `i`, which the caller
                // gives this call alone.
                unsafe { self.write((i * parts + part) * self.blocks + block, rounded) }
            });
        }
    }

    /// Writes block `at` (counted over all rows' blocks).
    ///
    /// # Safety
    /// `at` is a block of the activations written, and no other thread writes it.
    unsafe fn write(&self, at: usize, part: RoundedPart<'_>) {
        std::ptr::copy_nonoverlapping(part.bytes.as_ptr(), self.bytes.add(at * BLOCK), BLOCK);
        *self.scales.add(at) = part.scale;
        *self.biases.add(at) = -128 * part.total;
        *self.offset_sums.add(at) = part.offset_sum;
    }
}

// SAFETY: tasks write disjoint blocks (see `Groups::gated_rounded` and
// `Activations::rounded_by`).
unsafe impl Send for RoundedBlocks {}
unsafe impl Sync for RoundedBlocks {}

// SAFETY: the parts are written through disjoint groups of columns, one task each
// (see `Groups::matmul_parts`).
unsafe impl Send for Part {}
unsafe impl Sync for Part {}

/// Groups `first..first + width` against rows of bytes `start..start + rows`, by
/// `kernel` (detected on this CPU): `sums[g][k]` for each row of activations `k`
/// (each `x.parts` rows of bytes).
#[allow(clippy::too_many_arguments)]
fn tile(
    kernel: Option<Kernel>,
    w: &Groups<'_>,
    first: usize,
    width: usize,
    x: &Activations,
    start: usize,
    rows: usize,
    ahead: &Lookahead,
    sums: &mut [[[f32; GROUP]; TILE_ROWS]; 4],
) {
    // SAFETY: `kernel` was detected on this CPU, which has the features it is
    // compiled for.
    #[cfg(target_arch = "x86_64")]
    match kernel {
        Some(Kernel::Vnni) => {
            return unsafe { vnni::tile_any(w, first, width, x, start, rows, ahead, sums) };
        }
        Some(Kernel::Avx2) => {
            return unsafe { avx2::tile_any(w, first, width, x, start, rows, ahead, sums) };
        }
        None => {}
    }
    let _ = (kernel, ahead);
    portable_tile(w, first, width, x, start, rows, sums);
}

/// The same integer sums and f32 steps as the kernels, for machines without them
/// (a matrix is only built in this layout where the kernel runs; this serves tests).
fn portable_tile(
    w: &Groups<'_>,
    first: usize,
    width: usize,
    x: &Activations,
    start: usize,
    rows: usize,
    sums: &mut [[[f32; GROUP]; TILE_ROWS]; 4],
) {
    let (blocks, parts) = (x.blocks, x.parts);
    for (g, group_sums) in sums.iter_mut().enumerate().take(width) {
        for (k, lanes) in group_sums.iter_mut().enumerate().take(rows / parts) {
            let row = start + k * parts;
            for (lane, sum) in lanes.iter_mut().enumerate() {
                let mut total = 0f32;
                for b in 0..blocks {
                    let at = Layout::Int8(w.rounding).stored_block(
                        (first + g) * GROUP + lane,
                        b,
                        blocks,
                    );
                    // The parts' integer sums in one (see `Rounding::Twice`).
                    let mut integer = 0i32;
                    for part in 0..parts {
                        let block = (row + part) * blocks + b;
                        let mut sum = x.biases[block];
                        for k in 0..BLOCK {
                            let weight = w.quants[quant_index(at, k)] as u8 as i32;
                            sum += weight * x.bytes[block * BLOCK + k] as i32;
                        }
                        integer = (integer << RESIDUAL_BITS) + sum;
                    }
                    let last = (row + parts - 1) * blocks + b;
                    let scale = w.scales[at] * x.scales[last];
                    total = (integer as f32).mul_add(scale, total);
                    if let Some(&offset) = w.offsets.get(at) {
                        total = offset.mul_add(x.offset_sums[row * blocks + b], total);
                    }
                }
                *sum = total;
            }
        }
    }
}

/// The product through [`portable_tile`] alone, one row and group at a time.
#[cfg(test)]
pub(super) fn portable_product(w: &Groups<'_>, xs: &[f32]) -> Vec<f32> {
    let x = Activations::new(xs, w.cols, None, w.rounding);
    let mut out = vec![0f32; x.logical_rows() * w.rows];
    for g in 0..w.rows.div_ceil(GROUP) {
        let lanes = GROUP.min(w.rows - g * GROUP);
        for i in 0..x.logical_rows() {
            let mut sums = [[[0f32; GROUP]; TILE_ROWS]; 4];
            portable_tile(w, g, 1, &x, i * x.parts, x.parts, &mut sums);
            w.add_set_aside_plainly(g, x.set_aside.of_row(i), &mut sums[0][0]);
            out[i * w.rows + g * GROUP..][..lanes].copy_from_slice(&sums[0][0][..lanes]);
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{
        Activations, Groups, Lookahead, BLOCK, GROUP, GROUP_BLOCK, RESIDUAL_BITS, TILE_ROWS,
    };

    /// [`tile`](super::tile) for the shapes [`Groups::multiply`] asks for.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile_any(
        w: &Groups<'_>,
        first: usize,
        width: usize,
        x: &Activations,
        start: usize,
        rows: usize,
        ahead: &Lookahead,
        sums: &mut [[[f32; super::GROUP]; TILE_ROWS]; 4],
    ) {
        macro_rules! shapes {
            ($(($g:literal, $r:literal, $p:literal)),*) => {
                match (width, rows, x.parts, w.offsets.is_empty()) {
                    $(
                        ($g, $r, $p, true) => tile::<$g, $r, $p, false>(w, first, x, start, ahead, sums),
                        ($g, $r, $p, false) => tile::<$g, $r, $p, true>(w, first, x, start, ahead, sums),
                    )*
                    _ => unreachable!("Groups::multiply asks for no other shape"),
                }
            };
        }
        shapes!(
            (4, 1, 1),
            (4, 2, 1),
            (4, 3, 1),
            (2, 1, 1),
            (2, 2, 1),
            (2, 3, 1),
            (2, 4, 1),
            (2, 5, 1),
            (2, 6, 1),
            (1, 1, 1),
            (1, 2, 1),
            (1, 3, 1),
            (1, 4, 1),
            (1, 5, 1),
            (1, 6, 1),
            (4, 2, 2),
            (2, 2, 2),
            (2, 4, 2),
            (2, 6, 2),
            (1, 2, 2),
            (1, 4, 2),
            (1, 6, 2)
        )
    }

    /// [`Groups::add_set_aside`](super::Groups::add_set_aside) a register at a
    /// time: a group's 16 bytes of a column are one byte of each 32-bit lane of a
    /// line, shifted down and widened.
    ///
    /// # Safety
    /// The CPU has AVX-512 BW, and every column set aside is a column of `w`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn add_set_aside(
        w: &Groups<'_>,
        g: usize,
        set_aside: &[(u32, f32)],
        sums: &mut [f32; GROUP],
    ) {
        w.assert_inside(g, set_aside, w.quants.len(), GROUP_BLOCK);
        add_columns(set_aside, sums, |column| column_weights(w, g, column));
    }

    /// Group `g`'s 16 weights of `column` in f32: `(byte − 128) × scale + offset`.
    ///
    /// # Safety
    /// The CPU has AVX-512 BW; `column` is a column of `w` and `g` one of its
    /// groups.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn column_weights(w: &Groups<'_>, g: usize, column: u32) -> __m512 {
        let blocks = w.cols / BLOCK;
        let (b, k) = (column as usize / BLOCK, column as usize % BLOCK);
        let at = (g * blocks + b) * GROUP;
        let line = w.quants.as_ptr().add(super::quant_index(at, k - k % 4));
        let shift = _mm_cvtsi32_si128(8 * (k % 4) as i32);
        let lanes = _mm512_srl_epi32(_mm512_loadu_si512(line.cast()), shift);
        let mask = _mm512_set1_epi32(0xFF);
        let bytes = _mm512_sub_epi32(_mm512_and_si512(lanes, mask), _mm512_set1_epi32(128));
        let offsets = match w.offsets.is_empty() {
            true => _mm512_setzero_ps(),
            false => _mm512_loadu_ps(w.offsets.as_ptr().add(at)),
        };
        _mm512_fmadd_ps(
            _mm512_cvtepi32_ps(bytes),
            _mm512_loadu_ps(w.scales.as_ptr().add(at)),
            offsets,
        )
    }

    /// Group `g`'s weights of each of `columns`, widened by [`column_weights`].
    ///
    /// # Safety
    /// As for [`add_set_aside`]; `out` holds one entry a column.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn widen_columns(
        w: &Groups<'_>,
        g: usize,
        columns: &[u32],
        out: &mut [[f32; GROUP]],
    ) {
        w.assert_inside(g, &[], w.quants.len(), GROUP_BLOCK);
        assert!(
            out.len() == columns.len() && columns.iter().all(|&c| (c as usize) < w.cols),
            "one entry for each of the weights' columns"
        );
        for (out, &column) in out.iter_mut().zip(columns) {
            _mm512_storeu_ps(out.as_mut_ptr(), column_weights(w, g, column));
        }
    }

    /// [`add_set_aside`] with each column's weights read from `weights`, at its
    /// slot.
    ///
    /// # Safety
    /// The CPU has AVX-512 F; every column set aside has a slot inside `weights`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn add_widened(
        weights: &[[f32; GROUP]],
        slot_of: &[u32],
        set_aside: &[(u32, f32)],
        sums: &mut [f32; GROUP],
    ) {
        debug_assert!(set_aside
            .iter()
            .all(|&(c, _)| (slot_of[c as usize] as usize) < weights.len()));
        add_columns(set_aside, sums, |column| {
            let slot = *slot_of.get_unchecked(column as usize) as usize;
            _mm512_loadu_ps(weights.get_unchecked(slot).as_ptr())
        });
    }

    /// Adds each value set aside times `weights(column)`, its column's 16 weights,
    /// to `sums`: in turn to two sums, so that one value's last FMA need not wait
    /// on the one before, added together at the end. Every copy of the weights
    /// (bytes or packed) is summed in this order, to the same bits.
    #[inline(always)]
    pub(super) unsafe fn add_columns(
        set_aside: &[(u32, f32)],
        sums: &mut [f32; GROUP],
        weights: impl Fn(u32) -> __m512,
    ) {
        let (mut even, mut odd) = (_mm512_loadu_ps(sums.as_ptr()), _mm512_setzero_ps());
        let mut pairs = set_aside.chunks_exact(2);
        for pair in &mut pairs {
            let (a, b) = (pair[0], pair[1]);
            even = _mm512_fmadd_ps(_mm512_set1_ps(a.1), weights(a.0), even);
            odd = _mm512_fmadd_ps(_mm512_set1_ps(b.1), weights(b.0), odd);
        }
        if let [(column, value)] = *pairs.remainder() {
            even = _mm512_fmadd_ps(_mm512_set1_ps(value), weights(column), even);
        }
        _mm512_storeu_ps(sums.as_mut_ptr(), _mm512_add_ps(even, odd));
    }

    /// [`round_block`](super::round_block) sixteen values at a time, to the same
    /// bytes: `vcvtps2dq` rounds ties to even, as `round_ties_even` does.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn round_block(xs: &[f32], bytes: &mut [i8]) -> (f32, i32) {
        assert!(xs.len() == BLOCK && bytes.len() == BLOCK, "one whole block");
        let low = _mm512_loadu_ps(xs.as_ptr());
        let high = _mm512_loadu_ps(xs.as_ptr().add(16));
        let max = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(low), _mm512_abs_ps(high)));
        let inverse = _mm512_set1_ps(if max > 0.0 { 127.0 / max } else { 0.0 });
        let low = _mm512_cvtps_epi32(_mm512_mul_ps(low, inverse));
        let high = _mm512_cvtps_epi32(_mm512_mul_ps(high, inverse));
        let out = bytes.as_mut_ptr() as *mut __m128i;
        _mm_storeu_si128(out, _mm512_cvtsepi32_epi8(low));
        _mm_storeu_si128(out.add(1), _mm512_cvtsepi32_epi8(high));
        let total = _mm512_reduce_add_epi32(_mm512_add_epi32(low, high));
        (max / 127.0, total)
    }

    /// `G` groups from `first` against `R` rows of bytes from `start` (`R / P`
    /// rows of activations, each `P` parts), every sum in registers.
    #[inline(always)]
    unsafe fn tile<const G: usize, const R: usize, const P: usize, const OFFSETS: bool>(
        w: &Groups<'_>,
        first: usize,
        x: &Activations,
        start: usize,
        ahead: &Lookahead,
        sums: &mut [[[f32; GROUP]; TILE_ROWS]; 4],
    ) {
        let blocks = x.blocks;
        let quants = w.quants.as_ptr();
        let bytes = x.bytes.as_ptr().add(start * blocks * BLOCK);
        let row_bytes = blocks * BLOCK;
        let at = |g: usize, b: usize| (first + g) * blocks + b;
        // Row-major over the activation rows: `acc[i][g]`, `f[i][g]`.
        let mut f = [[_mm512_setzero_ps(); G]; R];
        for b in 0..blocks {
            ahead.prefetch(w, blocks, b);
            let mut acc = [[_mm512_setzero_si512(); G]; R];
            for (i, acc) in acc.iter_mut().enumerate() {
                let begin = _mm512_set1_epi32(*x.biases.get_unchecked((start + i) * blocks + b));
                *acc = [begin; G];
            }
            for quad in 0..BLOCK / 4 {
                let mut weights = [_mm512_setzero_si512(); G];
                for (g, weights) in weights.iter_mut().enumerate() {
                    let p = quants.add(at(g, b) * GROUP_BLOCK + quad * 64);
                    *weights = _mm512_loadu_si512(p as *const _);
                }
                for (i, acc) in acc.iter_mut().enumerate() {
                    let p = bytes.add(i * row_bytes + b * BLOCK + quad * 4) as *const i32;
                    let four = _mm512_set1_epi32(p.read_unaligned());
                    for (acc, &weights) in acc.iter_mut().zip(&weights) {
                        *acc = _mm512_dpbusd_epi32(*acc, weights, four);
                    }
                }
            }
            for g in 0..G {
                let scales = _mm512_loadu_ps(w.scales.as_ptr().add(at(g, b) * GROUP));
                let offsets = match OFFSETS {
                    true => _mm512_loadu_ps(w.offsets.as_ptr().add(at(g, b) * GROUP)),
                    false => _mm512_setzero_ps(),
                };
                for (k, f) in f.iter_mut().take(R / P).enumerate() {
                    // A row's parts in one integer sum (see `Rounding::Twice`), and
                    // the scale of its last part.
                    let i = k * P;
                    let mut sum = acc[i][g];
                    for part in &acc[i + 1..i + P] {
                        sum = _mm512_add_epi32(_mm512_slli_epi32::<RESIDUAL_BITS>(sum), part[g]);
                    }
                    let (scaled, first) =
                        ((start + i + P - 1) * blocks + b, (start + i) * blocks + b);
                    f[g] = add_block::<OFFSETS>(f[g], sum, scales, offsets, x, scaled, first);
                }
            }
        }
        for (k, f) in f.iter().take(R / P).enumerate() {
            for (g, f) in f.iter().enumerate() {
                _mm512_storeu_ps(sums[g][k].as_mut_ptr(), *f);
            }
        }
    }

    /// Adds a block's integer sum of a group against a row to that row's f32 sums
    /// `f`: converted, times the group's scales and the activations' scale of
    /// block `scaled`, plus the group's offsets times the activations' sum of
    /// block `first` where the matrix has offsets. Every tile of this kernel, on
    /// either copy of the weights, finishes a block through here, so their sums
    /// are the same bits.
    #[inline(always)]
    pub(super) unsafe fn add_block<const OFFSETS: bool>(
        f: __m512,
        sum: __m512i,
        scales: __m512,
        offsets: __m512,
        x: &Activations,
        scaled: usize,
        first: usize,
    ) -> __m512 {
        let scale = _mm512_mul_ps(scales, _mm512_set1_ps(*x.scales.get_unchecked(scaled)));
        let f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, f);
        match OFFSETS {
            true => {
                let sum = _mm512_set1_ps(*x.offset_sums.get_unchecked(first));
                _mm512_fmadd_ps(offsets, sum, f)
            }
            false => f,
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{
        Activations, Groups, Lookahead, BLOCK, GROUP, GROUP_BLOCK, RESIDUAL_BITS, TILE_ROWS, TINY,
    };

    /// Lanes of a register: a group's 16 rows take two.
    const HALF: usize = GROUP / 2;

    /// [`Groups::add_set_aside`](super::Groups::add_set_aside) as the VNNI
    /// kernel does it, a half group a register.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn add_set_aside(
        w: &Groups<'_>,
        g: usize,
        set_aside: &[(u32, f32)],
        sums: &mut [f32; GROUP],
    ) {
        let blocks = w.cols / BLOCK;
        let (mask, bias) = (_mm256_set1_epi32(0xFF), _mm256_set1_epi32(128));
        let mut even = [0, HALF].map(|at| _mm256_loadu_ps(sums.as_ptr().add(at)));
        let mut odd = [_mm256_setzero_ps(); 2];
        for (j, &(column, value)) in set_aside.iter().enumerate() {
            let (b, k) = (column as usize / BLOCK, column as usize % BLOCK);
            let at = (g * blocks + b) * GROUP;
            let line = &w.quants[super::quant_index(at, k - k % 4)..][..GROUP * 4];
            let shift = _mm_cvtsi32_si128(8 * (k % 4) as i32);
            let value = _mm256_set1_ps(value);
            let to = if j % 2 == 0 { &mut even } else { &mut odd };
            for (half, sum) in to.iter_mut().enumerate() {
                let lanes = _mm256_loadu_si256(line[half * HALF * 4..].as_ptr().cast());
                let bytes = _mm256_and_si256(_mm256_srl_epi32(lanes, shift), mask);
                let bytes = _mm256_sub_epi32(bytes, bias);
                let at = at + half * HALF;
                let scales = _mm256_loadu_ps(w.scales[at..at + HALF].as_ptr());
                let offsets = match w.offsets.get(at..at + HALF) {
                    Some(offsets) => _mm256_loadu_ps(offsets.as_ptr()),
                    None => _mm256_setzero_ps(),
                };
                let weights = _mm256_fmadd_ps(_mm256_cvtepi32_ps(bytes), scales, offsets);
                *sum = _mm256_fmadd_ps(value, weights, *sum);
            }
        }
        for (half, (even, odd)) in even.into_iter().zip(odd).enumerate() {
            _mm256_storeu_ps(sums.as_mut_ptr().add(half * HALF), _mm256_add_ps(even, odd));
        }
    }

    /// [`round_block`](super::round_block) eight values at a time, to the same
    /// bytes: `vcvtps2dq` rounds ties to even, as `round_ties_even` does, and the
    /// largest magnitude times 127 over itself rounds to 127, so the saturating
    /// packs clamp nothing. Rounded by the plain code, a Qwen prompt's activations
    /// were 5% of the summariser's time.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn round_block(xs: &[f32], bytes: &mut [i8]) -> (f32, i32) {
        assert!(xs.len() == BLOCK && bytes.len() == BLOCK, "one whole block");
        let values = [0, 8, 16, 24].map(|at| _mm256_loadu_ps(xs.as_ptr().add(at)));
        let sign = _mm256_set1_ps(-0.0);
        let most = values.iter().fold(_mm256_setzero_ps(), |m, &v| {
            _mm256_max_ps(m, _mm256_andnot_ps(sign, v))
        });
        let most = _mm_max_ps(_mm256_castps256_ps128(most), _mm256_extractf128_ps(most, 1));
        let most = _mm_max_ps(most, _mm_movehl_ps(most, most));
        let most = _mm_max_ss(most, _mm_shuffle_ps(most, most, 1));
        let max = _mm_cvtss_f32(most);
        let inverse = _mm256_set1_ps(if max > 0.0 { 127.0 / max } else { 0.0 });
        let [a, b, c, d] = values.map(|v| _mm256_cvtps_epi32(_mm256_mul_ps(v, inverse)));
        // The packs work within each 128-bit half: the permute puts the four
        // quarters back in order.
        let packed = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
        let ordered =
            _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(bytes.as_mut_ptr() as *mut __m256i, ordered);
        let sum = _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(c, d));
        let sum = _mm_add_epi32(
            _mm256_castsi256_si128(sum),
            _mm256_extracti128_si256(sum, 1),
        );
        let sum = _mm_add_epi32(sum, _mm_unpackhi_epi64(sum, sum));
        let sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 1));
        (max / 127.0, _mm_cvtsi128_si32(sum))
    }

    /// Weights within ±64: plus 64 they are at most 128, and 2 × 128 × 127 fits
    /// a signed 16-bit sum, so the signs need not move onto the activations.
    const SMALL: u8 = 64;
    /// Any weights: each weight's sign moves onto its activation byte.
    const ANY: u8 = 128;

    /// The path for weights whose magnitudes are at most `reach`.
    fn path(reach: u8) -> u8 {
        if reach <= TINY {
            TINY
        } else if reach <= SMALL {
            SMALL
        } else {
            ANY
        }
    }

    /// [`tile`](super::tile) for the shapes [`Groups::multiply`] asks of this kernel.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile_any(
        w: &Groups<'_>,
        first: usize,
        width: usize,
        x: &Activations,
        start: usize,
        rows: usize,
        ahead: &Lookahead,
        sums: &mut [[[f32; GROUP]; TILE_ROWS]; 4],
    ) {
        macro_rules! shapes {
            ($(($g:literal, $r:literal, $p:literal)),*) => {
                match (width, rows, x.parts, w.offsets.is_empty(), path(w.reach)) {
                    $(
                        ($g, $r, $p, true, TINY) => tile::<$g, $r, $p, false, TINY>(w, first, x, start, ahead, sums),
                        ($g, $r, $p, false, TINY) => tile::<$g, $r, $p, true, TINY>(w, first, x, start, ahead, sums),
                        ($g, $r, $p, true, SMALL) => tile::<$g, $r, $p, false, SMALL>(w, first, x, start, ahead, sums),
                        ($g, $r, $p, false, SMALL) => tile::<$g, $r, $p, true, SMALL>(w, first, x, start, ahead, sums),
                        ($g, $r, $p, true, _) => tile::<$g, $r, $p, false, ANY>(w, first, x, start, ahead, sums),
                        ($g, $r, $p, false, _) => tile::<$g, $r, $p, true, ANY>(w, first, x, start, ahead, sums),
                    )*
                    _ => unreachable!("Groups::multiply asks for no other shape"),
                }
            };
        }
        shapes!(
            (2, 1, 1),
            (2, 2, 1),
            (1, 1, 1),
            (1, 2, 1),
            (1, 3, 1),
            (1, 4, 1),
            (1, 5, 1),
            (1, 6, 1),
            (2, 2, 2),
            (1, 2, 2),
            (1, 4, 2),
            (1, 6, 2)
        )
    }

    /// `G` groups from `first` against `R` rows of bytes from `start` (`R / P`
    /// rows of activations, each `P` parts).
    ///
    /// `PATH` [`TINY`] or [`SMALL`]: the stored weights less `128 − PATH` are the
    /// unsigned operand (0 to 2 × `PATH`), and each block's sum starts at −`PATH`
    /// × its activation bytes' sum, the stored bias scaled down. [`ANY`]: each
    /// weight's sign moves onto the activation byte and its magnitude is the
    /// unsigned operand, and the sums start at zero.
    #[inline(always)]
    unsafe fn tile<
        const G: usize,
        const R: usize,
        const P: usize,
        const OFFSETS: bool,
        const PATH: u8,
    >(
        w: &Groups<'_>,
        first: usize,
        x: &Activations,
        start: usize,
        ahead: &Lookahead,
        sums: &mut [[[f32; GROUP]; TILE_ROWS]; 4],
    ) {
        // Quads whose 16-bit pairs are summed before they are widened.
        let quads_per_sum = if PATH == TINY { 4 } else { 1 };
        let blocks = x.blocks;
        let quants = w.quants.as_ptr();
        let bytes = x.bytes.as_ptr().add(start * blocks * BLOCK);
        let row_bytes = blocks * BLOCK;
        let at = |g: usize, b: usize| (first + g) * blocks + b;
        let ones = _mm256_set1_epi16(1);
        // What the unsigned operand adds to each weight: `PATH`, or nothing where
        // the signs move (the stored bias of 128 is taken off whole).
        let added = if PATH == ANY { 0 } else { PATH as i16 };
        let shift = _mm256_set1_epi8((128 - added) as i8);
        // Row-major over the activation rows: `acc[i][g][half]`, `f[i][g][half]`.
        let mut f = [[[_mm256_setzero_ps(); 2]; G]; R];
        for b in 0..blocks {
            ahead.prefetch(w, blocks, b);
            let mut acc = [[[_mm256_setzero_si256(); 2]; G]; R];
            if PATH != ANY {
                for (i, acc) in acc.iter_mut().enumerate() {
                    let bias = *x.biases.get_unchecked((start + i) * blocks + b);
                    // The stored bias is −128 × the bytes' sum, a multiple of 128.
                    *acc = [[_mm256_set1_epi32(bias / 128 * added as i32); 2]; G];
                }
            }
            for quads in (0..BLOCK / 4).step_by(quads_per_sum) {
                let mut pairs = [[[_mm256_setzero_si256(); 2]; G]; R];
                for quad in quads..quads + quads_per_sum {
                    // The unsigned operand of each register, and for any weights
                    // the signed weights whose signs the activations take.
                    let mut unsigned = [[_mm256_setzero_si256(); 2]; G];
                    let mut signed = [[_mm256_setzero_si256(); 2]; G];
                    for g in 0..G {
                        for half in 0..2 {
                            let p = quants.add(at(g, b) * GROUP_BLOCK + quad * 64 + half * 32);
                            let stored = _mm256_loadu_si256(p as *const __m256i);
                            let shifted = _mm256_sub_epi8(stored, shift);
                            if PATH == ANY {
                                signed[g][half] = shifted;
                                unsigned[g][half] = _mm256_abs_epi8(shifted);
                            } else {
                                unsigned[g][half] = shifted;
                            }
                        }
                    }
                    for (i, pairs) in pairs.iter_mut().enumerate() {
                        let p = bytes.add(i * row_bytes + b * BLOCK + quad * 4) as *const i32;
                        let four = _mm256_set1_epi32(p.read_unaligned());
                        for g in 0..G {
                            for half in 0..2 {
                                let four = match PATH {
                                    ANY => _mm256_sign_epi8(four, signed[g][half]),
                                    _ => four,
                                };
                                let products = _mm256_maddubs_epi16(unsigned[g][half], four);
                                pairs[g][half] = _mm256_add_epi16(pairs[g][half], products);
                            }
                        }
                    }
                }
                for (acc, pairs) in acc.iter_mut().zip(&pairs) {
                    for g in 0..G {
                        for half in 0..2 {
                            let quads = _mm256_madd_epi16(pairs[g][half], ones);
                            acc[g][half] = _mm256_add_epi32(acc[g][half], quads);
                        }
                    }
                }
            }
            for g in 0..G {
                for half in 0..2 {
                    let lane = at(g, b) * GROUP + half * HALF;
                    let scales = _mm256_loadu_ps(w.scales.as_ptr().add(lane));
                    let offsets = match OFFSETS {
                        true => _mm256_loadu_ps(w.offsets.as_ptr().add(lane)),
                        false => _mm256_setzero_ps(),
                    };
                    for (k, f) in f.iter_mut().take(R / P).enumerate() {
                        // A row's parts in one integer sum, as in `vnni`.
                        let i = k * P;
                        let mut sum = acc[i][g][half];
                        for part in &acc[i + 1..i + P] {
                            let shifted = _mm256_slli_epi32::<{ RESIDUAL_BITS as i32 }>(sum);
                            sum = _mm256_add_epi32(shifted, part[g][half]);
                        }
                        let block = (start + i + P - 1) * blocks + b;
                        let scale = _mm256_set1_ps(*x.scales.get_unchecked(block));
                        let scale = _mm256_mul_ps(scales, scale);
                        let sum = _mm256_cvtepi32_ps(sum);
                        f[g][half] = _mm256_fmadd_ps(sum, scale, f[g][half]);
                        if OFFSETS {
                            let block = (start + i) * blocks + b;
                            let sum = _mm256_set1_ps(*x.offset_sums.get_unchecked(block));
                            f[g][half] = _mm256_fmadd_ps(offsets, sum, f[g][half]);
                        }
                    }
                }
            }
        }
        for (i, f) in f.iter().take(R / P).enumerate() {
            for (g, f) in f.iter().enumerate() {
                for (half, f) in f.iter().enumerate() {
                    _mm256_storeu_ps(sums[g][i][half * HALF..].as_mut_ptr(), *f);
                }
            }
        }
    }
}
