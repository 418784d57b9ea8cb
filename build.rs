//! Compiles `kernels-gpu` to one self-contained PTX file, `$OUT_DIR/kernels.ptx`, which
//! `src/lib.rs` embeds with `include_str!`, and a second one, `$OUT_DIR/kernels_sm90a.ptx`:
//! the crate again with its `sm90a` feature for `sm_90a`, the kernels on warpgroup MMA
//! (empty when `NANOFUSE_CUDA_ARCH` names another architecture than sm_90 or sm_90a).
//!
//! The kernels go through rustc's own NVPTX backend: an inner `cargo rustc` for
//! `nvptx64-nvidia-cuda` with `-Zbuild-std=core`, as a `staticlib` with fat LTO,
//! `panic = "abort"` and one codegen unit, emitting assembly (`--emit=asm`), which for this
//! target is PTX. The GPU architecture is `sm_90` unless `NANOFUSE_CUDA_ARCH` says
//! otherwise (e.g. `NANOFUSE_CUDA_ARCH=sm_100`); the kernels use Hopper instructions
//! (thread-block clusters, programmatic dependent launch), so they need sm_90 or newer.
//! The PTX ISA version follows from the architecture ([`ptx_isa`]).
//!
//! The inner build always uses the nightly pinned in `rust-toolchain.toml` next to this
//! file, run through rustup (`rustup run <channel> cargo ...`), whatever toolchain builds
//! the outer crate: an engine on stable Rust that depends on nanofuse gets the same PTX.
//! rustup applies `rust-toolchain.toml` only to commands run inside this repository, and
//! `$CARGO` is the outer toolchain's cargo. A missing toolchain (or its `rust-src`) is
//! installed on first use, as rustup itself does for `rust-toolchain.toml`, unless
//! `RUSTUP_AUTO_INSTALL=0` or `CARGO_NET_OFFLINE=true`; the error then names the command.

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

    let ptx_isa = ptx_isa(&arch).unwrap_or_else(|| {
        let known: Vec<&str> = PTX_ISA.iter().map(|(a, _)| *a).collect();
        fail(&format!("{ARCH_ENV}={arch}: no PTX ISA version known for it; build.rs knows {}", known.join(", ")))
    });
    let channel = pinned_channel(&root);
    let (cargo, via_rustup) = kernel_cargo(&channel);
    let inner = Inner { cargo, via_rustup, channel: &channel, arch: &arch, ptx_isa, features: None };
    let ptx = add_launch_bounds(build_ptx(inner, &root, &out_dir.join("kernels-target")), &config::LAUNCH_BOUNDS);
    fs::write(out_dir.join("kernels.ptx"), ptx).expect("write kernels.ptx");

    // The sm_90a module (warpgroup MMA exists on sm_90a only): built when the main module is
    // for sm_90 or sm_90a, else empty (the host then has no such kernels and routes around
    // them).
    let sm90a = if matches!(arch.as_str(), "sm_90" | "sm_90a") {
        let (cargo, via_rustup) = kernel_cargo(&channel);
        let inner = Inner {
            cargo,
            via_rustup,
            channel: &channel,
            arch: SM90A_ARCH,
            ptx_isa: SM90A_PTX_ISA,
            features: Some("sm90a"),
        };
        add_launch_bounds(build_ptx(inner, &root, &out_dir.join("kernels-target-sm90a")), &config::LAUNCH_BOUNDS_SM90A)
    } else {
        String::new()
    };
    fs::write(out_dir.join("kernels_sm90a.ptx"), sm90a).expect("write kernels_sm90a.ptx");
}

/// The second module's architecture and PTX ISA version: 8.3 for
/// `fence.proxy.tensormap::generic` (a CUDA 12.3 driver JITs it).
const SM90A_ARCH: &str = "sm_90a";
const SM90A_PTX_ISA: u32 = 83;

/// The PTX ISA version (`.version`, as LLVM's `ptxNN` feature) for each architecture:
/// the minimum the PTX ISA's target notes give for `.target sm_XX`, which is also what the
/// pinned LLVM defaults to for that CPU (it rejects anything lower), but at least 8.0, for
/// the sm_90 instructions the kernels use (cluster barriers with `.release`/`.acquire`,
/// `cp.async.bulk.prefetch`). A higher version needs a newer driver to JIT the PTX: 8.0
/// CUDA 12.0, 8.6 CUDA 12.7, 8.7 CUDA 12.8, 8.8 CUDA 12.9, 9.0 CUDA 13.0.
/// sm_101 is sm_110 from CUDA 13 on (whose ptxas no longer accepts sm_101).
const PTX_ISA: [(&str, u32); 20] = [
    ("sm_90", 80), // sm_90 itself needs only 7.8
    ("sm_90a", 80),
    ("sm_100", 86),
    ("sm_100a", 86),
    ("sm_100f", 88),
    ("sm_101", 86),
    ("sm_101a", 86),
    ("sm_101f", 88),
    ("sm_103", 88),
    ("sm_103a", 88),
    ("sm_103f", 88),
    ("sm_110", 90),
    ("sm_110a", 90),
    ("sm_110f", 90),
    ("sm_120", 87),
    ("sm_120a", 87),
    ("sm_120f", 88),
    ("sm_121", 88),
    ("sm_121a", 88),
    ("sm_121f", 88),
];

fn ptx_isa(arch: &str) -> Option<u32> {
    PTX_ISA.iter().find(|(a, _)| *a == arch).map(|&(_, v)| v)
}

/// The `channel` of `[toolchain]` in `rust-toolchain.toml`.
fn pinned_channel(root: &Path) -> String {
    let path = root.join("rust-toolchain.toml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
    let mut section = "";
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[toolchain]" {
            let value = line.strip_prefix("channel").map(str::trim_start).and_then(|l| l.strip_prefix('='));
            if let Some(channel) = value.and_then(|v| v.trim().strip_prefix('"')).and_then(|v| v.split('"').next()) {
                return channel.to_string();
            }
        }
    }
    fail(&format!("{}: no `channel = \"...\"` in [toolchain]", path.display()))
}

/// The command that runs the pinned toolchain's cargo: `rustup run <channel> cargo`, with
/// the toolchain installed first if needed, and whether rustup was found. Without rustup,
/// the outer build's cargo, which works when it is a nightly with rust-src.
fn kernel_cargo(channel: &str) -> (Command, bool) {
    let rustup = find_rustup();
    let mut cmd = match &rustup {
        Some(rustup) => {
            if !has_rust_src(rustup, channel) {
                install_toolchain(rustup, channel);
            }
            let mut cmd = Command::new(rustup);
            cmd.args(["run", channel, "cargo"]);
            cmd
        }
        None => Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into())),
    };
    // The outer build's toolchain, flags and wrappers are not for this one.
    for (name, _) in env::vars_os() {
        if name.to_str().is_some_and(leaks_into_inner_build) {
            cmd.env_remove(name);
        }
    }
    if rustup.is_some() {
        // What the inner cargo runs through rustup's proxies resolves to `channel` too.
        cmd.env("RUSTUP_TOOLCHAIN", channel);
    }
    (cmd, rustup.is_some())
}

/// `rustup` on PATH, else in `$CARGO_HOME/bin` (where rustup-init puts it).
fn find_rustup() -> Option<PathBuf> {
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    let candidates = std::iter::once(PathBuf::from("rustup")).chain(cargo_home.map(|h| h.join("bin").join("rustup")));
    candidates
        .into_iter()
        .find(|rustup| Command::new(rustup).arg("--version").output().is_ok_and(|out| out.status.success()))
}

/// Whether `channel` is installed with rust-src, without letting rustup install anything.
fn has_rust_src(rustup: &Path, channel: &str) -> bool {
    let out = Command::new(rustup)
        .args(["run", channel, "rustc", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env("RUSTUP_AUTO_INSTALL", "0")
        .output();
    let Ok(out) = out else { return false };
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    out.status.success() && sysroot.join("lib/rustlib/src/rust/library/Cargo.lock").is_file()
}

/// The command that installs what the inner build needs, for messages.
fn install_command(channel: &str) -> String {
    format!("rustup toolchain install {channel} --profile minimal --component rust-src")
}

/// Installs `channel` with rust-src, or fails naming the command when that is switched off
/// or does not work (offline).
fn install_toolchain(rustup: &Path, channel: &str) {
    let needs = format!(
        "nanofuse compiles its GPU kernels with the toolchain pinned in its rust-toolchain.toml, \
         {channel}, and its rust-src component"
    );
    let switched_off = [("RUSTUP_AUTO_INSTALL", "0"), ("CARGO_NET_OFFLINE", "true")]
        .into_iter()
        .find(|(var, value)| env::var(var).is_ok_and(|v| v.eq_ignore_ascii_case(value)));
    if let Some((var, value)) = switched_off {
        fail(&format!(
            "{needs}, which are not installed, and {var}={value} says not to download them now. \
             Install them once with:\n  {}\n",
            install_command(channel)
        ));
    }
    println!("cargo:warning=installing {channel} with rust-src for nanofuse's GPU kernels (once)");
    let out = Command::new(rustup)
        .args(["toolchain", "install", channel, "--profile", "minimal", "--component", "rust-src"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output();
    let log = match &out {
        Ok(out) => format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        Err(e) => e.to_string(),
    };
    if !has_rust_src(rustup, channel) {
        fail(&format!(
            "{needs}; installing them failed (offline?):\n{log}\nInstall them once with:\n  {}\n",
            install_command(channel)
        ));
    }
}

/// Whether an environment variable of this build script must not reach the inner cargo:
/// what the outer cargo sets for build scripts (`RUSTC` and `RUSTDOC` point at the outer
/// toolchain, `CARGO_CFG_*`/`CARGO_FEATURE_*` describe the outer package and target), what
/// rustup sets for the outer toolchain, and build configuration meant for the host target
/// (flags, wrappers, target and target directory, profiles). Kept: `CARGO_HOME`,
/// `RUSTUP_HOME`, the jobserver (`CARGO_MAKEFLAGS`), network and registry settings.
fn leaks_into_inner_build(name: &str) -> bool {
    const NAMES: [&str; 20] = [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_LINKER",
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_ENCODED_RUSTDOCFLAGS",
        "CARGO_INCREMENTAL",
        "RUSTUP_TOOLCHAIN",
        "RUSTUP_TOOLCHAIN_SOURCE",
        "OUT_DIR",
        "TARGET",
        "HOST",
        "NUM_JOBS",
        "OPT_LEVEL",
        "DEBUG",
        "PROFILE",
    ];
    const PREFIXES: [&str; 8] = [
        "CARGO_BUILD_",
        "CARGO_TARGET_", // CARGO_TARGET_DIR, CARGO_TARGET_<TRIPLE>_RUSTFLAGS/LINKER/RUNNER
        "CARGO_PROFILE_",
        "CARGO_CFG_",
        "CARGO_FEATURE_",
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "__CARGO",
    ];
    NAMES.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Inserts `config::LAUNCH_BOUNDS` into the PTX: the performance directives go between an
/// entry's parameter list and its body.
fn add_launch_bounds(mut ptx: String, bounds: &[(&str, u32, u32)]) -> String {
    for &(name, threads, min_ctas) in bounds {
        let head = format!(".entry {name}(");
        let Some(start) = ptx.find(&head) else { fail(&format!("kernel `{name}` of LAUNCH_BOUNDS is not in the PTX")) };
        let Some(close) = ptx[start..].find("\n)\n").map(|i| start + i + 3) else {
            fail(&format!("unexpected PTX after `{head}`"))
        };
        ptx.insert_str(close, &format!(".maxntid {threads}, 1, 1\n.minnctapersm {min_ctas}\n"));
    }
    ptx
}

/// The inner build: its cargo, the pinned channel and the GPU target.
struct Inner<'a> {
    /// From [`kernel_cargo`].
    cargo: Command,
    via_rustup: bool,
    channel: &'a str,
    arch: &'a str,
    ptx_isa: u32,
    /// Cargo features of the kernel crate to turn on.
    features: Option<&'a str>,
}

/// Runs the inner cargo and returns the PTX text.
fn build_ptx(inner: Inner, root: &Path, target_dir: &Path) -> String {
    let Inner { cargo: mut cmd, via_rustup, channel, arch, ptx_isa, features } = inner;
    cmd.current_dir(root).args(["rustc", "--package", KERNEL_PACKAGE, "--lib", "--release", "--target", TARGET]);
    if let Some(features) = features {
        cmd.args(["--features", features]);
    }
    cmd.args(["-Zbuild-std=core", "--crate-type", "staticlib", "--target-dir"])
        .arg(target_dir)
        .args(["--", "--emit=asm"]);
    // Code-generation flags go through CARGO_ENCODED_RUSTFLAGS, which cargo fingerprints
    // (arguments after `--` are not: changing the arch would not rebuild).
    // The unroll threshold plays the role of CUDA's `#pragma unroll`: the kernels index
    // their register arrays (accumulators, fragments) only inside constant-trip loops,
    // and with LLVM's default threshold the tiled epilogue stays rolled, which moves the
    // accumulators to local memory (a stack frame in the ptxas report; the tests check
    // that every kernel has none).
    let flags = [
        format!("-Ctarget-cpu={arch}"),
        format!("-Ctarget-feature=+ptx{ptx_isa}"),
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

    let program = cmd.get_program().to_string_lossy().into_owned();
    let hint = if via_rustup {
        String::new()
    } else {
        format!(
            "\nhint: rustup was not found, so this ran the outer build's cargo ({program}); nanofuse \
             compiles its kernels with {channel} (rust-toolchain.toml) and its rust-src: install \
             rustup (https://rustup.rs), then\n  {}\n",
            install_command(channel)
        )
    };
    let output = cmd.output().unwrap_or_else(|e| fail(&format!("could not run {program}: {e}{hint}")));
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let (major, minor) = (ptx_isa / 10, ptx_isa % 10);
        let toolchain = if via_rustup { channel } else { &program };
        let mut msg = format!(
            "compiling {KERNEL_PACKAGE} for {TARGET} ({arch}, PTX ISA {major}.{minor}) with {toolchain} \
             failed:\n{stderr}{hint}"
        );
        if via_rustup && (stderr.contains("rust-src") || stderr.contains("library/Cargo.lock")) {
            msg.push_str(&format!("\nhint: -Zbuild-std needs rust-src:\n  {}\n", install_command(channel)));
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
    let head = format!(".version {}.{}\n.target {arch}\n", ptx_isa / 10, ptx_isa % 10);
    if !ptx.contains(&head) {
        fail(&format!("{} lacks {head:?}", path.display()));
    }
    ptx
}

fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    panic!("building the GPU kernels failed (see above)");
}
