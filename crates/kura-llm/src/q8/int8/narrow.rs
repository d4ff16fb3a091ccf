//! [`Narrow`]: a second copy of a matrix whose integers span at most 32 values
//! (the 4- and 5-bit GGUF types), in nibbles and fifth bits, for the products of a
//! few rows of activations.
//!
//! Why: a product of one to three rows does a few multiply-adds for each weight
//! it reads, so it moves at the memory's pace, and the int8 layout spends a byte
//! on each 4- or 5-bit integer. Decoding one sequence of Qwen 0.5B (mostly Q5_0)
//! read about 560 MB a token that way; packed, its Q5_0 and Q4_K matrices take
//! two thirds of their bytes (nibbles, fifth bits and the scales the int8 copy
//! already keeps). Unpacking costs a few instructions for each `vpdpbusd`, which
//! at one row wait on memory anyway; at many rows the int8 tile's arithmetic is
//! the bound, so prompts and batched steps keep reading the bytes.
//!
//! Why a copy rather than the only layout: the prompt's tile is bound by
//! `vpdpbusd` itself, and unpacking there would slow it. The copy is built only
//! where the VNNI kernel runs.
//!
//! Why the same bits: each integer is stored minus the matrix's smallest, and a
//! block's sum starts at that smallest times the sum of the activation bytes, so
//! the integer sums are the int8 tile's exactly, and the conversion, scaling and
//! offsets after them are the same instructions in the same order. A sequence
//! decodes to the same bits alone (packed) or beside others (bytes).

use rayon::prelude::*;

use super::{Kernel, GROUP_BLOCK};
use crate::q8::LineBytes;

/// Bytes of a group's block of nibbles: two quads (of 64 bytes) in one.
const NIBBLE_BYTES: usize = GROUP_BLOCK / 2;
/// Bytes of a group's block of fifth bits: one bit for each of its 512 integers.
const FIFTH_BYTES: usize = GROUP_BLOCK / 8;
/// Quads (four values of 16 rows) in a block of 32 values.
const QUADS: usize = GROUP_BLOCK / 64;

/// Products of at most this many rows of activations read the packed copy.
pub(super) const NARROW_ROWS: usize = 3;

/// A group-layout matrix's integers packed: for each group's block (in the order
/// of the int8 copy), 256 bytes of nibbles, byte `j` of quad pair `p` holding
/// byte `j` of quad `2p` in its low nibble and of quad `2p + 1` in its high one;
/// then, for 5 bits, eight little-endian words of fifth bits, bit `j` of word
/// `q` the fifth bit of byte `j` of quad `q`.
pub(crate) struct Narrow {
    bits: u32,
    /// The smallest integer, which every stored one is relative to.
    low: i8,
    bytes: LineBytes,
    /// The scales (and offsets) in half precision, where every one is a half:
    /// those of the legacy types, which the file stores so, but not Q4_K's
    /// products. A Q4_1 block is then 20 bytes where in f32 it was 24.
    halves: Option<Halves>,
}

/// A matrix's scales and offsets (empty where it has none) as halves' bits.
struct Halves {
    scales: Vec<u16>,
    offsets: Vec<u16>,
}

impl Halves {
    /// The halves of `scales` and `offsets`, if each is one exactly.
    fn of(scales: &[f32], offsets: &[f32]) -> Option<Halves> {
        let exactly = |values: &[f32]| -> Option<Vec<u16>> {
            values
                .par_iter()
                .map(|&v| {
                    let half = half::f16::from_f32(v);
                    (half.to_f32().to_bits() == v.to_bits()).then_some(half.to_bits())
                })
                .collect()
        };
        Some(Halves {
            scales: exactly(scales)?,
            offsets: exactly(offsets)?,
        })
    }
}

impl Narrow {
    /// The packed copy of `quants` (the int8 copy: integers plus 128, whole group
    /// blocks), where the VNNI kernel runs here, `KURA_NARROW` is not `0`, and the
    /// integers span at most 32 values; else `None`.
    pub(crate) fn of(quants: &[i8], scales: &[f32], offsets: &[f32]) -> Option<Narrow> {
        match enabled() {
            true => Self::packed(quants, scales, offsets),
            false => None,
        }
    }

    /// [`Narrow::of`] whatever the CPU (for tests).
    pub(super) fn packed(quants: &[i8], scales: &[f32], offsets: &[f32]) -> Option<Narrow> {
        if quants.is_empty() || !quants.len().is_multiple_of(GROUP_BLOCK) {
            return None;
        }
        let value = |stored: i8| (stored as u8) as i32 - 128;
        let (low, high) = quants
            .par_iter()
            .fold(
                || (i32::MAX, i32::MIN),
                |(low, high), &q| (low.min(value(q)), high.max(value(q))),
            )
            .reduce(|| (i32::MAX, i32::MIN), |a, b| (a.0.min(b.0), a.1.max(b.1)));
        let bits = match high - low {
            ..16 => 4,
            16..32 => 5,
            _ => return None,
        };
        let per = block_bytes(bits);
        let mut bytes = LineBytes::filled(quants.len() / GROUP_BLOCK * per, 0);
        bytes
            .par_chunks_mut(per)
            .zip(quants.par_chunks(GROUP_BLOCK))
            .for_each(|(packed, block)| {
                let unsigned = |quad: usize, j: usize| (value(block[quad * 64 + j]) - low) as u8;
                for pair in 0..QUADS / 2 {
                    for j in 0..64 {
                        let (even, odd) = (unsigned(2 * pair, j), unsigned(2 * pair + 1, j));
                        packed[pair * 64 + j] = ((even & 0x0F) | (odd << 4)) as i8;
                    }
                }
                if bits == 5 {
                    for quad in 0..QUADS {
                        let word = (0..64).fold(0u64, |word, j| {
                            word | (((unsigned(quad, j) >> 4) as u64 & 1) << j)
                        });
                        packed[NIBBLE_BYTES + quad * 8..][..8]
                            .copy_from_slice(&word.to_le_bytes().map(|b| b as i8));
                    }
                }
            });
        Some(Narrow {
            bits,
            low: low as i8,
            bytes,
            halves: Halves::of(scales, offsets),
        })
    }

    /// Whether its scales are read in half precision.
    #[cfg(test)]
    pub(crate) fn has_halves(&self) -> bool {
        self.halves.is_some()
    }

    /// The same copy reading the f32 scales, as a matrix whose scales are not
    /// halves (Q4_K's) does.
    #[cfg(test)]
    pub(crate) fn without_halves(mut self) -> Self {
        self.halves = None;
        self
    }

    /// Integer `k` (of 32) of stored block `at` (see `quant_index`), unpacked in
    /// plain code.
    #[cfg(test)]
    fn integer(&self, at: usize, k: usize) -> i32 {
        let block = &self.bytes[at / super::GROUP * block_bytes(self.bits)..];
        let (quad, j) = (k / 4, (at % super::GROUP) * 4 + k % 4);
        let nibble = (block[quad / 2 * 64 + j] as u8 >> (4 * (quad % 2))) & 0x0F;
        let fifth = match self.bits {
            5 => (block[NIBBLE_BYTES + quad * 8 + j / 8] as u8 >> (j % 8)) & 1,
            _ => 0,
        };
        (nibble | fifth << 4) as i32 + self.low as i32
    }
}

/// Whether matrices get a packed copy here: where the VNNI kernel runs (with
/// BMI2, which unpacks a column's fifth bits), unless `KURA_NARROW=0` turns it
/// off to compare.
pub(crate) fn enabled() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        Kernel::detect() == Some(Kernel::Vnni)
            && std::arch::is_x86_feature_detected!("bmi2")
            && std::env::var("KURA_NARROW").as_deref() != Ok("0")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Bytes of one group's block packed in `bits`.
fn block_bytes(bits: u32) -> usize {
    match bits {
        4 => NIBBLE_BYTES,
        _ => NIBBLE_BYTES + FIFTH_BYTES,
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod vnni {
    use std::arch::x86_64::*;

    use super::super::vnni::add_block;
    use super::super::{Activations, Groups, BLOCK, GROUP, TILE_ROWS};
    use super::{block_bytes, Narrow, NIBBLE_BYTES};

    /// [`tile_any`](super::super::vnni::tile_any) for one to three rows rounded
    /// once, reading `narrow`, the packed copy of `w`: the same sums, bit for bit.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VNNI; `narrow` packs `w`; the groups and rows
    /// are inside the matrix and the activations.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    pub(in super::super) unsafe fn tile_any(
        w: &Groups<'_>,
        narrow: &Narrow,
        first: usize,
        width: usize,
        x: &Activations,
        start: usize,
        rows: usize,
        sums: &mut [[[f32; GROUP]; TILE_ROWS]; 4],
    ) {
        macro_rules! shapes {
            ($(($g:literal, $r:literal)),*) => {
                match (width, rows, narrow.bits == 5, !w.offsets.is_empty()) {
                    $(
                        ($g, $r, false, false) => tile::<$g, $r, false, false>(w, narrow, first, x, start, sums),
                        ($g, $r, false, true) => tile::<$g, $r, false, true>(w, narrow, first, x, start, sums),
                        ($g, $r, true, false) => tile::<$g, $r, true, false>(w, narrow, first, x, start, sums),
                        ($g, $r, true, true) => tile::<$g, $r, true, true>(w, narrow, first, x, start, sums),
                    )*
                    _ => unreachable!("the packed copy is read by one to three rows"),
                }
            };
        }
        shapes!(
            (4, 1),
            (4, 2),
            (4, 3),
            (2, 1),
            (2, 2),
            (2, 3),
            (1, 1),
            (1, 2),
            (1, 3)
        )
    }

    /// [`add_set_aside`](super::super::vnni::add_set_aside) with each column's
    /// weights unpacked from `narrow`, the packed copy of `w`: the same integers,
    /// so the same f32 weights, summed in the same order.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW and BMI2; `narrow` packs `w`; every column set
    /// aside is a column of `w`.
    #[target_feature(enable = "avx512f,avx512bw,bmi2")]
    pub(in super::super) unsafe fn add_set_aside(
        w: &Groups<'_>,
        narrow: &Narrow,
        g: usize,
        set_aside: &[(u32, f32)],
        sums: &mut [f32; GROUP],
    ) {
        let blocks = w.cols / BLOCK;
        let per = block_bytes(narrow.bits);
        w.assert_inside(g, set_aside, narrow.bytes.len(), per);
        let packed = narrow.bytes.as_ptr();
        let (mask, low) = (
            _mm512_set1_epi32(0x0F),
            _mm512_set1_epi32(narrow.low as i32),
        );
        let weights = |column: u32| {
            let (b, k) = (column as usize / BLOCK, column as usize % BLOCK);
            let at = (g * blocks + b) * GROUP;
            let block = packed.add((g * blocks + b) * per);
            // Lane `r` holds row `r`'s four values of the quad; this one is byte
            // `k % 4`, in the high nibble for an odd quad.
            let quad = k / 4;
            let line = _mm512_loadu_si512(block.add(quad / 2 * 64) as *const _);
            let shift = _mm_cvtsi32_si128((8 * (k % 4) + 4 * (quad % 2)) as i32);
            let mut integers = _mm512_and_si512(_mm512_srl_epi32(line, shift), mask);
            if narrow.bits == 5 {
                // Row `r`'s fifth bit is bit `4r + k % 4` of the quad's word.
                let word = (block.add(NIBBLE_BYTES + quad * 8) as *const u64).read_unaligned();
                let rows = _pext_u64(word >> (k % 4), 0x1111_1111_1111_1111) as u16;
                integers = _mm512_mask_add_epi32(integers, rows, integers, _mm512_set1_epi32(16));
            }
            let integers = _mm512_add_epi32(integers, low);
            let (scales, offsets) = scales_and_offsets(w, narrow, at);
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(integers), scales, offsets)
        };
        super::super::vnni::add_columns(set_aside, sums, weights);
    }

    /// Group block `at`'s 16 scales and offsets (zero where the matrix has none),
    /// from the halves where the matrix has them, else the f32 copies.
    #[inline(always)]
    unsafe fn scales_and_offsets(w: &Groups<'_>, narrow: &Narrow, at: usize) -> (__m512, __m512) {
        let has_offsets = !w.offsets.is_empty();
        match &narrow.halves {
            Some(halves) => {
                let half = |values: &[u16]| {
                    _mm512_cvtph_ps(_mm256_loadu_si256(values.as_ptr().add(at) as *const _))
                };
                let offsets = match has_offsets {
                    true => half(&halves.offsets),
                    false => _mm512_setzero_ps(),
                };
                (half(&halves.scales), offsets)
            }
            None => {
                let offsets = match has_offsets {
                    true => _mm512_loadu_ps(w.offsets.as_ptr().add(at)),
                    false => _mm512_setzero_ps(),
                };
                (_mm512_loadu_ps(w.scales.as_ptr().add(at)), offsets)
            }
        }
    }

    /// `G` groups from `first` against `R` rows from `start`, as the int8 tile
    /// sums them: each quad's integers unpacked from their nibble (and fifth bit)
    /// into the bytes the int8 copy holds minus its bias.
    #[inline(always)]
    unsafe fn tile<const G: usize, const R: usize, const FIFTHS: bool, const OFFSETS: bool>(
        w: &Groups<'_>,
        narrow: &Narrow,
        first: usize,
        x: &Activations,
        start: usize,
        sums: &mut [[[f32; GROUP]; TILE_ROWS]; 4],
    ) {
        let blocks = x.blocks;
        let packed = narrow.bytes.as_ptr();
        let per = block_bytes(narrow.bits);
        let bytes = x.bytes.as_ptr().add(start * blocks * BLOCK);
        let row_bytes = blocks * BLOCK;
        let at = |g: usize, b: usize| (first + g) * blocks + b;
        let (nibble, sixteen) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(16));
        // A block's biases are −128 × the sum of its bytes: shifted down and
        // times minus the smallest integer, the sum that takes it back off.
        let low = -(narrow.low as i32);
        let mut f = [[_mm512_setzero_ps(); G]; R];
        for b in 0..blocks {
            let mut acc = [[_mm512_setzero_si512(); G]; R];
            for (i, acc) in acc.iter_mut().enumerate() {
                let bias = *x.biases.get_unchecked((start + i) * blocks + b);
                *acc = [_mm512_set1_epi32((bias >> 7) * low); G];
            }
            for quad in 0..BLOCK / 4 {
                let mut weights = [_mm512_setzero_si512(); G];
                for (g, weights) in weights.iter_mut().enumerate() {
                    let block = packed.add(at(g, b) * per);
                    let pair = _mm512_loadu_si512(block.add(quad / 2 * 64) as *const _);
                    let shifted = match quad % 2 {
                        0 => pair,
                        _ => _mm512_srli_epi16::<4>(pair),
                    };
                    *weights = _mm512_and_si512(shifted, nibble);
                    if FIFTHS {
                        let word = block.add(NIBBLE_BYTES + quad * 8) as *const u64;
                        let fifth = _cvtu64_mask64(word.read_unaligned());
                        *weights = _mm512_mask_add_epi8(*weights, fifth, *weights, sixteen);
                    }
                }
                for (i, acc) in acc.iter_mut().enumerate() {
                    let p = bytes.add(i * row_bytes + b * BLOCK + quad * 4) as *const i32;
                    let four = _mm512_set1_epi32(p.read_unaligned());
                    for (acc, &weights) in acc.iter_mut().zip(&weights) {
                        *acc = _mm512_dpbusd_epi32(*acc, weights, four);
                    }
                }
            }
            // The int8 tile's steps after a block, for rows rounded once.
            for g in 0..G {
                let (scales, offsets) = scales_and_offsets(w, narrow, at(g, b) * GROUP);
                for (i, f) in f.iter_mut().enumerate() {
                    let block = (start + i) * blocks + b;
                    f[g] = add_block::<OFFSETS>(f[g], acc[i][g], scales, offsets, x, block, block);
                }
            }
        }
        for (k, f) in f.iter().enumerate() {
            for (g, f) in f.iter().enumerate() {
                _mm512_storeu_ps(sums[g][k].as_mut_ptr(), *f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{quant_index, GROUP};
    use super::*;

    /// Int8-layout bytes (integers plus 128) of `groups` groups' blocks, each
    /// integer drawn from `low ..= high`, both ends present.
    fn quants(groups: usize, low: i32, high: i32) -> Vec<i8> {
        let span = (high - low + 1) as u64;
        (0..groups * GROUP_BLOCK)
            .map(|i| {
                let v = match i {
                    0 => low,
                    1 => high,
                    _ => low + ((i as u64).wrapping_mul(2654435761) >> 7).rem_euclid(span) as i32,
                };
                (v + 128) as u8 as i8
            })
            .collect()
    }

    /// Every integer unpacks to the int8 copy's, in 4 bits (Q4_0, Q4_1, Q4_K) and
    /// 5 (Q5_0), whatever the smallest; a wider span gets no copy.
    #[test]
    fn packing_keeps_every_integer() {
        for (low, high, bits) in [(0, 15, 4), (-8, 7, 4), (-16, 15, 5), (3, 20, 5)] {
            let quants = quants(3, low, high);
            let narrow = Narrow::packed(&quants, &[], &[]).expect("a packed copy");
            assert_eq!(narrow.bits, bits, "{low}..={high}");
            for at in 0..3 * GROUP {
                for k in 0..32 {
                    let want = (quants[quant_index(at, k)] as u8) as i32 - 128;
                    assert_eq!(narrow.integer(at, k), want, "block {at}, value {k}");
                }
            }
        }
        assert!(Narrow::packed(&quants(2, -16, 16), &[], &[]).is_none());
        assert!(Narrow::packed(&quants(2, -127, 127), &[], &[]).is_none());
        assert!(Narrow::packed(&[], &[], &[]).is_none());
    }
}
