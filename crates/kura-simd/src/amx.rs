//! The AMX tile unit's kernel for [`crate::bf16::matmul_bf16`], and the request
//! that lets a process use the unit.
//!
//! Why: one `tdpbf16ps` multiplies a 16 × 32 tile of bfloat16 by a 32 × 16 one into
//! 16 × 16 f32 sums, 8,192 multiply-adds, where an AVX-512 FMA does 16. The sums
//! stay in the tile registers over the whole reduction and go to memory once, so
//! nothing between the unit's instructions costs a vector port.
//!
//! Linux lends a process the tile registers only once asked (`arch_prctl`); without
//! the request the first tile instruction faults, which is how AMX looked broken in
//! virtual machines that do pass it through. [`available`] asks once.

pub(crate) use tiles::columns;

/// Whether this CPU has AMX with bfloat16 products and this process may use them
/// (`KURA_AMX=0` says no, to compare).
pub fn available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            let wanted = std::env::var("KURA_AMX").map_or(true, |v| v != "0");
            wanted && tiles::cpu_has_amx_bf16() && tiles::lend()
        })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    false
}

/// Whether the CPU says it has AMX with bfloat16 products, whether or not this
/// process may use them: virtual machines of one CPU model differ in whether they
/// pass AMX through, and a benchmark compares like with like only if it knows.
pub fn in_cpu() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    return tiles::cpu_has_amx_bf16();
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    false
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod tiles {
    use std::arch::asm;

    use crate::bf16::{Tile, STEP, TILE_COLS, TILE_ROWS};

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
    pub(crate) unsafe fn columns(
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
    use crate::bf16::Tile;

    pub(crate) unsafe fn columns(
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
