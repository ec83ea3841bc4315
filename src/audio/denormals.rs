//! Flushing denormal floats to zero on the thread that runs the DSP.
//!
//! When the bot falls silent the speaker's reference is digital zero, and
//! the echo canceller's filters (its decimator's biquads, the delay
//! estimator's correlators, the adaptive filter) decay towards zero
//! through the denormal range, where x86 takes a slow microcode path for
//! every operation. In a session against the stock Pipecat bot that made
//! each 10 ms of echo cancelling five times dearer than `bench` measures
//! it (see docs/profile.md). Flushed, such values become zero: 2^-126 of
//! full scale, far below anything a microphone or speaker resolves.
//!
//! Rust assumes the default floating-point environment, so code compiled
//! to run under it may constant-fold a denormal that the same code then
//! flushes at run time; the DSP gives the same audio either way. The
//! setting is per thread: it is made on threads that run the DSP only.
//! `no_denormals`, the crate that does this, refuses to build for 32-bit
//! ARM, which the armhf package is.

/// Flushes denormal results and inputs to zero on the calling thread, for
/// its lifetime.
pub(crate) fn flush_to_zero_on_this_thread() {
    // SAFETY (each block): reads and writes the calling thread's own
    // floating-point control register; only the flush-to-zero bits change.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        // MXCSR: flush-to-zero (bit 15) and denormals-are-zero (bit 6).
        let mut mxcsr: u32 = 0;
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut mxcsr, options(nostack));
        mxcsr |= 1 << 15 | 1 << 6;
        std::arch::asm!("ldmxcsr [{}]", in(reg) &mxcsr, options(nostack));
    }
    #[cfg(target_arch = "aarch64")]
    unsafe {
        // FPCR.FZ (bit 24).
        let mut fpcr: u64;
        std::arch::asm!("mrs {}, fpcr", out(reg) fpcr, options(nomem, nostack));
        fpcr |= 1 << 24;
        std::arch::asm!("msr fpcr, {}", in(reg) fpcr, options(nomem, nostack));
    }
    #[cfg(target_arch = "arm")]
    unsafe {
        // FPSCR.FZ (bit 24); NEON always flushes, VFP only with it.
        let mut fpscr: u32;
        std::arch::asm!("vmrs {}, fpscr", out(reg) fpscr, options(nomem, nostack));
        fpscr |= 1 << 24;
        std::arch::asm!("vmsr fpscr, {}", in(reg) fpscr, options(nomem, nostack));
    }
}

#[cfg(test)]
mod tests {
    use std::hint::black_box;

    use super::*;

    /// The smallest normal float divided down into the denormal range.
    fn underflow() -> f32 {
        black_box(f32::MIN_POSITIVE) / black_box(4.0)
    }

    #[test]
    fn a_flushing_thread_gets_zero_where_others_get_a_denormal() {
        let plain = std::thread::spawn(underflow).join().unwrap();
        let flushed = std::thread::spawn(|| {
            flush_to_zero_on_this_thread();
            underflow()
        })
        .join()
        .unwrap();
        assert!(plain.is_subnormal(), "{plain:e}");
        assert_eq!(flushed, 0.0);
    }
}
