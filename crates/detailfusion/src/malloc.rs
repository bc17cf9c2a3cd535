//! Keeping freed memory in the process (glibc).
//!
//! Candle's CPU backend allocates a fresh buffer for nearly every op. By default glibc hands
//! buffers above a (dynamic) threshold straight to `mmap` and trims the heap top back to the
//! kernel, so the next step page-faults the same memory in again, zeroed. In toy training on
//! 2 cores, a third of the time went to those faults and their TLB shootdowns; with freed memory
//! kept, stage 0 runs 1.5× faster.

/// Asks glibc to serve buffers below 32 MiB from its heap and never to trim the heap, so freed
/// tensor memory is reused instead of returned to the kernel and faulted in again. Call it once,
/// at the start of `main`, before threads start. Returns whether it took effect (`false` on
/// other C libraries and platforms, where it does nothing). Peak memory stays about the same;
/// memory is just not handed back between steps.
pub fn keep_freed_memory() -> bool {
    imp::keep_freed_memory()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod imp {
    use std::ffi::c_int;

    extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }
    // glibc's <malloc.h>.
    const M_TRIM_THRESHOLD: c_int = -1;
    const M_MMAP_THRESHOLD: c_int = -3;

    pub(super) fn keep_freed_memory() -> bool {
        // SAFETY: `mallopt` only changes allocator parameters; it takes the allocator's lock.
        unsafe { mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, c_int::MAX) == 1 }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub(super) fn keep_freed_memory() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_settings() {
        assert!(super::keep_freed_memory());
        // Allocation still works afterwards, above and below the threshold.
        let big = vec![1u8; 64 << 20];
        let small = vec![2u8; 1 << 20];
        assert_eq!(big[big.len() - 1] + small[0], 3);
    }
}
