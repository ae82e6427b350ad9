// The store handle shared by store.cpp and nccl.cpp.

#pragma once

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

namespace icpo_dist {

struct Store {
  c10::intrusive_ptr<c10d::TCPStore> store;
};

}  // namespace icpo_dist
