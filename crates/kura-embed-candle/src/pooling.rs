//! Pooling and normalisation as sentence-transformers computes them: on tensors
//! for candle's padded batches (so that the work stays on the GPU), and on one
//! text's rows of the CPU encoder's packed output, where every row is a real token.

use candle_core::{DType, IndexOp, Tensor, D};

use crate::config::PoolingMode;

/// What sentence-transformers writes into padded positions before max pooling.
const MAX_POOL_FILL: f64 = -1e9;

/// `hidden` is `[batch, tokens, hidden]`, `mask` is `[batch, tokens]` of 0/1.
/// Returns `[batch, hidden * modes]`.
pub(crate) fn pool(
    hidden: &Tensor,
    mask: &Tensor,
    modes: &[PoolingMode],
) -> candle_core::Result<Tensor> {
    let mask = mask.to_dtype(hidden.dtype())?;
    let mask3 = mask.unsqueeze(D::Minus1)?;
    let pooled: Vec<Tensor> = modes
        .iter()
        .map(|mode| match mode {
            PoolingMode::Cls => hidden.i((.., 0)),
            PoolingMode::Max => max_pool(hidden, &mask3),
            PoolingMode::Mean => mean_pool(hidden, &mask, &mask3, false),
            PoolingMode::MeanSqrtLen => mean_pool(hidden, &mask, &mask3, true),
        })
        .collect::<candle_core::Result<_>>()?;
    Tensor::cat(&pooled, D::Minus1)
}

fn mean_pool(
    hidden: &Tensor,
    mask: &Tensor,
    mask3: &Tensor,
    sqrt_len: bool,
) -> candle_core::Result<Tensor> {
    let summed = hidden.broadcast_mul(mask3)?.sum(1)?;
    // sentence-transformers clamps the count at 1e-9 so an all-padding row is 0, not NaN.
    let counts = mask.sum_keepdim(1)?.clamp(1e-9, f64::MAX)?;
    let counts = if sqrt_len { counts.sqrt()? } else { counts };
    summed.broadcast_div(&counts)
}

fn max_pool(hidden: &Tensor, mask3: &Tensor) -> candle_core::Result<Tensor> {
    let keep = hidden.broadcast_mul(mask3)?;
    let fill = ((mask3.ones_like()? - mask3)? * MAX_POOL_FILL)?;
    keep.broadcast_add(&fill)?.max(1)
}

/// L2-normalises rows, with torch's `F.normalize` epsilon.
pub(crate) fn normalize(rows: &Tensor) -> candle_core::Result<Tensor> {
    let norms = rows
        .to_dtype(DType::F32)?
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    rows.to_dtype(DType::F32)?.broadcast_div(&norms)
}

/// Pools one text's token vectors (`rows`, `tokens × hidden`, row-major) into
/// `out` (`hidden` values per mode, in `modes` order). Every row is a real token,
/// so the mask sentence-transformers applies is all ones here.
pub(crate) fn pool_rows(rows: &[f32], hidden: usize, modes: &[PoolingMode], out: &mut [f32]) {
    let tokens = rows.len() / hidden.max(1);
    // sentence-transformers clamps the count at 1e-9 so that no tokens give 0, not NaN.
    let count = (tokens as f32).max(1e-9);
    for (mode, out) in modes.iter().zip(out.chunks_exact_mut(hidden)) {
        match mode {
            PoolingMode::Cls => match rows.get(..hidden) {
                Some(first) => out.copy_from_slice(first),
                None => out.fill(0.0),
            },
            PoolingMode::Max => {
                out.fill(MAX_POOL_FILL as f32);
                for row in rows.chunks_exact(hidden) {
                    for (o, &v) in out.iter_mut().zip(row) {
                        *o = o.max(v);
                    }
                }
            }
            PoolingMode::Mean | PoolingMode::MeanSqrtLen => {
                out.fill(0.0);
                for row in rows.chunks_exact(hidden) {
                    for (o, v) in out.iter_mut().zip(row) {
                        *o += v;
                    }
                }
                let divisor = if *mode == PoolingMode::Mean {
                    count
                } else {
                    count.sqrt()
                };
                out.iter_mut().for_each(|o| *o /= divisor);
            }
        }
    }
}

/// L2-normalises `row` in place, with torch's `F.normalize` epsilon.
pub(crate) fn normalize_row(row: &mut [f32]) {
    let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    row.iter_mut().for_each(|x| *x /= norm);
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn tensors() -> (Tensor, Tensor) {
        // Two rows of three tokens with hidden size 2; the second row has one pad.
        let hidden = Tensor::new(
            &[
                [[1f32, 2.], [3., 4.], [5., 6.]],
                [[-1., 0.], [3., -2.], [100., 100.]],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1], [1, 1, 0]], &Device::Cpu).unwrap();
        (hidden, mask)
    }

    #[test]
    fn padded_positions_never_reach_the_pooled_vector() {
        let (hidden, mask) = tensors();
        let mean = pool(&hidden, &mask, &[PoolingMode::Mean])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(mean, vec![vec![3., 4.], vec![1., -1.]]);
        let max = pool(&hidden, &mask, &[PoolingMode::Max])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(max, vec![vec![5., 6.], vec![3., 0.]]);
        let both = pool(
            &hidden,
            &mask,
            &[PoolingMode::Cls, PoolingMode::MeanSqrtLen],
        )
        .unwrap();
        let both = both.to_vec2::<f32>().unwrap();
        assert_eq!(both[1][..2], [-1., 0.]);
        assert!((both[1][2] - 2. / 2f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn normalised_rows_have_unit_length_and_zero_stays_zero() {
        let rows = Tensor::new(&[[3f32, 4.], [0., 0.]], &Device::Cpu).unwrap();
        let out = normalize(&rows).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(out, vec![vec![0.6, 0.8], vec![0., 0.]]);
    }

    #[test]
    fn packed_rows_pool_like_padded_tensors() {
        let (hidden, mask) = tensors();
        let modes = [
            PoolingMode::Cls,
            PoolingMode::Max,
            PoolingMode::Mean,
            PoolingMode::MeanSqrtLen,
        ];
        let expected = pool(&hidden, &mask, &modes)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        // The second text's real tokens only: its padded row is simply absent.
        let texts: [&[f32]; 2] = [&[1., 2., 3., 4., 5., 6.], &[-1., 0., 3., -2.]];
        for (rows, expected) in texts.iter().zip(expected) {
            let mut out = vec![f32::NAN; 2 * modes.len()];
            pool_rows(rows, 2, &modes, &mut out);
            for (a, b) in out.iter().zip(&expected) {
                assert!((a - b).abs() < 1e-6, "{out:?} vs {expected:?}");
            }
        }
        let mut empty = vec![f32::NAN; 2];
        pool_rows(&[], 2, &[PoolingMode::Mean], &mut empty);
        assert_eq!(empty, [0., 0.]);
    }

    #[test]
    fn normalised_packed_rows_match_the_tensor_version() {
        let mut row = vec![3f32, 4.];
        normalize_row(&mut row);
        assert_eq!(row, [0.6, 0.8]);
        let mut zero = vec![0f32; 3];
        normalize_row(&mut zero);
        assert_eq!(zero, [0.; 3]);
    }
}
