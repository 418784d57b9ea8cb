//! A small GGUF writer (the layout of [`super`]), and ggml's reference quantizers for the
//! block types the reader converts. The tests build their GGUF files with it; tools can
//! use it to write small models.

use std::io::Write;
use std::path::Path;

use half::{bf16, f16};

use super::{DEFAULT_ALIGNMENT, GgmlType, MAGIC, Value, dequant::QK};

/// A GGUF file being put together in memory.
pub struct GgufWriter {
    version: u32,
    alignment: u64,
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
}

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    bytes: Vec<u8>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        GgufWriter::new()
    }
}

impl GgufWriter {
    /// An empty version 3 file with the default alignment (32).
    pub fn new() -> GgufWriter {
        GgufWriter { version: 3, alignment: DEFAULT_ALIGNMENT, metadata: Vec::new(), tensors: Vec::new() }
    }

    /// Writes this version number (2 and 3 share the layout).
    pub fn version(mut self, version: u32) -> GgufWriter {
        self.version = version;
        self
    }

    /// Aligns tensor data to `alignment` bytes and records it as `general.alignment`.
    pub fn alignment(mut self, alignment: u32) -> GgufWriter {
        self.alignment = alignment.into();
        self.metadata.push(("general.alignment".into(), Value::U32(alignment)));
        self
    }

    /// Adds a metadata entry.
    pub fn meta(&mut self, key: &str, value: Value) -> &mut GgufWriter {
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Adds a tensor of ggml dims `ne` (fastest-varying first) with its encoded bytes.
    pub fn tensor_raw(&mut self, name: &str, ne: Vec<u64>, ggml_type: GgmlType, bytes: Vec<u8>) -> &mut GgufWriter {
        self.tensors.push(PendingTensor { name: name.to_string(), dims: ne, ggml_type, bytes });
        self
    }

    /// Adds a tensor of row-major `shape` (outermost first, as [`super::TensorInfo::shape`]
    /// returns it), encoding `data` as `ggml_type` (F32, F16, BF16, Q8_0, Q4_0 or Q4_1).
    pub fn tensor(&mut self, name: &str, shape: &[usize], data: &[f32], ggml_type: GgmlType) -> &mut GgufWriter {
        assert_eq!(data.len(), shape.iter().product::<usize>(), "tensor `{name}`: data does not match {shape:?}");
        let ne = shape.iter().rev().map(|&d| d as u64).collect();
        self.tensor_raw(name, ne, ggml_type, encode(ggml_type, data))
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(MAGIC);
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut out, key);
            out.extend(value.type_id().to_le_bytes());
            put_value(&mut out, value);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            put_string(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ggml_type.id().to_le_bytes());
            out.extend(offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.bytes.len() as u64).next_multiple_of(self.alignment);
        }
        let data_start = (out.len() as u64).next_multiple_of(self.alignment);
        for (t, off) in self.tensors.iter().zip(offsets) {
            out.resize((data_start + off) as usize, 0);
            out.extend(&t.bytes);
        }
        out
    }

    /// Writes the file.
    pub fn write(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        std::fs::File::create(path)?.write_all(&self.to_bytes())
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.extend(x.to_le_bytes()),
        Value::I8(x) => out.extend(x.to_le_bytes()),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::Str(s) => put_string(out, s),
        Value::Array(a) => {
            out.extend(a.elem_type.to_le_bytes());
            out.extend((a.values.len() as u64).to_le_bytes());
            for x in &a.values {
                put_value(out, x);
            }
        }
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
    }
}

/// An array value of strings.
pub fn string_array<S: AsRef<str>>(items: &[S]) -> Value {
    Value::Array(super::Array { elem_type: 8, values: items.iter().map(|s| Value::Str(s.as_ref().into())).collect() })
}

/// An array value of `i32`.
pub fn i32_array(items: &[i32]) -> Value {
    Value::Array(super::Array { elem_type: 5, values: items.iter().map(|&v| Value::I32(v)).collect() })
}

/// `data` encoded as `ggml_type`; quantized types with ggml's reference quantizers
/// (`quantize_row_*_ref`).
///
/// # Panics
/// For another type, or a quantized type with `data.len()` not a multiple of 32.
pub fn encode(ggml_type: GgmlType, data: &[f32]) -> Vec<u8> {
    match ggml_type {
        GgmlType::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => data.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
        GgmlType::BF16 => data.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 => {
            assert!(data.len().is_multiple_of(QK), "{} values are not whole blocks of {QK}", data.len());
            data.chunks_exact(QK).flat_map(|x| quantize_block(ggml_type, x)).collect()
        }
        other => panic!("encode: {other:?} is not supported"),
    }
}

/// One block of 32 values.
fn quantize_block(ggml_type: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    match ggml_type {
        GgmlType::Q8_0 => {
            // d = max|x| / 127, q = round(x / d).
            let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.extend(f16::from_f32(d).to_le_bytes());
            out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
        }
        GgmlType::Q4_0 => {
            // d = (the value of largest magnitude) / -8, q = min(15, trunc(x / d + 8.5)).
            let max = x.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let d = max / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.extend(f16::from_f32(d).to_le_bytes());
            let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
            out.extend((0..QK / 2).map(|j| q(x[j]) | (q(x[j + QK / 2]) << 4)));
        }
        _ => {
            // Q4_1: d = (max - min) / 15, m = min, q = min(15, trunc((x - min) / d + 0.5)).
            let min = x.iter().copied().fold(f32::INFINITY, f32::min);
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.extend(f16::from_f32(d).to_le_bytes());
            out.extend(f16::from_f32(min).to_le_bytes());
            let q = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
            out.extend((0..QK / 2).map(|j| q(x[j]) | (q(x[j + QK / 2]) << 4)));
        }
    }
    out
}
