//! Shared memory: the dynamic shared-memory base, a typed 32-bit shared pointer, and
//! `ld.shared` / `st.shared`.

use core::arch::{asm, global_asm};
use core::marker::PhantomData;

// The one dynamic shared-memory array of every kernel; its size is the launch's
// `sharedMemBytes`. Declared once here (the name is `config::SMEM_SYMBOL`).
global_asm!(".extern .shared .align 16 .b8 NANOFUSE_SMEM[];");

/// A 32-bit address in the `.shared` window, typed by what it points at.
///
/// Arithmetic is in elements of `T` (`add`) or bytes (`byte_add`) and never leaves the
/// 32-bit window; whether the address is inside the launch's allocation is the caller's
/// business (the `# Safety` sections below).
pub struct SharedPtr<T> {
    addr: u32,
    _elem: PhantomData<*mut T>,
}

impl<T> Clone for SharedPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedPtr<T> {}

impl<T> SharedPtr<T> {
    /// A pointer at a raw `.shared` address (one obtained from [`SharedPtr::addr`]).
    #[inline(always)]
    pub fn from_addr(addr: u32) -> Self {
        SharedPtr { addr, _elem: PhantomData }
    }
    /// The raw `.shared` address.
    #[inline(always)]
    pub fn addr(self) -> u32 {
        self.addr
    }
    /// Offset by `n` elements of `T` (like `<*const T>::add`).
    #[inline(always)]
    #[allow(clippy::should_implement_trait)]
    pub fn add(self, n: u32) -> Self {
        self.byte_add(n * core::mem::size_of::<T>() as u32)
    }
    /// Offset by `bytes` bytes.
    #[inline(always)]
    pub fn byte_add(self, bytes: u32) -> Self {
        SharedPtr { addr: self.addr.wrapping_add(bytes), _elem: PhantomData }
    }
    /// The same address, pointing at another type.
    #[inline(always)]
    pub fn cast<U>(self) -> SharedPtr<U> {
        SharedPtr { addr: self.addr, _elem: PhantomData }
    }
}

/// `mov.u32 r, NANOFUSE_SMEM;` — the base of the dynamic shared-memory array (16-byte
/// aligned).
#[inline(always)]
pub fn dynamic_shared_base() -> SharedPtr<u8> {
    let addr: u32;
    // SAFETY: reads the address of a symbol; no memory access.
    unsafe {
        asm!("mov.u32 {a}, NANOFUSE_SMEM;", a = out(reg32) addr, options(pure, nomem, nostack));
    }
    SharedPtr { addr, _elem: PhantomData }
}

/// `ld.shared.f32 d, [p];`
///
/// # Safety
/// `p` is 4-byte aligned and inside the launch's shared memory.
#[inline(always)]
pub unsafe fn ld_shared_f32(p: SharedPtr<f32>) -> f32 {
    let d: f32;
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("ld.shared.f32 {d}, [{p}];", d = out(reg32) d, p = in(reg32) p.addr,
             options(pure, readonly, nostack));
    }
    d
}

/// `st.shared.f32 [p], v;`
///
/// # Safety
/// `p` is 4-byte aligned and inside the launch's shared memory.
#[inline(always)]
pub unsafe fn st_shared_f32(p: SharedPtr<f32>, v: f32) {
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("st.shared.f32 [{p}], {v};", p = in(reg32) p.addr, v = in(reg32) v,
             options(nostack));
    }
}

/// `st.shared.u16 [p], v;`
///
/// # Safety
/// `p` is 2-byte aligned and inside the launch's shared memory.
#[inline(always)]
pub unsafe fn st_shared_u16(p: SharedPtr<u16>, v: u16) {
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("st.shared.u16 [{p}], {v};", p = in(reg32) p.addr, v = in(reg16) v,
             options(nostack));
    }
}

/// `ld.shared.u32 d, [p];`
///
/// # Safety
/// `p` is 4-byte aligned and inside the launch's shared memory.
#[inline(always)]
pub unsafe fn ld_shared_u32(p: SharedPtr<u32>) -> u32 {
    let d: u32;
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("ld.shared.u32 {d}, [{p}];", d = out(reg32) d, p = in(reg32) p.addr,
             options(pure, readonly, nostack));
    }
    d
}

/// `st.shared.u32 [p], v;`
///
/// # Safety
/// `p` is 4-byte aligned and inside the launch's shared memory.
#[inline(always)]
pub unsafe fn st_shared_u32(p: SharedPtr<u32>, v: u32) {
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("st.shared.u32 [{p}], {v};", p = in(reg32) p.addr, v = in(reg32) v,
             options(nostack));
    }
}

/// `ld.shared.v4.u32 {a,b,c,d}, [p];` — 16 bytes.
///
/// # Safety
/// `p` is 16-byte aligned and inside the launch's shared memory.
#[inline(always)]
pub unsafe fn ld_shared_v4_u32(p: SharedPtr<[u32; 4]>) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("ld.shared.v4.u32 {{{a}, {b}, {c}, {d}}}, [{p}];",
             a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
             p = in(reg32) p.addr, options(pure, readonly, nostack));
    }
    [a, b, c, d]
}

/// `st.shared.v4.u32 [p], {a,b,c,d};` — 16 bytes.
///
/// # Safety
/// `p` is 16-byte aligned and inside the launch's shared memory.
#[inline(always)]
pub unsafe fn st_shared_v4_u32(p: SharedPtr<[u32; 4]>, v: [u32; 4]) {
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("st.shared.v4.u32 [{p}], {{{a}, {b}, {c}, {d}}};",
             p = in(reg32) p.addr,
             a = in(reg32) v[0], b = in(reg32) v[1], c = in(reg32) v[2], d = in(reg32) v[3],
             options(nostack));
    }
}

/// `st.shared.v2.f32 [p], {a, b};` — 8 bytes.
///
/// # Safety
/// `p` is 8-byte aligned and inside the launch's shared memory.
#[inline(always)]
pub unsafe fn st_shared_v2_f32(p: SharedPtr<[f32; 2]>, v: [f32; 2]) {
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("st.shared.v2.f32 [{p}], {{{a}, {b}}};", p = in(reg32) p.addr, a = in(reg32) v[0], b = in(reg32) v[1],
             options(nostack));
    }
}
