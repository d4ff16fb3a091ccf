//! [`matmul`]: the `gemm` crate's f32 product behind a safe, checked signature.
//!
//! Why here: the embedder and the LLM multiply matrices held in plain slices, often
//! as views (a head's columns of a wider row, a weight read as its transpose). Each
//! call of `gemm::gemm` takes raw pointers and strides; [`MatRef`] checks once that
//! a view lies inside its slice, so the callers hold no `unsafe` of their own.

/// A read-only matrix inside a slice: element `(i, j)` is
/// `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// Panics if an element of the view lies outside `data`.
    pub fn new(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Self {
        let last = (rows.max(1) - 1) * row_stride + (cols.max(1) - 1) * col_stride;
        assert!(
            rows == 0 || cols == 0 || last < data.len(),
            "a {rows} × {cols} view with strides ({row_stride}, {col_stride}) needs {} values, the slice has {}",
            last + 1,
            data.len()
        );
        MatRef {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// `rows × cols` stored row after row.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols, 1)
    }

    /// The transpose, read from the same values.
    pub fn t(self) -> Self {
        MatRef {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// Which threads a product runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// The caller's: for products that are themselves tasks of a parallel loop.
    One,
    /// Rayon's pool.
    All,
}

/// `dst = scale · lhs · rhs`, or `dst += scale · lhs · rhs` when `accumulate`, with
/// `dst` row-major, `lhs.rows × rhs.cols`. Panics if the shapes do not agree.
pub fn matmul(
    dst: &mut [f32],
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    scale: f32,
    accumulate: bool,
    threads: Threads,
) {
    let (m, n) = (lhs.rows, rhs.cols);
    assert_eq!(dst.len(), m * n, "the destination is not {m} × {n}");
    matmul_strided(dst, n, lhs, rhs, scale, accumulate, threads);
}

/// [`matmul`] into columns of a wider matrix: row `i` of the product is written at
/// `dst[i * dst_row_stride..]`, and the values between rows are left as they are
/// (a product computed a block of columns at a time). Panics if the shapes do not
/// agree or the rows do not fit in `dst`.
pub fn matmul_strided(
    dst: &mut [f32],
    dst_row_stride: usize,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    scale: f32,
    accumulate: bool,
    threads: Threads,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(k, rhs.rows, "inner dimensions differ");
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        dst_row_stride >= n && dst.len() >= (m - 1) * dst_row_stride + n,
        "{m} rows of {n} values with a stride of {dst_row_stride} do not fit in {} values",
        dst.len()
    );
    if k == 0 {
        if !accumulate {
            for row in 0..m {
                dst[row * dst_row_stride..][..n].fill(0.0);
            }
        }
        return;
    }
    let parallelism = match threads {
        Threads::One => gemm::Parallelism::None,
        Threads::All => gemm::Parallelism::Rayon(0),
    };
    // SAFETY: `MatRef::new` checked that every element of both views lies inside
    // its slice, and that `m` rows of `n` at `dst_row_stride` fit in `dst` (above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 37) % 23) as f32 / 7.0 - 1.5).collect()
    }

    fn at(m: &MatRef<'_>, i: usize, j: usize) -> f32 {
        m.data[i * m.row_stride + j * m.col_stride]
    }

    /// Strided and transposed views, a scale and accumulation, against the
    /// definition.
    #[test]
    fn products_of_views_match_the_definition() {
        let wide = numbers(5 * 9);
        // Columns 2..6 of a 5 × 9 matrix, and a 4 × 3 matrix read as its transpose.
        let lhs = MatRef::new(&wide[2..], 5, 4, 9, 1);
        let weights = numbers(3 * 4);
        let rhs = MatRef::row_major(&weights, 3, 4).t();
        for (accumulate, threads) in [(false, Threads::One), (true, Threads::All)] {
            let start = numbers(5 * 3);
            let mut dst = start.clone();
            matmul(&mut dst, lhs, rhs, 0.5, accumulate, threads);
            for i in 0..5 {
                for j in 0..3 {
                    let sum: f32 = (0..4).map(|k| at(&lhs, i, k) * at(&rhs, k, j)).sum();
                    let want = 0.5 * sum + if accumulate { start[i * 3 + j] } else { 0.0 };
                    let got = dst[i * 3 + j];
                    assert!((got - want).abs() < 1e-5, "({i}, {j}): {got} vs {want}");
                }
            }
        }
    }

    /// A product written into columns 3..5 of a 4 × 7 matrix fills just those, and
    /// gives the values of the same product written on its own.
    #[test]
    fn a_strided_product_fills_only_its_columns() {
        let (xs, ws) = (numbers(4 * 5), numbers(2 * 5));
        let lhs = MatRef::row_major(&xs, 4, 5);
        let rhs = MatRef::row_major(&ws, 2, 5).t();
        let mut alone = vec![0.0; 4 * 2];
        matmul(&mut alone, lhs, rhs, 1.0, false, Threads::One);
        let mut wide = [9.0; 4 * 7];
        matmul_strided(&mut wide[3..], 7, lhs, rhs, 1.0, false, Threads::All);
        for (i, row) in wide.chunks(7).enumerate() {
            assert_eq!(&row[3..5], &alone[i * 2..i * 2 + 2], "row {i}");
            assert!(
                row[..3].iter().chain(&row[5..]).all(|&v| v == 9.0),
                "row {i}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "do not fit")]
    fn a_strided_product_past_its_slice_is_refused() {
        let xs = numbers(3 * 2);
        let lhs = MatRef::row_major(&xs, 3, 2);
        matmul_strided(&mut [0.0; 10], 4, lhs, lhs.t(), 1.0, false, Threads::One);
    }

    #[test]
    #[should_panic(expected = "needs 13 values")]
    fn a_view_past_its_slice_is_refused() {
        MatRef::new(&[0.0; 12], 3, 4, 4, 1).t();
        MatRef::new(&[0.0; 12], 2, 4, 9, 1);
    }
}
