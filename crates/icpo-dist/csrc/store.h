// What store.cpp and nccl.cpp share: the store handle, and errors crossing the C interface as
// malloc'd messages (freed with icpo_dist_free), never as exceptions.

#pragma once

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cstdlib>
#include <cstring>
#include <string>

namespace icpo_dist {

struct Store {
  c10::intrusive_ptr<c10d::TCPStore> store;
};

// A malloc'd copy of msg (nullptr if out of memory).
inline char* error_copy(const std::string& msg) {
  char* p = static_cast<char*>(std::malloc(msg.size() + 1));
  if (p) std::memcpy(p, msg.c_str(), msg.size() + 1);
  return p;
}

// Runs f; nullptr on success, else its exception's message.
template <typename F>
char* guarded(F f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error& e) {
    return error_copy(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return error_copy(e.what());
  } catch (...) {
    return error_copy("unknown C++ exception");
  }
}

}  // namespace icpo_dist
