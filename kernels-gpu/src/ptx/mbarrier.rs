//! Shared-memory barriers (`mbarrier`, sm_90): the full/empty handshake of a producer/consumer
//! pipeline, and the completion of asynchronous copies (`cp.async` and the tensor memory
//! accelerator) on them.
//!
//! A barrier is one 8-byte word of shared memory. It counts down `count` arrivals (and, with
//! `expect_tx`, a number of bytes that async copies deliver); when both reach zero its phase
//! completes and it rearms for the next phase with the same count. Waits name the phase by
//! its parity: a fresh barrier is in phase 0, and waiting on parity 1 (the phase "before"
//! it) returns at once, which is how a producer's first pass over empty buffers proceeds.

use super::shared::SharedPtr;
use core::arch::asm;

/// `mbarrier.init.shared::cta.b64 [bar], count;` — initialize the barrier for `count`
/// arrivals per phase (1 to 2^20 - 1).
///
/// # Safety
/// `bar` is an 8-byte aligned word of the launch's shared memory that no thread uses as a
/// barrier yet; publish it with [`fence_mbarrier_init_release_cluster`] and a CTA barrier
/// before other threads use it.
#[inline(always)]
pub unsafe fn mbarrier_init_shared(bar: SharedPtr<u64>, count: u32) {
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("mbarrier.init.shared::cta.b64 [{b}], {n};", b = in(reg32) bar.addr(), n = in(reg32) count,
             options(nostack));
    }
}

/// `fence.mbarrier_init.release.cluster;` — make this thread's `mbarrier.init`s visible to
/// the async proxy and the cluster before the barrier that publishes them.
#[inline(always)]
pub fn fence_mbarrier_init_release_cluster() {
    // SAFETY: no operands.
    unsafe { asm!("fence.mbarrier_init.release.cluster;", options(nostack)) }
}

/// `mbarrier.arrive.shared::cta.b64 _, [bar];` — one arrival on the current phase.
///
/// # Safety
/// `bar` is an initialized barrier of this CTA whose phase still expects an arrival.
#[inline(always)]
pub unsafe fn mbarrier_arrive_shared(bar: SharedPtr<u64>) {
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("{{ .reg .b64 st; mbarrier.arrive.shared::cta.b64 st, [{b}]; }}", b = in(reg32) bar.addr(),
             options(nostack));
    }
}

/// `mbarrier.arrive.shared::cluster.b64 _, [a];` — one arrival (release semantics, CTA
/// scope: the defaults) on the barrier at cluster shared-memory address `a`, this CTA's or
/// another CTA's of the cluster.
///
/// # Safety
/// `a` comes from `mapa_shared_cluster` for an initialized barrier whose phase still expects
/// the arrival, and the owning CTA is still running.
#[inline(always)]
pub unsafe fn mbarrier_arrive_shared_cluster(a: u32) {
    // SAFETY: forwarded to the caller.
    unsafe { asm!("mbarrier.arrive.shared::cluster.b64 _, [{a}];", a = in(reg32) a, options(nostack)) }
}

/// `mbarrier.arrive.expect_tx.shared::cta.b64 _, [bar], bytes;` — one arrival, and the
/// current phase also waits for `bytes` more bytes of async copies signalling `bar`.
///
/// # Safety
/// As [`mbarrier_arrive_shared`]; the copies that deliver the bytes name `bar`.
#[inline(always)]
pub unsafe fn mbarrier_arrive_expect_tx_shared(bar: SharedPtr<u64>, bytes: u32) {
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("{{ .reg .b64 st; mbarrier.arrive.expect_tx.shared::cta.b64 st, [{b}], {n}; }}",
             b = in(reg32) bar.addr(), n = in(reg32) bytes, options(nostack));
    }
}

/// `mbarrier.try_wait.parity.shared::cta.b64 p, [bar], parity;` — whether the phase of
/// parity `parity` has completed (the hardware may suspend the thread a while first).
///
/// # Safety
/// `bar` is an initialized barrier of this CTA.
#[inline(always)]
pub unsafe fn mbarrier_try_wait_parity_shared(bar: SharedPtr<u64>, parity: u32) -> bool {
    let done: u32;
    // SAFETY: forwarded to the caller. Not `pure`: it orders the memory accesses after it.
    unsafe {
        asm!("{{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [{b}], {ph}; selp.u32 {d}, 1, 0, p; }}",
             d = out(reg32) done, b = in(reg32) bar.addr(), ph = in(reg32) parity, options(nostack));
    }
    done != 0
}

/// Waits until the phase of parity `parity` of `bar` has completed (a loop of
/// [`mbarrier_try_wait_parity_shared`]). Writes that the phase's arrivals and copies
/// released are visible after it.
///
/// # Safety
/// As [`mbarrier_try_wait_parity_shared`]; the phase completes eventually.
#[inline(always)]
pub unsafe fn mbarrier_wait_parity(bar: SharedPtr<u64>, parity: u32) {
    // SAFETY: forwarded to the caller.
    while !unsafe { mbarrier_try_wait_parity_shared(bar, parity) } {}
}

/// `cp.async.mbarrier.arrive.noinc.shared::cta.b64 [bar];` — an arrival on `bar` once all
/// of this thread's earlier `cp.async` copies have landed. `.noinc`: the arrival counts
/// against the barrier's `count` (initialize it to include one per such thread).
///
/// # Safety
/// `bar` is an initialized barrier of this CTA whose phase expects this arrival.
#[inline(always)]
pub unsafe fn cp_async_mbarrier_arrive_noinc_shared(bar: SharedPtr<u64>) {
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [{b}];", b = in(reg32) bar.addr(), options(nostack));
    }
}
