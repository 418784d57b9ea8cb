//! The GPU decode engine: a whole Llama or Qwen3 model on nanofuse's kernels, one token per
//! step, each step one CUDA-graph replay.
//!
//! # The step
//! `decode_step_begin` (the token: from the prompt buffer, or the previous step's argmax;
//! the embedding row; the position advanced in device memory) → per layer ([`layer`]) →
//! the head: fused RMSNorm + LM head + argmax into a 64-bit slot (greedy; logits never
//! written), or RMSNorm + cuBLAS LM head into logits (sampling, tests). Everything a step
//! reads that changes between steps (position, token, context length) lives in device
//! memory, so one captured graph serves every position: the host only replays it.
//!
//! # Prefill
//! The prompt goes through the same layers as one batch per chunk of up to
//! [`EngineOptions::prefill_chunk`] tokens, launched eagerly (the chunk's M varies): the
//! step-begin kernel embeds the chunk's tokens, every op runs its `Route::Auto` at that M
//! (the fused kernels where they measured faster, RMSNorm + cuBLAS above), RoPE and the
//! KV write take the chunk's rows, and the attention kernel runs causally over them (row
//! `r` sees the cache up to its own position). Only the chunk's last row goes through the
//! head, and only for the prompt's last chunk.
//!
//! # KV cache
//! bf16, preallocated for `max_seq` positions: `k_cache`, `v_cache`
//! `[layers, kv_heads, max_seq, head_dim]` (element `(l, h, p, d)` at
//! `((l · kv_heads + h) · max_seq + p) · head_dim + d`). The host refuses a step past
//! `max_seq` ([`Error::SequenceTooLong`]); the kernels also check on the device and set a
//! flag instead of writing out of bounds, which the host turns into [`Error::Device`].

mod layer;

use std::sync::Arc;

use half::bf16;
use nanofuse_host::cudarc::driver::sys::{CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use nanofuse_host::cudarc::driver::{CudaEvent, CudaGraph, CudaSlice, CudaStream};
use nanofuse_host::ops::{self, GemmImpl};
use nanofuse_host::{AttnScratch, AttnShape, FusedRmsNormArgmax, Gpu, argmax, argmax_token, step, step_begin};

pub use layer::Mode;
use layer::{AttnCtx, Buffers, Layer};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::rope::RopeTable;
use crate::sample::{Sampler, Sampling};
use crate::weights::ModelWeights;

/// How an [`Engine`] is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineOptions {
    /// Fused (nanofuse's ops, PDL) or unfused (cuBLAS and elementwise kernels, no PDL).
    pub mode: Mode,
    /// Positions the KV cache holds (prompt and generated tokens together).
    pub max_seq: usize,
    /// Most prompt tokens one prefill batch takes (longer prompts go in chunks); the
    /// activation buffers are sized for it. 1 feeds the prompt one position at a time.
    pub prefill_chunk: usize,
}

/// [`EngineOptions::prefill_chunk`]'s default.
pub const DEFAULT_PREFILL_CHUNK: usize = 256;

impl EngineOptions {
    /// Options for `mode` and `max_seq` with the default prefill chunk.
    pub fn new(mode: Mode, max_seq: usize) -> Self {
        EngineOptions { mode, max_seq, prefill_chunk: DEFAULT_PREFILL_CHUNK }
    }
}

/// Which head a step ends with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Head {
    /// The greedy token into the argmax slot.
    Argmax,
    /// Logits `[vocab]` (bf16) for host-side sampling or inspection.
    Logits,
}

/// Timings of one [`Engine::generate`] call (host clock around synchronized work).
#[derive(Clone, Debug, Default)]
pub struct GenerateStats {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Seconds from the start to the first generated token (the prefill).
    pub prefill_s: f64,
    /// Tokens generated after the first.
    pub decode_tokens: usize,
    /// Seconds for those.
    pub decode_s: f64,
}

/// A model on the GPU, ready to decode (see the module documentation).
pub struct Engine {
    gpu: Arc<Gpu>,
    cfg: ModelConfig,
    opts: EngineOptions,
    attn: AttnShape,
    layers: Vec<Layer>,
    embed: CudaSlice<bf16>,
    final_norm: CudaSlice<bf16>,
    /// The untied LM head; `None` when tied (the embedding serves).
    lm_head: Option<CudaSlice<bf16>>,
    /// Fused mode's RMSNorm + LM head + argmax.
    fused_head: Option<FusedRmsNormArgmax>,
    rope: CudaSlice<f32>,
    k_cache: CudaSlice<bf16>,
    v_cache: CudaSlice<bf16>,
    scratch: AttnScratch,
    bufs: Buffers,
    logits: CudaSlice<bf16>,
    state: CudaSlice<u32>,
    slot: CudaSlice<u64>,
    prompt: CudaSlice<u32>,
    tokens: CudaSlice<u32>,
    graphs: [Option<CudaGraph>; 2],
    /// Positions fed so far (the cache holds `0..fed`).
    fed: usize,
    /// The device's `state[PROMPT_LEN]`: positions below it take the prompt buffer's token.
    prompt_len: usize,
}

impl Engine {
    /// Uploads `weights` (checked against `cfg`) for `opts.mode`, allocates the KV cache and
    /// the step's buffers, runs one step eagerly (creating cuBLAS handles and everything
    /// else a first call creates) and captures the step's graphs. `progress(done, total)`
    /// is called after each layer's upload.
    pub fn new(
        gpu: &Arc<Gpu>,
        cfg: &ModelConfig,
        weights: &ModelWeights,
        opts: EngineOptions,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Engine> {
        cfg.validate()?;
        if opts.max_seq == 0 {
            return Err(Error::config("max_seq", "must be positive"));
        }
        if opts.prefill_chunk == 0 || opts.prefill_chunk > nanofuse_host::ATTN_MAX_ROWS {
            return Err(Error::config("prefill_chunk", "must be 1 to 65535"));
        }
        // No chunk is longer than the cache.
        let chunk = opts.prefill_chunk.min(opts.max_seq);
        if weights.layers.len() != cfg.num_layers {
            return Err(Error::config("num_hidden_layers", "the weights have another number of layers"));
        }
        // Each engine has its own view of the device: the PDL setting is per view.
        let gpu = gpu.on_stream(gpu.stream().clone())?;
        gpu.set_pdl(opts.mode == Mode::Fused);
        let attn = AttnShape {
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            max_seq: opts.max_seq,
        };
        let total = cfg.num_layers + 1;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for (i, w) in weights.layers.iter().enumerate() {
            layers.push(Layer::new(&gpu, cfg, w, opts.mode, chunk)?);
            progress(i + 1, total);
        }
        let embed = gpu.upload(&weights.embed_tokens.data)?;
        let final_norm = gpu.upload(&weights.final_norm.data)?;
        let head_w = if cfg.tie_word_embeddings { &weights.embed_tokens } else { weights.lm_head() };
        let lm_head = if cfg.tie_word_embeddings { None } else { Some(gpu.upload(&head_w.data)?) };
        let fused_head = match opts.mode {
            Mode::Fused => Some(FusedRmsNormArgmax::new(
                &gpu,
                cfg.hidden_size,
                cfg.vocab_size,
                cfg.rms_norm_eps,
                &weights.final_norm.data,
                &head_w.data,
            )?),
            Mode::Unfused => None,
        };
        progress(total, total);

        let table = RopeTable::new(cfg, opts.max_seq);
        let half = cfg.head_dim / 2;
        let mut rope = Vec::with_capacity(opts.max_seq * cfg.head_dim);
        for p in 0..opts.max_seq {
            rope.extend_from_slice(&table.cos(p)[..half]);
            rope.extend_from_slice(&table.sin(p)[..half]);
        }
        let cache_len = cfg.num_layers * cfg.kv_dim() * opts.max_seq;
        let mut engine = Engine {
            attn,
            layers,
            embed,
            final_norm,
            lm_head,
            fused_head,
            rope: gpu.upload(&rope)?,
            k_cache: gpu.alloc_zeros(cache_len)?,
            v_cache: gpu.alloc_zeros(cache_len)?,
            scratch: AttnScratch::with_rows(&gpu, &attn, chunk)?,
            bufs: Buffers::new(&gpu, cfg, chunk)?,
            logits: gpu.alloc_zeros(cfg.vocab_size)?,
            state: gpu.alloc_zeros(step::LEN)?,
            slot: gpu.alloc_zeros(1)?,
            prompt: gpu.alloc_zeros(opts.max_seq)?,
            tokens: gpu.alloc_zeros(opts.max_seq)?,
            graphs: [None, None],
            fed: 0,
            prompt_len: 0,
            gpu,
            cfg: cfg.clone(),
            opts,
        };
        // One eager step of each head outside any capture, then the graphs.
        for head in [Head::Argmax, Head::Logits] {
            engine.reset(&[0])?;
            engine.enqueue_rows(1, Some(head), None, &mut |_| Ok(()))?;
            engine.check_flags()?;
        }
        for head in [Head::Argmax, Head::Logits] {
            let graph = engine.capture(head, None)?;
            engine.graphs[head as usize] = Some(graph);
        }
        engine.reset(&[0])?;
        Ok(engine)
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// How the engine was built.
    pub fn options(&self) -> EngineOptions {
        self.opts
    }

    /// The device view the engine issues on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Positions in the KV cache (prompt and generated tokens fed so far).
    pub fn position(&self) -> usize {
        self.fed
    }

    /// Weight bytes one decode step reads at least once: every projection and the LM head
    /// (the embedding contributes one row; norms are negligible and not counted).
    pub fn weight_bytes_per_token(&self) -> u64 {
        weight_bytes_per_token(&self.cfg)
    }

    /// Starts a new sequence: the prompt (at least one token, ids below the vocabulary)
    /// goes to the device; nothing is computed until a step runs.
    pub fn reset(&mut self, prompt: &[u32]) -> Result<()> {
        if prompt.is_empty() {
            return Err(Error::config("prompt", "needs at least one token"));
        }
        if prompt.len() > self.opts.max_seq {
            return Err(Error::SequenceTooLong { needed: prompt.len(), capacity: self.opts.max_seq });
        }
        if let Some(&id) = prompt.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(Error::TokenId { id, vocab: self.cfg.vocab_size });
        }
        let stream = self.gpu.stream().clone();
        stream.memcpy_htod(prompt, &mut self.prompt.slice_mut(..prompt.len())).map_err(driver("prompt upload"))?;
        let mut state = [0u32; step::LEN];
        state[step::POS] = u32::MAX;
        state[step::PROMPT_LEN] = prompt.len() as u32;
        stream.memcpy_htod(&state, &mut self.state).map_err(driver("state upload"))?;
        stream.memcpy_htod(&[0u64], &mut self.slot).map_err(driver("slot reset"))?;
        self.fed = 0;
        self.prompt_len = prompt.len();
        Ok(())
    }

    /// Resets to `prompt`, feeds every prompt position (batched prefill, module
    /// documentation), and returns the greedy next token.
    pub fn prefill(&mut self, prompt: &[u32]) -> Result<u32> {
        self.reset(prompt)?;
        self.feed_prompt(Head::Argmax)?;
        self.next_token()
    }

    /// As [`Engine::prefill`], returning the logits at the prompt's last position (f32 from
    /// the bf16 the head wrote) instead of the greedy token; a following
    /// [`Engine::decode_step`] feeds their argmax.
    pub fn prefill_logits(&mut self, prompt: &[u32]) -> Result<Vec<f32>> {
        self.reset(prompt)?;
        self.feed_prompt(Head::Logits)?;
        self.finish()?;
        Ok(self.gpu.download(&self.logits)?.iter().map(|v| v.to_f32()).collect())
    }

    /// Feeds the last greedy token and returns the next one (synchronizes).
    pub fn decode_step(&mut self) -> Result<u32> {
        self.enqueue_steps(1, Head::Argmax)?;
        self.next_token()
    }

    /// Enqueues `n` greedy decode steps without waiting (for benchmarks: time them with
    /// events on [`Engine::gpu`]'s stream, then call [`Engine::finish`]).
    pub fn enqueue_decode_steps(&mut self, n: usize) -> Result<()> {
        self.enqueue_steps(n, Head::Argmax)
    }

    /// Waits for the enqueued steps and checks the device's error flags.
    pub fn finish(&mut self) -> Result<()> {
        self.gpu.synchronize()?;
        self.check_flags()
    }

    /// The tokens fed so far, positions `0..position()` (synchronizes).
    pub fn tokens(&mut self) -> Result<Vec<u32>> {
        self.finish()?;
        let all = self.gpu.download(&self.tokens)?;
        Ok(all[..self.fed].to_vec())
    }

    /// The greedy token the last step produced (synchronizes).
    pub fn next_token(&mut self) -> Result<u32> {
        self.finish()?;
        let key = self.gpu.download(&self.slot)?;
        Ok(argmax_token(key[0]))
    }

    /// Feeds `token` (or, with `None`, the next prompt token or the last greedy token) at
    /// the next position and returns the logits there, f32 from the bf16 the head wrote.
    pub fn step_logits(&mut self, token: Option<u32>) -> Result<Vec<f32>> {
        if let Some(t) = token {
            self.force_next(t)?;
        }
        self.enqueue_steps(1, Head::Logits)?;
        self.finish()?;
        Ok(self.gpu.download(&self.logits)?.iter().map(|v| v.to_f32()).collect())
    }

    /// Greedy or sampled generation: the prompt, then up to `max_new` tokens, stopping
    /// after one of `stop` (the model's EOS ids, typically) or when `on_token` returns
    /// false. Every new token goes to `on_token` as it is produced. Returns the new tokens
    /// and the timings.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        sampling: Sampling,
        stop: &[u32],
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<(Vec<u32>, GenerateStats)> {
        let mut sampler = Sampler::new(sampling)?;
        if prompt.len() + max_new.saturating_sub(1) > self.opts.max_seq {
            return Err(Error::SequenceTooLong {
                needed: prompt.len() + max_new.saturating_sub(1),
                capacity: self.opts.max_seq,
            });
        }
        let mut stats = GenerateStats { prompt_tokens: prompt.len(), ..Default::default() };
        let mut out = Vec::new();
        if max_new == 0 {
            return Ok((out, stats));
        }
        let t0 = std::time::Instant::now();
        let mut next = if sampler.needs_logits() {
            let logits = self.prefill_logits(prompt)?;
            sampler.pick(&logits)
        } else {
            self.prefill(prompt)?
        };
        stats.prefill_s = t0.elapsed().as_secs_f64();
        let t1 = std::time::Instant::now();
        loop {
            out.push(next);
            let go_on = on_token(next);
            if !go_on || stop.contains(&next) || out.len() == max_new {
                break;
            }
            next = if sampler.needs_logits() {
                let logits = self.step_logits(Some(next))?;
                sampler.pick(&logits)
            } else {
                self.decode_step()?
            };
        }
        stats.decode_tokens = out.len() - 1;
        stats.decode_s = t1.elapsed().as_secs_f64();
        Ok((out, stats))
    }

    /// Times greedy steps stage by stage, from the current position on: a graph of one
    /// step with an event after each stage (which also breaks PDL's overlap between stages,
    /// so the sum exceeds a real step), replayed `replays` times, each replay one more
    /// position. Returns (stage, median µs summed over the layers).
    pub fn profile_step(&mut self, replays: usize) -> Result<Vec<(&'static str, f64)>> {
        let stream = self.gpu.stream().clone();
        let ctx = self.gpu.context().clone();
        let mut marks: Vec<(&'static str, CudaEvent)> = Vec::new();
        let first = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(driver("cuEventCreate"))?;
        // Events are created before the capture; recording them inside it adds graph nodes.
        let stages = 2 + 6 * self.cfg.num_layers;
        let events: Vec<CudaEvent> = (0..stages)
            .map(|_| ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)))
            .collect::<std::result::Result<_, _>>()
            .map_err(driver("cuEventCreate"))?;
        if self.fed + replays.max(1) > self.opts.max_seq {
            return Err(Error::SequenceTooLong { needed: self.fed + replays.max(1), capacity: self.opts.max_seq });
        }
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).map_err(driver("capture"))?;
        let mut pool = events.into_iter();
        let result = (|| {
            record_external(&first, &stream)?;
            let mut mark = |name: &'static str| -> Result<()> {
                let e = pool.next().ok_or_else(|| Error::config("profile", "more stages than events"))?;
                record_external(&e, &stream)?;
                marks.push((name, e));
                Ok(())
            };
            self.enqueue_rows(1, Some(Head::Argmax), None, &mut mark)
        })();
        let graph = stream.end_capture(CUgraphInstantiate_flags(0)).map_err(driver("cuStreamEndCapture"));
        result?;
        let graph = graph?.ok_or_else(|| Error::config("profile", "empty graph"))?;
        let mut per_stage: Vec<(&'static str, Vec<f64>)> = Vec::new();
        for _ in 0..replays.max(1) {
            graph.launch().map_err(driver("cuGraphLaunch"))?;
            self.fed += 1;
            self.finish()?;
            let mut sums: Vec<(&'static str, f64)> = Vec::new();
            let mut prev = &first;
            for (name, e) in &marks {
                let us = f64::from(prev.elapsed_ms(e).map_err(driver("cuEventElapsedTime"))?) * 1e3;
                match sums.iter_mut().find(|(n, _)| n == name) {
                    Some((_, s)) => *s += us,
                    None => sums.push((name, us)),
                }
                prev = e;
            }
            for (name, us) in sums {
                match per_stage.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, v)) => v.push(us),
                    None => per_stage.push((name, vec![us])),
                }
            }
        }
        Ok(per_stage
            .into_iter()
            .map(|(name, mut v)| {
                v.sort_by(f64::total_cmp);
                (name, v[v.len() / 2])
            })
            .collect())
    }

    /// The stages of a step that [`Engine::profile_leave_one_out`] leaves out in turn.
    pub const STAGES: [&'static str; 7] = ["qkv", "rope", "attention", "o_proj", "gate_up", "down", "head"];

    /// Times greedy steps with each stage left out of every layer in turn, so that PDL's
    /// overlap between the stages that stay is kept (unlike [`Engine::profile_step`]): per
    /// variant a step graph without that stage is captured and replayed `steps` times back
    /// to back between two events, from the current position on. Returns (`"full"` or the
    /// stage, µs per step): the whole step first and again last (their difference is the
    /// run's noise), and a stage's time saved is the whole step's minus its variant's. The
    /// outputs of a step without a stage are wrong: this is a timing only, and the engine
    /// should be reset before it generates again (every step takes token 0 from the prompt
    /// buffer; the fused decode step's attention kernel also writes the KV cache, so without
    /// it later steps attend over rows never written). Stages a mode does not have (the
    /// fused decode step's RoPE is inside its attention kernel) are not listed.
    pub fn profile_leave_one_out(&mut self, steps: usize) -> Result<Vec<(&'static str, f64)>> {
        let steps = steps.max(1);
        let fused = self.opts.mode == Mode::Fused;
        let variants: Vec<Option<&'static str>> = std::iter::once(None)
            .chain(Self::STAGES.iter().copied().filter(|&s| !(fused && s == "rope")).map(Some))
            .chain(std::iter::once(None))
            .collect();
        let needed = self.fed + variants.len() * (steps + 1);
        if needed > self.opts.max_seq {
            return Err(Error::SequenceTooLong { needed, capacity: self.opts.max_seq });
        }
        let ctx = self.gpu.context().clone();
        let event = || ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(driver("cuEventCreate"));
        let (start, end) = (event()?, event()?);
        let stream = self.gpu.stream().clone();
        // Every step of the profile takes its token (0) from the prompt buffer, not from the
        // head's slot: the variant without the head writes no slot, and a step after it
        // would read an empty one (a token outside the vocabulary, flagged by the device).
        let fill = vec![0u32; needed - self.fed];
        stream.memcpy_htod(&fill, &mut self.prompt.slice_mut(self.fed..needed)).map_err(driver("token upload"))?;
        self.prompt_len = self.prompt_len.max(needed);
        let len = [self.prompt_len as u32];
        let p = step::PROMPT_LEN;
        stream.memcpy_htod(&len, &mut self.state.slice_mut(p..p + 1)).map_err(driver("state upload"))?;
        let mut out = Vec::new();
        for skip in variants {
            let graph = self.capture(Head::Argmax, skip)?;
            // One replay first (the graph's first launch), untimed.
            graph.launch().map_err(driver("cuGraphLaunch"))?;
            self.fed += 1;
            start.record(&stream).map_err(driver("cuEventRecord"))?;
            for _ in 0..steps {
                graph.launch().map_err(driver("cuGraphLaunch"))?;
                self.fed += 1;
            }
            end.record(&stream).map_err(driver("cuEventRecord"))?;
            self.finish()?;
            let us = f64::from(start.elapsed_ms(&end).map_err(driver("cuEventElapsedTime"))?) * 1e3;
            out.push((skip.unwrap_or("full"), us / steps as f64));
        }
        Ok(out)
    }

    /// Makes the next step take `token` instead of the prompt's or the argmax.
    fn force_next(&mut self, token: u32) -> Result<()> {
        if token as usize >= self.cfg.vocab_size {
            return Err(Error::TokenId { id: token, vocab: self.cfg.vocab_size });
        }
        if self.fed >= self.opts.max_seq {
            return Err(Error::SequenceTooLong { needed: self.fed + 1, capacity: self.opts.max_seq });
        }
        let stream = self.gpu.stream().clone();
        let at = self.fed;
        stream.memcpy_htod(&[token], &mut self.prompt.slice_mut(at..at + 1)).map_err(driver("token upload"))?;
        // Positions below PROMPT_LEN take their token from the prompt buffer; never shorten
        // the part of the prompt still to be fed.
        self.prompt_len = self.prompt_len.max(at + 1);
        let len = [self.prompt_len as u32];
        let p = step::PROMPT_LEN;
        stream.memcpy_htod(&len, &mut self.state.slice_mut(p..p + 1)).map_err(driver("state upload"))?;
        Ok(())
    }

    /// Replays the step graph of `head` `n` times (no synchronization).
    fn enqueue_steps(&mut self, n: usize, head: Head) -> Result<()> {
        if self.fed + n > self.opts.max_seq {
            return Err(Error::SequenceTooLong { needed: self.fed + n, capacity: self.opts.max_seq });
        }
        let graph = self.graphs[head as usize].as_ref().ok_or_else(|| Error::config("graph", "not captured"))?;
        for _ in 0..n {
            graph.launch().map_err(driver("cuGraphLaunch"))?;
            // Per launch, so that the count stays the device's if a later launch fails.
            self.fed += 1;
        }
        Ok(())
    }

    /// Feeds the rest of the prompt (positions `fed..prompt_len`) in chunks of up to
    /// `prefill_chunk` rows, launched eagerly; the last chunk ends with `head` on its last
    /// row. No synchronization.
    fn feed_prompt(&mut self, head: Head) -> Result<()> {
        let mut left = self.prompt_len.saturating_sub(self.fed);
        if left == 0 {
            return Err(Error::config("prompt", "every prompt position is already fed"));
        }
        while left > 0 {
            let rows = left.min(self.bufs.rows);
            left -= rows;
            self.enqueue_rows(rows, (left == 0).then_some(head), None, &mut |_| Ok(()))?;
            self.fed += rows;
        }
        Ok(())
    }

    /// Captures one step with `head` into a graph.
    fn capture(&mut self, head: Head, skip: Option<&str>) -> Result<CudaGraph> {
        let stream = self.gpu.stream().clone();
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).map_err(driver("capture"))?;
        let result = self.enqueue_rows(1, Some(head), skip, &mut |_| Ok(()));
        // End the capture even when the enqueue failed, so the stream is usable again.
        let graph = stream.end_capture(CUgraphInstantiate_flags(0)).map_err(driver("cuStreamEndCapture"));
        result?;
        let graph = graph?.ok_or_else(|| Error::config("graph", "the capture is empty"))?;
        graph.upload().map_err(driver("cuGraphUpload"))?;
        Ok(graph)
    }

    /// Enqueues the next `rows` positions (a decode step: 1; a prefill chunk: more; at most
    /// the buffers' rows), then `head` on the last of them (none: the prefill chunks before
    /// the prompt's last); `mark` after each stage. Every stage but `skip` (only for
    /// timings: without a stage the results are wrong).
    fn enqueue_rows(
        &mut self,
        rows: usize,
        head: Option<Head>,
        skip: Option<&str>,
        mark: &mut dyn FnMut(&'static str) -> Result<()>,
    ) -> Result<()> {
        if rows == 0 || rows > self.bufs.rows {
            return Err(Error::config("rows", "a chunk must be 1 to prefill_chunk positions"));
        }
        if self.fed + rows > self.opts.max_seq {
            return Err(Error::SequenceTooLong { needed: self.fed + rows, capacity: self.opts.max_seq });
        }
        let Engine {
            gpu,
            cfg,
            opts,
            attn,
            layers,
            embed,
            final_norm,
            lm_head,
            fused_head,
            rope,
            k_cache,
            v_cache,
            scratch,
            bufs,
            logits,
            state,
            slot,
            prompt,
            tokens,
            ..
        } = self;
        let (gpu, cfg) = (&**gpu, &*cfg);
        let (h, v, eps) = (cfg.hidden_size, cfg.vocab_size, cfg.rms_norm_eps);
        step_begin(gpu, embed, v, h, rows, prompt, state, slot, tokens, &mut bufs.h.slice_mut(..rows * h))?;
        mark("step_begin")?;
        let per_layer = cfg.kv_dim() * opts.max_seq;
        let mut at = AttnCtx { shape: attn, rope, state, scratch, k_cache, v_cache, per_layer, eps };
        for (l, layer) in layers.iter().enumerate() {
            layer.enqueue(gpu, cfg, bufs, &mut at, l, rows, skip, mark)?;
        }
        let Some(head) = head.filter(|_| skip != Some("head")) else { return Ok(()) };
        let last = bufs.h.slice((rows - 1) * h..rows * h);
        let w = lm_head.as_ref().unwrap_or(embed);
        match (head, fused_head.as_ref()) {
            (Head::Argmax, Some(fused)) => fused.forward_into(&last, 1, slot)?,
            // The unfused greedy head, and the logits head of both modes: logits, then their
            // argmax (so that a greedy step after a logits step finds its token in the slot).
            _ => {
                let mut xn = bufs.xn.slice_mut(..h);
                ops::rms_norm(gpu, &last, final_norm, &mut xn, 1, h, eps)?;
                ops::gemm(gpu, GemmImpl::Cublas, &xn, w, logits, 1, h, v)?;
                argmax(gpu, logits, v, slot)?;
            }
        }
        mark("head")
    }

    /// Turns the device's error flags into an error.
    fn check_flags(&mut self) -> Result<()> {
        let state = self.gpu.download(&self.state)?;
        let flags = state[step::FLAGS];
        if flags != 0 {
            let mut what = Vec::new();
            if flags & step::FLAG_OVERFLOW != 0 {
                what.push("a position past the KV cache");
            }
            if flags & step::FLAG_BAD_TOKEN != 0 {
                what.push("a token outside the vocabulary");
            }
            return Err(Error::Device(format!("the step kernels reported {} (flags {flags:#x})", what.join(" and "))));
        }
        Ok(())
    }
}

/// [`Engine::weight_bytes_per_token`] for a config: `2 · (layers · (H · (q + 2 kv) + q · H
/// + 3 H I) + V · H)` bytes of bf16.
pub fn weight_bytes_per_token(cfg: &ModelConfig) -> u64 {
    let (h, q, kv, i) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
    let layer = h * (q + 2 * kv) + q * h + 3 * h * i;
    2 * (cfg.num_layers * layer + cfg.vocab_size * h) as u64
}

/// Records `event` on a capturing `stream` as an event-record node of the graph (a plain
/// `cuEventRecord` during capture only orders the capture and is never replayed).
fn record_external(event: &CudaEvent, stream: &CudaStream) -> Result<()> {
    use nanofuse_host::cudarc::driver::sys;
    let flags = sys::CUevent_record_flags_enum::CU_EVENT_RECORD_EXTERNAL as u32;
    // SAFETY: both handles are live (owned by the caller) and of the same context.
    unsafe { sys::cuEventRecordWithFlags(event.cu_event(), stream.cu_stream(), flags) }
        .result()
        .map_err(driver("cuEventRecordWithFlags"))
}

/// Maps a cudarc driver error to the host crate's error, naming the call.
fn driver(what: &'static str) -> impl Fn(nanofuse_host::cudarc::driver::DriverError) -> Error {
    move |e| Error::Gpu(nanofuse_host::Error::driver(what)(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_bytes_match_the_published_sizes() {
        // Llama-3.2-1B: 2.47 GB per token; Qwen3-0.6B: 1.19 GB (issue 25's floors).
        let l = weight_bytes_per_token(&ModelConfig::preset("llama-3.2-1b").unwrap());
        assert!((2.46e9..2.48e9).contains(&(l as f64)), "{l}");
        let q = weight_bytes_per_token(&ModelConfig::preset("qwen3-0.6b").unwrap());
        assert!((1.18e9..1.20e9).contains(&(q as f64)), "{q}");
    }
}
