//! Compiles `kernels-gpu` to one self-contained PTX file, `$OUT_DIR/kernels.ptx`, which
//! `src/lib.rs` embeds with `include_str!`.
//!
//! The kernels go through rustc's own NVPTX backend: an inner `cargo rustc` for
//! `nvptx64-nvidia-cuda` with `-Zbuild-std=core`, as a `staticlib` with fat LTO,
//! `panic = "abort"` and one codegen unit, emitting assembly (`--emit=asm`), which for this
//! target is PTX. The GPU architecture is `sm_90` unless `NANOFUSE_CUDA_ARCH` says
//! otherwise (e.g. `NANOFUSE_CUDA_ARCH=sm_100`); the kernels use Hopper instructions
//! (thread-block clusters, programmatic dependent launch), so they need sm_90 or newer.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

// The launch constants shared by the kernels and the host (target-independent code).
#[allow(dead_code)]
#[path = "kernels-gpu/src/config.rs"]
mod config;

const ARCH_ENV: &str = "NANOFUSE_CUDA_ARCH";
const DEFAULT_ARCH: &str = "sm_90";
const TARGET: &str = "nvptx64-nvidia-cuda";
const KERNEL_PACKAGE: &str = "nanofuse-kernels-gpu";

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-env-changed={ARCH_ENV}");
    println!("cargo:rerun-if-changed=kernels-gpu/src");
    println!("cargo:rerun-if-changed=kernels-gpu/Cargo.toml");
    println!("cargo:rerun-if-changed=rust-toolchain.toml");

    let arch = env::var(ARCH_ENV).unwrap_or_else(|_| DEFAULT_ARCH.to_string());
    let number: Option<u32> = arch
        .strip_prefix("sm_")
        .filter(|v| v.chars().all(|c| c.is_ascii_alphanumeric()))
        .and_then(|v| v.trim_end_matches(|c: char| c.is_ascii_alphabetic()).parse().ok());
    match number {
        None => fail(&format!("{ARCH_ENV}={arch:?} is not a GPU architecture such as sm_90 or sm_100")),
        Some(n) if n < 90 => fail(&format!(
            "{ARCH_ENV}={arch}: the kernels use sm_90 instructions (clusters, griddepcontrol); use sm_90 or newer"
        )),
        Some(_) => {}
    }
    println!("cargo:rustc-env=NANOFUSE_PTX_ARCH={arch}");

    let ptx = add_launch_bounds(build_ptx(&root, &out_dir.join("kernels-target"), &arch));
    fs::write(out_dir.join("kernels.ptx"), ptx).expect("write kernels.ptx");
}

/// Inserts `config::LAUNCH_BOUNDS` into the PTX: the performance directives go between an
/// entry's parameter list and its body.
fn add_launch_bounds(mut ptx: String) -> String {
    for (name, threads, min_ctas) in config::LAUNCH_BOUNDS {
        let head = format!(".entry {name}(");
        let Some(start) = ptx.find(&head) else { fail(&format!("kernel `{name}` of LAUNCH_BOUNDS is not in the PTX")) };
        let Some(close) = ptx[start..].find("\n)\n").map(|i| start + i + 3) else {
            fail(&format!("unexpected PTX after `{head}`"))
        };
        ptx.insert_str(close, &format!(".maxntid {threads}, 1, 1\n.minnctapersm {min_ctas}\n"));
    }
    ptx
}

/// Runs the inner cargo and returns the PTX text.
fn build_ptx(root: &Path, target_dir: &Path, arch: &str) -> String {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["rustc", "--package", KERNEL_PACKAGE, "--lib", "--release", "--target", TARGET])
        .args(["-Zbuild-std=core", "--crate-type", "staticlib", "--target-dir"])
        .arg(target_dir)
        .args(["--", "--emit=asm"]);
    // The outer build's flags and wrappers are for the host target, not for this one.
    for var in [
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_RUSTC_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    // Code-generation flags go through CARGO_ENCODED_RUSTFLAGS, which cargo fingerprints
    // (arguments after `--` are not: changing the arch would not rebuild).
    // The unroll threshold plays the role of CUDA's `#pragma unroll`: the kernels index
    // their register arrays (accumulators, fragments) only inside constant-trip loops,
    // and with LLVM's default threshold the tiled epilogue stays rolled, which moves the
    // accumulators to local memory (a stack frame in the ptxas report; the tests check
    // that every kernel has none).
    // PTX ISA 8.0 (CUDA 12.0 drivers and newer) for the sm_90 instructions the kernels use
    // (cluster barriers with .release/.acquire, cp.async.bulk.prefetch).
    let flags = [
        format!("-Ctarget-cpu={arch}"),
        "-Ctarget-feature=+ptx80".to_string(),
        "-Cllvm-args=-unroll-threshold=2000".to_string(),
    ];
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"));
    // The kernel profile, independent of the outer profile (which may be dev or test).
    for (key, value) in [
        ("LTO", "fat"),
        ("PANIC", "abort"),
        ("CODEGEN_UNITS", "1"),
        ("OPT_LEVEL", "3"),
        ("DEBUG", "false"),
        ("DEBUG_ASSERTIONS", "false"),
        ("OVERFLOW_CHECKS", "false"),
        ("INCREMENTAL", "false"),
    ] {
        cmd.env(format!("CARGO_PROFILE_RELEASE_{key}"), value);
    }

    let output = cmd.output().unwrap_or_else(|e| fail(&format!("could not run cargo: {e}")));
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let mut msg = format!("compiling {KERNEL_PACKAGE} for {TARGET} ({arch}) failed:\n{stderr}");
        if stderr.contains("rust-src") || stderr.contains("library/Cargo.lock") {
            msg.push_str(
                "\nhint: -Zbuild-std needs the rust-src component of the pinned toolchain:\n  \
                 rustup component add rust-src   (run in this repository)\n",
            );
        }
        fail(&msg);
    }

    let deps = target_dir.join(TARGET).join("release").join("deps");
    let newest = fs::read_dir(&deps)
        .unwrap_or_else(|e| fail(&format!("reading {}: {e}", deps.display())))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("nanofuse_kernels_gpu-") && name.ends_with(".s")
        })
        .max_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok());
    let path = newest.unwrap_or_else(|| fail(&format!("no PTX (.s) file in {}", deps.display())));
    let ptx = fs::read_to_string(&path).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
    if !ptx.contains(&format!(".target {arch}")) {
        fail(&format!("{} does not target {arch}", path.display()));
    }
    ptx
}

fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    panic!("building the GPU kernels failed (see above)");
}
