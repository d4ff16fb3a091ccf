//! Row-wise numeric kernels of the CPU encoder: activations and layer norm, written
//! as `kura_simd` kernels (plain loops compiled for AVX-512, AVX2 and the baseline,
//! picked at run time), so the erf of every GELU runs eight or sixteen lanes at a
//! time.

use std::f32::consts::{FRAC_1_SQRT_2, FRAC_2_SQRT_PI};

pub(crate) use kura_simd::softmax_rows;
use kura_simd::{exp, horner, multiversion, sum, MulAdd, LANES};

/// erf for f32 within 2 ulp (1.5e-7 absolute, 1.8e-7 relative), branch-free:
/// both halves are computed and one is selected, so the loop vectorises.
///
/// - |x| < 1: erf(x) = x·P(x²), P a degree-6 relative minimax fit (the same
///   polynomial XLA uses there).
/// - 1 ≤ |x| ≤ 4: erf(x) = ±(1 − e^{−x²}·Q(t)), t = 1/(1 + |x|/2), Q a degree-6
///   relative fit of erfc(x)·e^{x²} (the Numerical Recipes variable, which makes
///   that smooth function nearly polynomial); erf is ±1 in f32 beyond 4.
///
/// Eigen's single rational approximation is cheaper (no exp), but 4 ulp off.
#[inline(always)]
pub(crate) fn erf<M: MulAdd>(x: f32) -> f32 {
    let a = x.abs();
    let near_zero = x * horner::<M, 7>(
        x * x,
        [
            7.853_858e-5,
            -8.010_192_5e-4,
            5.188_327_7e-3,
            -2.685_381_1e-2,
            1.128_358_54e-1,
            -3.761_262_6e-1,
            FRAC_2_SQRT_PI,
        ],
    );
    let z = a.clamp(1.0, 4.0);
    let t = 1.0 / M::mul_add(0.5, z, 1.0);
    let q = horner::<M, 7>(
        t,
        [
            -5.907_798_6e-2,
            -4.083_626e-2,
            3.835_767_2e-1,
            1.143_825_8e-1,
            3.261_225e-1,
            2.745_126_5e-1,
            5.366_016e-4,
        ],
    );
    let erfc = exp::<M>(-(z * z)) * q;
    let away = (1.0 - erfc).copysign(x);
    if a < 1.0 {
        near_zero
    } else {
        away
    }
}

/// GELU as BERT defines it, with the exact erf: x·Φ(x).
#[inline(always)]
pub(crate) fn gelu<M: MulAdd>(x: f32) -> f32 {
    let half_x = 0.5 * x;
    M::mul_add(half_x, erf::<M>(x * FRAC_1_SQRT_2), half_x)
}

/// GELU with the tanh approximation (`gelu_new` / PyTorch's `approximate="tanh"`).
#[inline(always)]
pub(crate) fn gelu_tanh<M: MulAdd>(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * M::mul_add(0.044_715 * x * x, x, x);
    // tanh(u) = 1 − 2 / (e^{2u} + 1), which saturates correctly at both ends.
    let tanh = 1.0 - 2.0 / (exp::<M>(2.0 * u) + 1.0);
    let half_x = 0.5 * x;
    M::mul_add(half_x, tanh, half_x)
}

/// Which activation follows the first FFN product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    Gelu,
    GeluTanh,
    Relu,
}

multiversion! {
    /// `rows[r] = act(rows[r] + bias)` for each row of `bias.len()` values.
    pub(crate) fn bias_activation<M>(rows: &mut [f32], bias: &[f32], act: Activation) {
        for row in rows.chunks_exact_mut(bias.len()) {
            match act {
                Activation::Gelu => {
                    for (v, b) in row.iter_mut().zip(bias) {
                        *v = gelu::<M>(*v + b);
                    }
                }
                Activation::GeluTanh => {
                    for (v, b) in row.iter_mut().zip(bias) {
                        *v = gelu_tanh::<M>(*v + b);
                    }
                }
                Activation::Relu => {
                    for (v, b) in row.iter_mut().zip(bias) {
                        let x = *v + b;
                        *v = if x > 0.0 { x } else { 0.0 };
                    }
                }
            }
        }
    }
}

multiversion! {
    /// `rows[r] = LayerNorm(rows[r] + bias)` with the given scale and shift, for each
    /// row of `bias.len()` values. The variance is taken around the mean in a second
    /// pass, as PyTorch does, rather than as E[x²] − E[x]², which cancels badly.
    pub(crate) fn bias_layer_norm<M>(rows: &mut [f32], bias: &[f32], weight: &[f32], shift: &[f32], eps: f32) {
        let width = bias.len();
        for row in rows.chunks_exact_mut(width) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
            let mean = sum(row) / width as f32;
            let mut acc = [0f32; LANES];
            let mut chunks = row.chunks_exact(LANES);
            for chunk in &mut chunks {
                for (a, x) in acc.iter_mut().zip(chunk) {
                    let d = x - mean;
                    *a = M::mul_add(d, d, *a);
                }
            }
            let tail: f32 = chunks.remainder().iter().map(|x| (x - mean) * (x - mean)).sum();
            let variance = (acc.iter().sum::<f32>() + tail) / width as f32;
            let inv = 1.0 / (variance + eps).sqrt();
            for ((v, w), s) in row.iter_mut().zip(weight).zip(shift) {
                *v = M::mul_add((*v - mean) * inv, *w, *s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use kura_simd::{Fused, Separate};

    use super::*;

    /// erf in f64 (candle's port of the Boost/statrs implementation): the reference
    /// the fast f32 erf is held to.
    fn erf64(x: f64) -> f64 {
        candle_core::cpu::erf::erf_f64(x)
    }

    fn gelu64(x: f64) -> f64 {
        0.5 * x * (1.0 + erf64(x / std::f64::consts::SQRT_2))
    }

    fn grid(lo: f32, hi: f32, steps: usize) -> impl Iterator<Item = f32> {
        (0..=steps).map(move |i| lo + (hi - lo) * i as f32 / steps as f32)
    }

    #[test]
    fn erf_is_within_two_ulp_of_the_f64_reference() {
        let mut worst_abs = 0f64;
        let mut worst_rel = 0f64;
        for x in grid(-6.0, 6.0, 200_001) {
            let (ours, exact) = (erf::<Fused>(x) as f64, erf64(x as f64));
            worst_abs = worst_abs.max((ours - exact).abs());
            if exact.abs() > 1e-30 {
                worst_rel = worst_rel.max(((ours - exact) / exact).abs());
            }
        }
        assert!(worst_abs < 1.6e-7, "absolute error {worst_abs}");
        assert!(worst_rel < 2.5e-7, "relative error {worst_rel}");
        // The build without FMA rounds differently, but not much worse.
        for x in grid(-6.0, 6.0, 20_001) {
            let (ours, exact) = (erf::<Separate>(x) as f64, erf64(x as f64));
            assert!((ours - exact).abs() < 3e-7, "erf({x}) = {ours} without FMA");
        }
        assert_eq!(erf::<Fused>(0.0), 0.0);
        assert_eq!(erf::<Fused>(100.0), 1.0);
        assert_eq!(erf::<Fused>(-100.0), -1.0);
        assert!(erf::<Fused>(f32::NAN).is_nan());
    }

    #[test]
    fn gelu_matches_the_exact_definition() {
        for x in grid(-12.0, 12.0, 100_001) {
            let (ours, exact) = (gelu::<Fused>(x) as f64, gelu64(x as f64));
            // Relative, plus the f32 rounding of 1 + erf(x/√2) (which PyTorch's
            // `0.5·x·(1 + erf(x/√2))` shares) scaled by x: in the far negative tail
            // 1 + erf is below f32's resolution at 1.
            let tolerance = 2.5e-7 * exact.abs() + 1e-7 * (x as f64).abs();
            assert!(
                (ours - exact).abs() <= tolerance,
                "gelu({x}) = {ours}, exact {exact}"
            );
        }
        let mut rows = vec![-1.0f32, 0.0, 2.0, 3.0];
        bias_activation(&mut rows, &[0.5, -0.5], Activation::Gelu);
        let expected = [gelu64(-0.5), gelu64(-0.5), gelu64(2.5), gelu64(2.5)];
        for (ours, exact) in rows.iter().zip(expected) {
            assert!((*ours as f64 - exact).abs() < 1e-6);
        }
    }

    #[test]
    fn tanh_gelu_and_relu_follow_their_formulas() {
        for x in grid(-10.0, 10.0, 20_001) {
            let x64 = x as f64;
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3));
            let exact = 0.5 * x64 * (1.0 + inner.tanh());
            let ours = gelu_tanh::<Fused>(x) as f64;
            assert!((ours - exact).abs() <= 1e-6 * exact.abs().max(1.0), "{x}");
        }
        let mut rows = vec![-1.0f32, 2.0];
        bias_activation(&mut rows, &[0.5, 0.5], Activation::Relu);
        assert_eq!(rows, [0.0, 2.5]);
    }

    #[test]
    fn layer_norm_matches_the_definition() {
        let width = 37;
        let rows: Vec<f32> = (0..3 * width)
            .map(|i| (i as f32 * 1.3).cos() * 5.0 + 2.0)
            .collect();
        let bias: Vec<f32> = (0..width).map(|i| i as f32 * 0.01).collect();
        let weight: Vec<f32> = (0..width).map(|i| 1.0 + i as f32 * 0.02).collect();
        let shift: Vec<f32> = (0..width).map(|i| -(i as f32) * 0.03).collect();
        let eps = 1e-12;
        let mut ours = rows.clone();
        bias_layer_norm(&mut ours, &bias, &weight, &shift, eps);
        for (row, out) in rows.chunks(width).zip(ours.chunks(width)) {
            let x: Vec<f64> = row
                .iter()
                .zip(&bias)
                .map(|(v, b)| (*v + *b) as f64)
                .collect();
            let mean = x.iter().sum::<f64>() / width as f64;
            let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / width as f64;
            for (i, (v, o)) in x.iter().zip(out).enumerate() {
                let exact =
                    (v - mean) / (var + eps as f64).sqrt() * weight[i] as f64 + shift[i] as f64;
                assert!((*o as f64 - exact).abs() < 1e-5, "{o} vs {exact}");
            }
        }
        // A constant row normalises to the shift, not NaN, thanks to eps.
        let mut constant = vec![3.0f32; width];
        bias_layer_norm(&mut constant, &vec![0.0; width], &weight, &shift, 1e-5);
        assert!(constant
            .iter()
            .zip(&shift)
            .all(|(c, s)| (c - s).abs() < 1e-6));
    }
}
