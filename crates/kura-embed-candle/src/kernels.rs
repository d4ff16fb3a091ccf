//! Row-wise numeric kernels of the CPU encoder: activations, layer norm, softmax.
//!
//! Each kernel is written as plain loops that LLVM can vectorise (fixed-width
//! partial sums instead of one running float sum, branch-free polynomials instead
//! of libm calls), then compiled twice: once for the build's baseline target and
//! once with AVX2 and FMA enabled, picked at run time. That keeps one portable
//! binary while the erf of every GELU and the exp of every attention score run
//! eight lanes at a time on the machines we care about.

use std::f32::consts::{FRAC_1_SQRT_2, FRAC_2_SQRT_PI, LOG2_E};

/// Whether this CPU can run the AVX2 + FMA builds of the kernels (std caches the
/// detection, so this is a load and a test).
#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// `a·b + c`, fused into one FMA instruction where the build has them and as a
/// separate multiply and add elsewhere (where `f32::mul_add` would be a slow libm
/// call). The kernels are generic over it.
pub(crate) trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// One rounding: compiles to `vfmadd` inside `#[target_feature(enable = "fma")]`.
/// Only the x86-64 dispatch (and the tests) use it.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Fused;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// Two roundings, for builds without FMA.
pub(crate) struct Separate;

impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// Defines `pub(crate) fn $name(..)` that runs `$body` compiled with AVX2 and FMA
/// (and `M` = [`Fused`]) where the CPU has them, and compiled for the baseline
/// target (with `M` = [`Separate`]) elsewhere. The body's helpers are
/// `#[inline(always)]`, so they are compiled in both flavours.
macro_rules! multiversion {
    ($(#[$meta:meta])* fn $name:ident<$m:ident>($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        pub(crate) fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn generic<$m: MulAdd>($($arg: $ty),*) $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    generic::<Fused>($($arg),*)
                }
                if has_avx2_fma() {
                    // SAFETY: the CPU supports the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic::<Separate>($($arg),*)
        }
    };
}

/// Lanes of the partial sums: one AVX2 register of f32.
const LANES: usize = 8;

#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (a, x) in acc.iter_mut().zip(chunk) {
            *a += x;
        }
    }
    let tail: f32 = chunks.remainder().iter().sum();
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a = if x > *a { x } else { *a };
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(&acc)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// Adds 1.5·2²³, so the float's low mantissa bits hold `x` rounded to the nearest
/// integer: rounding without a libm call, in plain vectorisable float arithmetic.
const ROUNDING_SHIFT: f32 = 12_582_912.0;

/// Evaluates the polynomial with `coefficients` (highest degree first) at `x`.
#[inline(always)]
fn horner<M: MulAdd, const N: usize>(x: f32, coefficients: [f32; N]) -> f32 {
    let mut acc = coefficients[0];
    for &c in &coefficients[1..] {
        acc = M::mul_add(acc, x, c);
    }
    acc
}

/// e^x for f32, within 2 ulp of libm on [-87, 88] (0 below, +inf above). Cody–Waite
/// range reduction x = n·ln2 + r with |r| ≤ ln2/2, Cephes' degree-6 polynomial for
/// e^r, and 2^n built from its exponent bits.
#[inline(always)]
pub(crate) fn exp<M: MulAdd>(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let clamped = x.clamp(-87.0, 88.0);
    let shifted = M::mul_add(clamped, LOG2_E, ROUNDING_SHIFT);
    let n = shifted - ROUNDING_SHIFT;
    let r = M::mul_add(n, -LN2_LO, M::mul_add(n, -LN2_HI, clamped));
    let p = horner::<M, 6>(
        r,
        [
            1.987_569_1e-4,
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ],
    );
    let er = M::mul_add(p, r * r, r) + 1.0;
    // `n` sits in the low bits of `shifted`; moving it into the exponent field is 2^n.
    let n_bits = shifted.to_bits().wrapping_sub(ROUNDING_SHIFT.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    let y = er * scale;
    if x < -87.0 {
        0.0
    } else if x > 88.0 {
        f32::INFINITY
    } else {
        y
    }
}

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
    fn bias_activation<M>(rows: &mut [f32], bias: &[f32], act: Activation) {
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
    fn bias_layer_norm<M>(rows: &mut [f32], bias: &[f32], weight: &[f32], shift: &[f32], eps: f32) {
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

multiversion! {
    /// Softmax of each row of `width` values in place. Attention only ever sees a
    /// sequence's own tokens (the batch is packed, not padded), so no mask enters:
    /// masked-out keys are keys that are not in the row at all.
    fn softmax_rows<M>(rows: &mut [f32], width: usize) {
        for row in rows.chunks_exact_mut(width.max(1)) {
            let top = max(row);
            // A plain loop, not one over lanes with the sum folded in: that is the
            // shape LLVM's loop vectoriser turns into eight exps at a time.
            for v in row.iter_mut() {
                *v = exp::<M>(*v - top);
            }
            let total = sum(row);
            let inv = 1.0 / total;
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::f32::consts::LN_2;

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
    fn exp_matches_std_across_the_float_range() {
        for x in grid(-87.0, 88.0, 400_001) {
            let (ours, exact) = (exp::<Fused>(x), (x as f64).exp());
            let rel = ((ours as f64 - exact) / exact).abs();
            assert!(rel < 3e-7, "exp({x}) = {ours}, exact {exact}");
        }
        for x in grid(-87.0, 88.0, 20_001) {
            let (ours, exact) = (exp::<Separate>(x), (x as f64).exp());
            assert!(
                ((ours as f64 - exact) / exact).abs() < 4e-7,
                "exp({x}) without FMA"
            );
        }
        assert_eq!(exp::<Fused>(-1000.0), 0.0);
        assert_eq!(exp::<Fused>(0.0), 1.0);
        assert!(exp::<Fused>(1000.0).is_infinite());
        assert!((exp::<Fused>(LN_2) - 2.0).abs() < 1e-6);
    }

    #[test]
    fn softmax_rows_sum_to_one_and_keep_order() {
        // Width 11 exercises both the vector body and the scalar tail.
        let width = 11;
        let mut rows: Vec<f32> = (0..2 * width)
            .map(|i| (i as f32 * 0.7).sin() * 8.0)
            .collect();
        let input = rows.clone();
        softmax_rows(&mut rows, width);
        for (row, input) in rows.chunks(width).zip(input.chunks(width)) {
            let top = input.iter().copied().fold(f32::MIN, f32::max) as f64;
            let total: f64 = input.iter().map(|&x| (x as f64 - top).exp()).sum();
            for (p, &x) in row.iter().zip(input) {
                let exact = (x as f64 - top).exp() / total;
                assert!((*p as f64 - exact).abs() < 1e-7, "{p} vs {exact}");
            }
        }
        // Huge scores do not overflow: the row maximum is subtracted first.
        let mut big = vec![1000.0f32, 1000.0, -1000.0];
        softmax_rows(&mut big, 3);
        assert_eq!(big, [0.5, 0.5, 0.0]);
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
