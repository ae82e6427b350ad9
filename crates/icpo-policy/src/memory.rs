//! Peak memory of a step or a pass: CUDA's caching allocator on a GPU (what
//! `torch.cuda.max_memory_allocated` reads), the process's resident high-water mark on a CPU.
//! Both can be reset, so that a trainer reports each step's own peak.

use tch::Device;

/// The process's peak resident memory (Linux `VmHWM`) since it started or since
/// [`reset_peak_memory`] on the CPU; `None` where `/proc` does not say.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak memory on `device` since the start or the last [`reset_peak_memory`]: bytes allocated
/// by CUDA's caching allocator on a GPU, resident bytes of the whole process on the CPU.
/// `None` when it cannot be read (no `/proc`; a GPU without the C++ shim or without CUDA).
pub fn peak_memory_bytes(device: Device) -> Option<u64> {
    match device {
        Device::Cuda(index) => cuda::peak(index),
        _ => peak_rss_bytes(),
    }
}

/// Starts a new peak on `device` at what is in use now: CUDA's allocator statistics, or on the
/// CPU the process's high-water mark (Linux's `/proc/self/clear_refs`, "5"). Whether it could.
pub fn reset_peak_memory(device: Device) -> bool {
    match device {
        Device::Cuda(index) => cuda::reset(index),
        _ => std::fs::write("/proc/self/clear_refs", "5").is_ok(),
    }
}

#[cfg(icpo_fused)]
#[allow(unsafe_code)] // the C interface of csrc/device_memory.cpp
mod cuda {
    use std::ffi::c_char;

    extern "C" {
        fn icpo_cuda_peak_allocated(index: i64, bytes: *mut i64) -> *mut c_char;
        fn icpo_cuda_reset_peak(index: i64) -> *mut c_char;
    }

    pub(super) fn peak(index: usize) -> Option<u64> {
        let mut bytes = 0i64;
        // SAFETY: `bytes` outlives the call; an error message is freed by `check`.
        let err = unsafe { icpo_cuda_peak_allocated(index as i64, &mut bytes) };
        crate::fused::ffi::check(err).ok()?;
        u64::try_from(bytes).ok()
    }

    pub(super) fn reset(index: usize) -> bool {
        // SAFETY: as above.
        let err = unsafe { icpo_cuda_reset_peak(index as i64) };
        crate::fused::ffi::check(err).is_ok()
    }
}

#[cfg(not(icpo_fused))]
mod cuda {
    pub(super) fn peak(_index: usize) -> Option<u64> {
        None
    }

    pub(super) fn reset(_index: usize) -> bool {
        false
    }
}
