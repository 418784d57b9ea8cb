//! Opens device 0 through nanofuse with the embedded kernels. Without a CUDA driver or
//! device it prints `skipped: ...` and succeeds (CI has no GPU); any other error fails.

use std::process::ExitCode;

fn main() -> ExitCode {
    let ptx_lines = nanofuse::KERNELS_PTX.lines().count();
    println!("nanofuse: {ptx_lines} lines of PTX for {}", nanofuse::KERNELS_ARCH);
    match nanofuse::open(0) {
        Ok(gpu) => {
            let info = gpu.info();
            let (major, minor) = info.compute_capability;
            println!("device 0: {} (sm_{major}{minor}, {} SMs)", info.name, info.sm_count);
            ExitCode::SUCCESS
        }
        Err(e @ (nanofuse::Error::NoDriver | nanofuse::Error::NoDevice { .. })) => {
            println!("skipped: {e}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
