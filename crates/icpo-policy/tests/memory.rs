//! Peak memory on the CPU: read from the kernel and reset, as the trainer does per step. One
//! test in its own process, since the high-water mark is the whole process's.

#![allow(clippy::unwrap_used)] // tests may unwrap

use icpo_policy::{peak_memory_bytes, peak_rss_bytes, reset_peak_memory};
use tch::Device;

#[test]
fn cpu_peak_memory_is_read_and_reset() {
    let before = peak_rss_bytes().unwrap();
    let big = vec![1u8; 256 << 20];
    let during = peak_memory_bytes(Device::Cpu).unwrap();
    assert!(during >= before && during >= big.len() as u64, "{before} → {during}");
    assert_eq!(big.iter().map(|&b| u64::from(b)).sum::<u64>(), 256 << 20);
    drop(big);
    assert!(reset_peak_memory(Device::Cpu), "Linux resets VmHWM through /proc/self/clear_refs");
    let after = peak_memory_bytes(Device::Cpu).unwrap();
    assert!(
        after + (128 << 20) < during,
        "the 256 MiB block is gone from the peak: {during} → {after}"
    );
}
