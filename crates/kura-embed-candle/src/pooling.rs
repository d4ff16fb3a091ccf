//! Pooling and normalisation as sentence-transformers computes them, on tensors
//! so that the work stays on the model's device.

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
}
