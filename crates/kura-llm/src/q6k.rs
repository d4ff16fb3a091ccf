//! [`Q6kMatrix`]: Q6_K weights kept as the file stores them, 6.56 bits a weight, and
//! widened to f32 where a prompt or an embedding lookup needs them.
//!
//! Why not our 8-bit layout (`q8`): a Q6_K weight is `d · scale · q` with a scale
//! per 16 weights, two to each of our 32-weight blocks, so the 8-bit copy of a Q6_K
//! matrix is rounded. Decoding streams that copy; prompts and embeddings, which
//! must see the file's weights, read these blocks instead of an f32 copy at four
//! bytes a weight (K-quant files keep their output, embedding and some projections
//! in Q6_K: for Qwen 0.5B's twelve Q6_K matrices, 36 MB against 209).

use crate::q8::{half, Widen};

/// Weights per Q6_K super-block, and its bytes: 128 of low nibbles, 64 of high
/// bit pairs, 16 signed scales and the half-precision factor `d`.
const VALUES: usize = 256;
const BYTES: usize = 210;

pub(crate) struct Q6kMatrix {
    rows: usize,
    cols: usize,
    /// The file's blocks, row after row.
    blocks: Vec<u8>,
}

impl Q6kMatrix {
    /// `None` when `blocks` is not `rows × cols` of whole super-blocks.
    pub(crate) fn new(blocks: Vec<u8>, rows: usize, cols: usize) -> Option<Self> {
        let whole = cols > 0 && cols.is_multiple_of(VALUES);
        (whole && blocks.len() == rows * cols / VALUES * BYTES).then_some(Q6kMatrix {
            rows,
            cols,
            blocks,
        })
    }
}

impl Widen for Q6kMatrix {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn dequantize_row(&self, r: usize, start: usize, out: &mut [f32]) {
        let per_row = self.cols / VALUES * BYTES;
        let row = &self.blocks[r * per_row..][..per_row];
        let mut values = [0f32; VALUES];
        let (mut column, mut written) = (start, 0);
        while written < out.len() {
            let (block, from) = (column / VALUES, column % VALUES);
            decode(&row[block * BYTES..][..BYTES], &mut values);
            let count = (VALUES - from).min(out.len() - written);
            out[written..written + count].copy_from_slice(&values[from..from + count]);
            (column, written) = (column + count, written + count);
        }
    }
}

kura_simd::multiversion! {
    /// One super-block, laid out and computed as in ggml's `dequantize_row_q6_K`
    /// (and candle's): `d · scale · q` in that order, so the very same numbers.
    fn decode<M>(block: &[u8], out: &mut [f32; VALUES]) {
        let (low, high, scales) = (&block[..128], &block[128..192], &block[192..208]);
        let d = half(&block[208..]);
        for part in 0..2 {
            let low = &low[64 * part..];
            let high = &high[32 * part..];
            let scales = &scales[8 * part..];
            let out = &mut out[128 * part..];
            for l in 0..32 {
                let scale = |i: usize| scales[l / 16 + i] as i8 as f32;
                let q = |nibble: u8, bits: u8| ((nibble | (bits & 3) << 4) as i8 - 32) as f32;
                out[l] = d * scale(0) * q(low[l] & 0xF, high[l]);
                out[l + 32] = d * scale(2) * q(low[l + 32] & 0xF, high[l] >> 2);
                out[l + 64] = d * scale(4) * q(low[l] >> 4, high[l] >> 4);
                out[l + 96] = d * scale(6) * q(low[l + 32] >> 4, high[l] >> 6);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    use super::*;

    /// Widened, the numbers candle's dequantisation gives, for whole rows and for
    /// windows that start and end inside super-blocks.
    #[test]
    fn widened_weights_are_candles() {
        let (rows, cols) = (5, 768);
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 2003) as f32 / 1000.0 - 1.0)
            .collect();
        let dense = Tensor::from_vec(values, (rows, cols), &Device::Cpu).expect("tensor");
        let quantized = QTensor::quantize(&dense, GgmlDType::Q6K).expect("quantize");
        let want: Vec<f32> = quantized
            .dequantize(&Device::Cpu)
            .and_then(|t| t.flatten_all()?.to_vec1())
            .expect("dequantize");
        let blocks = quantized.data().expect("bytes").to_vec();
        assert!(Q6kMatrix::new(blocks[1..].to_vec(), rows, cols).is_none());
        let matrix = Q6kMatrix::new(blocks, rows, cols).expect("whole blocks");

        let mut all = vec![0f32; rows * cols];
        matrix.dequantize(0..rows, 0..cols, &mut all);
        assert_eq!(all, want);
        let mut window = vec![0f32; 3 * 320];
        matrix.dequantize(1..4, 224..544, &mut window);
        for (i, row) in window.chunks(320).enumerate() {
            assert_eq!(row, &want[(1 + i) * cols + 224..][..320], "row {}", 1 + i);
        }
    }
}
