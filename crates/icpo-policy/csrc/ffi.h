// Helpers shared by the C interfaces of this crate (on top of icpo-build's icpo_ffi.h: errors cross
// the interface as malloc'd messages, freed with icpo_fused_free_error): dims and checks.

#pragma once

#include <ATen/ATen.h>

#include "icpo_ffi.h"

#include <string>

namespace icpo_ffi {

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
