//! Hugging Face checkpoints: `config.json` plus safetensors weights.
//!
//! # Format
//! A safetensors file is an 8-byte little-endian header length `n`, `n` bytes of JSON
//! (`{"name": {"dtype": "BF16", "shape": [..], "data_offsets": [start, end]}, ...}`, offsets
//! relative to the end of the header), then the tensor data, row-major and little-endian.
//! The header is parsed by the `safetensors` crate (its `Metadata` type); only the byte
//! ranges of the tensors the model needs are read, one at a time, so peak memory is the
//! model in bf16 plus one tensor.
//!
//! A directory holds one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json` (`{"weight_map": {"tensor name": "shard file", ...}}`).
//! BF16 tensors are taken as they are, F16 and F32 ones rounded to bf16.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::tensor::{Dtype, Metadata};

use super::{ModelWeights, Tensor};
use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// A checkpoint directory's `config.json` and weights.
pub fn load_hf_dir(dir: impl AsRef<Path>) -> Result<(ModelConfig, ModelWeights)> {
    let dir = dir.as_ref();
    let cfg = ModelConfig::from_hf_file(dir.join("config.json"))?;
    let weights = load_weights(dir, &cfg)?;
    Ok((cfg, weights))
}

/// The weights of `cfg` from the safetensors files of `dir`.
pub fn load_weights(dir: impl AsRef<Path>, cfg: &ModelConfig) -> Result<ModelWeights> {
    let checkpoint = Checkpoint::open(dir.as_ref())?;
    ModelWeights::assemble(cfg, |id| id.hf_name(), |id| checkpoint.tensor(&id.hf_name()))
}

/// The tensor names and files of a checkpoint directory.
pub struct Checkpoint {
    shards: Vec<Shard>,
    /// Tensor name -> index into `shards`.
    index: HashMap<String, usize>,
}

/// One safetensors file: its parsed header and where its data starts.
struct Shard {
    path: PathBuf,
    metadata: Metadata,
    data_start: u64,
    file_len: u64,
}

impl Checkpoint {
    /// Opens `dir/model.safetensors.index.json`'s shards, or else `dir/model.safetensors`,
    /// reading their headers.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let index: ShardIndex =
                serde_json::from_str(&text).map_err(|e| Error::Json { path: index_path.clone(), source: e })?;
            let mut files: Vec<String> = index.weight_map.into_values().collect();
            files.sort();
            files.dedup();
            files.into_iter().map(|f| dir.join(f)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        let mut shards = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for path in files {
            let shard = Shard::open(path)?;
            for name in shard.metadata.tensors().into_keys() {
                index.insert(name, shards.len());
            }
            shards.push(shard);
        }
        Ok(Checkpoint { shards, index })
    }

    /// The names of every tensor in the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// Reads tensor `name`, converted to bf16. Errors: [`Error::MissingTensor`], or
    /// [`Error::Dtype`] for a dtype other than BF16, F16, F32.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let shard = self
            .index
            .get(name)
            .map(|&i| &self.shards[i])
            .ok_or_else(|| Error::MissingTensor { name: name.to_string() })?;
        shard.read(name)
    }
}

/// `model.safetensors.index.json`.
#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

/// Largest header accepted (the safetensors crate's own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

impl Shard {
    fn open(path: PathBuf) -> Result<Shard> {
        let bad = |reason: String| Error::Safetensors { path: path.clone(), reason };
        let mut file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(|e| Error::io(&path, e))?;
        let n = u64::from_le_bytes(len);
        if n > MAX_HEADER || 8 + n > file_len {
            return Err(bad(format!("header length {n} does not fit the file of {file_len} bytes")));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header).map_err(|e| Error::io(&path, e))?;
        let metadata: Metadata =
            serde_json::from_slice(&header).map_err(|e| Error::Json { path: path.clone(), source: e })?;
        Ok(Shard { path, metadata, data_start: 8 + n, file_len })
    }

    fn read(&self, name: &str) -> Result<Tensor> {
        let bad = |reason: String| Error::Safetensors { path: self.path.clone(), reason };
        let info = self.metadata.info(name).ok_or_else(|| Error::MissingTensor { name: name.to_string() })?;
        let elem = match info.dtype {
            Dtype::BF16 | Dtype::F16 => 2,
            Dtype::F32 => 4,
            other => {
                return Err(Error::Dtype {
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                    expected: "BF16, F16, F32",
                });
            }
        };
        let numel: usize = info.shape.iter().product();
        let (start, end) = info.data_offsets;
        if end < start || end - start != numel * elem {
            return Err(bad(format!(
                "tensor `{name}`: {} bytes for {numel} elements of {elem}",
                end.wrapping_sub(start)
            )));
        }
        if self.data_start + end as u64 > self.file_len {
            return Err(bad(format!("tensor `{name}` ends past the end of the file")));
        }
        let mut bytes = vec![0u8; end - start];
        let mut file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        file.seek(SeekFrom::Start(self.data_start + start as u64)).map_err(|e| Error::io(&self.path, e))?;
        file.read_exact(&mut bytes).map_err(|e| Error::io(&self.path, e))?;
        let data: Vec<bf16> = match info.dtype {
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]])).collect(),
            Dtype::F16 => {
                bytes.chunks_exact(2).map(|b| bf16::from_f32(f16::from_le_bytes([b[0], b[1]]).to_f32())).collect()
            }
            _ => bytes.chunks_exact(4).map(|b| bf16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect(),
        };
        Ok(Tensor::new(info.shape.clone(), data))
    }
}
