//! Fuzzes extraction, parsing and comparison: no input may panic or hang.
//! Run: `cargo install cargo-fuzz && cd fuzz && cargo +nightly fuzz run verify`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len() / 2);
    let (gold, pred) = data.split_at(split);
    let _ = icpo_verify::verify_bytes(gold, pred);
    let _ = icpo_verify::parse_str(&String::from_utf8_lossy(pred));
});
