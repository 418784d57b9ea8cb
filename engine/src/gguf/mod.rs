//! GGUF, llama.cpp's model file format (versions 2 and 3): a reader ([`GgufFile`]), the
//! dequantization of its tensor types to bf16 ([`dequant`]), the mapping of a GGUF model to
//! a [`crate::ModelConfig`] and [`crate::ModelWeights`] ([`model`]) and a small writer for
//! tests and tools ([`writer`]).
//!
//! Hand-written rather than taken from crates.io: of the GGUF crates there, `gguf-rs-lib`
//! and `ggus` reject version 2 files, `gguf-rs` makes every user build its CLI's
//! dependencies (clap, comfy-table, a logger), and `gguf` (nom) neither computes the data
//! offset nor bounds the lengths it allocates. The format is small enough to read in one
//! file, with every length checked against the file's size.
//!
//! # Layout (all integers little-endian)
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | metadata_kv_count u64
//! metadata_kv_count x (key: string, value_type: u32, value)
//! tensor_count x (name: string, n_dims: u32, ne: n_dims x u64, ggml_type: u32, offset: u64)
//! padding to `general.alignment` (default 32)
//! tensor data: each tensor at data_start + offset (offset a multiple of the alignment)
//! ```
//! A string is a `u64` byte length and UTF-8 bytes (no terminator). A value is one of the
//! [`Value`] types; an array is `element_type: u32, count: u64, count x value` (arrays may
//! nest). A tensor's `ne[0]` is its fastest-varying dimension (a row of `in_features`
//! elements for a weight matrix): the row-major shape is `ne` reversed
//! ([`TensorInfo::shape`]). Version 1 (32-bit counts) is not read.

pub mod dequant;
pub mod model;
pub mod writer;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::weights::Tensor;

/// The file's first four bytes.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Tensor data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's limit on tensor dimensions.
pub const MAX_DIMS: usize = 4;

/// A metadata value. The numbers in brackets are the GGUF type ids.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),       // 0
    I8(i8),       // 1
    U16(u16),     // 2
    I16(i16),     // 3
    U32(u32),     // 4
    I32(i32),     // 5
    F32(f32),     // 6
    Bool(bool),   // 7
    Str(String),  // 8
    Array(Array), // 9
    U64(u64),     // 10
    I64(i64),     // 11
    F64(f64),     // 12
}

/// An array value: its element type id (kept for empty arrays and for writing) and elements.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub elem_type: u32,
    pub values: Vec<Value>,
}

impl Value {
    /// The GGUF type id.
    pub const fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// An integer of any width as `u64` (`None` if negative or not an integer).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any number as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(&a.values),
            _ => None,
        }
    }

    /// A short description for messages: the value, or an array's type and length.
    pub fn describe(&self) -> String {
        match self {
            Value::Str(s) if s.len() > 60 => format!("{:?}... ({} bytes)", &s[..s.floor_char_boundary(60)], s.len()),
            Value::Str(s) => format!("{s:?}"),
            Value::Array(a) => format!("[{} x type {}]", a.values.len(), a.elem_type),
            Value::U8(v) => v.to_string(),
            Value::I8(v) => v.to_string(),
            Value::U16(v) => v.to_string(),
            Value::I16(v) => v.to_string(),
            Value::U32(v) => v.to_string(),
            Value::I32(v) => v.to_string(),
            Value::U64(v) => v.to_string(),
            Value::I64(v) => v.to_string(),
            Value::F32(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
        }
    }
}

/// A ggml tensor type. Block sizes are known for the common types so that a file's layout
/// can be checked; [`dequant`] converts F32, F16, BF16, Q8_0, Q4_0 and Q4_1.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    BF16,
    /// Any other id (the i-quants, integer types, ...): listed, not read.
    Other(u32),
}

impl GgmlType {
    /// The type of a ggml type id (`ggml_type` in ggml.h).
    pub const fn from_id(id: u32) -> GgmlType {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            10 => GgmlType::Q2_K,
            11 => GgmlType::Q3_K,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            15 => GgmlType::Q8_K,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    /// The ggml type id.
    pub const fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::Q8_K => 15,
            GgmlType::BF16 => 30,
            GgmlType::Other(id) => id,
        }
    }

    /// `(elements per block, bytes per block)`; `None` for [`GgmlType::Other`].
    pub const fn block(self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q8_1 => (32, 36),
            GgmlType::Q2_K => (256, 84),
            GgmlType::Q3_K => (256, 110),
            GgmlType::Q4_K => (256, 144),
            GgmlType::Q5_K => (256, 176),
            GgmlType::Q6_K => (256, 210),
            GgmlType::Q8_K => (256, 292),
            GgmlType::Other(_) => return None,
        })
    }
}

/// A tensor's entry in the file header.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml's `ne`: `ne[0]` the fastest-varying dimension.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The row-major shape, outermost first (`dims` reversed): `[out, in]` for a weight.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Bytes of data (`None` for a type whose block size is unknown, or rows that are not
    /// whole blocks).
    pub fn byte_size(&self) -> Option<u64> {
        let (elems, bytes) = self.ggml_type.block()?;
        let row = *self.dims.first().unwrap_or(&1);
        if !row.is_multiple_of(elems as u64) {
            return None;
        }
        self.numel().checked_div(elems as u64)?.checked_mul(bytes as u64)
    }
}

/// A parsed GGUF file: its metadata and tensor directory. Tensor data stays in the file and
/// is read on request ([`GgufFile::tensor_bytes`], [`GgufFile::tensor`]).
#[derive(Clone, Debug)]
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    /// In file order.
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_start: u64,
    pub file_len: u64,
}

impl GgufFile {
    /// Reads the header, metadata and tensor directory of `path` and checks that every
    /// tensor of a known type lies inside the file at an aligned offset.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let mut r = Cursor { inner: BufReader::new(file), pos: 0, len: file_len };

        let magic: [u8; 4] = r.array()?;
        if magic != MAGIC {
            return Err(Error::Gguf(format!("{}: not a GGUF file (magic {magic:02x?})", path.display())));
        }
        let version = r.u32()?;
        if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            return Err(Error::Gguf(format!("{}: big-endian GGUF is not supported", path.display())));
        }
        if !(2..=3).contains(&version) {
            return Err(Error::Gguf(format!("{}: GGUF version {version} is not supported (2, 3)", path.display())));
        }
        let tensor_count = r.u64()?;
        let kv_count = r.u64()?;

        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = r.string()?;
            let ty = r.u32()?;
            let value = r.value(ty, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(Error::Gguf(format!("duplicate metadata key `{key}`")));
            }
        }

        // Each tensor entry is at least 8 + 4 + 4 + 8 bytes.
        r.need(tensor_count.saturating_mul(24))?;
        let mut tensors = Vec::with_capacity(tensor_count as usize);
        for _ in 0..tensor_count {
            let name = r.string()?;
            let n_dims = r.u32()? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(Error::Gguf(format!("tensor `{name}` has {n_dims} dimensions (1..={MAX_DIMS})")));
            }
            let dims = (0..n_dims).map(|_| r.u64()).collect::<Result<Vec<u64>>>()?;
            let ggml_type = GgmlType::from_id(r.u32()?);
            let offset = r.u64()?;
            tensors.push(TensorInfo { name, dims, ggml_type, offset });
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(Error::Gguf(format!("general.alignment = {} is not a power of two", v.describe()))),
            },
        };
        let data_start = r.pos.next_multiple_of(alignment);

        let gguf = GgufFile { path, version, metadata, tensors, alignment, data_start, file_len };
        gguf.check_tensors()?;
        Ok(gguf)
    }

    /// Names unique, offsets aligned, known-size tensors inside the file.
    fn check_tensors(&self) -> Result<()> {
        let mut names = std::collections::HashSet::new();
        for t in &self.tensors {
            if !names.insert(t.name.as_str()) {
                return Err(Error::Gguf(format!("duplicate tensor `{}`", t.name)));
            }
            if !t.offset.is_multiple_of(self.alignment) {
                return Err(Error::Gguf(format!(
                    "tensor `{}` at offset {} is not aligned to {}",
                    t.name, t.offset, self.alignment
                )));
            }
            if let Some(size) = t.byte_size() {
                let end = self.data_start.checked_add(t.offset).and_then(|s| s.checked_add(size));
                if end.is_none_or(|e| e > self.file_len) {
                    return Err(Error::Gguf(format!(
                        "tensor `{}` ({size} bytes at offset {}) runs past the end of the file",
                        t.name, t.offset
                    )));
                }
            }
        }
        Ok(())
    }

    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The directory entry of tensor `name`.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Result<Vec<u8>> {
        let size = info.byte_size().ok_or_else(|| Error::Dtype {
            name: info.name.clone(),
            dtype: format!("{:?} with rows of {}", info.ggml_type, info.dims[0]),
            expected: dequant::SUPPORTED,
        })?;
        let mut file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        file.seek(SeekFrom::Start(self.data_start + info.offset)).map_err(|e| Error::io(&self.path, e))?;
        let mut bytes = vec![0u8; size as usize];
        file.read_exact(&mut bytes).map_err(|e| Error::io(&self.path, e))?;
        Ok(bytes)
    }

    /// Tensor `name` dequantized to bf16, in its row-major shape ([`TensorInfo::shape`]).
    /// Errors: [`Error::MissingTensor`], [`Error::Dtype`] for a type [`dequant`] does not
    /// convert.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let info = self.tensor_info(name).ok_or_else(|| Error::MissingTensor { name: name.to_string() })?;
        if !dequant::is_supported(info.ggml_type) {
            return Err(Error::Dtype {
                name: name.to_string(),
                dtype: format!("{:?}", info.ggml_type),
                expected: dequant::SUPPORTED,
            });
        }
        let bytes = self.tensor_bytes(info)?;
        let data = dequant::dequantize(info.ggml_type, &bytes, info.numel() as usize)
            .map_err(|reason| Error::Gguf(format!("tensor `{name}`: {reason}")))?;
        Ok(Tensor::new(info.shape(), data))
    }
}

/// A reader that knows how many bytes remain, so that no length read from the file makes
/// it allocate more than the file could hold.
struct Cursor<R> {
    inner: R,
    pos: u64,
    len: u64,
}

/// Arrays nested deeper than this are rejected (ggml writes none nested at all).
const MAX_NESTING: u32 = 8;

impl<R: Read> Cursor<R> {
    /// Fails unless `n` more bytes remain.
    fn need(&self, n: u64) -> Result<()> {
        if n > self.len - self.pos {
            return Err(Error::Gguf(format!(
                "truncated: {n} bytes needed at offset {}, {} remain",
                self.pos,
                self.len - self.pos
            )));
        }
        Ok(())
    }

    fn bytes(&mut self, n: u64) -> Result<Vec<u8>> {
        self.need(n)?;
        let mut buf = vec![0u8; n as usize];
        self.inner.read_exact(&mut buf).map_err(|e| Error::Gguf(format!("read at offset {}: {e}", self.pos)))?;
        self.pos += n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.bytes(N as u64)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String> {
        let n = self.u64()?;
        let at = self.pos;
        String::from_utf8(self.bytes(n)?).map_err(|_| Error::Gguf(format!("string at offset {at} is not UTF-8")))
    }

    /// A value of type id `ty`.
    fn value(&mut self, ty: u32, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(u8::from_le_bytes(self.array()?)),
            1 => Value::I8(i8::from_le_bytes(self.array()?)),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(Error::Gguf(format!("bool byte {b} at offset {}", self.pos - 1))),
            },
            8 => Value::Str(self.string()?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(Error::Gguf(format!("arrays nested deeper than {MAX_NESTING}")));
                }
                let elem_type = self.u32()?;
                let count = self.u64()?;
                // Every element takes at least one byte.
                self.need(count)?;
                let values = (0..count).map(|_| self.value(elem_type, depth + 1)).collect::<Result<Vec<_>>>()?;
                Value::Array(Array { elem_type, values })
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(Error::Gguf(format!("unknown value type {other} at offset {}", self.pos - 4))),
        })
    }
}
