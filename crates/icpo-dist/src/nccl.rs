//! The GPU backend: c10d's `ProcessGroupNCCL` (what DDP and FSDP use) for tensors on CUDA,
//! made over the job's TCPStore; the small host-side collectives (counts, metrics, checks)
//! stay on the store ([`crate::StoreGroup`]).
//!
//! Compiled where the wheel's CUDA and NCCL headers are (cfg `icpo_nccl`); it has not run on a
//! GPU yet (no machine was lent while it was written): `scripts/gpu-check` runs it where one is.

use std::time::Duration;

use tch::{Device, Tensor};

use crate::env::DistEnv;
use crate::error::{DistError, Result};
use crate::group::{ProcessGroup, StoreGroup};

#[cfg(icpo_nccl)]
#[allow(unsafe_code)] // the C interface of csrc/nccl.cpp; every call is checked there
mod ffi {
    use std::ffi::{c_char, c_void};
    use std::ptr;
    use std::time::Duration;

    use torch_sys::C_tensor;

    use crate::error::{DistError, Result};
    use crate::store::TcpStore;

    extern "C" {
        fn icpo_nccl_open(
            store: *mut c_void,
            rank: i32,
            world: i32,
            timeout_ms: i64,
            out: *mut *mut c_void,
        ) -> *mut c_char;
        fn icpo_nccl_close(pg: *mut c_void);
        fn icpo_nccl_all_reduce_sum(pg: *mut c_void, t: *mut C_tensor) -> *mut c_char;
        fn icpo_nccl_reduce_scatter_sum(
            pg: *mut c_void,
            out: *mut C_tensor,
            input: *mut C_tensor,
        ) -> *mut c_char;
        fn icpo_nccl_all_gather(
            pg: *mut c_void,
            out: *mut C_tensor,
            input: *mut C_tensor,
        ) -> *mut c_char;
    }

    pub(crate) struct Handle(*mut c_void);

    // SAFETY: ProcessGroupNCCL is thread-safe for collectives issued in one order; the group
    // issues them from the trainer's thread.
    unsafe impl Send for Handle {}
    unsafe impl Sync for Handle {}

    impl Handle {
        pub(crate) fn open(
            store: &TcpStore,
            rank: usize,
            world: usize,
            timeout: Duration,
        ) -> Result<Self> {
            let mut out = ptr::null_mut();
            let to = |v: usize| {
                i32::try_from(v).map_err(|_| DistError::Store("rank out of range".into()))
            };
            let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
            // SAFETY: the store outlives the group (both owned by NcclGroup, dropped in order).
            crate::store::ffi_check(unsafe {
                icpo_nccl_open(store.raw(), to(rank)?, to(world)?, ms, &mut out)
            })?;
            if out.is_null() {
                return Err(DistError::Store("the NCCL process group did not open".into()));
            }
            Ok(Handle(out))
        }

        pub(crate) fn all_reduce_sum(&self, t: &mut tch::Tensor) -> Result<()> {
            // SAFETY: `t` is a live tensor; the call reduces it in place and waits.
            crate::store::ffi_check(unsafe { icpo_nccl_all_reduce_sum(self.0, t.as_mut_ptr()) })
        }

        pub(crate) fn reduce_scatter_sum(
            &self,
            out: &mut tch::Tensor,
            input: &mut tch::Tensor,
        ) -> Result<()> {
            // SAFETY: both live, contiguous CUDA tensors (checked by the caller); waits.
            crate::store::ffi_check(unsafe {
                icpo_nccl_reduce_scatter_sum(self.0, out.as_mut_ptr(), input.as_mut_ptr())
            })
        }

        pub(crate) fn all_gather(
            &self,
            out: &mut tch::Tensor,
            input: &mut tch::Tensor,
        ) -> Result<()> {
            // SAFETY: both live, contiguous CUDA tensors (checked by the caller); waits.
            crate::store::ffi_check(unsafe {
                icpo_nccl_all_gather(self.0, out.as_mut_ptr(), input.as_mut_ptr())
            })
        }
    }

    impl Drop for Handle {
        fn drop(&mut self) {
            // SAFETY: opened by icpo_nccl_open, closed once.
            unsafe { icpo_nccl_close(self.0) }
        }
    }
}

/// NCCL for CUDA tensors, the store for everything else.
pub struct NcclGroup {
    #[cfg(icpo_nccl)]
    nccl: ffi::Handle,
    // Declared last: dropped after the NCCL group made over its store.
    store: StoreGroup,
}

impl std::fmt::Debug for NcclGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclGroup").field("rank", &self.store.rank()).finish()
    }
}

impl NcclGroup {
    /// Joins the job `env` describes: the store first (as [`StoreGroup::connect`]), then NCCL
    /// over it, each collective bounded by `timeout`.
    pub fn connect(env: &DistEnv, timeout: Duration) -> Result<Self> {
        let store = StoreGroup::connect(env, timeout)?;
        #[cfg(icpo_nccl)]
        {
            let nccl = ffi::Handle::open(store.tcp_store(), env.rank, env.world_size, timeout)?;
            Ok(NcclGroup { nccl, store })
        }
        #[cfg(not(icpo_nccl))]
        {
            drop(store);
            Err(DistError::Store(
                "built without the CUDA/NCCL headers (scripts/setup-libtorch installs them): no NCCL backend".into(),
            ))
        }
    }

    /// Whether this build has the NCCL backend.
    pub fn available() -> bool {
        cfg!(icpo_nccl)
    }
}

impl ProcessGroup for NcclGroup {
    fn rank(&self) -> usize {
        self.store.rank()
    }
    fn world_size(&self) -> usize {
        self.store.world_size()
    }
    fn local_rank(&self) -> usize {
        self.store.local_rank()
    }
    fn collective_seconds(&self) -> f64 {
        self.store.collective_seconds()
    }
    fn all_gather_bytes(&self, what: &str, data: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.store.all_gather_bytes(what, data)
    }

    fn all_to_all_bytes(&self, what: &str, parts: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
        self.store.all_to_all_bytes(what, parts)
    }

    /// CUDA tensors through NCCL (summed in their dtype: the sharded optimiser sends f32),
    /// CPU tensors via the store.
    fn reduce_scatter_sum(&self, what: &str, input: &Tensor, output: &mut Tensor) -> Result<()> {
        let cuda = input.device() != Device::Cpu && output.device() != Device::Cpu;
        if !cuda || !cfg!(icpo_nccl) {
            return self.store.reduce_scatter_sum(what, input, output);
        }
        #[cfg(icpo_nccl)]
        {
            let world = self.world_size() as i64;
            if input.numel() as i64 != world * output.numel() as i64 {
                return Err(DistError::Store(format!(
                    "`{what}`: input of {} elements, output of {} on {world} ranks",
                    input.numel(),
                    output.numel()
                )));
            }
            let mut input = input.f_contiguous()?.f_to_kind(output.kind())?;
            let mut out =
                Tensor::f_empty([output.numel() as i64], (output.kind(), output.device()))?;
            self.nccl.reduce_scatter_sum(&mut out, &mut input)?;
            output.f_copy_(&out.f_view(output.size().as_slice())?)?;
        }
        Ok(())
    }

    /// CUDA tensors through NCCL, CPU tensors via the store.
    fn all_gather_into(&self, what: &str, input: &Tensor, output: &mut Tensor) -> Result<()> {
        let cuda = input.device() != Device::Cpu && output.device() != Device::Cpu;
        if !cuda || !cfg!(icpo_nccl) {
            return self.store.all_gather_into(what, input, output);
        }
        #[cfg(icpo_nccl)]
        {
            let world = self.world_size() as i64;
            if output.numel() as i64 != world * input.numel() as i64
                || output.kind() != input.kind()
            {
                return Err(DistError::Store(format!(
                    "`{what}`: output of {} {:?}, input of {} {:?} on {world} ranks",
                    output.numel(),
                    output.kind(),
                    input.numel(),
                    input.kind()
                )));
            }
            let mut input = input.f_contiguous()?;
            let mut out =
                Tensor::f_empty([output.numel() as i64], (output.kind(), output.device()))?;
            self.nccl.all_gather(&mut out, &mut input)?;
            output.f_copy_(&out.f_view(output.size().as_slice())?)?;
        }
        Ok(())
    }

    /// CUDA tensors through NCCL (flattened into one buffer per kind), others via the store.
    fn all_reduce_sum(&self, what: &str, tensors: &mut [Tensor]) -> Result<()> {
        if tensors.iter().any(|t| t.device() == Device::Cpu) || !cfg!(icpo_nccl) {
            return self.store.all_reduce_sum(what, tensors);
        }
        #[cfg(icpo_nccl)]
        {
            let flat: Vec<Tensor> =
                tensors.iter().map(|t| t.f_reshape([-1])).collect::<std::result::Result<_, _>>()?;
            let kind = flat.first().map(Tensor::kind);
            if flat.iter().any(|t| Some(t.kind()) != kind) {
                return Err(DistError::Store(format!("`{what}`: tensors of several dtypes")));
            }
            let mut joined = Tensor::f_cat(&flat, 0)?;
            self.nccl.all_reduce_sum(&mut joined)?;
            let mut at = 0i64;
            for t in tensors.iter_mut() {
                let n = t.numel() as i64;
                let part = joined.f_narrow(0, at, n)?.f_view(t.size().as_slice())?;
                t.f_copy_(&part)?;
                at += n;
            }
        }
        Ok(())
    }
}
