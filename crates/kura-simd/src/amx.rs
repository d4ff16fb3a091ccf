//! [`Bf16Weights`] and [`matmul_bf16`]: f32 products on the AMX tile unit, in
//! bfloat16 with f32 sums.
//!
//! Why: one `tdpbf16ps` multiplies a 16 × 32 tile of bfloat16 by a 32 × 16 one into
//! 16 × 16 f32 sums, 8,192 multiply-adds, where an AVX-512 FMA does 16. The sums
//! stay in the tile registers over the whole reduction and go to memory once, so
//! nothing between the unit's instructions costs a vector port. Rounding the inputs
//! to bfloat16 (8 bits of mantissa) keeps a sentence encoder within its parity:
//! MiniLM's vectors at 0.99997 cosine or better against f32 (see the embedder).
//!
//! Linux lends a process the tile registers only once asked (`arch_prctl`); without
//! the request the first tile instruction faults, which is how AMX looked broken in
//! virtual machines that do pass it through. [`available`] asks once.

use rayon::prelude::*;

use crate::SharedMut;

/// Columns of a tile of sums (16 f32 in a 64-byte row).
const TILE_COLS: usize = 16;
/// Rows of a tile (the unit's most).
const TILE_ROWS: usize = 16;
/// Reduction values a tile step takes: 32 bfloat16 in a 64-byte row.
const STEP: usize = 32;

/// Whether this CPU has AMX with bfloat16 products and this process may use them.
pub fn available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| tiles::cpu_has_amx_bf16() && tiles::lend())
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    false
}

/// A weight matrix `inputs × outputs` (row-major, as `x · W` reads it) rounded to
/// bfloat16 and laid out as the unit reads it: for each 16 columns and each 32
/// inputs, 16 rows of pairs (inputs `2p`, `2p + 1`) of 16 columns, 1 KiB.
pub struct Bf16Weights {
    inputs: usize,
    outputs: usize,
    tiles: Vec<Tile>,
}

/// One tile of weights, on a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Tile([u16; TILE_ROWS * TILE_COLS * 2]);

impl Bf16Weights {
    /// `weight` (`inputs × outputs`, row-major) in the unit's layout, or `None`
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

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    pub fn outputs(&self) -> usize {
        self.outputs
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

/// `out = input · W (+ out, when accumulate)` on the tile unit, for `input` of
/// `rows × weights.inputs()` and `out` of `rows × weights.outputs()`, row-major.
/// Each row's sums depend on that row alone, so a row gives the same bits in any
/// batch.
///
/// # Panics
/// When [`available`] is false or the shapes do not match.
pub fn matmul_bf16(out: &mut [f32], input: &[f32], weights: &Bf16Weights, accumulate: bool) {
    assert!(
        available(),
        "matmul_bf16 needs AMX (check `available` first)"
    );
    let (k, n) = (weights.inputs, weights.outputs);
    let rows = input.len() / k;
    assert!(
        input.len() == rows * k && out.len() == rows * n,
        "matmul_bf16 shapes: {} inputs for {k} columns, {} outputs for {n} columns",
        input.len(),
        out.len()
    );
    if rows == 0 {
        return;
    }
    let mut rounded = vec![0u16; input.len()];
    rounded
        .par_chunks_mut(k * 64)
        .zip(input.par_chunks(k * 64))
        .for_each(|(to, from)| round_all(to, from));
    let out = SharedMut(out.as_mut_ptr());
    let steps = k / STEP;
    // Tasks of two column tiles each (all rows): their weights stay in cache while
    // the rows stream past.
    (0..n / (2 * TILE_COLS)).into_par_iter().for_each(|pair| {
        let weights = &weights.tiles[2 * pair * steps..(2 * pair + 2) * steps];
        // SAFETY: `available` is true; each task writes its own 32 columns of
        // `out`, which has `rows × n` values; the tiles and rows read are in bounds.
        unsafe {
            tiles::columns(
                &rounded,
                rows,
                k,
                weights,
                out.at(2 * pair * TILE_COLS),
                n,
                accumulate,
            )
        }
    });
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod tiles {
    use std::arch::asm;

    use super::{Tile, STEP, TILE_COLS, TILE_ROWS};

    pub(super) fn cpu_has_amx_bf16() -> bool {
        use std::arch::x86_64::{__cpuid_count, __get_cpuid_max};
        if __get_cpuid_max(0).0 < 7 {
            return false;
        }
        // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
        let leaf = __cpuid_count(7, 0);
        leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0
    }

    /// Asks Linux for the tile registers' state (`ARCH_REQ_XCOMP_PERM` for
    /// `XFEATURE_XTILEDATA`); false where it refuses.
    pub(super) fn lend() -> bool {
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let result: i64;
        // SAFETY: the system call reads two integers and writes no memory of ours.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => result,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        result == 0
    }

    /// The registers' shapes (palette 1): sums of row tile `t` by column tile `c`
    /// in register `2t + c`; row tile `t`'s inputs in `4 + t`; column tile `c`'s
    /// weights in `6 + c`.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    impl Config {
        fn new(rows: [usize; 2]) -> Self {
            let mut bytes = [0u8; 64];
            bytes[0] = 1;
            let mut shape = |register: usize, rows: usize| {
                if rows > 0 {
                    bytes[16 + 2 * register..18 + 2 * register]
                        .copy_from_slice(&64u16.to_le_bytes());
                    bytes[48 + register] = rows as u8;
                }
            };
            for (t, &rows) in rows.iter().enumerate() {
                shape(2 * t, rows);
                shape(2 * t + 1, rows);
                shape(4 + t, rows);
            }
            shape(6, TILE_ROWS);
            shape(7, TILE_ROWS);
            Config(bytes)
        }
    }

    /// Two column tiles (`weights`: the first's steps, then the second's) against
    /// every row of `input` (bfloat16, `rows × k`), into `out` (`rows` rows `n`
    /// apart, 32 columns).
    ///
    /// # Safety
    /// AMX is available; `input` holds `rows × k` values, `weights` 2 × k / 32
    /// tiles, and `out` points at `rows` rows of at least 32 writable values `n`
    /// apart that no other thread writes.
    pub(super) unsafe fn columns(
        input: &[u16],
        rows: usize,
        k: usize,
        weights: &[Tile],
        out: *mut f32,
        n: usize,
        accumulate: bool,
    ) {
        let steps = k / STEP;
        let (input_stride, out_stride) = (k * 2, n * 4);
        let mut configured = [usize::MAX; 2];
        for start in (0..rows).step_by(2 * TILE_ROWS) {
            let shape = [
                TILE_ROWS.min(rows - start),
                TILE_ROWS.min((rows - start).saturating_sub(TILE_ROWS)),
            ];
            if shape != configured {
                let config = Config::new(shape);
                asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
                configured = shape;
            }
            let two = shape[1] > 0;
            let c0 = out.add(start * n);
            // The second row tile's pointers lie past the buffer when there is no
            // second tile (and are then never read): wrapping, not `add`.
            let c1 = c0.wrapping_add(TILE_ROWS * n);
            let (c0b, c1b) = (c0.add(TILE_COLS), c1.wrapping_add(TILE_COLS));
            if accumulate {
                asm!(
                    "tileloadd tmm0, [{c0} + {s}*1]",
                    "tileloadd tmm1, [{c0b} + {s}*1]",
                    c0 = in(reg) c0, c0b = in(reg) c0b, s = in(reg) out_stride,
                    options(nostack, readonly),
                );
                if two {
                    asm!(
                        "tileloadd tmm2, [{c1} + {s}*1]",
                        "tileloadd tmm3, [{c1b} + {s}*1]",
                        c1 = in(reg) c1, c1b = in(reg) c1b, s = in(reg) out_stride,
                        options(nostack, readonly),
                    );
                }
            } else {
                asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem));
                if two {
                    asm!("tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
                }
            }
            let a0 = input.as_ptr().add(start * k);
            let a1 = a0.wrapping_add(TILE_ROWS * k);
            for s in 0..steps {
                let w0 = weights.as_ptr().add(s);
                let w1 = weights.as_ptr().add(steps + s);
                asm!(
                    "tileloadd tmm4, [{a0} + {ia}*1]",
                    "tileloadd tmm6, [{w0} + {wa}*1]",
                    "tileloadd tmm7, [{w1} + {wa}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    a0 = in(reg) a0.add(s * STEP), ia = in(reg) input_stride,
                    w0 = in(reg) w0, w1 = in(reg) w1, wa = in(reg) 64usize,
                    options(nostack, readonly),
                );
                if two {
                    asm!(
                        "tileloadd tmm5, [{a1} + {ia}*1]",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        a1 = in(reg) a1.wrapping_add(s * STEP), ia = in(reg) input_stride,
                        options(nostack, readonly),
                    );
                }
            }
            asm!(
                "tilestored [{c0} + {s}*1], tmm0",
                "tilestored [{c0b} + {s}*1], tmm1",
                c0 = in(reg) c0, c0b = in(reg) c0b, s = in(reg) out_stride,
                options(nostack),
            );
            if two {
                asm!(
                    "tilestored [{c1} + {s}*1], tmm2",
                    "tilestored [{c1b} + {s}*1], tmm3",
                    c1 = in(reg) c1, c1b = in(reg) c1b, s = in(reg) out_stride,
                    options(nostack),
                );
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod tiles {
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
        unreachable!("AMX is never available here")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(count: usize, seed: u64) -> Vec<f32> {
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

    /// The tile product is the product of the rounded inputs, summed in f32, for
    /// whole and partial tiles of rows, with and without accumulating.
    #[test]
    fn tile_products_are_the_rounded_product() {
        if !available() {
            eprintln!("no AMX here: the tile product is not tested");
            return;
        }
        let (k, n) = (96, 64);
        let weight = numbers(k * n, 1);
        let weights = Bf16Weights::new(&weight, k, n).unwrap();
        for rows in [1, 5, 16, 17, 32, 45] {
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
        }
    }
}
