//! Counter-based random numbers: a sequence's `i`-th uniform draw is a hash of its key and `i`,
//! computed where the logits are (tensor ops on the device, no host→device copy of random
//! numbers) and identical to the host's scalar [`counter_uniform`].
//!
//! A sequence's key comes from the request's seed and the sequence's global index
//! ([`stream_key`]), so its tokens do not depend on slots, admission order, batching or
//! device. The hash is Chris Wellons' `lowbias32` (two xorshift-multiply rounds), chained over
//! the two 32-bit halves of the key and the position; the uniform takes its top 24 bits, as
//! `rand`'s `f32` does. On tensors every value stays in `[0, 2^32)` inside int64, and the 32-bit
//! products are split in 16-bit halves so no intermediate overflows int64.

use tch::{Kind, Tensor};

use crate::error::Result;

const M1: u32 = 0x7feb_352d;
const M2: u32 = 0x846c_a68b;

/// `lowbias32` on the host.
pub fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(M1);
    x ^= x >> 15;
    x = x.wrapping_mul(M2);
    x ^ (x >> 16)
}

/// SplitMix64's finaliser: spreads a seed and a stream index over 64 bits.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key of stream `stream` (a sequence's global index) under `seed`.
pub fn stream_key(seed: u64, stream: u64) -> [u32; 2] {
    let k = splitmix64(seed ^ splitmix64(stream));
    [k as u32, (k >> 32) as u32]
}

/// The `position`-th uniform draw in `[0, 1)` of the stream with key `key`.
pub fn counter_uniform(key: [u32; 2], position: u32) -> f32 {
    let h = mix32(key[1] ^ mix32(key[0] ^ mix32(position)));
    (h >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
}

/// `(x · c) mod 2^32` for int64 tensors of values in `[0, 2^32)`, without overflow.
fn mul32(x: &Tensor, c: u32) -> Result<Tensor> {
    let c = i64::from(c);
    let lo = x.f_bitwise_and(0xffff)?.f_mul_scalar(c)?;
    let hi = x
        .f_bitwise_right_shift_tensor_scalar(16)?
        .f_mul_scalar(c)?
        .f_bitwise_and(0xffff)?
        .f_bitwise_left_shift_tensor_scalar(16)?;
    Ok(lo.f_add(&hi)?.f_bitwise_and(0xffff_ffff)?)
}

/// [`mix32`] on int64 tensors of values in `[0, 2^32)`.
fn mix32_t(x: &Tensor) -> Result<Tensor> {
    let x = x.f_bitwise_xor_tensor(&x.f_bitwise_right_shift_tensor_scalar(16)?)?;
    let x = mul32(&x, M1)?;
    let x = x.f_bitwise_xor_tensor(&x.f_bitwise_right_shift_tensor_scalar(15)?)?;
    let x = mul32(&x, M2)?;
    Ok(x.f_bitwise_xor_tensor(&x.f_bitwise_right_shift_tensor_scalar(16)?)?)
}

/// [`counter_uniform`] for every row, on the tensors' device: `keys (rows, 2)` int64 (the two
/// key halves, each in `[0, 2^32)`), `positions (rows,)` int64 in `[0, 2^32)`; f32 `(rows,)`.
///
/// # Shapes
/// `keys`: `(rows, 2)`; `positions`: `(rows,)`; result: `(rows,)`.
pub fn counter_uniforms(keys: &Tensor, positions: &Tensor) -> Result<Tensor> {
    let k0 = keys.f_select(1, 0)?;
    let k1 = keys.f_select(1, 1)?;
    let h = mix32_t(&k0.f_bitwise_xor_tensor(&mix32_t(positions)?)?)?;
    let h = mix32_t(&k1.f_bitwise_xor_tensor(&h)?)?;
    Ok(h.f_bitwise_right_shift_tensor_scalar(8)?
        .f_to_kind(Kind::Float)?
        .f_mul_scalar(1.0 / f64::from(1u32 << 24))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tensor hash equals the host's, draw for draw, over keys and positions spanning the
    /// 32-bit range (including values whose products would overflow a naive int64 multiply).
    #[test]
    fn device_draws_equal_the_host_reference() {
        let mut keys = Vec::new();
        let mut positions = Vec::new();
        let mut expect = Vec::new();
        for s in 0..64u64 {
            let key = stream_key(42 + s, s * 7919);
            for p in [0u32, 1, 2, 3, 1000, 65_535, 65_536, 0x7fff_ffff, 0xffff_fffe] {
                keys.extend([i64::from(key[0]), i64::from(key[1])]);
                positions.push(i64::from(p));
                expect.push(counter_uniform(key, p));
            }
        }
        let n = positions.len() as i64;
        let keys = Tensor::from_slice(&keys).view([n, 2]);
        let u = counter_uniforms(&keys, &Tensor::from_slice(&positions)).unwrap();
        assert_eq!(Vec::<f32>::try_from(&u).unwrap(), expect);
    }

    /// Uniform draws that look uniform: 64 streams × 1,024 positions in 16 bins, chi-square
    /// below the 0.1% critical value (37.7 at 15 d.f.), and successive draws uncorrelated.
    #[test]
    fn draws_are_uniform_and_uncorrelated() {
        let mut bins = [0f64; 16];
        let mut prev: Option<f64> = None;
        let (mut sxy, mut sx, mut sy, mut sxx, mut syy, mut n) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        for s in 0..64 {
            let key = stream_key(7, s);
            for p in 0..1024 {
                let u = f64::from(counter_uniform(key, p));
                assert!((0.0..1.0).contains(&u));
                bins[(u * 16.0) as usize] += 1.0;
                if let Some(x) = prev {
                    (sxy, sx, sy, sxx, syy, n) =
                        (sxy + x * u, sx + x, sy + u, sxx + x * x, syy + u * u, n + 1.0);
                }
                prev = Some(u);
            }
        }
        let e = 64.0 * 1024.0 / 16.0;
        let chi2: f64 = bins.iter().map(|o| (o - e) * (o - e) / e).sum();
        assert!(chi2 < 37.7, "chi-square {chi2}");
        let r = (n * sxy - sx * sy) / ((n * sxx - sx * sx).sqrt() * (n * syy - sy * sy).sqrt());
        assert!(r.abs() < 0.02, "lag-1 correlation {r}");
    }
}
