//! What the device is: the driver's presence, the device count, [`DeviceInfo`] and the
//! architecture check of a PTX build against the device.

use std::sync::Arc;

use cudarc::driver::CudaContext;
use cudarc::driver::sys::{self, CUdevice_attribute};

use crate::error::{Error, Result};

/// What the launchers and benchmarks need to know about the device.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Device name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Streaming multiprocessors.
    pub sm_count: u32,
    /// L2 cache bytes.
    pub l2_bytes: u64,
    /// Most dynamic shared memory one CTA can opt in to.
    pub max_smem_per_block: u32,
    /// Total device memory bytes.
    pub total_mem: u64,
    /// CUDA driver version, e.g. 13000 for 13.0.
    pub driver_version: i32,
    /// Peak SM clock in MHz, where the driver reports it.
    pub sm_clock_mhz: Option<u32>,
}

/// True when the CUDA driver library can be loaded on this machine (it says nothing about
/// whether a device is present).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { sys::is_culib_present() }
}

/// The number of CUDA devices; an error when there is no driver.
pub fn device_count() -> Result<usize> {
    if !driver_present() {
        return Err(Error::NoDriver);
    }
    let n = CudaContext::device_count().map_err(Error::driver("cuDeviceGetCount"))?;
    Ok(n.max(0) as usize)
}

/// The properties of `ctx`'s device.
pub(crate) fn query_info(ctx: &Arc<CudaContext>) -> Result<DeviceInfo> {
    let attr = |a: CUdevice_attribute| ctx.attribute(a).map_err(Error::driver("cuDeviceGetAttribute"));
    let mut driver_version = 0;
    // SAFETY: writes one int.
    unsafe { sys::cuDriverGetVersion(&mut driver_version) }.result().map_err(Error::driver("cuDriverGetVersion"))?;
    Ok(DeviceInfo {
        name: ctx.name().map_err(Error::driver("cuDeviceGetName"))?,
        compute_capability: (
            attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        ),
        sm_count: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32,
        l2_bytes: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)? as u64,
        max_smem_per_block: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as u32,
        total_mem: ctx.total_mem().map_err(Error::driver("cuDeviceTotalMem"))? as u64,
        driver_version,
        sm_clock_mhz: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CLOCK_RATE).ok().map(|khz| (khz / 1000) as u32),
    })
}

/// The numeric part of an architecture name: "sm_90" -> 90, "sm_90a" -> 90.
pub fn arch_number(arch: &str) -> Option<u32> {
    let digits: String = arch.strip_prefix("sm_")?.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// PTX built for `sm_XY` runs on devices of compute capability X.Y or newer.
pub(crate) fn check_arch(info: &DeviceInfo, ptx_arch: &str) -> Result<()> {
    let (major, minor) = info.compute_capability;
    let found = (major * 10 + minor) as u32;
    let needed = arch_number(ptx_arch)
        .ok_or_else(|| Error::Module { reason: format!("unknown PTX architecture {ptx_arch:?}") })?;
    if found < needed {
        return Err(Error::UnsupportedArch {
            device: info.name.clone(),
            found: format!("sm_{found}"),
            built_for: ptx_arch.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(major: i32, minor: i32) -> DeviceInfo {
        DeviceInfo {
            name: "test GPU".into(),
            compute_capability: (major, minor),
            sm_count: 108,
            l2_bytes: 40 << 20,
            max_smem_per_block: 163 << 10,
            total_mem: 80 << 30,
            driver_version: 12080,
            sm_clock_mhz: None,
        }
    }

    #[test]
    fn an_older_gpu_is_refused_with_the_arch_and_the_variable() {
        let err = check_arch(&device(8, 0), "sm_90").unwrap_err();
        assert!(
            matches!(&err, Error::UnsupportedArch { found, built_for, .. } if found == "sm_80" && built_for == "sm_90")
        );
        let msg = err.to_string();
        assert!(msg.contains("sm_90") && msg.contains("NANOFUSE_CUDA_ARCH"), "{msg}");
    }

    #[test]
    fn the_built_arch_and_newer_gpus_are_accepted() {
        assert!(check_arch(&device(9, 0), "sm_90").is_ok());
        assert!(check_arch(&device(10, 0), "sm_90").is_ok());
        assert!(check_arch(&device(9, 0), "sm_90a").is_ok());
        assert!(check_arch(&device(9, 0), "sm_100").is_err());
        assert!(matches!(check_arch(&device(9, 0), "compute_90"), Err(Error::Module { .. })));
    }
}
