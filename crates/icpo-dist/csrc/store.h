// What store.cpp and nccl.cpp share: the store handle, and (from icpo-build's icpo_ffi.h) errors
// crossing the C interface as malloc'd messages, freed with icpo_dist_free.

#pragma once

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "icpo_ffi.h"

namespace icpo_dist {

struct Store {
  c10::intrusive_ptr<c10d::TCPStore> store;
};

using icpo_ffi::guarded;

}  // namespace icpo_dist
