// What every C interface of icpo-rs shares (icpo-policy's kernels, icpo-dist's c10d shims):
// errors cross the interface as malloc'd messages, freed by the Rust side through the crate's
// own free function, never as exceptions. Reached through `icpo_build::ffi_include_dir()`.

#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

namespace icpo_ffi {

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

}  // namespace icpo_ffi
