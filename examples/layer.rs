//! One decoder layer's fused ops, driven the way an engine drives them: weights in Hugging
//! Face's layout (here made up deterministically, where an engine would read a checkpoint),
//! the ops built once, buffers allocated once, then decode steps that allocate nothing.
//!
//!     cargo run --release --example layer
//!
//! Without a CUDA driver or device it prints `skipped: ...` and exits 0 (CI builds it on a
//! machine without a GPU); any other error is a failure.
//!
//! The attention itself (RoPE, the KV cache, softmax) is the engine's: here `attn` stands in
//! for its output, so the example shows the weight layout and the call sequence only.

use std::process::ExitCode;

use nanofuse::{Error, FusedRmsNormGateUp, FusedRmsNormQkv, MlpShape, ProjResidual, QkvShape, bf16};

/// Qwen3-0.6B's layer: hidden 1024, 16 query heads and 8 KV heads of 128, intermediate 3072.
const HIDDEN: usize = 1024;
const Q_DIM: usize = 2048;
const KV_DIM: usize = 1024;
const INTER: usize = 3072;
const EPS: f32 = 1e-6;

/// A made-up `[rows, cols]` weight (PyTorch `Linear` layout: one row per output feature)
/// with values of about `1/sqrt(cols)`.
fn weight(rows: usize, cols: usize, seed: u32) -> Vec<bf16> {
    let scale = 1.0 / (cols as f32).sqrt();
    (0..rows * cols)
        .map(|i| {
            let h = (i as u32 ^ seed).wrapping_mul(0x9e37_79b9).rotate_left(13).wrapping_mul(0x85eb_ca6b);
            bf16::from_f32(((h >> 8) as f32 / (1 << 24) as f32 - 0.5) * 2.0 * scale)
        })
        .collect()
}

fn run() -> nanofuse::Result<()> {
    let gpu = nanofuse::open(0)?;

    // The checkpoint's tensors of one layer, as PyTorch stores them.
    let input_layernorm = vec![bf16::ONE; HIDDEN]; // model.layers.N.input_layernorm.weight
    let q_proj = weight(Q_DIM, HIDDEN, 1); // self_attn.q_proj.weight [Q_DIM, HIDDEN]
    let k_proj = weight(KV_DIM, HIDDEN, 2); // self_attn.k_proj.weight [KV_DIM, HIDDEN]
    let v_proj = weight(KV_DIM, HIDDEN, 3); // self_attn.v_proj.weight [KV_DIM, HIDDEN]
    let o_proj = weight(HIDDEN, Q_DIM, 4); // self_attn.o_proj.weight [HIDDEN, Q_DIM]
    let post_attention_layernorm = vec![bf16::ONE; HIDDEN];
    let gate_proj = weight(INTER, HIDDEN, 5); // mlp.gate_proj.weight [INTER, HIDDEN]
    let up_proj = weight(INTER, HIDDEN, 6); // mlp.up_proj.weight [INTER, HIDDEN]
    let down_proj = weight(HIDDEN, INTER, 7); // mlp.down_proj.weight [HIDDEN, INTER]

    // The QKV op takes W as the rows of q_proj, then k_proj, then v_proj.
    let w_qkv = [q_proj, k_proj, v_proj].concat();
    let qkv = FusedRmsNormQkv::new(&gpu, QkvShape::new(HIDDEN, Q_DIM, KV_DIM, EPS), &input_layernorm, &w_qkv)?;
    let oproj = ProjResidual::new(&gpu, Q_DIM, HIDDEN, &o_proj)?;
    let mlp_shape = MlpShape::new(HIDDEN, INTER, EPS);
    let gate_up = FusedRmsNormGateUp::new(&gpu, mlp_shape, &post_attention_layernorm, &gate_proj, &up_proj)?;
    let down = ProjResidual::new(&gpu, INTER, HIDDEN, &down_proj)?;

    // Everything a step needs, allocated once for up to MAX_M tokens; `reserve` creates the
    // fallbacks' scratch and cuBLAS handles, so the steps could be captured in a CUDA graph.
    const MAX_M: usize = 16;
    qkv.reserve(MAX_M)?;
    gate_up.reserve(MAX_M)?;
    oproj.reserve()?;
    down.reserve()?;
    let mut h = gpu.upload(&weight(MAX_M, HIDDEN, 8))?; // the residual stream [M, HIDDEN]
    let (mut q, mut k, mut v) =
        (gpu.alloc_zeros(MAX_M * Q_DIM)?, gpu.alloc_zeros(MAX_M * KV_DIM)?, gpu.alloc_zeros(MAX_M * KV_DIM)?);
    let mut a = gpu.alloc_zeros(MAX_M * INTER)?;

    for m in [1, 4, MAX_M] {
        qkv.forward_into(&h, m, &mut q, &mut k, &mut v)?; // q, k, v = split(rmsnorm(h) · Wqkvᵀ)
        // ... the engine's attention over q, k, v and its KV cache would write `attn` [m, Q_DIM];
        // q stands in for it here.
        let attn = &q;
        oproj.forward_into(attn, m, &mut h)?; // h += attn · Woᵀ
        gate_up.forward_into(&h, m, &mut a)?; // a = silu(rmsnorm(h) · Wgᵀ) · (rmsnorm(h) · Wuᵀ)
        down.forward_into(&a, m, &mut h)?; // h += a · Wdᵀ
        let out = gpu.download(&h)?;
        let rms = (out[..m * HIDDEN].iter().map(|x| x.to_f32().powi(2)).sum::<f32>() / (m * HIDDEN) as f32).sqrt();
        println!("M = {m:>2}: residual stream rms {rms:.4}");
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ (Error::NoDriver | Error::NoDevice { .. })) => {
            println!("skipped: {e}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
