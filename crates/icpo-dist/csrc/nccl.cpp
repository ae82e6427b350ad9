// The C interface of icpo-dist to c10d's ProcessGroupNCCL, the backend DDP and FSDP use on
// GPUs: made over the job's TCPStore (prefixed, as torch.distributed does): sum-all-reduce of
// one CUDA tensor in place, reduce-scatter and all-gather (the sharded optimiser's). Compiled only where the CUDA and NCCL headers are (build.rs).

#define USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>

#include "store.h"

namespace {

using icpo_dist::guarded;

struct Nccl {
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> pg;
};

}  // namespace

extern "C" {

// A NCCL process group of `world` ranks over the store `store` (from icpo_store_open);
// collectives time out after timeout_ms (NCCL's watchdog then aborts the communicator).
char* icpo_nccl_open(void* store, int32_t rank, int32_t world, int64_t timeout_ms, void** out) {
  return guarded([&] {
    auto s = static_cast<icpo_dist::Store*>(store)->store;
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>("icpo-nccl", s);
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::milliseconds(timeout_ms);
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, rank, world, opts);
    *out = new Nccl{std::move(pg)};
  });
}

void icpo_nccl_close(void* pg) { delete static_cast<Nccl*>(pg); }

// Sums the CUDA tensor `t` over the ranks, in place, and waits for it.
char* icpo_nccl_all_reduce_sum(void* pg, at::Tensor* t) {
  return guarded([&] {
    std::vector<at::Tensor> ts{*t};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    static_cast<Nccl*>(pg)->pg->allreduce(ts, opts)->wait();
  });
}

// Reduce-scatter: `in` (world × out elements) summed over the ranks, this rank's slice into
// `out`; both CUDA, contiguous, of one dtype. Waits for it.
char* icpo_nccl_reduce_scatter_sum(void* pg, at::Tensor* out, at::Tensor* in) {
  return guarded([&] {
    c10d::ReduceScatterOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    static_cast<Nccl*>(pg)->pg->_reduce_scatter_base(*out, *in, opts)->wait();
  });
}

// All-gather: every rank's `in`, in rank order, into `out` (world × in elements). Waits.
char* icpo_nccl_all_gather(void* pg, at::Tensor* out, at::Tensor* in) {
  return guarded([&] {
    c10d::AllgatherOptions opts;
    static_cast<Nccl*>(pg)->pg->_allgather_base(*out, *in, opts)->wait();
  });
}

}  // extern "C"
