//! [`Q8Matrix`]: a weight matrix held as signed bytes with one scale per 32 values
//! (and an offset where the file has one), multiplied by a few f32 rows at a time.
//!
//! Every legacy GGUF type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) is a block of small
//! integers times a scale, plus an offset for the `_1` kinds, and so is each 32
//! values of a Q4_K super-block, so each is copied into this layout exactly, with
//! no second rounding: the products are those of the file's own weights. Other
//! types (Q6_K's 16-value sub-blocks, for one) are rounded to 8 bits once. The 4-bit and
//! 5-bit kinds are widened to a byte a value too: unpacking nibbles (and fifth
//! bits) in the kernel costs more instructions than the bytes it saves: on two cores
//! the kernel reading bytes runs at the memory's speed, 21 G weights/s, where the
//! one reading nibbles stayed at 12.5. With VNNI the unpacking is cheap beside
//! the memory a one-sequence step waits on, so there the products of one to three
//! rows read a second, packed copy (see `int8::narrow`).
//!
//! Why our own kernel: decoding reads every weight once per step, so it is bound
//! by memory at one sequence and by arithmetic at many. Candle's quantised matmul
//! first rounds the activations to 8 bits too and then runs an integer dot product
//! per row pair, whose throughput on AVX2 is a fraction of the FMA units' (batched
//! decoding of 8 sequences ran no faster than one). Here the activations stay f32;
//! each weight is widened once per tile and used by up to six rows of activations,
//! so one pass over a quarter of the dense bytes serves a whole batch at FMA speed.
//!
//! Why panels: a tile reads several weight rows side by side. Stored row after row,
//! those are as many separate streams, and one core kept only 8 of the 20 GB/s it
//! can read busy; stored as panels (block `b` of each of four rows, then block
//! `b + 1` of each) a tile reads one run of memory, and one sequence's step runs
//! about 1.6 times as fast.
//!
//! Every output element is summed in the same order (eight lanes over the row, then
//! the lanes in a fixed order) whatever the number of rows in the call, so a
//! sequence decodes to the same bits alone or in any batch.

use std::ops::Range;

use kura_simd::silu_times;
use rayon::prelude::*;

mod int8;
mod lines;

use int8::Narrow;
pub(crate) use int8::Rounding;
use lines::LineBytes;

/// Values per scale, as in Q8_0.
pub(crate) const BLOCK: usize = 32;
/// Weight rows stored interleaved, block by block.
const PANEL: usize = 4;
/// Activation rows per register tile (2 weight rows × 6 = 12 accumulators of 16).
const TILE_ROWS: usize = 6;
/// Up to this many activation rows, a tile takes a whole panel (4 weight rows), so
/// one activation row still has four independent sums to hide the FMA latency.
const PANEL_TILE_ROWS: usize = 3;
/// Panels per parallel task.
const PANELS_PER_TASK: usize = 4;

/// Whether this CPU has the instructions of the int8 layout's kernel.
#[cfg(test)]
pub(crate) fn int8_supported() -> bool {
    int8::supported()
}

/// Whether 4- and 5-bit matrices get a packed copy here (see `int8::narrow`).
#[cfg(test)]
pub(crate) fn packed_copies_here() -> bool {
    int8::narrow_on()
}

/// The narrowest model whose activations are rounded to 8 bits by default. The
/// rounding moves the next-token distribution little on Qwen 0.5B (896 wide): a
/// KL divergence of 0.00001–0.0013 nats over a real prompt and its continuation.
/// SmolLM2 (576 wide) moves several times as much (0.0001–0.004), and there the
/// change showed: with int8 products it named a test cluster "Fix-Fix-Fix…" three
/// times over and called an English conversation Czech, tasks it does right in
/// f32. Narrow models have theirs rounded with their outliers kept exact (see
/// [`Rounding::Outliers`]).
pub(crate) const INT8_MIN_WIDTH: usize = 768;

/// How a matrix's bytes are laid out, which picks the kernel that multiplies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Panels of [`PANEL`] rows, each block of 32 bytes whole, multiplied by f32
    /// activations (AVX2 and FMA, or portable code).
    Panels,
    /// Groups of 16 rows with four bytes of each side by side, stored plus 128 and
    /// multiplied by activations rounded to 8 bits, once or twice (AVX-512 VNNI,
    /// or AVX2); see `int8`.
    Int8(Rounding),
}

impl Layout {
    /// The layout for a model `width` wide on this CPU: int8 where the CPU runs
    /// its kernel (AVX-512 VNNI or AVX2), its activations rounded once where the
    /// model is wide enough (see [`INT8_MIN_WIDTH`]) and, for narrower models,
    /// rounded once with their outliers kept exact; else panels. The outliers cost
    /// SmolLM2 about a third of the tile's time, where rounding twice doubled it
    /// (see [`Rounding::Outliers`]). Twice, AVX2's integer products (1.6 times the
    /// multiply-adds of f32 FMAs on Zen 3) fell below f32 panels, so narrow models
    /// multiplied in panels there; with the outliers apart, the AVX2 kernels (forced
    /// on a Zen 4, whose AVX2 units are Zen 3's width) ran SmolLM2's summariser at
    /// 0.70–0.74 conversations a second against 0.62 in panels, and its steps 28%
    /// faster. `KURA_INT8` overrides: `0` panels, `1` int8 rounded once, `2` twice,
    /// `3` once with outliers exact.
    pub(crate) fn for_model(width: usize) -> Self {
        if int8::Kernel::detect().is_none() {
            return Layout::Panels;
        }
        match std::env::var("KURA_INT8").as_deref() {
            Ok("0") => Layout::Panels,
            Ok("1") => Layout::Int8(Rounding::Once),
            Ok("2") => Layout::Int8(Rounding::Twice),
            Ok("3") => Layout::Int8(Rounding::Outliers),
            _ if width >= INT8_MIN_WIDTH => Layout::Int8(Rounding::Once),
            _ => Layout::Int8(Rounding::Outliers),
        }
    }

    /// The layout and the kernel that multiplies it here, in words.
    pub(crate) fn describe(self) -> String {
        let kernel = match int8::Kernel::detect() {
            Some(int8::Kernel::Vnni) => "AVX-512 VNNI",
            Some(int8::Kernel::Avx2) => "AVX2",
            None => "portable code",
        };
        let times = match self {
            Layout::Panels => return "8-bit weights by f32 activations (FMA)".to_string(),
            Layout::Int8(Rounding::Once) => "once",
            Layout::Int8(Rounding::Twice) => "twice",
            Layout::Int8(Rounding::Outliers) => "once, outliers exact",
        };
        format!("int8, activations rounded to 8 bits {times} ({kernel})")
    }

    /// Rows stored together (a matrix is padded with zero rows to a multiple).
    fn group(self) -> usize {
        match self {
            Layout::Panels => PANEL,
            Layout::Int8(_) => int8::GROUP,
        }
    }

    /// The index among the stored blocks (and the scales) of block `block` of row
    /// `row`, in a matrix of `blocks` blocks a row: group by group, then block by
    /// block, then row by row within the group.
    #[inline(always)]
    pub(crate) fn stored_block(self, row: usize, block: usize, blocks: usize) -> usize {
        let group = self.group();
        ((row / group) * blocks + block) * group + row % group
    }

    /// Where value `k` of stored block `at` sits among the quants. Stored blocks
    /// are counted group by group, block by block, row by row within the group,
    /// which is also the order of the scales.
    #[inline(always)]
    fn quant_index(self, at: usize, k: usize) -> usize {
        match self {
            Layout::Panels => at * BLOCK + k,
            Layout::Int8(_) => int8::quant_index(at, k),
        }
    }

    /// How a weight's integer is stored: as itself, or plus 128 for the unsigned
    /// operand of the int8 kernels (the same bits with the sign bit flipped).
    #[inline(always)]
    fn store(self, q: i8) -> i8 {
        match self {
            Layout::Panels => q,
            Layout::Int8(_) => q ^ i8::MIN,
        }
    }

    #[inline(always)]
    fn load(self, stored: i8) -> i8 {
        self.store(stored)
    }
}

/// `rows × cols` weights; `cols` is a multiple of [`BLOCK`].
pub(crate) struct Q8Matrix {
    rows: usize,
    cols: usize,
    layout: Layout,
    /// Group after group of rows (the last padded with zero rows), as
    /// [`Layout::quant_index`] places them. In panels: for each block of the row,
    /// that block of each of the panel's rows in turn.
    quants: LineBytes,
    /// One per stored block, in the order of `quants`: a weight is
    /// `quant × scale + offset`.
    scales: Vec<f32>,
    /// As `scales`, or empty when every offset is zero (the symmetric types), which
    /// spares a tenth of the bytes a step streams.
    offsets: Vec<f32>,
    /// Whether every weight is the file's own (copied from exact blocks), rather than
    /// rounded to 8 bits.
    exact: bool,
    /// The largest magnitude of its integers: the smaller, the cheaper the AVX2
    /// kernel's path (see `int8`).
    reach: u8,
    /// In the int8 layout, its integers packed in 4 or 5 bits where they fit,
    /// for the products of a few rows (see `int8::narrow`).
    narrow: Option<Narrow>,
}

impl Q8Matrix {
    /// Quantises dense row-major weights: each block's scale is its largest
    /// magnitude over 127, so a Q8_0 matrix that was dequantised comes back with
    /// the same integers. `None` when rows do not split into whole blocks.
    pub(crate) fn quantize(
        layout: Layout,
        weights: &[f32],
        rows: usize,
        cols: usize,
    ) -> Option<Self> {
        if weights.len() != rows * cols {
            return None;
        }
        let fill = |w: &[f32], q: &mut [i8], scale: &mut f32, _: &mut f32| {
            let max = w.iter().fold(0f32, |m, x| m.max(x.abs()));
            *scale = max / 127.0;
            if *scale > 0.0 {
                for (q, &x) in q.iter_mut().zip(w) {
                    *q = (x / *scale).round().clamp(-127.0, 127.0) as i8;
                }
            }
        };
        let block = |i: usize| &weights[i * BLOCK..(i + 1) * BLOCK];
        Self::from_each_block(layout, rows, cols, block, fill, false)
    }

    /// Copies GGML blocks of a type this layout holds exactly (`data` as stored in
    /// the file) without rounding; `None` when the sizes do not match.
    pub(crate) fn from_blocks(
        layout: Layout,
        kind: ExactBlocks,
        data: &[u8],
        rows: usize,
        cols: usize,
    ) -> Option<Self> {
        let (values, bytes) = (kind.values(), kind.bytes());
        if !cols.is_multiple_of(values) || data.len() != rows * cols / values * bytes {
            return None;
        }
        let per_block = values / BLOCK;
        Self::from_each_block(
            layout,
            rows,
            cols,
            |i| (&data[i / per_block * bytes..][..bytes], i % per_block),
            |(block, part), q, scale, offset| kind.decode(block, part, q, scale, offset),
            true,
        )
    }

    /// A matrix whose every block is written by `fill(source(i), quants, scale,
    /// offset)`, `i` counting the blocks in row-major order.
    fn from_each_block<S>(
        layout: Layout,
        rows: usize,
        cols: usize,
        source: impl Fn(usize) -> S + Sync,
        fill: impl Fn(S, &mut [i8], &mut f32, &mut f32) + Sync,
        exact: bool,
    ) -> Option<Self> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) {
            return None;
        }
        let blocks = cols / BLOCK;
        let group = layout.group();
        let stored = rows.div_ceil(group) * group * blocks;
        let mut quants = LineBytes::filled(stored * BLOCK, layout.store(0));
        let mut scales = vec![0f32; stored];
        let mut offsets = vec![0f32; stored];
        quants
            .par_chunks_mut(group * cols)
            .zip(scales.par_chunks_mut(group * blocks))
            .zip(offsets.par_chunks_mut(group * blocks))
            .enumerate()
            .for_each(|(g, ((quants, scales), offsets))| {
                let mut values = [0i8; BLOCK];
                for (at, (scale, offset)) in scales.iter_mut().zip(offsets).enumerate() {
                    let (row, block) = (g * group + at % group, at / group);
                    if row >= rows {
                        continue;
                    }
                    fill(source(row * blocks + block), &mut values, scale, offset);
                    for (k, &q) in values.iter().enumerate() {
                        quants[layout.quant_index(at, k)] = layout.store(q);
                    }
                }
            });
        if offsets.iter().all(|&offset| offset == 0.0) {
            offsets = Vec::new();
        }
        let reach = quants
            .par_iter()
            .map(|&q| layout.load(q).unsigned_abs())
            .max()
            .unwrap_or(0);
        Some(Q8Matrix {
            rows,
            cols,
            layout,
            quants,
            scales,
            offsets,
            exact,
            reach,
            narrow: None,
        })
    }

    pub(crate) fn layout(&self) -> Layout {
        self.layout
    }

    /// See the field: when true, [`Widen::dequantize`] gives the file's weights,
    /// and no dense copy needs to be kept beside this one.
    pub(crate) fn is_exact(&self) -> bool {
        self.exact
    }

    /// The rows of `parts` one after another, as one matrix, so that projections of
    /// the same input (queries, keys and values; gate and up) take one parallel pass
    /// instead of several: on SmolLM2 a step's products are small enough that each
    /// pass's start and join cost a good part of it. `None` when the parts differ in
    /// width or one's rows do not fill whole panels.
    pub(crate) fn stack(parts: &[&Q8Matrix]) -> Option<Q8Matrix> {
        if !Self::stackable(parts) {
            return None;
        }
        let cols = parts.first()?.cols;
        let offsets = if parts.iter().all(|p| p.offsets.is_empty()) {
            Vec::new()
        } else {
            parts
                .iter()
                .flat_map(|p| match p.offsets.is_empty() {
                    true => vec![0.0; p.scales.len()],
                    false => p.offsets.clone(),
                })
                .collect()
        };
        let layout = parts.first()?.layout;
        let scales: Vec<f32> = parts
            .iter()
            .flat_map(|p| p.scales.iter().copied())
            .collect();
        let quants: LineBytes = parts
            .iter()
            .flat_map(|p| p.quants.iter().copied())
            .collect();
        Some(Q8Matrix {
            rows: parts.iter().map(|p| p.rows).sum(),
            cols,
            layout,
            narrow: None,
            quants,
            scales,
            offsets,
            exact: parts.iter().all(|p| p.exact),
            reach: parts.iter().map(|p| p.reach).max().unwrap_or(0),
        })
    }

    /// Adds the packed copy that products of a few rows read (see `int8::narrow`),
    /// where the integers fit in 4 or 5 bits and the kernel that reads it runs
    /// here. Called for the matrices that multiply, once they are stacked: an
    /// embedding table's lookups read the int8 copy, and Qwen's would spend 94 MB
    /// on a copy never read.
    pub(crate) fn add_packed_copy(&mut self) {
        if let Layout::Int8(_) = self.layout {
            self.narrow = Narrow::of(&self.quants, &self.scales, &self.offsets);
        }
    }

    /// Whether products of a few rows read a packed copy of its integers.
    pub(crate) fn has_packed_copy(&self) -> bool {
        self.narrow.is_some()
    }

    /// Whether [`Q8Matrix::stack`] takes these parts.
    pub(crate) fn stackable(parts: &[&Q8Matrix]) -> bool {
        parts.first().is_some_and(|first| {
            parts.iter().all(|p| {
                p.cols == first.cols
                    && p.layout == first.layout
                    && p.rows.is_multiple_of(p.layout.group())
            })
        })
    }

    /// The matrix as the int8 kernel reads it.
    fn groups(&self) -> int8::Groups<'_> {
        int8::Groups {
            rows: self.rows,
            cols: self.cols,
            quants: &self.quants,
            scales: &self.scales,
            offsets: &self.offsets,
            reach: self.reach,
            kernel: int8::Kernel::detect(),
            narrow: self.narrow.as_ref(),
            rounding: match self.layout {
                Layout::Int8(rounding) => rounding,
                Layout::Panels => Rounding::Once,
            },
        }
    }

    /// Panel `p`'s rows.
    fn panel(&self, p: usize) -> Panel<'_> {
        let blocks = self.cols / BLOCK * PANEL;
        Panel {
            quants: &self.quants[p * blocks * BLOCK..][..blocks * BLOCK],
            scales: &self.scales[p * blocks..][..blocks],
            offsets: self
                .offsets
                .get(p * blocks..(p + 1) * blocks)
                .unwrap_or(&[]),
        }
    }

    /// `xs · Wᵀ` for `xs` of `m × cols` (row-major): `m × rows`, row-major.
    pub(crate) fn matmul(&self, xs: &[f32]) -> Vec<f32> {
        let [all] = self.matmul_parts(xs, [self.rows]);
        all
    }

    /// [`Q8Matrix::matmul`] with its rows cut into parts of `widths` (which sum to
    /// `rows`; each but the last whole groups, as in a stack), each part `m × width`.
    pub(crate) fn matmul_parts<const N: usize>(
        &self,
        xs: &[f32],
        widths: [usize; N],
    ) -> [Vec<f32>; N] {
        match self.layout {
            Layout::Int8(_) => self.groups().matmul_parts(xs, widths),
            Layout::Panels => split_columns(&self.panel_product(xs), widths),
        }
    }

    /// The SwiGLU feed-forward of `xs`, `down · (silu(gate) · up)`, where `self`
    /// stacks the gate and up projections (equal widths, in whole blocks). In the
    /// int8 layout the tasks that compute the activation round it to bytes as the
    /// down product reads them, while it is in cache: it is never written out in
    /// f32 (for a 512-token Qwen prompt, 10 MB a layer) nor read back to be rounded.
    pub(crate) fn feed_forward(&self, down: &Q8Matrix, xs: &[f32]) -> Vec<f32> {
        if matches!(
            (self.layout, down.layout),
            (Layout::Int8(_), Layout::Int8(_))
        ) {
            let gated = self.groups().gated_rounded(xs);
            let [out] = down.groups().rounded_parts(&gated, [down.rows]);
            return out;
        }
        let width = self.rows / 2;
        let [mut gate, up] = self.matmul_parts(xs, [width, width]);
        silu_times(&mut gate, &up);
        down.matmul(&gate)
    }

    /// The product in panels, `m × rows`.
    fn panel_product(&self, xs: &[f32]) -> Vec<f32> {
        let m = xs.len() / self.cols;
        debug_assert_eq!(m * self.cols, xs.len());
        if m == 0 {
            return Vec::new();
        }
        let inputs: Vec<&[f32]> = xs.chunks_exact(self.cols).collect();
        // Column-major while computing (each task owns a run of panels), then
        // transposed once.
        let panels = self.rows.div_ceil(PANEL);
        let mut by_weight = vec![0f32; panels * PANEL * m];
        by_weight
            .par_chunks_mut(PANELS_PER_TASK * PANEL * m)
            .enumerate()
            .for_each(|(task, out)| {
                for (p, out) in out.chunks_exact_mut(PANEL * m).enumerate() {
                    self.panel(task * PANELS_PER_TASK + p)
                        .multiply(&inputs, out);
                }
            });
        if m == 1 {
            // One input: the column-major result is already the row.
            by_weight.truncate(self.rows);
            return by_weight;
        }
        let mut out = vec![0f32; m * self.rows];
        for (r, column) in by_weight.chunks_exact(m).take(self.rows).enumerate() {
            for (i, &v) in column.iter().enumerate() {
                out[i * self.rows + r] = v;
            }
        }
        out
    }
}

kura_simd::multiversion! {
    /// Consecutive blocks of one row, from its block stored at `first` (then the
    /// next block of the same row…): `quant × scale + offset`.
    fn widen_blocks<M>(
        out: &mut [f32],
        layout: Layout,
        quants: &[i8],
        scales: &[f32],
        offsets: Option<&[f32]>,
        first: usize,
    ) {
        let group = layout.group();
        for (b, values) in out.chunks_exact_mut(BLOCK).enumerate() {
            let at = first + b * group;
            let (scale, offset) = (scales[at], offsets.map_or(0.0, |o| o[at]));
            match layout {
                Layout::Panels => {
                    for (v, &q) in values.iter_mut().zip(&quants[at * BLOCK..][..BLOCK]) {
                        *v = q as f32 * scale + offset;
                    }
                }
                Layout::Int8(_) => {
                    for (k, v) in values.iter_mut().enumerate() {
                        let q = layout.load(quants[layout.quant_index(at, k)]);
                        *v = q as f32 * scale + offset;
                    }
                }
            }
        }
    }
}

/// Weights held in a compact form that prompts and embedding lookups widen to f32
/// where they need them, instead of keeping an f32 copy at four bytes a weight.
pub(crate) trait Widen: Sync {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;

    /// Row `r`'s weights from column `start` (a multiple of 32), as many as fill
    /// `out`.
    fn dequantize_row(&self, r: usize, start: usize, out: &mut [f32]);

    /// The weights of `rows` × `cols` (`cols.start` a multiple of 32) as f32,
    /// row-major, into `out`, rows in parallel.
    fn dequantize(&self, rows: Range<usize>, cols: Range<usize>, out: &mut [f32]) {
        out.par_chunks_mut(cols.len())
            .zip(rows)
            .for_each(|(row, r)| self.dequantize_row(r, cols.start, row));
    }
}

/// Each weight is `quant × scale + offset`. For the exact types that is the number
/// candle's dequantisation gives: the product is exact in f32 (at most 8 by 17
/// bits), so the sum has one rounding either way.
impl Widen for Q8Matrix {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn dequantize_row(&self, r: usize, start: usize, out: &mut [f32]) {
        let first = self
            .layout
            .stored_block(r, start / BLOCK, self.cols / BLOCK);
        let offsets = (!self.offsets.is_empty()).then_some(&self.offsets[..]);
        widen_blocks(out, self.layout, &self.quants, &self.scales, offsets, first);
    }
}

/// Each row of `all` cut into pieces of `widths`, gathered piece by piece.
fn split_columns<const N: usize>(all: &[f32], widths: [usize; N]) -> [Vec<f32>; N] {
    let total: usize = widths.iter().sum();
    let rows = all.len() / total.max(1);
    let mut pieces = widths.map(|width| Vec::with_capacity(rows * width));
    for row in all.chunks_exact(total) {
        let mut rest = row;
        for (piece, &width) in pieces.iter_mut().zip(&widths) {
            let (head, tail) = rest.split_at(width);
            piece.extend_from_slice(head);
            rest = tail;
        }
    }
    pieces
}

/// The GGML block types whose every 32 values are small integers times a scale
/// (plus an offset): the legacy types, and Q4_K, whose super-blocks of 256 hold
/// eight such sub-blocks (a 6-bit scale and minimum each, times the super-block's
/// two half-precision factors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExactBlocks {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
}

pub(crate) fn half(bytes: &[u8]) -> f32 {
    half::f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

impl ExactBlocks {
    fn bytes(self) -> usize {
        match self {
            ExactBlocks::Q4_0 => 18,
            ExactBlocks::Q4_1 => 20,
            ExactBlocks::Q5_0 => 22,
            ExactBlocks::Q5_1 => 24,
            ExactBlocks::Q8_0 => 34,
            ExactBlocks::Q4K => 144,
        }
    }

    /// Values per stored block.
    fn values(self) -> usize {
        match self {
            ExactBlocks::Q4K => 256,
            _ => BLOCK,
        }
    }

    /// One block, laid out as in ggml's `dequantize_row_*`: a 4-bit value `j`
    /// (and `j + 16`) in the low (high) nibble of byte `j`, the fifth bits of the
    /// 5-bit kinds in a 32-bit mask. Q4_0's bias of 8 becomes the offset −8·scale,
    /// which gives the same products: `q·d − 8d` and `(q − 8)·d` are the same
    /// number before their one rounding. `part` is which 32 values of a Q4_K
    /// super-block (see [`ExactBlocks::decode_q4k`]); the other types' blocks are 32.
    fn decode(self, block: &[u8], part: usize, q: &mut [i8], scale: &mut f32, offset: &mut f32) {
        *scale = half(block);
        let (nibbles, high) = match self {
            ExactBlocks::Q4K => return Self::decode_q4k(block, part, q, scale, offset),
            ExactBlocks::Q8_0 => {
                for (q, &byte) in q.iter_mut().zip(&block[2..]) {
                    *q = byte as i8;
                }
                return;
            }
            ExactBlocks::Q4_0 => {
                *offset = -8.0 * *scale;
                (&block[2..], 0)
            }
            ExactBlocks::Q4_1 => {
                *offset = half(&block[2..]);
                (&block[4..], 0)
            }
            ExactBlocks::Q5_0 => {
                // The bias of 16 is taken off the integers, so the block needs no
                // offset (and the matrix none at all when every block is Q5_0).
                *offset = 0.0;
                (
                    &block[6..],
                    u32::from_le_bytes([block[2], block[3], block[4], block[5]]),
                )
            }
            ExactBlocks::Q5_1 => {
                *offset = half(&block[2..]);
                (
                    &block[8..],
                    u32::from_le_bytes([block[4], block[5], block[6], block[7]]),
                )
            }
        };
        let bias = if self == ExactBlocks::Q5_0 { 16 } else { 0 };
        for (j, &byte) in nibbles.iter().enumerate() {
            let low_fifth = ((high >> j) << 4) & 0x10;
            let high_fifth = (high >> (j + 12)) & 0x10;
            q[j] = (((byte & 0x0F) as u32 | low_fifth) as i32 - bias) as i8;
            q[j + 16] = (((byte >> 4) as u32 | high_fifth) as i32 - bias) as i8;
        }
    }

    /// Values `32·part ..` of a Q4_K super-block, laid out as in ggml's
    /// `dequantize_row_q4_K`: the factors `d` and `dmin`, twelve bytes of 6-bit
    /// scales and minimums (`get_scale_min_k4`), then 128 bytes of nibbles, parts
    /// `2i` and `2i + 1` in the low and high nibbles of bytes `32i .. 32i + 32`. A
    /// weight is `d·scale·q − dmin·min`; both products are exact in f32 (11 and 6
    /// bits), so `q × scale + offset` is the same number before its one rounding.
    fn decode_q4k(block: &[u8], part: usize, q: &mut [i8], scale: &mut f32, offset: &mut f32) {
        let (d, dmin, scales) = (half(block), half(&block[2..]), &block[4..16]);
        let (sc, min) = if part < 4 {
            (scales[part] & 63, scales[part + 4] & 63)
        } else {
            (
                (scales[part + 4] & 0x0F) | ((scales[part - 4] >> 6) << 4),
                (scales[part + 4] >> 4) | ((scales[part] >> 6) << 4),
            )
        };
        *scale = d * sc as f32;
        *offset = -(dmin * min as f32);
        let nibbles = &block[16 + part / 2 * 32..][..32];
        let shift = 4 * (part % 2);
        for (q, &byte) in q.iter_mut().zip(nibbles) {
            *q = ((byte >> shift) & 0x0F) as i8;
        }
    }
}

/// [`PANEL`] weight rows, stored interleaved.
struct Panel<'a> {
    quants: &'a [i8],
    scales: &'a [f32],
    /// Empty when all are zero.
    offsets: &'a [f32],
}

impl Panel<'_> {
    /// `out[r * m + i]` = weight row `r` of the panel · `inputs[i]`.
    fn multiply(&self, inputs: &[&[f32]], out: &mut [f32]) {
        let m = inputs.len();
        for (start, group) in inputs.chunks(TILE_ROWS).enumerate() {
            let start = start * TILE_ROWS;
            let width = if group.len() <= PANEL_TILE_ROWS {
                PANEL
            } else {
                2
            };
            for first in (0..PANEL).step_by(width) {
                let mut sums = [[0f32; TILE_ROWS]; PANEL];
                tile(self, first..first + width, group, &mut sums);
                for (w, row_sums) in sums.iter().take(width).enumerate() {
                    out[(first + w) * m + start..][..group.len()]
                        .copy_from_slice(&row_sums[..group.len()]);
                }
            }
        }
    }

    /// Where block `b` of the panel's row `w` is stored (in blocks).
    #[inline(always)]
    fn at(b: usize, w: usize) -> usize {
        b * PANEL + w
    }
}

/// Dot products of the panel's weight rows `rows` (two or four) with up to
/// [`TILE_ROWS`] inputs.
fn tile(
    panel: &Panel<'_>,
    rows: std::ops::Range<usize>,
    inputs: &[&[f32]],
    sums: &mut [[f32; TILE_ROWS]; PANEL],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the kernels are compiled for.
        unsafe { avx2::tile_any(panel, rows, inputs, sums) };
        return;
    }
    portable_tile(panel, rows, inputs, sums);
}

/// The same sums as the AVX2 kernel (eight lanes, then the lanes in order), with a
/// separate multiply and add.
fn portable_tile(
    panel: &Panel<'_>,
    rows: std::ops::Range<usize>,
    inputs: &[&[f32]],
    sums: &mut [[f32; TILE_ROWS]; PANEL],
) {
    for (w, row) in rows.enumerate() {
        for (i, x) in inputs.iter().enumerate() {
            let mut lanes = [0f32; 8];
            for (b, x) in x.chunks_exact(BLOCK).enumerate() {
                let at = Panel::at(b, row);
                let block = &panel.quants[at * BLOCK..][..BLOCK];
                let scale = panel.scales[at];
                let offset = panel.offsets.get(at).copied().unwrap_or(0.0);
                for (j, &x) in x.iter().enumerate() {
                    lanes[j % 8] += (block[j] as f32 * scale + offset) * x;
                }
            }
            sums[w][i] = hsum(&lanes);
        }
    }
}

/// The lanes summed as the AVX2 kernel sums them: halves, then quarters, then pairs.
#[inline(always)]
fn hsum(l: &[f32; 8]) -> f32 {
    let q = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    let p = [q[0] + q[2], q[1] + q[3]];
    p[0] + p[1]
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{hsum, Panel, BLOCK, PANEL, TILE_ROWS};

    /// [`tile`](super::tile) for the shapes [`Panel::multiply`] asks for.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_any(
        panel: &Panel<'_>,
        rows: Range<usize>,
        inputs: &[&[f32]],
        sums: &mut [[f32; TILE_ROWS]; PANEL],
    ) {
        macro_rules! shapes {
            ($(($w:literal, $r:literal)),*) => {
                match (rows.len(), inputs.len(), panel.offsets.is_empty()) {
                    $(
                        ($w, $r, true) => tile::<$w, $r, false>(panel, rows.start, inputs, sums),
                        ($w, $r, false) => tile::<$w, $r, true>(panel, rows.start, inputs, sums),
                    )*
                    _ => unreachable!("Panel::multiply asks for no other shape"),
                }
            };
        }
        shapes!((4, 1), (4, 2), (4, 3), (2, 4), (2, 5), (2, 6))
    }

    /// `W` weight rows from the panel's row `first` against `R` inputs, all `W × R`
    /// sums in registers.
    #[inline(always)]
    unsafe fn tile<const W: usize, const R: usize, const OFFSETS: bool>(
        panel: &Panel<'_>,
        first: usize,
        inputs: &[&[f32]],
        sums: &mut [[f32; TILE_ROWS]; PANEL],
    ) {
        let blocks = panel.scales.len() / PANEL;
        let quants = panel.quants.as_ptr();
        let mut acc = [[_mm256_setzero_ps(); R]; W];
        for b in 0..blocks {
            let mut scale = [_mm256_setzero_ps(); W];
            let mut offset = [_mm256_setzero_ps(); W];
            for w in 0..W {
                let at = Panel::at(b, first + w);
                scale[w] = _mm256_set1_ps(*panel.scales.get_unchecked(at));
                if OFFSETS {
                    offset[w] = _mm256_set1_ps(*panel.offsets.get_unchecked(at));
                }
            }
            for part in 0..BLOCK / 8 {
                let k = b * BLOCK + part * 8;
                let mut wide = [_mm256_setzero_ps(); W];
                for w in 0..W {
                    let eight = quants.add(Panel::at(b, first + w) * BLOCK + part * 8);
                    let bytes = _mm_loadl_epi64(eight as *const __m128i);
                    let ints = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
                    wide[w] = if OFFSETS {
                        _mm256_fmadd_ps(ints, scale[w], offset[w])
                    } else {
                        _mm256_mul_ps(ints, scale[w])
                    };
                }
                for i in 0..R {
                    let x = _mm256_loadu_ps(inputs[i].as_ptr().add(k));
                    for w in 0..W {
                        acc[w][i] = _mm256_fmadd_ps(wide[w], x, acc[w][i]);
                    }
                }
            }
        }
        for w in 0..W {
            for i in 0..R {
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc[w][i]);
                sums[w][i] = hsum(&lanes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 20_001) as f32 / 10_000.0 - 1.0
            })
            .collect()
    }

    /// Weight `(r, k)` as its integer, scale and offset.
    fn parts(q: &Q8Matrix, r: usize, k: usize) -> (i32, f32, f32) {
        let at = q.layout.stored_block(r, k / BLOCK, q.cols / BLOCK);
        let stored = q.quants[q.layout.quant_index(at, k % BLOCK)];
        (
            q.layout.load(stored) as i32,
            q.scales[at],
            q.offsets.get(at).copied().unwrap_or(0.0),
        )
    }

    fn dequantized(q: &Q8Matrix) -> Vec<f32> {
        (0..q.rows * q.cols)
            .map(|i| {
                let (v, scale, offset) = parts(q, i / q.cols, i % q.cols);
                v as f32 * scale + offset
            })
            .collect()
    }

    const LAYOUTS: [Layout; 4] = [
        Layout::Panels,
        Layout::Int8(Rounding::Once),
        Layout::Int8(Rounding::Twice),
        Layout::Int8(Rounding::Outliers),
    ];

    /// [`numbers`] with one value in 29 thirty times as large: about half of
    /// them past three times their block's root mean square, as a narrow model's
    /// outliers are (see [`Rounding::Outliers`]).
    fn activations(n: usize, seed: u64) -> Vec<f32> {
        let mut xs = numbers(n, seed);
        for x in xs.iter_mut().skip(3).step_by(29) {
            *x *= 30.0;
        }
        xs
    }

    fn q4(
        layout: Layout,
        rows: usize,
        cols: usize,
        dtype: candle_core::quantized::GgmlDType,
    ) -> Q8Matrix {
        use candle_core::quantized::QTensor;
        use candle_core::{Device, Tensor};
        let dense = Tensor::from_vec(numbers(rows * cols, 9), (rows, cols), &Device::Cpu).unwrap();
        let quantized = QTensor::quantize(&dense, dtype).unwrap();
        let kind = match dtype {
            candle_core::quantized::GgmlDType::Q4_0 => ExactBlocks::Q4_0,
            candle_core::quantized::GgmlDType::Q5_0 => ExactBlocks::Q5_0,
            _ => ExactBlocks::Q4_1,
        };
        let mut q =
            Q8Matrix::from_blocks(layout, kind, &quantized.data().unwrap(), rows, cols).unwrap();
        // Products of a few rows read the packed copy, where this CPU has one.
        q.add_packed_copy();
        q
    }

    /// `count` weights as GGML's Q8_0 blocks whose integers span −`reach` to
    /// `reach` (each block reaches both ends).
    fn q8_0_blocks(count: usize, reach: i8) -> Vec<u8> {
        let span = 2 * reach as i64 + 1;
        let mut data = Vec::new();
        for (b, block) in numbers(count, 5).chunks(BLOCK).enumerate() {
            data.extend(half::f16::from_f32(0.01 + b as f32 * 1e-4).to_le_bytes());
            for (k, x) in block.iter().enumerate() {
                let q = match k {
                    0 => reach,
                    1 => -reach,
                    _ => ((x * 1e4) as i64).rem_euclid(span) as i8 - reach,
                };
                data.push(q as u8);
            }
        }
        data
    }

    /// The inputs as the product sees them: themselves, or rounded to 8 bits a
    /// block at a time in the int8 layout.
    fn as_multiplied(layout: Layout, xs: &[f32], cols: usize) -> Vec<f32> {
        match layout {
            Layout::Panels => xs.to_vec(),
            Layout::Int8(rounding) => {
                let rounded = int8::Activations::new(xs, cols, int8::Kernel::detect(), rounding);
                (0..xs.len())
                    .map(|i| rounded.value(i / cols, i % cols))
                    .collect()
            }
        }
    }

    /// A stack of matrices multiplies to the bits of each part's product, laid side
    /// by side: fusing the projections that read the same input changes no result.
    #[test]
    fn a_stack_multiplies_as_its_parts() {
        use candle_core::quantized::GgmlDType;
        let cols = 96;
        for layout in LAYOUTS {
            let symmetric = Q8Matrix::quantize(layout, &numbers(16 * cols, 11), 16, cols).unwrap();
            let with_offsets = q4(layout, 32, cols, GgmlDType::Q4_1);
            let parts = [&symmetric, &with_offsets, &symmetric];
            let stack = Q8Matrix::stack(&parts).unwrap();
            assert_eq!(stack.rows(), 64);
            for m in [1, 2, 3, 5, 7] {
                let xs = activations(m * cols, 12 + m as u64);
                let products: Vec<Vec<f32>> = parts.iter().map(|p| p.matmul(&xs)).collect();
                let got = stack.matmul(&xs);
                for i in 0..m {
                    let want: Vec<f32> = products
                        .iter()
                        .zip(&parts)
                        .flat_map(|(ys, p)| ys[i * p.rows()..(i + 1) * p.rows()].to_vec())
                        .collect();
                    assert_eq!(
                        got[i * 64..(i + 1) * 64],
                        want,
                        "{layout:?}: {m} rows, row {i}"
                    );
                }
            }
            let ragged = Q8Matrix::quantize(layout, &numbers(3 * cols, 13), 3, cols).unwrap();
            assert!(Q8Matrix::stack(&[&ragged, &symmetric]).is_none());
            let narrow = Q8Matrix::quantize(layout, &numbers(16 * 64, 14), 16, 64).unwrap();
            assert!(Q8Matrix::stack(&[&narrow, &symmetric]).is_none());
        }
        let panels = Q8Matrix::quantize(Layout::Panels, &numbers(16 * cols, 11), 16, cols);
        let groups = Q8Matrix::quantize(
            Layout::Int8(Rounding::Once),
            &numbers(16 * cols, 11),
            16,
            cols,
        );
        assert!(Q8Matrix::stack(&[&panels.unwrap(), &groups.unwrap()]).is_none());
    }

    /// Every shape of tile (one to thirteen rows, whole and partial groups, with
    /// and without offsets) against the sum in f64 of the weights times the inputs
    /// as the product sees them; and, for the int8 layout, within a small error of
    /// the inputs themselves.
    #[test]
    fn products_match_the_dequantised_weights_in_f64() {
        use candle_core::quantized::GgmlDType;
        let (rows, cols) = (85, 96);
        for layout in LAYOUTS {
            let symmetric =
                Q8Matrix::quantize(layout, &numbers(rows * cols, 1), rows, cols).unwrap();
            let with_offsets = q4(layout, rows, cols, GgmlDType::Q4_1);
            for q in [&symmetric, &with_offsets] {
                let weights = dequantized(q);
                for m in [1, 2, 3, 4, 5, 6, 7, 13] {
                    let xs = activations(m * cols, 2 + m as u64);
                    let seen = as_multiplied(layout, &xs, cols);
                    let got = q.matmul(&xs);
                    assert_eq!(got.len(), m * rows);
                    for i in 0..m {
                        for r in 0..rows {
                            let dot = |xs: &[f32]| -> f64 {
                                (0..cols)
                                    .map(|k| weights[r * cols + k] as f64 * xs[i * cols + k] as f64)
                                    .sum()
                            };
                            let (g, want) = (got[i * rows + r] as f64, dot(&seen));
                            assert!(
                                (g - want).abs() < 1e-4,
                                "{layout:?} row {i}, column {r}: {g} vs {want}"
                            );
                            // Rounded once, an outlier coarsens its whole block (up
                            // to 0.9 here); set aside, the largest value left is
                            // within three times the block's root mean square,
                            // which a value thirty times the rest can still be
                            // (up to 0.31; rounded twice, 0.004).
                            let most = match layout {
                                Layout::Int8(Rounding::Once) => 1.2,
                                Layout::Int8(Rounding::Outliers) => 0.4,
                                _ => 0.05,
                            };
                            let exact = dot(&xs);
                            assert!((g - exact).abs() < most, "{layout:?}: {g} vs {exact}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_row_gets_the_same_bits_alone_and_in_any_batch() {
        let (rows, cols) = (35, 64);
        for layout in LAYOUTS {
            let q = Q8Matrix::quantize(layout, &numbers(rows * cols, 3), rows, cols).unwrap();
            let xs = activations(13 * cols, 4);
            let all = q.matmul(&xs);
            for i in 0..13 {
                let alone = q.matmul(&xs[i * cols..(i + 1) * cols]);
                assert_eq!(alone, all[i * rows..(i + 1) * rows], "{layout:?} row {i}");
            }
            let some = q.matmul(&xs[2 * cols..9 * cols]);
            assert_eq!(some, all[2 * rows..9 * rows], "{layout:?}");
        }
    }

    #[test]
    fn the_portable_kernel_sums_in_the_same_order() {
        let (rows, cols) = (4, 64);
        let q = Q8Matrix::quantize(Layout::Panels, &numbers(rows * cols, 5), rows, cols).unwrap();
        let xs = numbers(5 * cols, 6);
        let nibbles = q4(
            Layout::Panels,
            rows,
            cols,
            candle_core::quantized::GgmlDType::Q4_1,
        );
        assert!(q.offsets.is_empty() && !nibbles.offsets.is_empty());
        for q in [&q, &nibbles] {
            let panel = q.panel(0);
            for (weights, count) in [(0..4, 3), (2..4, 5)] {
                let inputs: Vec<&[f32]> = xs.chunks(cols).take(count).collect();
                let mut fast = [[0f32; TILE_ROWS]; PANEL];
                let mut portable = [[0f32; TILE_ROWS]; PANEL];
                tile(&panel, weights.clone(), &inputs, &mut fast);
                portable_tile(&panel, weights.clone(), &inputs, &mut portable);
                for w in 0..weights.len() {
                    for i in 0..count {
                        let (f, p) = (fast[w][i], portable[w][i]);
                        assert!((f - p).abs() <= 1e-5 * p.abs().max(1.0), "{f} vs {p}");
                    }
                }
            }
        }
    }

    #[test]
    fn dequantised_q8_weights_quantise_back_to_the_same_integers() {
        let (rows, cols) = (4, 64);
        for layout in LAYOUTS {
            let q = Q8Matrix::quantize(layout, &numbers(rows * cols, 7), rows, cols).unwrap();
            let again = Q8Matrix::quantize(layout, &dequantized(&q), rows, cols).unwrap();
            assert_eq!(again.quants, q.quants);
            assert_eq!(again.scales, q.scales);
        }
    }

    /// Each exact type, quantised by candle, is copied with the very weights
    /// candle dequantises it to, and multiplies like them.
    #[test]
    fn exact_blocks_are_copied_without_rounding() {
        use candle_core::quantized::{GgmlDType, QTensor};
        use candle_core::{Device, Tensor};
        let (rows, cols) = (6, 512);
        let dense = Tensor::from_vec(numbers(rows * cols, 8), (rows, cols), &Device::Cpu).unwrap();
        for (dtype, kind) in [
            (GgmlDType::Q4K, ExactBlocks::Q4K),
            (GgmlDType::Q4_0, ExactBlocks::Q4_0),
            (GgmlDType::Q4_1, ExactBlocks::Q4_1),
            (GgmlDType::Q5_0, ExactBlocks::Q5_0),
            (GgmlDType::Q5_1, ExactBlocks::Q5_1),
            (GgmlDType::Q8_0, ExactBlocks::Q8_0),
        ] {
            let quantized = QTensor::quantize(&dense, dtype).unwrap();
            let want: Vec<f32> = quantized
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let data = quantized.data().unwrap();
            for layout in LAYOUTS {
                let q = Q8Matrix::from_blocks(layout, kind, &data, rows, cols).unwrap();
                let symmetric = matches!(kind, ExactBlocks::Q5_0 | ExactBlocks::Q8_0);
                assert_eq!(q.offsets.is_empty(), symmetric, "{kind:?}");
                assert!(q.is_exact());
                // Widened back, the very numbers candle gives (a zero may differ in
                // its sign, which no sum sees): no dense copy is needed.
                let mut widened = vec![0f32; rows * cols];
                q.dequantize(0..rows, 0..cols, &mut widened);
                assert_eq!(widened, want, "{kind:?} {layout:?}");
                // A window of rows and blocks.
                let mut window = vec![0f32; 3 * 64];
                q.dequantize(2..5, 128..192, &mut window);
                for (i, row) in window.chunks(64).enumerate() {
                    assert_eq!(
                        row,
                        &want[(2 + i) * cols + 128..][..64],
                        "{kind:?} {layout:?} row {}",
                        2 + i
                    );
                }
                let short = Q8Matrix::from_blocks(layout, kind, &data[1..], rows, cols);
                assert!(short.is_none());
            }
        }
    }

    #[test]
    fn zero_blocks_and_ragged_shapes() {
        for layout in LAYOUTS {
            let q = Q8Matrix::quantize(layout, &[0.0; 64], 2, 32).unwrap();
            assert_eq!(q.matmul(&[1.0; 32]), [0.0, 0.0]);
            assert_eq!(q.matmul(&[0.0; 64]), [0.0; 4]);
            assert!(Q8Matrix::quantize(layout, &[0.0; 48], 2, 24).is_none());
            assert!(Q8Matrix::quantize(layout, &[0.0; 10], 2, 32).is_none());
            assert!(q.matmul(&[]).is_empty());
        }
    }

    /// The feed-forward is the definition, `down · (silu(gate) · up)` summed in f64
    /// over the weights and the inputs as the product sees them: within f32's
    /// rounding in panels, and the activation's 8-bit rounding in the int8 layout, where it
    /// also gives the bits of the unfused products one after another (a separate
    /// path: the f32 activation written out, then rounded). Rows within one tile and
    /// across several.
    #[test]
    fn the_feed_forward_is_the_definition() {
        let (width, cols) = (96, 128);
        for layout in LAYOUTS {
            let gate_up =
                Q8Matrix::quantize(layout, &numbers(2 * width * cols, 51), 2 * width, cols)
                    .unwrap();
            let down = Q8Matrix::quantize(layout, &numbers(cols * width, 53), cols, width).unwrap();
            let (gate_up_weights, down_weights) = (dequantized(&gate_up), dequantized(&down));
            for m in [1, 3, 7, 13] {
                let xs = activations(m * cols, 52 + m as u64);
                let got = gate_up.feed_forward(&down, &xs);
                assert_eq!(got.len(), m * cols);
                let seen = as_multiplied(layout, &xs, cols);
                for (i, (x, got)) in seen.chunks(cols).zip(got.chunks(cols)).enumerate() {
                    let row = |weights: &[f32], r: usize, xs: &[f64]| -> f64 {
                        let row = &weights[r * xs.len()..][..xs.len()];
                        row.iter().zip(xs).map(|(&w, x)| w as f64 * x).sum()
                    };
                    let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
                    let gated: Vec<f64> = (0..width)
                        .map(|r| {
                            let (g, u) = (
                                row(&gate_up_weights, r, &x),
                                row(&gate_up_weights, width + r, &x),
                            );
                            g / (1.0 + (-g).exp()) * u
                        })
                        .collect();
                    // f32's rounding, relative to the sum of the terms' magnitudes;
                    // in int8 also the activation's rounding to 8 bits: each value
                    // moves by at most half a step, its block's largest over 254.
                    let moved: Vec<f64> = match layout {
                        Layout::Panels => vec![0.0; width],
                        Layout::Int8(_) => gated
                            .chunks(BLOCK)
                            .flat_map(|block| {
                                let largest = block.iter().fold(0f64, |m, v| m.max(v.abs()));
                                vec![largest / 254.0; block.len()]
                            })
                            .collect(),
                    };
                    for (r, &got) in got.iter().enumerate() {
                        let want = row(&down_weights, r, &gated);
                        let weights = &down_weights[r * width..][..width];
                        let bound: f64 = weights
                            .iter()
                            .zip(gated.iter().zip(&moved))
                            .map(|(&w, (h, moved))| (w as f64).abs() * (1e-5 * h.abs() + moved))
                            .sum();
                        assert!(
                            (got as f64 - want).abs() <= bound,
                            "{layout:?}, {m} rows, row {i}, output {r}: {got} vs {want} ({bound})"
                        );
                    }
                }
                if matches!(layout, Layout::Int8(_)) {
                    let [mut gate, up] = gate_up.matmul_parts(&xs, [width, width]);
                    silu_times(&mut gate, &up);
                    assert_eq!(got, down.matmul(&gate), "{m} rows");
                }
            }
        }
    }

    /// Activations rounded by every kernel this CPU runs (sixteen values at a time
    /// with AVX-512, eight with AVX2) are the bytes, scales and sums of the plain
    /// code, and each block's largest magnitude becomes ±127.
    #[test]
    fn activations_round_alike_in_every_build() {
        let cols = 256;
        let mut xs = numbers(7 * cols, 40);
        xs[..BLOCK].fill(0.0);
        xs[BLOCK + 3] = -9.5;
        // A tie for every even and odd neighbour: 127 / 127 × 2.5 rounds to 2.
        xs[2 * BLOCK..3 * BLOCK].fill(2.5);
        xs[2 * BLOCK] = 127.0;
        xs[2 * BLOCK + 1] = -3.5;
        let plain = int8::Activations::new(&xs, cols, None, Rounding::Once);
        assert!((0..BLOCK).all(|k| plain.value(0, k) == 0.0));
        assert_eq!(plain.value(0, BLOCK + 3), -9.5);
        assert_eq!(plain.value(0, 2 * BLOCK + 2), 2.0);
        assert_eq!(plain.value(0, 2 * BLOCK + 1), -4.0);
        let kernels: Vec<_> = int8::Kernel::available().collect();
        for &kernel in &kernels {
            let rounded = int8::Activations::new(&xs, cols, Some(kernel), Rounding::Once);
            assert_eq!(plain, rounded, "{kernel:?}");
            let twice = |kernel| int8::Activations::new(&xs, cols, kernel, Rounding::Twice);
            assert_eq!(twice(None), twice(Some(kernel)), "{kernel:?}, twice");
            let outliers = activations(7 * cols, 41);
            let apart =
                |kernel| int8::Activations::new(&outliers, cols, kernel, Rounding::Outliers);
            assert_eq!(
                apart(None),
                apart(Some(kernel)),
                "{kernel:?}, outliers apart"
            );
        }
        eprintln!("kernels compared with the plain rounding: {kernels:?}");
        // Rounded twice, a value is within half a step of the second byte's scale,
        // its block's largest magnitude over 127 × 512 (where once it is over 254),
        // or within a step where the first rounding left more than 127 of the
        // second's steps (up to half the first step: 128), where the byte stops.
        let twice = int8::Activations::new(&xs, cols, None, Rounding::Twice);
        for (i, row) in xs.chunks(cols).enumerate() {
            for (b, block) in row.chunks(BLOCK).enumerate() {
                let largest = block.iter().fold(0f32, |m, x| m.max(x.abs()));
                for (k, &x) in block.iter().enumerate() {
                    let error = (twice.value(i, b * BLOCK + k) - x).abs();
                    let first = x / (largest / 127.0);
                    let steps = match (first - first.round()).abs() > 127.0 / 256.0 {
                        true => 1.0,
                        false => 0.5,
                    };
                    assert!(
                        error <= largest / (127.0 * 256.0) * steps * 1.01 + largest * 1e-7,
                        "row {i}, block {b}, value {k}: {x} became {} (largest {largest}, first {first})",
                        twice.value(i, b * BLOCK + k)
                    );
                }
            }
        }
    }

    /// A model's outliers sit in a few channels: a batch widens the weights of
    /// those columns once for all its rows, a row alone widens them itself, and
    /// each row's sums are the same bits.
    #[test]
    fn outliers_in_the_same_columns_of_many_rows_add_to_the_bits_of_each_row_alone() {
        let (rows, cols, m) = (48, 128, 24);
        let q = Q8Matrix::quantize(
            Layout::Int8(Rounding::Outliers),
            &numbers(rows * cols, 5),
            rows,
            cols,
        )
        .unwrap();
        let mut xs = numbers(m * cols, 6);
        for row in xs.chunks_exact_mut(cols) {
            for column in [5, 40, 77] {
                row[column] *= 30.0;
            }
        }
        let batch = int8::Activations::new(&xs, cols, int8::Kernel::detect(), Rounding::Outliers);
        let one = int8::Activations::new(
            &xs[..cols],
            cols,
            int8::Kernel::detect(),
            Rounding::Outliers,
        );
        assert!(batch.widens_set_aside() && !one.widens_set_aside());
        let all = q.matmul(&xs);
        for i in 0..m {
            let alone = q.matmul(&xs[i * cols..(i + 1) * cols]);
            assert_eq!(alone, all[i * rows..(i + 1) * rows], "row {i}");
        }
    }

    /// Rounded with outliers apart, a value past three times its block's root mean
    /// square is kept exactly, and the rest are within half a step of the largest
    /// of them over 127: a block's one outlier no longer sets its scale.
    #[test]
    fn outliers_are_kept_exactly_and_leave_the_rest_finely_rounded() {
        let cols = 128;
        let xs = activations(9 * cols, 42);
        let rounded = int8::Activations::new(&xs, cols, None, Rounding::Outliers);
        let mut kept = 0;
        for (i, row) in xs.chunks(cols).enumerate() {
            for (b, block) in row.chunks(BLOCK).enumerate() {
                let squares: f32 = block.iter().map(|x| x * x).sum();
                let outlier = |x: f32| 32.0 * x * x > 9.0 * squares;
                let largest = block
                    .iter()
                    .filter(|&&x| !outlier(x))
                    .fold(0f32, |m, x| m.max(x.abs()));
                for (k, &x) in block.iter().enumerate() {
                    let got = rounded.value(i, b * BLOCK + k);
                    if outlier(x) {
                        assert_eq!(got, x, "row {i}, block {b}, value {k}");
                        kept += 1;
                    } else {
                        let step = largest / 127.0;
                        assert!(
                            (got - x).abs() <= step * 0.5 * 1.0001,
                            "row {i}, block {b}, value {k}: {x} became {got} (step {step})"
                        );
                    }
                }
            }
        }
        // About one value in 29 is thirty times the rest; most of those go apart.
        assert!(
            kept > xs.len() / 60 && kept <= xs.len() / 29 + 9,
            "{kept} kept"
        );
    }

    /// The int8 layout is what a wide model gets where the CPU runs its kernel (unless
    /// turned off), and its kernel gives the portable code's bits.
    #[test]
    fn the_int8_kernel_gives_the_portable_sums() {
        use candle_core::quantized::GgmlDType;
        if std::env::var_os("KURA_INT8").is_none() {
            let kernel = int8::Kernel::detect();
            let wide = match kernel {
                Some(_) => Layout::Int8(Rounding::Once),
                None => Layout::Panels,
            };
            let narrow = match kernel {
                Some(_) => Layout::Int8(Rounding::Outliers),
                None => Layout::Panels,
            };
            assert_eq!(Layout::for_model(INT8_MIN_WIDTH), wide);
            assert_eq!(Layout::for_model(INT8_MIN_WIDTH - 1), narrow);
        }
        let (rows, cols) = (80, 128);
        let kernels: Vec<_> = int8::Kernel::available().collect();
        let matrices = [Rounding::Once, Rounding::Twice, Rounding::Outliers].map(|rounding| {
            let layout = Layout::Int8(rounding);
            let symmetric =
                Q8Matrix::quantize(layout, &numbers(rows * cols, 21), rows, cols).unwrap();
            // The AVX2 kernel's three paths: 8-bit weights, weights within ±64,
            // and within ±16.
            let within_64 = Q8Matrix::from_blocks(
                layout,
                ExactBlocks::Q8_0,
                &q8_0_blocks(rows * cols, 64),
                rows,
                cols,
            )
            .unwrap();
            let with_offsets = q4(layout, rows, cols, GgmlDType::Q4_0);
            assert_eq!(
                [symmetric.reach, within_64.reach, with_offsets.reach],
                [127, 64, 15]
            );
            [symmetric, within_64, with_offsets]
        });
        for q in matrices.iter().flatten() {
            // One tile of rows and several, the last one part full.
            // Past one block of rows too (see `int8::rows_in_cache`).
            let past_a_block = int8::rows_in_cache(cols, 6) + 7;
            for m in (1..=6).chain([11, 13, 16, 17, 32, 40, past_a_block]) {
                let xs = activations(m * cols, 30 + m as u64);
                assert_eq!(q.matmul(&xs), int8::portable_product(&q.groups(), &xs));
                // Every kernel this CPU runs, not only the one it would pick.
                for &kernel in &kernels {
                    let mut groups = q.groups();
                    groups.kernel = Some(kernel);
                    let [got] = groups.matmul_parts(&xs, [rows]);
                    let want = int8::portable_product(&groups, &xs);
                    assert_eq!(got, want, "{kernel:?}, {m} rows");
                }
            }
        }
        eprintln!("kernels compared with the portable code: {kernels:?}");
    }

    /// Where the packed copy is read (one to three rows rounded once, on a CPU with
    /// VNNI), its products are the int8 copy's to the bit, with values set aside
    /// and without, with offsets (Q4_1) and fifth bits (Q5_0), scales in halves
    /// and in f32; wider integers get no copy.
    #[test]
    fn the_packed_copy_multiplies_to_the_int8_bits() {
        use candle_core::quantized::GgmlDType;
        if !packed_copies_here() {
            eprintln!("no packed copies on this CPU (or KURA_NARROW=0): nothing to compare");
            return;
        }
        let (rows, cols) = (80, 128);
        for rounding in [Rounding::Once, Rounding::Outliers] {
            let layout = Layout::Int8(rounding);
            let mut wide =
                Q8Matrix::quantize(layout, &numbers(rows * cols, 21), rows, cols).unwrap();
            wide.add_packed_copy();
            assert!(wide.narrow.is_none());
            let q5 = q4(layout, rows, cols, GgmlDType::Q5_0);
            let q4_1 = q4(layout, rows, cols, GgmlDType::Q4_1);
            let mut stack = Q8Matrix::stack(&[&q5, &q4_1]).unwrap();
            assert!(stack.narrow.is_none(), "a stack is packed once it is whole");
            stack.add_packed_copy();
            let mut in_f32 = q4(layout, rows, cols, GgmlDType::Q4_1);
            in_f32.narrow = in_f32.narrow.map(Narrow::without_halves);
            for q in [&q5, &q4_1, &stack, &in_f32] {
                let packed = q.narrow.as_ref().expect("a packed copy");
                assert_eq!(packed.has_halves(), !std::ptr::eq(q, &in_f32));
                for m in 1..=3 {
                    let xs = activations(m * cols, 40 + m as u64);
                    let mut bytes = q.groups();
                    bytes.narrow = None;
                    let [want] = bytes.matmul_parts(&xs, [q.rows]);
                    assert_eq!(q.matmul(&xs), want, "{rounding:?}, {m} rows");
                }
            }
        }
    }
}
