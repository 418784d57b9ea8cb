//! Thread-block clusters (sm_90): the CTA's rank in its cluster, the cluster-wide barrier,
//! and reads of another CTA's shared memory (distributed shared memory).

use super::shared::SharedPtr;
use core::arch::asm;

/// `mov.u32 r, %cluster_ctarank;` — this CTA's rank within its cluster (0 without a
/// cluster launch).
#[inline(always)]
pub fn cluster_ctarank() -> u32 {
    let r: u32;
    // SAFETY: reading a special register has no preconditions.
    unsafe { asm!("mov.u32 {r}, %cluster_ctarank;", r = out(reg32) r, options(pure, nomem, nostack)) }
    r
}

/// `mov.u32 r, %cluster_nctarank;` — the number of CTAs in this CTA's cluster (1 without a
/// cluster launch).
#[inline(always)]
pub fn cluster_nctarank() -> u32 {
    let r: u32;
    // SAFETY: reading a special register has no preconditions.
    unsafe { asm!("mov.u32 {r}, %cluster_nctarank;", r = out(reg32) r, options(pure, nomem, nostack)) }
    r
}

/// `mov.u32 r, %cluster_nctaid.x;` — the cluster's extent in CTAs along x (1 without a
/// cluster launch).
#[inline(always)]
pub fn cluster_nctaid_x() -> u32 {
    let r: u32;
    // SAFETY: reading a special register has no preconditions.
    unsafe { asm!("mov.u32 {r}, %cluster_nctaid.x;", r = out(reg32) r, options(pure, nomem, nostack)) }
    r
}

/// `mov.u32 r, %cluster_nctaid.z;` — the cluster's extent in CTAs along z.
#[inline(always)]
pub fn cluster_nctaid_z() -> u32 {
    let r: u32;
    // SAFETY: reading a special register has no preconditions.
    unsafe { asm!("mov.u32 {r}, %cluster_nctaid.z;", r = out(reg32) r, options(pure, nomem, nostack)) }
    r
}

/// `mov.u32 r, %cluster_ctaid.x;` — this CTA's x index within its cluster.
#[inline(always)]
pub fn cluster_ctaid_x() -> u32 {
    let r: u32;
    // SAFETY: reading a special register has no preconditions.
    unsafe { asm!("mov.u32 {r}, %cluster_ctaid.x;", r = out(reg32) r, options(pure, nomem, nostack)) }
    r
}

/// `mov.u32 r, %cluster_ctaid.z;` — this CTA's z index within its cluster.
#[inline(always)]
pub fn cluster_ctaid_z() -> u32 {
    let r: u32;
    // SAFETY: reading a special register has no preconditions.
    unsafe { asm!("mov.u32 {r}, %cluster_ctaid.z;", r = out(reg32) r, options(pure, nomem, nostack)) }
    r
}

/// `barrier.cluster.arrive.release.aligned; barrier.cluster.wait.acquire.aligned;` — wait
/// until every thread of every CTA in the cluster arrives; shared-memory writes before it
/// are visible to the whole cluster after it.
///
/// # Safety
/// Every thread of every CTA of the cluster must execute it (uniform control flow).
#[inline(always)]
pub unsafe fn barrier_cluster_sync() {
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("barrier.cluster.arrive.release.aligned;", "barrier.cluster.wait.acquire.aligned;", options(nostack))
    }
}

/// `mapa.shared::cluster.u32 d, p, rank;` — the address of `p`'s counterpart in the shared
/// memory of CTA `rank` of this cluster (a `.shared::cluster` window address).
#[inline(always)]
pub fn mapa_shared_cluster<T>(p: SharedPtr<T>, rank: u32) -> u32 {
    let d: u32;
    // SAFETY: address arithmetic only.
    unsafe {
        asm!("mapa.shared::cluster.u32 {d}, {p}, {r};", d = out(reg32) d, p = in(reg32) p.addr(), r = in(reg32) rank,
             options(pure, nomem, nostack));
    }
    d
}

/// `ld.shared::cluster.f32 d, [a];` — read an f32 from a cluster shared-memory address.
///
/// # Safety
/// `a` comes from [`mapa_shared_cluster`] for an address inside the launch's shared memory,
/// the owning CTA is still running, and a cluster barrier orders the read after the write.
#[inline(always)]
pub unsafe fn ld_shared_cluster_f32(a: u32) -> f32 {
    let d: f32;
    // SAFETY: forwarded to the caller.
    unsafe { asm!("ld.shared::cluster.f32 {d}, [{a}];", d = out(reg32) d, a = in(reg32) a, options(readonly, nostack)) }
    d
}

/// `ld.shared::cluster.v4.u32 {a, b, c, d}, [a];` — read 16 bytes from a cluster
/// shared-memory address.
///
/// # Safety
/// As [`ld_shared_cluster_f32`], and `a` is 16-byte aligned.
#[inline(always)]
pub unsafe fn ld_shared_cluster_v4_u32(a: u32) -> [u32; 4] {
    let (x, y, z, w): (u32, u32, u32, u32);
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("ld.shared::cluster.v4.u32 {{{x}, {y}, {z}, {w}}}, [{a}];",
             x = out(reg32) x, y = out(reg32) y, z = out(reg32) z, w = out(reg32) w, a = in(reg32) a,
             options(readonly, nostack));
    }
    [x, y, z, w]
}

/// `ld.shared::cluster.v2.f32 {a, b}, [a];` — read two f32 from a cluster shared-memory
/// address.
///
/// # Safety
/// As [`ld_shared_cluster_f32`], and `a` is 8-byte aligned.
#[inline(always)]
pub unsafe fn ld_shared_cluster_v2_f32(a: u32) -> [f32; 2] {
    let (x, y): (f32, f32);
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("ld.shared::cluster.v2.f32 {{{x}, {y}}}, [{a}];", x = out(reg32) x, y = out(reg32) y, a = in(reg32) a,
             options(readonly, nostack));
    }
    [x, y]
}
