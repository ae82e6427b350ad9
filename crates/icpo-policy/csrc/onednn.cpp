// oneDNN's pre-packed linear for the few-row products of decoding on a CPU.
//
// libtorch registers two operators in its `mkldnn` namespace (the ones Inductor's CPU freezing
// uses): `_reorder_linear_weight` lays an `(out, in)` weight out once in oneDNN's blocked format,
// and `_linear_pointwise` multiplies dense rows by it with oneDNN's JIT kernels. On recent x86
// CPUs those use AVX-512 at full width where MKL's sgemm does not (about 2x on the decode shapes,
// measured in docs/benchmarks.md). They are not part of ATen's C++ API, so we reach them through
// the dispatcher; where they are missing (a libtorch without oneDNN) the Rust side falls back to
// plain products.

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <string_view>

#include "ffi.h"

using at::Tensor;
using icpo_ffi::check;
using icpo_ffi::dims;
using icpo_ffi::guarded;

namespace {

using PackFn = Tensor(const Tensor&, std::optional<int64_t>);
using LinearFn = Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&, std::string_view,
                        c10::List<std::optional<at::Scalar>>, std::optional<std::string_view>);

// The operator `name`, typed as F; nullopt when it is not registered or has another signature.
template <typename F>
std::optional<c10::TypedOperatorHandle<F>> lookup(const char* name) {
  try {
    auto op = c10::Dispatcher::singleton().findSchema({name, ""});
    if (!op) return std::nullopt;
    return op->typed<F>();
  } catch (...) {
    return std::nullopt;
  }
}

const std::optional<c10::TypedOperatorHandle<PackFn>>& pack_op() {
  static const auto op = lookup<PackFn>("mkldnn::_reorder_linear_weight");
  return op;
}

const std::optional<c10::TypedOperatorHandle<LinearFn>>& linear_op() {
  static const auto op = lookup<LinearFn>("mkldnn::_linear_pointwise");
  return op;
}

}  // namespace

extern "C" {

// Whether this libtorch has oneDNN and both operators.
bool icpo_onednn_available() {
  try {
    return at::hasMKLDNN() && pack_op().has_value() && linear_op().has_value();
  } catch (...) {
    return false;
  }
}

// `w (out, in)`, a dense CPU matrix, packed for rows of about `rows` at a time.
char* icpo_onednn_pack(const Tensor* w, int64_t rows, Tensor** out) {
  return guarded([&] {
    check(icpo_onednn_available(), "oneDNN's packed linear is not in this libtorch");
    check(w->dim() == 2, "onednn pack: weight " + dims(*w) + " must be (out, in)");
    check(w->device().is_cpu() && w->layout() == at::kStrided,
          "onednn pack: weight must be a dense CPU tensor");
    *out = new Tensor(pack_op()->call(w->detach().contiguous(), rows));
  });
}

// `x (..., in) · packedᵀ + bias` (bias `(out)` or null), dense in, dense out.
char* icpo_onednn_linear(const Tensor* x, const Tensor* packed, const Tensor* bias, Tensor** out) {
  return guarded([&] {
    check(linear_op().has_value(), "oneDNN's packed linear is not in this libtorch");
    check(x->dim() >= 1 && x->size(-1) == packed->size(1),
          "onednn linear: x " + dims(*x) + " must end in the weight's in " + dims(*packed));
    std::optional<Tensor> b;
    if (bias) b = *bias;
    *out = new Tensor(
        linear_op()->call(*x, *packed, b, "none", c10::List<std::optional<at::Scalar>>(), ""));
  });
}

}  // extern "C"
