//! Process groups: the collectives data-parallel training needs, behind one trait, with
//! [`Single`] for world size 1 (no launcher) and [`StoreGroup`], the development backend for
//! CPUs, whose collectives go through c10d's TCPStore.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tch::{Kind, Tensor};

use crate::env::DistEnv;
use crate::error::{DistError, Result};
use crate::store::{Got, TcpStore};

/// The collectives of a job's processes. Every rank calls the same collectives in the same
/// order; `what` names each one in errors (a rank that never arrives is named with it).
pub trait ProcessGroup: Send + Sync {
    /// This process's rank.
    fn rank(&self) -> usize;
    /// Processes in the job.
    fn world_size(&self) -> usize;
    /// This process's rank on its node (the GPU to use): its rank unless the launcher said.
    fn local_rank(&self) -> usize {
        self.rank()
    }
    /// Every rank's `data`, in rank order.
    fn all_gather_bytes(&self, what: &str, data: &[u8]) -> Result<Vec<Vec<u8>>>;

    /// Seconds spent in collectives since the process group was made (waiting for the others
    /// included): what a step's `perf/collective_s` is taken from.
    fn collective_seconds(&self) -> f64 {
        0.0
    }

    /// Every rank's `values`, in rank order (one vector per rank).
    fn all_gather_f64(&self, what: &str, values: &[f64]) -> Result<Vec<Vec<f64>>> {
        if self.world_size() == 1 {
            return Ok(vec![values.to_vec()]);
        }
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let decode = |b: &[u8]| {
            b.chunks_exact(8)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    f64::from_le_bytes(a)
                })
                .collect()
        };
        Ok(self.all_gather_bytes(what, &bytes)?.iter().map(|b| decode(b)).collect())
    }

    /// Sums `values` over the ranks, in place, adding in rank order (the same result on every
    /// rank).
    fn all_reduce_f64(&self, what: &str, values: &mut [f64]) -> Result<()> {
        if self.world_size() == 1 {
            return Ok(());
        }
        let all = self.all_gather_f64(what, values)?;
        for (r, v) in all.iter().enumerate() {
            if v.len() != values.len() {
                return Err(mismatch(r, self.rank(), what, v.len(), values.len()));
            }
        }
        for (i, v) in values.iter_mut().enumerate() {
            *v = all.iter().map(|part| part[i]).sum();
        }
        Ok(())
    }

    /// Sums `tensors` over the ranks, in place (any device and float kind; summed in f64 in
    /// rank order, so every rank holds the same values).
    fn all_reduce_sum(&self, what: &str, tensors: &mut [Tensor]) -> Result<()> {
        if self.world_size() == 1 || tensors.is_empty() {
            return Ok(());
        }
        let flat: Vec<Tensor> = tensors
            .iter()
            .map(|t| t.f_to_kind(Kind::Double)?.f_to_device(tch::Device::Cpu)?.f_reshape([-1]))
            .collect::<std::result::Result<_, _>>()?;
        let joined = Tensor::f_cat(&flat, 0)?;
        let mut values = Vec::<f64>::try_from(&joined)?;
        self.all_reduce_f64(what, &mut values)?;
        let mut at = 0i64;
        for t in tensors.iter_mut() {
            let n = t.numel() as i64;
            let part = Tensor::f_from_slice(&values[at as usize..(at + n) as usize])?
                .f_view(t.size().as_slice())?
                .f_to_kind(t.kind())?
                .f_to_device(t.device())?;
            t.f_copy_(&part)?;
            at += n;
        }
        Ok(())
    }

    /// What every rank sent this one: `parts[d]` goes to rank `d`; the result holds, in rank
    /// order, each rank's part for this rank. `parts` has one entry per rank.
    fn all_to_all_bytes(&self, what: &str, parts: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
        let world = self.world_size();
        if parts.len() != world {
            return Err(mismatch(self.rank(), self.rank(), what, parts.len(), world));
        }
        if world == 1 {
            return Ok(parts.to_vec());
        }
        // Through all-gather: every rank receives every part (backends override this).
        let mut framed = Vec::new();
        for p in parts {
            framed.extend_from_slice(&(p.len() as u64).to_le_bytes());
            framed.extend_from_slice(p);
        }
        let me = self.rank();
        let mut out = Vec::with_capacity(world);
        for (r, all) in self.all_gather_bytes(what, &framed)?.iter().enumerate() {
            let mut at = 0usize;
            let mut mine = None;
            for d in 0..world {
                let len = all
                    .get(at..at + 8)
                    .and_then(|h| h.try_into().ok())
                    .map(u64::from_le_bytes)
                    .ok_or_else(|| {
                        DistError::Store(format!("`{what}`: malformed parts from rank {r}"))
                    })? as usize;
                let body = all.get(at + 8..at + 8 + len).ok_or_else(|| {
                    DistError::Store(format!("`{what}`: short parts from rank {r}"))
                })?;
                if d == me {
                    mine = Some(body.to_vec());
                }
                at += 8 + len;
            }
            out.push(mine.unwrap_or_default());
        }
        Ok(out)
    }

    /// Reduce-scatter: `input` (any shape, `world_size · k` elements) is summed over the ranks
    /// and this rank receives its `k`-element slice, the `rank`-th, into `output` (`k`
    /// elements, any float kind). Sums are taken in f64 in rank order, so every backend that
    /// keeps this default gives every world size the same rounding up to that order.
    fn reduce_scatter_sum(&self, what: &str, input: &Tensor, output: &mut Tensor) -> Result<()> {
        let world = self.world_size() as i64;
        let k = output.numel() as i64;
        if input.numel() as i64 != world * k {
            return Err(DistError::Mismatch {
                rank: self.rank(),
                me: self.rank(),
                what: format!("`{what}`: input elements vs world_size × output elements"),
                theirs: input.numel().to_string(),
                ours: format!("{world} × {k}"),
            });
        }
        let rows = input.f_reshape([world, k])?.f_to_device(tch::Device::Cpu)?;
        let parts: Vec<Vec<u8>> =
            (0..world).map(|d| tensor_bytes(&rows.f_get(d)?)).collect::<Result<_>>()?;
        let got = self.all_to_all_bytes(what, &parts)?;
        let mut sum = Tensor::f_zeros([k], (Kind::Double, tch::Device::Cpu))?;
        for (r, bytes) in got.iter().enumerate() {
            let part = tensor_from_bytes(bytes, input.kind(), k)
                .map_err(|e| DistError::Store(format!("`{what}`: rank {r}'s part: {e}")))?;
            let _ = sum.f_add_(&part.f_to_kind(Kind::Double)?)?;
        }
        let sum = sum.f_to_kind(output.kind())?.f_to_device(output.device())?;
        output.f_copy_(&sum.f_view(output.size().as_slice())?)?;
        Ok(())
    }

    /// All-gather: every rank's `input` (`k` elements), in rank order, into `output`
    /// (`world_size · k` elements of the same kind), exactly (no arithmetic).
    fn all_gather_into(&self, what: &str, input: &Tensor, output: &mut Tensor) -> Result<()> {
        let world = self.world_size() as i64;
        let k = input.numel() as i64;
        if output.numel() as i64 != world * k || output.kind() != input.kind() {
            return Err(DistError::Mismatch {
                rank: self.rank(),
                me: self.rank(),
                what: format!("`{what}`: output vs world_size × input"),
                theirs: format!("{} elements of {:?}", output.numel(), output.kind()),
                ours: format!("{world} × {k} of {:?}", input.kind()),
            });
        }
        let all = self.all_gather_bytes(what, &tensor_bytes(input)?)?;
        let parts: Vec<Tensor> = all
            .iter()
            .enumerate()
            .map(|(r, b)| {
                tensor_from_bytes(b, input.kind(), k)
                    .map_err(|e| DistError::Store(format!("`{what}`: rank {r}'s part: {e}")))
            })
            .collect::<Result<_>>()?;
        let joined = Tensor::f_cat(&parts, 0)?.f_to_device(output.device())?;
        output.f_copy_(&joined.f_view(output.size().as_slice())?)?;
        Ok(())
    }

    /// `data` of rank `root`, on every rank.
    fn broadcast_bytes(&self, what: &str, data: &[u8], root: usize) -> Result<Vec<u8>> {
        let mine = if self.rank() == root { data } else { &[] };
        let mut all = self.all_gather_bytes(what, mine)?;
        Ok(std::mem::take(&mut all[root]))
    }

    /// Returns once every rank has called it.
    fn barrier(&self, what: &str) -> Result<()> {
        self.all_gather_bytes(what, &[]).map(|_| ())
    }

    /// Checks that every rank passes the same `value` for `what` (config, code version):
    /// the error names the first rank that differs.
    fn check_same(&self, what: &str, value: &str) -> Result<()> {
        for (r, v) in self.all_gather_bytes(what, value.as_bytes())?.iter().enumerate() {
            if v.as_slice() != value.as_bytes() {
                return Err(DistError::Mismatch {
                    rank: r,
                    me: self.rank(),
                    what: what.into(),
                    theirs: String::from_utf8_lossy(v).into(),
                    ours: value.into(),
                });
            }
        }
        Ok(())
    }
}

/// The bytes of `t` (any device), in its own dtype, row-major.
pub(crate) fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let flat = t.f_to_device(tch::Device::Cpu)?.f_contiguous()?.f_reshape([-1])?;
    let n = flat.numel();
    let mut out = vec![0u8; n * flat.kind().elt_size_in_bytes()];
    flat.f_copy_data_u8(&mut out, n)?;
    Ok(out)
}

/// `k` elements of `kind` from `bytes` (as [`tensor_bytes`] wrote them), on the CPU.
pub(crate) fn tensor_from_bytes(bytes: &[u8], kind: Kind, k: i64) -> Result<Tensor> {
    let want = k as usize * kind.elt_size_in_bytes();
    if bytes.len() != want {
        return Err(DistError::Store(format!("{} bytes, expected {want}", bytes.len())));
    }
    Ok(Tensor::f_from_data_size(bytes, &[k], kind)?)
}

fn mismatch(rank: usize, me: usize, what: &str, theirs: usize, ours: usize) -> DistError {
    DistError::Mismatch {
        rank,
        me,
        what: format!("the length of `{what}`"),
        theirs: theirs.to_string(),
        ours: ours.to_string(),
    }
}

/// World size 1: every collective is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl ProcessGroup for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_gather_bytes(&self, _what: &str, data: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![data.to_vec()])
    }
}

/// The development backend: collectives through c10d's TCPStore (each rank sets its part
/// under a key, reads everyone's, and deletes its key of two collectives back, which every
/// rank has read by then). For development and tests on one machine: every byte crosses
/// rank 0's store, so it is far slower than NCCL on GPUs, which is the production path.
#[derive(Debug)]
pub struct StoreGroup {
    store: TcpStore,
    rank: usize,
    local_rank: usize,
    world: usize,
    timeout: Duration,
    seq: AtomicU64,
    /// Nanoseconds spent in collectives.
    busy_ns: AtomicU64,
    /// This rank's recent collectives and the keys it set in them, to delete them later.
    written: std::sync::Mutex<std::collections::VecDeque<(u64, Vec<String>)>>,
    /// Keys of this run (an agent's store outlives restarts).
    prefix: String,
    /// Whether this process serves the store (and must outlive the others' use of it).
    serving: bool,
}

impl StoreGroup {
    /// Joins the job `env` describes (rank 0 serves the store unless torchrun's agent does),
    /// waiting up to `timeout` for the
    /// others at start-up and in every collective.
    pub fn connect(env: &DistEnv, timeout: Duration) -> Result<Self> {
        let host = if env.master_addr.is_empty() { "127.0.0.1" } else { env.master_addr.as_str() };
        // Under torchrun the agent already serves the store at MASTER_ADDR:MASTER_PORT (and
        // says so): every rank joins it as a client, as torch.distributed's workers do.
        let serve = env.rank == 0 && !env.agent_store;
        let store = TcpStore::open(host, env.master_port, serve, env.world_size, timeout)?;
        let group = StoreGroup {
            store,
            rank: env.rank,
            local_rank: env.local_rank,
            world: env.world_size,
            timeout,
            seq: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            written: std::sync::Mutex::new(std::collections::VecDeque::new()),
            prefix: format!("icpo/{}", env.restart),
            serving: serve,
        };
        group.barrier("start-up")?;
        Ok(group)
    }

    /// The store the collectives go through.
    pub fn tcp_store(&self) -> &TcpStore {
        &self.store
    }

    fn key(&self, seq: u64, rank: usize) -> String {
        format!("{}/c{seq}/r{rank}", self.prefix)
    }
}

impl Drop for StoreGroup {
    /// The rank serving the store waits (up to the timeout) for every other rank to say it is
    /// leaving before the server goes away under them.
    fn drop(&mut self) {
        let left = |r: usize| format!("{}/left/r{r}", self.prefix);
        if !self.serving {
            let _ = self.store.set(&left(self.rank), &[]);
            return;
        }
        for r in (0..self.world).filter(|&r| r != self.rank) {
            let _ = self.store.get(&left(r), self.timeout);
        }
    }
}

impl ProcessGroup for StoreGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn collective_seconds(&self) -> f64 {
        self.busy_ns.load(Ordering::Relaxed) as f64 * 1e-9
    }

    fn all_gather_bytes(&self, what: &str, data: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.timed(|| self.exchange(what, &[data]))
    }

    /// Each part crosses the store once, to its one reader.
    fn all_to_all_bytes(&self, what: &str, parts: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
        if parts.len() != self.world {
            return Err(mismatch(self.rank, self.rank, what, parts.len(), self.world));
        }
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        self.timed(|| self.exchange(what, &refs))
    }
}

impl StoreGroup {
    /// One collective over the store. `outgoing` holds one part for everyone (all-gather) or
    /// one per destination rank (all-to-all); the result holds each rank's part for this one.
    fn exchange(&self, what: &str, outgoing: &[&[u8]]) -> Result<Vec<Vec<u8>>> {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let to_each = outgoing.len() > 1 || self.world == 1;
        // Where rank `from`'s part for rank `to` lives.
        let key = |from: usize, to: usize| {
            if to_each {
                format!("{}/to{to}", self.key(seq, from))
            } else {
                self.key(seq, from)
            }
        };
        let mut written = Vec::new();
        let mut own = None;
        for (d, part) in outgoing.iter().enumerate() {
            if to_each && d == self.rank {
                own = Some(part.to_vec());
                continue;
            }
            written.extend(self.put(&key(self.rank, d), part)?);
        }
        let mut out = Vec::with_capacity(self.world);
        for r in 0..self.world {
            if r == self.rank {
                if let Some(mine) = own.take() {
                    out.push(mine);
                    continue;
                }
            }
            out.push(self.fetch(&key(r, self.rank), r, what, seq)?);
        }
        // Every rank that set collective `seq - 1` had read all of `seq - 2`.
        let mut mine = self.written.lock().map_err(|_| DistError::Store("poisoned".into()))?;
        mine.push_back((seq, written));
        while mine.front().is_some_and(|(s, _)| s + 2 <= seq) {
            if let Some((_, keys)) = mine.pop_front() {
                for k in keys {
                    self.store.delete(&k)?;
                }
            }
        }
        Ok(out)
    }

    /// Sets `data` under `key`: the store takes values of a few MiB at most (libuv backend:
    /// 8 MiB), so large parts go in chunks, then a header with their count, so a reader that
    /// sees the header finds every chunk. Returns the keys written.
    fn put(&self, key: &str, data: &[u8]) -> Result<Vec<String>> {
        let chunks: Vec<&[u8]> =
            if data.is_empty() { vec![] } else { data.chunks(CHUNK).collect() };
        let mut keys = Vec::with_capacity(chunks.len() + 1);
        for (i, c) in chunks.iter().enumerate() {
            let k = format!("{key}/{i}");
            self.store.set(&k, c)?;
            keys.push(k);
        }
        self.store.set(key, &(chunks.len() as u64).to_le_bytes())?;
        keys.push(key.to_string());
        Ok(keys)
    }

    /// Reads what rank `from` [`StoreGroup::put`] under `key`, waiting up to the timeout.
    fn fetch(&self, key: &str, from: usize, what: &str, seq: u64) -> Result<Vec<u8>> {
        let timeout = || DistError::Timeout {
            rank: from,
            me: self.rank,
            what: format!("{what} (collective #{seq})"),
            seconds: self.timeout.as_secs_f64(),
        };
        let header = match self.store.get(key, self.timeout)? {
            Got::Value(v) => v,
            Got::TimedOut => return Err(timeout()),
        };
        let n = header
            .get(..8)
            .and_then(|h| h.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| DistError::Store(format!("malformed header from rank {from}")))?;
        let mut part = Vec::new();
        for i in 0..n {
            match self.store.get(&format!("{key}/{i}"), self.timeout)? {
                Got::Value(v) => part.extend_from_slice(&v),
                Got::TimedOut => return Err(timeout()),
            }
        }
        Ok(part)
    }

    fn timed<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t0 = std::time::Instant::now();
        let out = f();
        let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.busy_ns.fetch_add(ns, Ordering::Relaxed);
        out
    }
}

/// Bytes per store value (under the libuv backend's 8 MiB limit).
const CHUNK: usize = 4 << 20;
