//! # nanofuse-cli
//!
//! What the `nanofuse` and `nanofuse-sweep` programs and the criterion benches share: the
//! benchmark harness (model shapes, weight rings, the timed variants), CUDA-graph timing and
//! the SVG chart. It sits above the `nanofuse` library, which stays free of these programs'
//! dependencies.

pub mod bench;
pub mod chart;
pub mod timing;
