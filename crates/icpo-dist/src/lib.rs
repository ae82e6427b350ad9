//! Process groups for icpo-rs on PyTorch's distributed runtime, c10d.
//!
//! A job is launched by `torchrun` (`torchrun --no-python --nproc-per-node N binary ...`), which
//! sets `RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT` ([`DistEnv`]).
//! Rank 0 serves c10d's `TCPStore` (the store torch.distributed itself rendezvouses through,
//! reached through `csrc/store.cpp`), the others join it. [`ProcessGroup`] is the one trait the
//! trainer uses: [`Single`] for world size 1 (no launcher needed) and [`StoreGroup`], the CPU
//! development backend whose collectives go through the store, and [`NcclGroup`], c10d's
//! `ProcessGroupNCCL` for CUDA tensors (not yet run on a GPU). Every collective waits at most
//! a timeout, and a rank that does not arrive (dead, hung, diverged) is named in the error.

mod env;
mod error;
mod group;
mod nccl;
mod store;

pub use env::DistEnv;
pub use error::{DistError, Result};
pub use group::{ProcessGroup, Single, StoreGroup};
pub use nccl::NcclGroup;
pub use store::TcpStore;

/// The process group of this process as its launcher set it up: [`Single`] without one (or
/// with `WORLD_SIZE=1`); else, with `gpu`, a [`NcclGroup`] (NCCL for CUDA tensors), and
/// otherwise a [`StoreGroup`] (the CPU development backend), joined with `timeout`.
pub fn init_from_env(
    timeout: std::time::Duration,
    gpu: bool,
) -> Result<std::sync::Arc<dyn ProcessGroup>> {
    match DistEnv::from_env()? {
        Some(env) if env.world_size > 1 && gpu => {
            Ok(std::sync::Arc::new(NcclGroup::connect(&env, timeout)?))
        }
        Some(env) if env.world_size > 1 => {
            Ok(std::sync::Arc::new(StoreGroup::connect(&env, timeout)?))
        }
        _ => Ok(std::sync::Arc::new(Single)),
    }
}
