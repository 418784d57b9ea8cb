//! Dequantization of ggml tensor data to bf16.
//!
//! Each value is computed in f32 exactly as ggml's `dequantize_row_*` computes it, then
//! rounded once to bf16 (round to nearest even). Block layouts (ggml-common.h), 32 elements
//! per block, little-endian, blocks back to back along a row:
//!
//! | type | bytes | layout | element j |
//! |---|---|---|---|
//! | F32, F16, BF16 | 4, 2, 2 per element | plain | as stored |
//! | Q8_0 | 34 | `d: f16, qs: [i8; 32]` | `qs[j] · d` |
//! | Q4_0 | 18 | `d: f16, qs: [u8; 16]` | `(nibble_j - 8) · d` |
//! | Q4_1 | 20 | `d: f16, m: f16, qs: [u8; 16]` | `nibble_j · d + m` |
//!
//! where `nibble_j` is the low nibble of `qs[j]` for `j < 16` and the high nibble of
//! `qs[j - 16]` for `j >= 16` (the first half of the block in the low nibbles).
//!
//! A Q8_0 value has up to 8 + 11 significant bits and bf16 keeps 8, so the conversion
//! rounds (relative error at most 2⁻⁹); the engine's weights are bf16 throughout.

use half::{bf16, f16};

use super::GgmlType;

/// The types [`dequantize`] converts, for error messages.
pub const SUPPORTED: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1";

/// Elements per quantized block.
pub const QK: usize = 32;

/// Whether [`dequantize`] converts `ty`.
pub const fn is_supported(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1)
}

/// `numel` values of type `ty` from `bytes`, as bf16. Errors (as text) for an unsupported
/// type, a count that is not whole blocks, or a byte length that does not match.
pub fn dequantize(ty: GgmlType, bytes: &[u8], numel: usize) -> Result<Vec<bf16>, String> {
    let (block_elems, block_bytes) = match ty.block() {
        Some(b) if is_supported(ty) => b,
        _ => return Err(format!("type {ty:?} is not supported ({SUPPORTED})")),
    };
    if !numel.is_multiple_of(block_elems) {
        return Err(format!("{numel} elements are not whole blocks of {block_elems}"));
    }
    let expected = numel / block_elems * block_bytes;
    if bytes.len() != expected {
        return Err(format!("{} bytes for {numel} elements of {ty:?}, expected {expected}", bytes.len()));
    }
    let mut out = Vec::with_capacity(numel);
    match ty {
        GgmlType::BF16 => out.extend(bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]))),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(|b| bf16::from_f32(f16_at(b, 0)))),
        GgmlType::F32 => {
            out.extend(bytes.chunks_exact(4).map(|b| bf16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))))
        }
        _ => {
            let mut block = [0f32; QK];
            for b in bytes.chunks_exact(block_bytes) {
                match ty {
                    GgmlType::Q8_0 => q8_0(b, &mut block),
                    GgmlType::Q4_0 => q4_0(b, &mut block),
                    _ => q4_1(b, &mut block),
                }
                out.extend(block.iter().map(|&v| bf16::from_f32(v)));
            }
        }
    }
    Ok(out)
}

/// The little-endian f16 at byte `at`, as f32.
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// One Q8_0 block (34 bytes): `d: f16`, then 32 `i8`; `y[j] = qs[j] · d`.
pub fn q8_0(block: &[u8], y: &mut [f32; QK]) {
    let d = f16_at(block, 0);
    for (y, &q) in y.iter_mut().zip(&block[2..2 + QK]) {
        *y = f32::from(q as i8) * d;
    }
}

/// One Q4_0 block (18 bytes): `d: f16`, then 16 bytes of nibbles;
/// `y[j] = (low(qs[j]) - 8) · d`, `y[j + 16] = (high(qs[j]) - 8) · d`.
pub fn q4_0(block: &[u8], y: &mut [f32; QK]) {
    let d = f16_at(block, 0);
    for (j, &q) in block[2..2 + QK / 2].iter().enumerate() {
        y[j] = (i32::from(q & 0x0f) - 8) as f32 * d;
        y[j + QK / 2] = (i32::from(q >> 4) - 8) as f32 * d;
    }
}

/// One Q4_1 block (20 bytes): `d: f16, m: f16`, then 16 bytes of nibbles;
/// `y[j] = low(qs[j]) · d + m`, `y[j + 16] = high(qs[j]) · d + m`.
pub fn q4_1(block: &[u8], y: &mut [f32; QK]) {
    let d = f16_at(block, 0);
    let m = f16_at(block, 2);
    for (j, &q) in block[4..4 + QK / 2].iter().enumerate() {
        y[j] = f32::from(q & 0x0f) * d + m;
        y[j + QK / 2] = f32::from(q >> 4) * d + m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    fn to_f32(v: &[bf16]) -> Vec<f32> {
        v.iter().map(|x| x.to_f32()).collect()
    }

    #[test]
    fn q8_0_block() {
        let mut block = f16_bytes(0.5).to_vec();
        block.extend((0..32).map(|j| (j as i8 - 16) as u8)); // -16..16
        let got = to_f32(&dequantize(GgmlType::Q8_0, &block, 32).unwrap());
        let want: Vec<f32> = (0..32).map(|j| (j as f32 - 16.0) * 0.5).collect();
        assert_eq!(got, want);
        // Extremes: -128 and 127 with d = 0.25.
        let mut block = f16_bytes(0.25).to_vec();
        block.extend([0x80u8, 0x7f]);
        block.extend([0u8; 30]);
        let got = to_f32(&dequantize(GgmlType::Q8_0, &block, 32).unwrap());
        assert_eq!(&got[..3], &[-32.0, 31.75, 0.0]);
    }

    /// Low nibbles hold elements 0..16, high nibbles 16..32.
    #[test]
    fn q4_0_block_nibble_order() {
        let mut block = f16_bytes(2.0).to_vec();
        // qs[j] = low j, high 15 - j.
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let got = to_f32(&dequantize(GgmlType::Q4_0, &block, 32).unwrap());
        for j in 0..16 {
            assert_eq!(got[j], (j as f32 - 8.0) * 2.0, "element {j}");
            assert_eq!(got[j + 16], ((15 - j) as f32 - 8.0) * 2.0, "element {}", j + 16);
        }
    }

    #[test]
    fn q4_1_block() {
        let mut block = f16_bytes(0.125).to_vec();
        block.extend(f16_bytes(-1.0));
        block.extend((0..16u8).map(|j| (j % 16) | (((j * 3) % 16) << 4)));
        let got = to_f32(&dequantize(GgmlType::Q4_1, &block, 32).unwrap());
        for j in 0..16 {
            assert_eq!(got[j], j as f32 * 0.125 - 1.0);
            assert_eq!(got[j + 16], ((j * 3) % 16) as f32 * 0.125 - 1.0);
        }
    }

    #[test]
    fn two_blocks_and_float_types() {
        let mut bytes = Vec::new();
        for d in [1.0f32, 3.0] {
            bytes.extend(f16_bytes(d));
            bytes.extend([0x98u8; 16]); // low 8 -> 0, high 9 -> 1
        }
        let got = to_f32(&dequantize(GgmlType::Q4_0, &bytes, 64).unwrap());
        assert_eq!((got[0], got[16], got[32], got[63]), (0.0, 1.0, 0.0, 3.0));

        let f: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(to_f32(&dequantize(GgmlType::F32, &f, 2).unwrap()), [1.5, -2.0]);
        let h: Vec<u8> = [0.1f32, 65504.0].iter().flat_map(|&v| f16_bytes(v)).collect();
        let got = dequantize(GgmlType::F16, &h, 2).unwrap();
        assert_eq!(got[0], bf16::from_f32(f16::from_f32(0.1).to_f32()));
        assert_eq!(got[1].to_f32(), 65536.0); // 65504 rounds to bf16's 65536
        let b: Vec<u8> = [bf16::from_f32(3.25)].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(to_f32(&dequantize(GgmlType::BF16, &b, 1).unwrap()), [3.25]);
    }

    #[test]
    fn rejects_bad_sizes_and_types() {
        assert!(dequantize(GgmlType::Q8_0, &[0; 34], 16).is_err()); // not whole blocks
        assert!(dequantize(GgmlType::Q8_0, &[0; 33], 32).is_err()); // short
        assert!(dequantize(GgmlType::Q4_K, &[0; 144], 256).unwrap_err().contains("not supported"));
    }
}
