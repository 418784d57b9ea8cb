//! GPU timing as the project measures it: CUDA-graph replays over a ring of distinct
//! input sets (so weights come from DRAM, not L2), timed with CUDA events, medians.

use std::sync::Arc;

use nanofuse::cudarc::driver::sys::{CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use nanofuse::cudarc::driver::{CudaEvent, CudaGraph, CudaSlice};
use nanofuse::{Error, Gpu, Result};

/// Summary of repeated measurements, in microseconds per op.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub median_us: f64,
    pub min_us: f64,
    pub max_us: f64,
    /// Replays measured.
    pub samples: usize,
}

impl Stats {
    /// Summary of `samples` (µs); `None` when empty.
    pub fn of(mut samples: Vec<f64>) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let median = if n % 2 == 1 { samples[n / 2] } else { 0.5 * (samples[n / 2 - 1] + samples[n / 2]) };
        Some(Stats { median_us: median, min_us: samples[0], max_us: samples[n - 1], samples: n })
    }
}

/// Most entries a ring gets: tiny problems would otherwise need tens of thousands of
/// entries (and graph nodes) to exceed the L2, where caching is irrelevant anyway.
pub const MAX_RING: usize = 1024;

/// How many distinct input sets of `bytes_per_set` make a ring larger than `factor` times
/// the L2 cache (at least 2, at most [`MAX_RING`]).
pub fn ring_len(l2_bytes: u64, bytes_per_set: u64, factor: u64) -> usize {
    (factor.saturating_mul(l2_bytes) / bytes_per_set.max(1)).saturating_add(1).clamp(2, MAX_RING as u64) as usize
}

/// A timing pair of CUDA events.
pub struct EventTimer {
    start: CudaEvent,
    end: CudaEvent,
}

impl EventTimer {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        let ev =
            || gpu.context().new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(Error::driver("cuEventCreate"));
        Ok(EventTimer { start: ev()?, end: ev()? })
    }

    /// Milliseconds of GPU time that `work` enqueues on the stream (synchronizes).
    pub fn time_ms(&self, gpu: &Gpu, work: impl FnOnce() -> Result<()>) -> Result<f64> {
        self.start.record(gpu.stream()).map_err(Error::driver("cuEventRecord"))?;
        work()?;
        self.end.record(gpu.stream()).map_err(Error::driver("cuEventRecord"))?;
        self.end.synchronize().map_err(Error::driver("cuEventSynchronize"))?;
        Ok(self.start.elapsed_ms(&self.end).map_err(Error::driver("cuEventElapsedTime"))? as f64)
    }
}

/// A captured ring: one CUDA graph that runs `enqueue(0..ring)` once.
pub struct RingGraph {
    gpu: Arc<Gpu>,
    graph: CudaGraph,
    ring: usize,
    timer: EventTimer,
}

impl RingGraph {
    /// Runs `enqueue(i)` for every ring entry once eagerly (warm-up: module and handle
    /// set-up stay out of the capture), then captures the ring into a graph.
    pub fn capture(gpu: &Arc<Gpu>, ring: usize, mut enqueue: impl FnMut(usize) -> Result<()>) -> Result<Self> {
        for i in 0..ring {
            enqueue(i)?;
        }
        gpu.synchronize()?;
        let stream = gpu.stream();
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(Error::driver("cuStreamBeginCapture"))?;
        let mut captured = Ok(());
        for i in 0..ring {
            captured = enqueue(i);
            if captured.is_err() {
                break;
            }
        }
        // End the capture even when an enqueue failed, so the stream is usable again.
        let graph = stream.end_capture(CUgraphInstantiate_flags(0)).map_err(Error::driver("cuStreamEndCapture"));
        captured?;
        let graph = graph?.ok_or(Error::Value { arg: "graph", expected: "a captured graph", got: "empty".into() })?;
        graph.upload().map_err(Error::driver("cuGraphUpload"))?;
        Ok(RingGraph { gpu: gpu.clone(), graph, ring, timer: EventTimer::new(gpu)? })
    }

    /// Replays the graph `warmup` times untimed, then `replays` times, each timed with
    /// events; returns the time per ring entry.
    pub fn time(&self, warmup: usize, replays: usize) -> Result<Stats> {
        for _ in 0..warmup {
            self.launch()?;
        }
        self.gpu.synchronize()?;
        let mut per_op = Vec::with_capacity(replays);
        for _ in 0..replays {
            let ms = self.timer.time_ms(&self.gpu, || self.launch())?;
            per_op.push(ms * 1000.0 / self.ring as f64);
        }
        Stats::of(per_op).ok_or(Error::Value { arg: "replays", expected: ">= 1", got: "0".into() })
    }

    /// Times several graphs against each other: each is replayed `warmup` times untimed,
    /// then `rounds` rounds replay every graph in turn, `ceil(replays / rounds)` timed
    /// replays each (so at least `replays` in all), so slow drifts of the GPU's state (clocks under its power
    /// limit, temperature) fall on all of them alike instead of on whichever ran last.
    /// Returns each graph's time per ring entry over all its replays.
    pub fn time_interleaved(graphs: &[RingGraph], warmup: usize, replays: usize, rounds: usize) -> Result<Vec<Stats>> {
        let rounds = rounds.clamp(1, replays.max(1));
        let per_round = replays.div_ceil(rounds);
        for g in graphs {
            for _ in 0..warmup {
                g.launch()?;
            }
        }
        let mut samples: Vec<Vec<f64>> = graphs.iter().map(|_| Vec::with_capacity(per_round * rounds)).collect();
        for _ in 0..rounds {
            for (g, out) in graphs.iter().zip(samples.iter_mut()) {
                g.gpu.synchronize()?;
                for _ in 0..per_round {
                    let ms = g.timer.time_ms(&g.gpu, || g.launch())?;
                    out.push(ms * 1000.0 / g.ring as f64);
                }
            }
        }
        samples
            .into_iter()
            .map(|s| Stats::of(s).ok_or(Error::Value { arg: "replays", expected: ">= 1", got: "0".into() }))
            .collect()
    }

    /// One replay, not timed (criterion's `iter_custom` times batches of these itself).
    pub fn launch(&self) -> Result<()> {
        self.graph.launch().map_err(Error::driver("cuGraphLaunch"))
    }

    /// Entries in the ring.
    pub fn ring(&self) -> usize {
        self.ring
    }

    /// Events for callers that time several replays at once.
    pub fn timer(&self) -> &EventTimer {
        &self.timer
    }
}

/// Device-to-device copy bandwidth in GB/s (bytes read + bytes written per second),
/// median of `reps` copies of a `bytes`-sized buffer, measured now on this device.
pub fn copy_bandwidth_gbs(gpu: &Gpu, bytes: usize, reps: usize) -> Result<f64> {
    let src: CudaSlice<u8> = gpu.alloc_zeros(bytes)?;
    let mut dst: CudaSlice<u8> = gpu.alloc_zeros(bytes)?;
    let timer = EventTimer::new(gpu)?;
    let copy = |dst: &mut CudaSlice<u8>| gpu.stream().memcpy_dtod(&src, dst).map_err(Error::driver("cuMemcpyDtoD"));
    copy(&mut dst)?;
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps {
        let ms = timer.time_ms(gpu, || copy(&mut dst))?;
        samples.push(2.0 * bytes as f64 / (ms * 1e-3) / 1e9);
    }
    Ok(Stats::of(samples).map_or(0.0, |s| s.median_us))
}
