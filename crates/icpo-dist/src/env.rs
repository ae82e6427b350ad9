//! The launcher's variables: what `torchrun` (or Slurm through it) sets for each process.

use crate::error::{DistError, Result};

/// Where this process sits in the job: torchrun's `RANK`, `LOCAL_RANK`, `WORLD_SIZE`,
/// `MASTER_ADDR`, `MASTER_PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    /// Global rank, `0..world_size`.
    pub rank: usize,
    /// Rank on this node (the GPU index to use).
    pub local_rank: usize,
    /// Processes in the job.
    pub world_size: usize,
    /// Host of rank 0, where the rendezvous store is served.
    pub master_addr: String,
    /// Its port.
    pub master_port: u16,
    /// Whether the launcher's agent serves the store already (torchrun's
    /// `TORCHELASTIC_USE_AGENT_STORE`): then every rank joins it as a client.
    pub agent_store: bool,
    /// torchrun's restart count (`TORCHELASTIC_RESTART_COUNT`), keeping each attempt's keys apart.
    pub restart: u64,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parse<T: std::str::FromStr>(name: &str, value: &str) -> Result<T> {
    value.trim().parse().map_err(|_| DistError::Env {
        var: name.into(),
        message: format!("`{value}` is not a valid number"),
    })
}

impl DistEnv {
    /// Reads the launcher's variables; None when `WORLD_SIZE` is unset (a plain run: world size
    /// 1 needs no launcher). A set `WORLD_SIZE` with any other variable missing or malformed is
    /// an error naming it.
    pub fn from_env() -> Result<Option<Self>> {
        let Some(world) = var("WORLD_SIZE") else { return Ok(None) };
        let world_size: usize = parse("WORLD_SIZE", &world)?;
        if world_size == 0 {
            return Err(DistError::Env {
                var: "WORLD_SIZE".into(), message: "must be ≥ 1".into()
            });
        }
        let need = |name: &str| {
            var(name).ok_or_else(|| DistError::Env {
                var: name.into(),
                message: format!("unset, but WORLD_SIZE = {world_size} is (launch with torchrun, which sets both)"),
            })
        };
        let rank: usize = parse("RANK", &need("RANK")?)?;
        if rank >= world_size {
            return Err(DistError::Env {
                var: "RANK".into(),
                message: format!("{rank} is out of range for WORLD_SIZE = {world_size}"),
            });
        }
        let local_rank = match var("LOCAL_RANK") {
            Some(v) => parse("LOCAL_RANK", &v)?,
            None => rank,
        };
        let master_addr = if world_size == 1 {
            var("MASTER_ADDR").unwrap_or_default()
        } else {
            need("MASTER_ADDR")?
        };
        let master_port = if world_size == 1 {
            var("MASTER_PORT").map_or(Ok(29500), |p| parse("MASTER_PORT", &p))?
        } else {
            parse("MASTER_PORT", &need("MASTER_PORT")?)?
        };
        let agent_store =
            var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let restart = match var("TORCHELASTIC_RESTART_COUNT") {
            Some(v) => parse("TORCHELASTIC_RESTART_COUNT", &v)?,
            None => 0,
        };
        Ok(Some(DistEnv {
            rank,
            local_rank,
            world_size,
            master_addr,
            master_port,
            agent_store,
            restart,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launcher_variables_are_read_and_checked_by_name() {
        // One test: the environment is process-wide.
        let set = |vars: &[(&str, &str)]| {
            for k in [
                "RANK",
                "LOCAL_RANK",
                "WORLD_SIZE",
                "MASTER_ADDR",
                "MASTER_PORT",
                "TORCHELASTIC_USE_AGENT_STORE",
                "TORCHELASTIC_RESTART_COUNT",
            ] {
                std::env::remove_var(k);
            }
            for (k, v) in vars {
                std::env::set_var(k, v);
            }
        };
        set(&[]);
        assert_eq!(DistEnv::from_env().unwrap(), None, "no launcher: world size 1");
        set(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29501"),
        ]);
        let e = DistEnv::from_env().unwrap().unwrap();
        assert_eq!((e.rank, e.local_rank, e.world_size, e.master_port), (1, 1, 2, 29501));
        assert_eq!(e.master_addr, "node0");
        set(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "1")]);
        assert!(DistEnv::from_env().unwrap_err().to_string().contains("RANK: 2 is out of range"));
        set(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "1")]);
        assert!(DistEnv::from_env().unwrap_err().to_string().contains("MASTER_ADDR"));
        set(&[("WORLD_SIZE", "two")]);
        assert!(DistEnv::from_env().unwrap_err().to_string().contains("WORLD_SIZE: `two`"));
        set(&[]);
    }
}
