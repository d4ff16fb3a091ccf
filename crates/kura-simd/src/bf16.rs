//! [`Bf16Weights`] and [`matmul_bf16`]: f32 products in bfloat16 with f32 sums, on
//! the AMX tile unit where the CPU has one (Intel Xeon since Sapphire Rapids), else
//! with AVX-512 BF16's `vdpbf16ps` where that is faster than f32 FMAs (AMD Zen 4
//! and 5).
//!
//! Why bfloat16: rounding the inputs to 8 bits of mantissa, with sums in f32, keeps
//! a sentence encoder within its parity (MiniLM's vectors at 0.99997 cosine or
//! better against f32, see the embedder), and the narrower type doubles what a
//! vector instruction multiplies. Why one layout for both units: a row of an AMX
//! weight tile (16 columns × a pair of inputs, 64 bytes) is exactly the operand
//! `vdpbf16ps` multiplies by a broadcast pair of inputs, so the weights are laid
//! out once and either unit reads them.

use rayon::prelude::*;

use crate::{amx, SharedMut};

/// Columns of a tile of sums (16 f32 in a 64-byte row).
pub(crate) const TILE_COLS: usize = 16;
/// Rows of a tile: pairs of inputs (the AMX unit's most).
pub(crate) const TILE_ROWS: usize = 16;
/// Inputs a tile spans: 32 bfloat16 in a 64-byte row.
pub(crate) const STEP: usize = 32;

/// The unit that runs [`matmul_bf16`] on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// AMX's tile registers (`tdpbf16ps`).
    Tiles,
    /// AVX-512 BF16 (`vdpbf16ps`) on AMD's cores.
    Pairs,
}

/// The unit that runs bfloat16 products here, if one is faster than f32 FMAs:
/// AMX's tiles where the CPU has them and Linux lends them, else `vdpbf16ps` on
/// AMD's cores. Intel's cores without AMX are left out: there `vdpbf16ps` issues at
/// half the multiply-adds of f32 FMAs (measured on the Xeon), where Zen 5 ran it at
/// 1.9 times (232 against 125 G multiply-adds a second on one core, in a loop
/// of independent sums) and Zen 4 at 2 times (116 against 58). `KURA_BF16=0`
/// says none, to compare with f32 (`KURA_AMX=0` leaves out AMX alone).
pub fn unit() -> Option<Unit> {
    static UNIT: std::sync::OnceLock<Option<Unit>> = std::sync::OnceLock::new();
    *UNIT.get_or_init(|| {
        if turned_off() {
            None
        } else if amx::available() {
            Some(Unit::Tiles)
        } else if pairs_faster_than_fma() {
            Some(Unit::Pairs)
        } else {
            None
        }
    })
}

/// Whether `vdpbf16ps` multiplies faster than f32 FMAs on this CPU (AMD's cores
/// with AVX-512 BF16; see [`unit()`]), for kernels that have no use for AMX's tiles.
/// `KURA_BF16=0` says no, as for [`unit()`].
pub fn pairs_faster_than_fma() -> bool {
    static FASTER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    #[cfg(target_arch = "x86_64")]
    let faster = || !turned_off() && pairs::faster_than_fma();
    #[cfg(not(target_arch = "x86_64"))]
    let faster = || false;
    *FASTER.get_or_init(faster)
}

/// `KURA_BF16=0`: no bfloat16 products, to compare with f32.
fn turned_off() -> bool {
    std::env::var("KURA_BF16").is_ok_and(|v| v == "0")
}

/// A weight matrix `inputs × outputs` (row-major, as `x · W` reads it) rounded to
/// bfloat16 and laid out as both units read it: for each 16 columns and each 32
/// inputs, a tile of 16 rows of pairs (inputs `2p`, `2p + 1`) of 16 columns, 1 KiB.
pub struct Bf16Weights {
    inputs: usize,
    outputs: usize,
    tiles: Vec<Tile>,
}

/// One tile of weights, on a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Tile(pub(crate) [u16; TILE_ROWS * TILE_COLS * 2]);

impl Bf16Weights {
    /// `weight` (`inputs × outputs`, row-major) in the units' layout, or `None`
    /// when the shape does not fill whole tiles (inputs a multiple of 32, outputs
    /// of 32).
    pub fn new(weight: &[f32], inputs: usize, outputs: usize) -> Option<Self> {
        if inputs == 0
            || !inputs.is_multiple_of(STEP)
            || !outputs.is_multiple_of(2 * TILE_COLS)
            || weight.len() != inputs * outputs
        {
            return None;
        }
        let steps = inputs / STEP;
        let column_tiles = outputs / TILE_COLS;
        let mut tiles = vec![Tile([0; TILE_ROWS * TILE_COLS * 2]); column_tiles * steps];
        for (at, tile) in tiles.iter_mut().enumerate() {
            let (j, s) = (at / steps, at % steps);
            for p in 0..TILE_ROWS {
                for c in 0..TILE_COLS {
                    for e in 0..2 {
                        let input = s * STEP + 2 * p + e;
                        let output = j * TILE_COLS + c;
                        tile.0[(p * TILE_COLS + c) * 2 + e] =
                            bf16(weight[input * outputs + output]);
                    }
                }
            }
        }
        Some(Bf16Weights {
            inputs,
            outputs,
            tiles,
        })
    }
}

/// `value` rounded to the nearest bfloat16 (ties to even), as its 16 bits; a NaN
/// stays a (quiet) NaN. Without a branch, so that a loop of it vectorises: with
/// one, rounding a batch's inputs was 7% of embedding long texts.
#[inline(always)]
fn bf16(value: f32) -> u16 {
    let bits = value.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let nan = (bits & 0x7fff_ffff) > 0x7f80_0000;
    let quiet = (bits >> 16) | 0x40;
    (if nan { quiet } else { rounded }) as u16
}

crate::multiversion! {
    /// Each of `from` rounded to bfloat16 into `to`.
    fn round_all<M>(to: &mut [u16], from: &[f32]) {
        for (to, &from) in to.iter_mut().zip(from) {
            *to = bf16(from);
        }
    }
}

/// `out = input · W (+ out, when accumulate)` on [`unit()`]'s unit, for `input` of
/// `rows × inputs` and `out` of `rows × outputs` (the weights' shape), row-major.
/// Each row's sums depend on that row alone, in one fixed order, so a row gives the
/// same bits in any batch.
///
/// # Panics
/// When [`unit()`] is `None` or the shapes do not match.
pub fn matmul_bf16(out: &mut [f32], input: &[f32], weights: &Bf16Weights, accumulate: bool) {
    let unit = unit().expect("matmul_bf16 needs AMX or AVX-512 BF16 (check `unit` first)");
    let (k, n) = (weights.inputs, weights.outputs);
    let rows = crate::product_rows("matmul_bf16", input.len(), out.len(), k, n);
    if rows == 0 {
        return;
    }
    crate::with_scratch(input.len(), |rounded: &mut [u16]| {
        rounded
            .par_chunks_mut(k * 64)
            .zip(input.par_chunks(k * 64))
            .for_each(|(to, from)| round_all(to, from));
        columns(unit, out, rounded, rows, weights, accumulate);
    });
}

/// The product of `rows` rounded rows of inputs by `weights` into `out`.
fn columns(
    unit: Unit,
    out: &mut [f32],
    rounded: &[u16],
    rows: usize,
    weights: &Bf16Weights,
    accumulate: bool,
) {
    let (k, n) = (weights.inputs, weights.outputs);
    let out = SharedMut(out.as_mut_ptr());
    let steps = k / STEP;
    // Tasks of two column tiles each (all rows): their weights stay in cache while
    // the rows stream past.
    (0..n / (2 * TILE_COLS)).into_par_iter().for_each(|pair| {
        let weights = &weights.tiles[2 * pair * steps..(2 * pair + 2) * steps];
        // SAFETY: `unit` says the CPU runs the kernel; each task writes its own 32
        // columns of `out`, which has `rows × n` values; the tiles and rows read
        // are in bounds.
        unsafe {
            let out = out.at(2 * pair * TILE_COLS);
            match unit {
                Unit::Tiles => amx::columns(rounded, rows, k, weights, out, n, accumulate),
                Unit::Pairs => pairs::columns(rounded, rows, k, weights, out, n, accumulate),
            }
        }
    });
}

/// The `vdpbf16ps` kernel: blocks of rows, each row's two column tiles of sums held
/// in registers over the whole reduction.
#[cfg(target_arch = "x86_64")]
mod pairs {
    use std::arch::x86_64::*;

    use super::{Tile, STEP, TILE_COLS, TILE_ROWS};

    /// Rows a block holds in registers: 12 × 2 accumulators, two weight rows and a
    /// broadcast pair fill 27 of the 32 vector registers.
    const BLOCK: usize = 12;

    pub(super) fn faster_than_fma() -> bool {
        std::arch::is_x86_feature_detected!("avx512bf16")
            && std::arch::is_x86_feature_detected!("avx512f")
            && crate::is_amd()
    }

    /// Two column tiles (`weights`: the first's steps, then the second's) against
    /// every row of `input` (bfloat16, `rows × k`), into `out` (`rows` rows `n`
    /// apart, 32 columns).
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BF16; `input` holds `rows × k` values, `weights`
    /// 2 × k / 32 tiles, and `out` points at `rows` rows of at least 32 writable
    /// values `n` apart that no other thread writes.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn columns(
        input: &[u16],
        rows: usize,
        k: usize,
        weights: &[Tile],
        out: *mut f32,
        n: usize,
        accumulate: bool,
    ) {
        crate::in_blocks(rows, |start, left| {
            // SAFETY: the block's rows lie inside `input` and `out` (the caller's
            // bounds); the features are this function's own.
            unsafe {
                let a = input.as_ptr().add(start * k);
                let c = out.add(start * n);
                if left >= BLOCK {
                    block::<BLOCK>(a, k, weights, c, n, accumulate)
                } else if left >= 4 {
                    block::<4>(a, k, weights, c, n, accumulate)
                } else {
                    block::<1>(a, k, weights, c, n, accumulate)
                }
            }
        });
    }

    /// The 32 bfloat16 in `v`'s bits, as `vdpbf16ps` takes them.
    #[inline(always)]
    fn as_bf16(v: __m512i) -> __m512bh {
        // SAFETY: both are 64 bytes of plain bits.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }

    /// `R` rows from `a` into `c`; returns `R`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn block<const R: usize>(
        a: *const u16,
        k: usize,
        weights: &[Tile],
        c: *mut f32,
        n: usize,
        accumulate: bool,
    ) -> usize {
        let steps = k / STEP;
        let mut sums = [[_mm512_setzero_ps(); 2]; R];
        if accumulate {
            for (r, sums) in sums.iter_mut().enumerate() {
                sums[0] = _mm512_loadu_ps(c.add(r * n));
                sums[1] = _mm512_loadu_ps(c.add(r * n + TILE_COLS));
            }
        }
        for s in 0..steps {
            let (w0, w1) = (weights[s].0.as_ptr(), weights[steps + s].0.as_ptr());
            for p in 0..TILE_ROWS {
                let w0 = as_bf16(_mm512_load_si512(w0.add(p * 2 * TILE_COLS).cast()));
                let w1 = as_bf16(_mm512_load_si512(w1.add(p * 2 * TILE_COLS).cast()));
                for (r, sums) in sums.iter_mut().enumerate() {
                    let pair = a
                        .add(r * k + s * STEP + 2 * p)
                        .cast::<i32>()
                        .read_unaligned();
                    let x = as_bf16(_mm512_set1_epi32(pair));
                    sums[0] = _mm512_dpbf16_ps(sums[0], x, w0);
                    sums[1] = _mm512_dpbf16_ps(sums[1], x, w1);
                }
            }
        }
        for (r, sums) in sums.iter().enumerate() {
            _mm512_storeu_ps(c.add(r * n), sums[0]);
            _mm512_storeu_ps(c.add(r * n + TILE_COLS), sums[1]);
        }
        R
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod pairs {
    use super::Tile;

    pub(super) unsafe fn columns(
        _: &[u16],
        _: usize,
        _: usize,
        _: &[Tile],
        _: *mut f32,
        _: usize,
        _: bool,
    ) {
        unreachable!("AVX-512 BF16 is never available here")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_numbers as numbers;

    fn widen(value: u16) -> f32 {
        f32::from_bits((value as u32) << 16)
    }

    #[test]
    fn rounding_to_bfloat16_is_to_the_nearest_even() {
        assert_eq!(widen(bf16(1.0)), 1.0);
        assert_eq!(widen(bf16(-2.5)), -2.5);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even, 1.
        assert_eq!(widen(bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(widen(bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert!(widen(bf16(f32::NAN)).is_nan());
        assert_eq!(widen(bf16(f32::INFINITY)), f32::INFINITY);
    }

    #[test]
    fn shapes_that_do_not_fill_tiles_are_refused() {
        assert!(Bf16Weights::new(&[0.0; 48 * 32], 48, 32).is_none());
        assert!(Bf16Weights::new(&[0.0; 32 * 48], 32, 48).is_none());
        assert!(Bf16Weights::new(&[0.0; 64 * 64], 64, 64).is_some());
    }

    /// The product is the product of the rounded inputs, summed in f32, for blocks
    /// of rows whole and partial, with and without accumulating, and each row's
    /// sums are the same bits whatever rows share its batch.
    #[test]
    fn products_are_the_rounded_product() {
        let Some(unit) = unit() else {
            eprintln!("neither AMX nor AVX-512 BF16 on AMD here: the product is not tested");
            return;
        };
        eprintln!("bfloat16 products on {unit:?}");
        let (k, n) = (96, 64);
        let weight = numbers(k * n, 1);
        let weights = Bf16Weights::new(&weight, k, n).unwrap();
        let alone = |row: &[f32]| {
            let mut out = vec![0.0; n];
            matmul_bf16(&mut out, row, &weights, false);
            out
        };
        for rows in [1, 5, 12, 13, 16, 17, 32, 45] {
            let input = numbers(rows * k, 2 + rows as u64);
            let start = numbers(rows * n, 100 + rows as u64);
            for accumulate in [false, true] {
                let mut out = start.clone();
                matmul_bf16(&mut out, &input, &weights, accumulate);
                for r in 0..rows {
                    for c in 0..n {
                        let mut want = if accumulate {
                            start[r * n + c] as f64
                        } else {
                            0.0
                        };
                        for i in 0..k {
                            want += widen(bf16(input[r * k + i])) as f64
                                * widen(bf16(weight[i * n + c])) as f64;
                        }
                        let got = out[r * n + c] as f64;
                        assert!(
                            (got - want).abs() < 1e-4,
                            "{rows} rows, accumulate {accumulate}: [{r}][{c}] {got} against {want}"
                        );
                    }
                }
            }
            let mut out = vec![0.0; rows * n];
            matmul_bf16(&mut out, &input, &weights, false);
            let last = &input[(rows - 1) * k..];
            assert_eq!(&out[(rows - 1) * n..], alone(last), "{rows} rows");
        }
    }
}
