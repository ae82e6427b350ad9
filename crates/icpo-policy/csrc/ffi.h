// Helpers shared by the C interfaces of fused.cpp and recompute.cpp: errors cross the interface
// as malloc'd messages (the caller frees them with icpo_fused_free_error), never as exceptions.

#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
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

// "(d0, d1, ...)": shape errors name the dims.
inline std::string dims(const at::Tensor& t) {
  std::string s = "(";
  for (size_t k = 0; k < t.sizes().size(); ++k) s += (k ? ", " : "") + std::to_string(t.size(k));
  return s + ")";
}

inline void check(bool ok, const std::string& msg) {
  TORCH_CHECK(ok, msg);
}

}  // namespace icpo_ffi
