//! [`with_scratch`]: a buffer per thread, kept between calls and not zeroed.
//!
//! Why: kernels that need a few hundred kilobytes for one task (a text's attention
//! scores, a prompt's rounded inputs) and run thousands of tasks spent their time
//! in the allocator's fresh pages: a new zeroed buffer for each group of a Qwen
//! prompt's attention was 3% of the summariser in `memset`, and the embedder's
//! scores and rounded inputs put `memset` and the kernel's page zeroing at 6% of
//! embedding long texts.

use std::cell::RefCell;

/// A value type that has a scratch buffer per thread.
pub trait Scratch: Copy + Default + 'static {
    #[doc(hidden)]
    fn kept<R>(f: impl FnOnce(&RefCell<Vec<Self>>) -> R) -> R;
}

macro_rules! scratch {
    ($($t:ty),*) => {$(
        impl Scratch for $t {
            fn kept<R>(f: impl FnOnce(&RefCell<Vec<Self>>) -> R) -> R {
                thread_local! {
                    static KEPT: RefCell<Vec<$t>> = const { RefCell::new(Vec::new()) };
                }
                KEPT.with(f)
            }
        }
    )*};
}

scratch!(f32, i16, i32, u16, u32);

/// Runs `f` on `len` values of this thread's scratch buffer. They are not zeroed:
/// they hold whatever the last call left, so `f` must write every value it reads.
/// A nested call on the same thread (a task that waits on others and meanwhile runs
/// one that needs scratch too) gets a fresh buffer instead.
pub fn with_scratch<T: Scratch, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    T::kept(|cell| match cell.try_borrow_mut() {
        Ok(mut kept) => {
            if kept.len() < len {
                kept.resize(len, T::default());
            }
            f(&mut kept[..len])
        }
        Err(_) => f(&mut vec![T::default(); len]),
    })
}

#[cfg(test)]
mod tests {
    use super::with_scratch;

    /// The buffer is kept between calls on a thread (what a call wrote, the next
    /// sees), has the length asked for, and a nested call gets one of its own.
    #[test]
    fn the_buffer_is_kept_and_a_nested_call_gets_its_own() {
        with_scratch::<f32, _>(4, |outer| outer.fill(7.0));
        with_scratch::<f32, _>(3, |again| {
            assert_eq!(again, [7.0; 3]);
            with_scratch::<f32, _>(5, |inner| {
                assert_eq!(inner, [0.0; 5]);
                inner.fill(1.0);
            });
            again[0] = 2.0;
        });
        with_scratch::<f32, _>(2, |last| assert_eq!(last, [2.0, 7.0]));
        with_scratch::<u16, _>(2, |other| assert_eq!(other, [0, 0]));
    }
}
