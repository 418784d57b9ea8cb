//! # Split-K reductions of the decode kernel
//!
//! [`Parts`]: the `warp_split` warps of a 16-row group each hold a partial fragment over
//! their part of the CTA's K range; they leave it in their own shared-memory slots, and
//! after one CTA barrier the part-0 warp adds the others' in part order. [`Cluster`]: with
//! K split across the CTAs of a cluster (forced launch shapes only), every CTA leaves its
//! part-0 fragments in shared memory, and after a cluster barrier CTA `r` finishes elements
//! `r, r + k_splits, ...` of every lane, reading all CTAs' partials through distributed
//! shared memory in rank order (bitwise deterministic); a second cluster barrier keeps each
//! CTA's shared memory alive until every remote read is done.

use crate::config::decode::{MAX_TOKENS, SmemLayout, TOKEN_TILE};
use crate::decode::Epilogue;
use crate::ptx::cluster::{barrier_cluster_sync, ld_shared_cluster_f32, mapa_shared_cluster};
use crate::ptx::shared::{SharedPtr, ld_shared_f32, ld_shared_v4_u32, st_shared_f32, st_shared_v4_u32};
use crate::ptx::thread::sync_threads;

/// The warps of a row group and their reduction slots.
pub struct Parts<'a, const MT: usize> {
    pub smem: SharedPtr<u8>,
    pub layout: &'a SmemLayout,
    pub warp: u32,
    pub lane: u32,
    /// The warp's part of its row group (0 finishes the group).
    pub part: u32,
    pub warp_split: u32,
    pub tiles_used: u32,
    /// The lane's group `lane / 4` (its token within a tile, for the sums of squares).
    pub gq: u32,
}

impl<const MT: usize> Parts<'_, MT> {
    /// The reduction slots: 4 f32 per token tile per lane of every warp.
    #[inline(always)]
    fn red(&self) -> SharedPtr<[u32; 4]> {
        self.smem.byte_add(self.layout.reduce as u32).cast::<[u32; 4]>()
    }

    /// This lane's slot.
    #[inline(always)]
    pub fn slot(&self) -> SharedPtr<[u32; 4]> {
        self.red().add((self.warp * 32 + self.lane) * MT as u32)
    }

    /// The warp's own slots, as the epilogue's staging area (32 bytes per token for
    /// `8 MT` tokens).
    #[inline(always)]
    pub fn stage_area(&self) -> SharedPtr<u8> {
        self.red().add(self.warp * 32 * MT as u32).cast::<u8>()
    }

    /// Adds the row group's partial fragments (and, with `ss_in_loop`, sums of squares) into
    /// the part-0 warp's `acc` and `ss`.
    ///
    /// # Safety
    /// The layout's reduction areas; every thread of the CTA calls it (a CTA barrier).
    #[inline(always)]
    pub unsafe fn add(&self, acc: &mut [[f32; 4]; MT], ss: &mut [f32; MT], ss_in_loop: bool) {
        let (warp, lane, tiles_used) = (self.warp, self.lane, self.tiles_used);
        let red = self.red();
        let slot = self.slot();
        let ss_part = self.smem.byte_add(self.layout.ss_part as u32).cast::<f32>();
        let ss_slot = |w: u32, t: usize| ss_part.add(w * MAX_TOKENS + t as u32 * TOKEN_TILE + self.gq);
        let qq = lane % 4;
        // SAFETY: the reduction areas hold 4 f32 per token tile per lane and MAX_TOKENS f32
        // per warp; the barrier is CTA-uniform (warp_split is a kernel argument).
        unsafe {
            if self.warp_split > 1 {
                for (t, a) in acc.iter().enumerate() {
                    if (t as u32) < tiles_used {
                        st_shared_v4_u32(slot.add(t as u32), a.map(f32::to_bits));
                        if ss_in_loop && qq == 0 {
                            st_shared_f32(ss_slot(warp, t), ss[t]);
                        }
                    }
                }
                sync_threads();
                if self.part == 0 {
                    for p in 1..self.warp_split {
                        let other = red.add(((warp + p) * 32 + lane) * MT as u32);
                        for (t, a) in acc.iter_mut().enumerate() {
                            if (t as u32) < tiles_used {
                                let v = ld_shared_v4_u32(other.add(t as u32));
                                for i in 0..4 {
                                    a[i] += f32::from_bits(v[i]);
                                }
                                if ss_in_loop {
                                    ss[t] += ld_shared_f32(ss_slot(warp + p, t));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The K split across the CTAs of a cluster.
#[derive(Clone, Copy)]
pub struct Cluster {
    /// This CTA's rank and the cluster size.
    pub kslice: u32,
    pub k_splits: u32,
    pub row0: u32,
    pub gq: u32,
    pub qq: u32,
    pub m: u32,
    pub n: u32,
}

impl Cluster {
    /// Leaves the CTA's partials in shared memory and finishes this CTA's elements through
    /// `epi.store_element`, scaled by `scale` of the token's sum of squares.
    ///
    /// # Safety
    /// Every thread of every CTA of the cluster calls it (two cluster barriers); remote
    /// addresses come from `mapa` of addresses inside the layout; `E::ELEMENTWISE`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn finish<const MT: usize, E: Epilogue>(
        &self,
        parts: &Parts<'_, MT>,
        acc: &[[f32; 4]; MT],
        ss: &[f32; MT],
        ss_in_loop: bool,
        sum_sq: SharedPtr<f32>,
        epi: E,
        scale: impl Fn(f32) -> f32,
    ) {
        let Cluster { kslice, k_splits, row0, gq, qq, m, n } = *self;
        let slot = parts.slot();
        // SAFETY: per the caller.
        unsafe {
            // Warp 0 (part 0 of row group 0) publishes the CTA's sums of squares (the `_early`
            // entries have them there already).
            if ss_in_loop && parts.warp == 0 && qq == 0 {
                for (t, v) in ss.iter().enumerate() {
                    st_shared_f32(sum_sq.add(t as u32 * TOKEN_TILE + gq), *v);
                }
            }
            if parts.part == 0 {
                // Only this warp's own slot: the warp reduction read the other parts'.
                for (t, a) in acc.iter().enumerate() {
                    st_shared_v4_u32(slot.add(t as u32), a.map(f32::to_bits));
                }
            }
            barrier_cluster_sync();
            if parts.part == 0 {
                let slot_f32 = slot.cast::<f32>();
                let mut j = kslice;
                while j < MT as u32 * 4 {
                    let (t, i) = (j / 4, j % 4);
                    let (row, tok) = (row0 + gq + (i / 2) * 8, t * TOKEN_TILE + 2 * qq + i % 2);
                    if row < n && tok < m {
                        let (mut total, mut ss) = (0.0f32, 0.0f32);
                        for rank in 0..k_splits {
                            total += ld_shared_cluster_f32(mapa_shared_cluster(slot_f32.add(j), rank));
                            if E::NORM {
                                ss += ld_shared_cluster_f32(mapa_shared_cluster(sum_sq.add(tok), rank));
                            }
                        }
                        epi.store_element(tok, row, total * scale(ss));
                    }
                    j += k_splits;
                }
            }
            barrier_cluster_sync();
        }
    }
}
