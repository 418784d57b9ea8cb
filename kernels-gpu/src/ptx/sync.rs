//! Grid-level ordering: programmatic dependent launch (PDL).

use core::arch::asm;

/// `griddepcontrol.launch_dependents;` — allow the next kernel in the stream, if it was
/// launched with programmatic stream serialization, to start launching once every CTA of
/// this grid has executed this (or exited). A no-op otherwise.
#[inline(always)]
pub fn griddepcontrol_launch_dependents() {
    // SAFETY: no operands; only affects scheduling of the dependent grid.
    unsafe { asm!("griddepcontrol.launch_dependents;", options(nostack)) }
}

/// `griddepcontrol.wait;` — wait until the grids this one depends on (the previous kernel
/// in the stream, under PDL) have completed and their memory operations are visible.
/// Returns at once when the kernel was launched without PDL. Nothing written by the
/// previous kernel may be read, and nothing it reads may be written, before this.
#[inline(always)]
pub fn griddepcontrol_wait() {
    // SAFETY: no operands; acts as a memory barrier for the compiler (no `nomem`).
    unsafe { asm!("griddepcontrol.wait;", options(nostack)) }
}
