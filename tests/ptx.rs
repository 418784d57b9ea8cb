//! The generated PTX, checked without a GPU:
//! * always: its target, the entry points the host launches and the byte size of each of
//!   their parameters (what the launchers pass), no unresolved `.extern .func`, and no panic
//!   path in any kernel;
//! * when `ptxas` is installed (PyPI `nvidia-cuda-nvcc`; `.ci/run` installs it): it
//!   assembles, and every kernel has 0 spill bytes and no stack frame (no local memory);
//! * when `nvdisasm` is installed too (PyPI `nvidia-cuda-nvdisasm`): the GEMM kernels use
//!   tensor cores (HMMA) fed by `ldmatrix` (LDSM), the decode kernels stream W with
//!   16-byte loads, the tiled kernels with `cp.async` (LDGSTS), and no kernel touches
//!   local memory (LDL/STL).
//!
//! Tools are looked up as `$NANOFUSE_PTXAS` / `$NANOFUSE_NVDISASM`, then on `PATH`, then in
//! `.tools/` (where `.ci/run` puts them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use nanofuse::{KERNELS_ARCH, KERNELS_PTX, KERNELS_SM90A_PTX, KernelId, WGMMA_ENTRIES};
use nanofuse_kernels_gpu::config::wgmma::ENTRY_REGS;

/// The PTX names of every entry the host launches.
fn kernel_names() -> impl Iterator<Item = &'static str> {
    KernelId::ALL.iter().map(|k| k.name())
}

/// Prints `skipped: <why>` past libtest's output capture.
fn skip_note(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
}

/// The kernels whose inner loop must run on tensor cores.
const MMA_KERNELS: [&str; 12] = [
    "fused_rmsnorm_qkv_decode",
    "fused_rmsnorm_qkv_decode_early",
    "fused_rmsnorm_qkv_decode_early_m8",
    "gemm_decode",
    "gemm_decode_early",
    "gemm_decode_early_m8",
    "fused_rmsnorm_qkv_decode_ring",
    "gemm_decode_ring",
    "fused_rmsnorm_qkv_tiled_large",
    "fused_rmsnorm_qkv_tiled_small",
    "gemm_tiled_large",
    "gemm_tiled_small",
];

/// Kernels of the decode engine's step whose names say `decode` but which are not the
/// weight-streaming decode GEMM (no 16-byte W stream, no cp.async staging).
const STEP_KERNELS: [&str; 3] = ["decode_step_begin", "attention_decode", "attention_decode_rope"];

/// Whether `name` is an entry of the weight-streaming decode kernel.
fn is_decode_gemm(name: &str) -> bool {
    name.contains("decode") && !STEP_KERNELS.contains(&name)
}

#[test]
fn ptx_targets_the_configured_arch() {
    assert!(KERNELS_PTX.contains(&format!(".target {KERNELS_ARCH}")), "PTX lacks `.target {KERNELS_ARCH}`");
    assert!(KERNELS_PTX.contains(".address_size 64"));
}

#[test]
fn ptx_has_every_entry_the_host_launches() {
    let entries: Vec<&str> = KERNELS_PTX
        .lines()
        .filter_map(|l| l.trim().strip_prefix(".visible .entry "))
        .map(|l| l.trim_end_matches('('))
        .collect();
    for name in kernel_names() {
        assert!(entries.contains(&name), "entry `{name}` missing; PTX has {entries:?}");
    }
    assert_eq!(entries.len(), KernelId::ALL.len(), "unexpected entries: {entries:?}");
}

/// The byte sizes of an entry's parameters, from its `.param` lines.
fn param_sizes(name: &str) -> Vec<usize> {
    param_sizes_in(KERNELS_PTX, name)
}

/// The byte sizes of an entry's parameters in `ptx`.
fn param_sizes_in(ptx: &str, name: &str) -> Vec<usize> {
    let head = format!(".visible .entry {name}(");
    let start = ptx.find(&head).unwrap_or_else(|| panic!("entry `{name}` missing"));
    ptx[start + head.len()..]
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with(')'))
        .filter_map(|l| l.strip_prefix(".param "))
        .map(|l| match l.split_whitespace().next() {
            Some(".u64" | ".b64" | ".s64") => 8,
            Some(".u32" | ".b32" | ".s32" | ".f32") => 4,
            other => panic!("`{name}`: unexpected parameter type {other:?} in `{l}`"),
        })
        .collect()
}

#[test]
fn ptx_entry_parameters_match_what_the_launchers_pass() {
    for k in KernelId::ALL {
        assert_eq!(param_sizes(k.name()), k.params(), "`{}`: PTX parameter sizes against KernelId::params", k.name());
    }
}

#[test]
fn ptx_is_self_contained() {
    let externs: Vec<&str> = KERNELS_PTX.lines().filter(|l| l.contains(".extern .func")).collect();
    assert!(externs.is_empty(), "unresolved external functions: {externs:?}");
}

#[test]
fn ptx_has_no_panic_path() {
    // A bounds check or overflow check the optimizer could not remove would show up as a
    // call into core::panicking (which traps on the GPU). The kernels must have none.
    let panics: Vec<&str> = KERNELS_PTX.lines().filter(|l| l.contains("panicking") || l.contains("panic_")).collect();
    assert!(panics.is_empty(), "panic paths in the kernels: {:?}", &panics[..panics.len().min(5)]);
}

fn tool(name: &str) -> Option<PathBuf> {
    let env = format!("NANOFUSE_{}", name.to_uppercase());
    if let Some(p) = std::env::var_os(&env) {
        return Some(PathBuf::from(p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/nvidia/cu13/bin").join(name);
    local.is_file().then_some(local)
}

/// Per-kernel resource report of `ptxas -v`.
#[derive(Debug, Default)]
struct Resources {
    registers: u32,
    stack_bytes: u32,
    spill_store_bytes: u32,
    spill_load_bytes: u32,
    /// ptxas reported that it serialized this function's `wgmma`s.
    wgmma_serialized: bool,
}

fn number_before(line: &str, unit: &str) -> Option<u32> {
    let idx = line.find(unit)?;
    line[..idx].split_whitespace().last()?.parse().ok()
}

fn assemble(ptxas: &Path) -> (PathBuf, BTreeMap<String, Resources>) {
    let (cubin, mut report) = assemble_text(ptxas, KERNELS_PTX, KERNELS_ARCH, "kernels");
    report.retain(|k, _| kernel_names().any(|name| name == k));
    (cubin, report)
}

/// Assembles `text` for `arch` into `<stem>.cubin` in a scratch directory; the cubin and the
/// per-entry `ptxas -v` report.
fn assemble_text(ptxas: &Path, text: &str, arch: &str, stem: &str) -> (PathBuf, BTreeMap<String, Resources>) {
    let dir = std::env::temp_dir().join(format!("nanofuse-ptx-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ptx, cubin) = (dir.join(format!("{stem}.ptx")), dir.join(format!("{stem}.cubin")));
    std::fs::write(&ptx, text).unwrap();
    let arch = format!("-arch={arch}");
    let out = Command::new(ptxas).args([arch.as_str(), "-v", "-o"]).arg(&cubin).arg(&ptx).output().expect("run ptxas");
    let log = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ptxas failed:\n{log}");
    let mut report: BTreeMap<String, Resources> = BTreeMap::new();
    let mut current = String::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Function properties for ").nth(1) {
            current = rest.trim().to_string();
        } else if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            current = rest.split('\'').next().unwrap_or("").to_string();
        }
        let r = report.entry(current.clone()).or_default();
        if line.contains("stack frame") {
            r.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(u32::MAX);
            r.spill_store_bytes = number_before(line, "bytes spill stores").unwrap_or(u32::MAX);
            r.spill_load_bytes = number_before(line, "bytes spill loads").unwrap_or(u32::MAX);
        }
        if line.contains("Used") && line.contains("registers") {
            r.registers = number_before(line, "registers").unwrap_or(0);
        }
        // ptxas's "Potential Performance Loss: wgmma.mma_async instructions are serialized
        // due to ... in the function 'NAME'": it waits after every MMA.
        if line.contains("wgmma.mma_async instructions are serialized") {
            let name = line.rsplit("function '").next().unwrap_or("").trim_end_matches('\'').to_string();
            report.entry(name).or_default().wgmma_serialized = true;
        }
    }
    (cubin, report)
}

/// `nvdisasm -c` of `cubin`: per kernel, how many SASS lines contain each of `ops` (an op
/// `A+B` counts the lines that contain both `A` and `B`).
fn sass_counts(nvdisasm: &Path, cubin: &Path, ops: &[&'static str]) -> BTreeMap<String, BTreeMap<&'static str, usize>> {
    let out = Command::new(nvdisasm).arg("-c").arg(cubin).output().expect("run nvdisasm");
    assert!(out.status.success(), "nvdisasm failed: {}", String::from_utf8_lossy(&out.stderr));
    let sass = String::from_utf8_lossy(&out.stdout);
    let mut counts: BTreeMap<String, BTreeMap<&str, usize>> = BTreeMap::new();
    let mut current = String::new();
    for line in sass.lines() {
        if let Some(rest) = line.strip_prefix(".text.") {
            current = rest.trim_end_matches(':').to_string();
        }
        let c = counts.entry(current.clone()).or_default();
        for &op in ops {
            if op.split('+').all(|part| line.contains(part)) {
                *c.entry(op).or_default() += 1;
            }
        }
    }
    counts
}

/// The sm_90a module (warpgroup MMA): built with the sm_90 module, for sm_90a, with the
/// entries and parameter sizes the host launches, self-contained, no panic path; assembled,
/// no spills or stack, and in SASS warpgroup MMA (HGMMA) fed by the TMA (UTMALDG) and
/// `cp.async` (LDGSTS), no local memory.
#[test]
fn sm90a_module_has_its_entries_and_runs_on_warpgroup_mma() {
    if !matches!(KERNELS_ARCH, "sm_90" | "sm_90a") {
        assert!(KERNELS_SM90A_PTX.is_empty(), "an sm_90a module in a build for {KERNELS_ARCH}");
        return;
    }
    let ptx = KERNELS_SM90A_PTX;
    assert!(ptx.contains("\n.target sm_90a\n"), "the sm_90a module's target");
    for (name, params) in WGMMA_ENTRIES {
        assert_eq!(param_sizes_in(ptx, name), params, "`{name}`: PTX parameter sizes against WGMMA_ENTRIES");
    }
    assert!(!ptx.lines().any(|l| l.contains(".extern .func")), "unresolved external functions");
    assert!(!ptx.lines().any(|l| l.contains("panicking") || l.contains("panic_")), "panic paths");
    let Some(ptxas) = tool("ptxas") else {
        skip_note("ptxas not found (pip install nvidia-cuda-nvcc, or see .ci/run)");
        return;
    };
    let (cubin, report) = assemble_text(&ptxas, ptx, "sm_90a", "kernels_sm90a");
    for (name, _) in WGMMA_ENTRIES {
        let r = report.get(name).unwrap_or_else(|| panic!("ptxas reported nothing for `{name}`"));
        println!(
            "{name:<32} {:>5} regs {:>6} stack {:>7} spills",
            r.registers,
            r.stack_bytes,
            r.spill_store_bytes + r.spill_load_bytes
        );
        assert_eq!(r.spill_store_bytes + r.spill_load_bytes + r.stack_bytes, 0, "`{name}` spills or has a stack frame");
        // The host refuses the module otherwise (its setmaxnreg split rests on this count).
        assert_eq!(r.registers, ENTRY_REGS, "`{name}`: registers per thread against config::wgmma::ENTRY_REGS");
    }
    let Some(nvdisasm) = tool("nvdisasm") else {
        skip_note("SASS checks, nvdisasm not found (pip install nvidia-cuda-nvdisasm)");
        return;
    };
    let counts = sass_counts(&nvdisasm, &cubin, &["HGMMA", "UTMALDG", "LDGSTS", "LDL", "STL"]);
    for (name, _) in WGMMA_ENTRIES {
        let c = counts.get(name).cloned().unwrap_or_default();
        let n = |op: &str| c.get(op).copied().unwrap_or(0);
        println!(
            "{name:<32} HGMMA {} UTMALDG {} LDGSTS {} LDL/STL {}",
            n("HGMMA"),
            n("UTMALDG"),
            n("LDGSTS"),
            n("LDL") + n("STL")
        );
        assert!(n("HGMMA") > 0 && n("UTMALDG") > 0 && n("LDGSTS") > 0, "`{name}`: no HGMMA, UTMALDG or LDGSTS in SASS");
        assert_eq!(n("LDL") + n("STL"), 0, "`{name}` uses local memory");
    }
    // Any function, an entry or a helper ptxas kept out of line.
    let serialized: Vec<&String> = report.iter().filter(|(_, r)| r.wgmma_serialized).map(|(n, _)| n).collect();
    assert!(serialized.is_empty(), "ptxas serialized the `wgmma`s of {serialized:?}");
}

#[test]
fn ptxas_no_spills_no_stack_and_sass_uses_tensor_cores() {
    let Some(ptxas) = tool("ptxas") else {
        skip_note("ptxas not found (pip install nvidia-cuda-nvcc, or see .ci/run)");
        return;
    };
    let (cubin, report) = assemble(&ptxas);
    println!("{:<32} {:>5} {:>6} {:>7}", "kernel", "regs", "stack", "spills");
    for (name, r) in &report {
        println!("{name:<32} {:>5} {:>6} {:>7}", r.registers, r.stack_bytes, r.spill_store_bytes + r.spill_load_bytes);
    }
    for name in kernel_names() {
        let r = report.get(name).unwrap_or_else(|| panic!("ptxas reported nothing for `{name}`"));
        assert_eq!(r.spill_store_bytes + r.spill_load_bytes, 0, "`{name}` spills registers");
        assert_eq!(r.stack_bytes, 0, "`{name}` has a stack frame (local memory)");
    }

    let Some(nvdisasm) = tool("nvdisasm") else {
        skip_note("SASS checks, nvdisasm not found (pip install nvidia-cuda-nvdisasm)");
        return;
    };
    const LDG_128: &str = "LDG.E+.128";
    let counts = sass_counts(&nvdisasm, &cubin, &["HMMA", "LDSM", "LDL", "STL", "LDGSTS", LDG_128]);
    for name in MMA_KERNELS {
        assert!(kernel_names().any(|k| k == name), "MMA_KERNELS names `{name}`, which the PTX does not export");
    }
    println!("{:<32} {:>5} {:>5} {:>7} {:>7} {:>7}", "kernel", "HMMA", "LDSM", "LDG.128", "LDGSTS", "LDL/STL");
    for name in kernel_names() {
        let c = counts.get(name).cloned().unwrap_or_default();
        let n = |op: &str| c.get(op).copied().unwrap_or(0);
        println!(
            "{name:<32} {:>5} {:>5} {:>7} {:>7} {:>7}",
            n("HMMA"),
            n("LDSM"),
            n(LDG_128),
            n("LDGSTS"),
            n("LDL") + n("STL")
        );
        assert_eq!(n("LDL") + n("STL"), 0, "`{name}` uses local memory");
        if MMA_KERNELS.contains(&name) {
            assert!(n("HMMA") > 0 && n("LDSM") > 0, "`{name}` lacks HMMA or LDSM in SASS");
        }
        if is_decode_gemm(name) || name.starts_with("rms_norm") {
            assert!(n(LDG_128) > 0, "`{name}` lacks 16-byte global loads");
        }
        if is_decode_gemm(name) {
            assert!(n("LDGSTS") > 0, "`{name}` lacks cp.async staging of x");
        }
        if name.contains("tiled") {
            assert!(n("LDGSTS") > 0, "`{name}` lacks cp.async (LDGSTS)");
        }
    }
}
