//! [`Logits`]: the scores of the next token after a feed, as a row of the one buffer
//! a pass of the model writes for all its feeds.
//!
//! Why shared rather than owned: a Qwen step writes 32 rows of 152 000 logits
//! (19 MB). Copying each row out into a vector of its own was 2% of the summariser's
//! time, each copy a fresh 600 KB allocation that the kernel then zeroed page by
//! page; and every session started from the shared prompt prefix copied its logits
//! again. A row is copied only to be changed ([`Logits::make_mut`]), which the
//! constrained choices do and free text does not.

use std::ops::{Deref, Range};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub(crate) struct Logits {
    all: Arc<Vec<f32>>,
    row: Range<usize>,
}

impl Logits {
    /// `all`'s `count` rows of equal length, in order.
    pub(crate) fn rows(all: Vec<f32>, count: usize) -> Vec<Logits> {
        let width = all.len() / count.max(1);
        let all = Arc::new(all);
        (0..count)
            .map(|i| Logits {
                all: Arc::clone(&all),
                row: i * width..(i + 1) * width,
            })
            .collect()
    }

    /// This row to change, copied out of the buffer first unless it is the buffer's
    /// only row and nothing else holds it.
    pub(crate) fn make_mut(&mut self) -> &mut [f32] {
        if self.row.len() != self.all.len() {
            *self = Logits::from(self.to_vec());
        }
        Arc::make_mut(&mut self.all).as_mut_slice()
    }
}

impl From<Vec<f32>> for Logits {
    fn from(all: Vec<f32>) -> Self {
        let row = 0..all.len();
        Logits {
            all: Arc::new(all),
            row,
        }
    }
}

impl Deref for Logits {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.all[self.row.clone()]
    }
}

impl PartialEq for Logits {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_share_one_buffer_until_one_is_changed() {
        let mut rows = Logits::rows((0..12).map(|i| i as f32).collect(), 3);
        assert_eq!(&*rows[1], &[4.0, 5.0, 6.0, 7.0]);
        let shared = rows[0].clone();
        rows[0].make_mut()[0] = -1.0;
        assert_eq!(&*rows[0], &[-1.0, 1.0, 2.0, 3.0]);
        assert_eq!(&*shared, &[0.0, 1.0, 2.0, 3.0], "a clone keeps its values");
        assert_eq!(
            &*rows[2],
            &[8.0, 9.0, 10.0, 11.0],
            "other rows are untouched"
        );

        let mut whole = Logits::from(vec![1.0, 2.0]);
        let before = whole.clone();
        whole.make_mut()[1] = 0.0;
        assert_eq!((&*whole, &*before), (&[1.0, 0.0][..], &[1.0, 2.0][..]));
    }
}
