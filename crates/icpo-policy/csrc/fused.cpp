// Fused CPU ops with their own backward: RMSNorm, SwiGLU and rotary embeddings; and the chunked
// output head (any device), log-probabilities without a saved (tokens, vocab) block.
//
// libtorch composes each of these from 4-12 elementwise ops forward and as many backward, every
// one a pass over a cold (batch, seq, width) tensor; on a CPU those passes cost about as much as
// the matrix products of a small model's training step. Here each is one pass forward and one
// backward (the row kernels of kernels.cpp), computing in f32 and rounding once to the input
// dtype (float32 or bfloat16).
//
// C interface for icpo-policy's src/fused.rs: tensors are `at::Tensor*` (tch's C_tensor); a
// function returns nullptr on success and sets `*out` to a new tensor the caller owns, or returns
// an error message the caller frees with `icpo_fused_free_error`. No exception crosses it.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "ffi.h"
#include "kernels.h"

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using icpo_ffi::check;
using icpo_ffi::dims;
using icpo_ffi::guarded;

namespace {

// The AVX2 build of the kernels where the CPU has AVX2 and FMA (and it was compiled).
bool use_avx2() {
#if defined(ICPO_HAVE_AVX2)
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
#else
  return false;
#endif
}

#if defined(ICPO_HAVE_AVX2)
#define ICPO_KERNEL(name, T, ...)                                                         \
  (use_avx2() ? icpo_avx2::name<T>(__VA_ARGS__) : icpo_base::name<T>(__VA_ARGS__))
#else
#define ICPO_KERNEL(name, T, ...) icpo_base::name<T>(__VA_ARGS__)
#endif

// Runs body<T>() with T = float or uint16_t (bfloat16 bits) for the tensor's dtype.
template <typename F>
void dispatch(const Tensor& t, F body) {
  if (t.scalar_type() == at::kFloat) {
    body(float{});
  } else {
    body(uint16_t{});
  }
}

template <typename T>
const T* in(const Tensor& t) {
  return static_cast<const T*>(t.const_data_ptr());
}

template <typename T>
T* out(Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

// Rows handed to one task: enough work to amortise a task's start.
int64_t grain(int64_t width) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1));
}

int64_t rows_of(const Tensor& t) {
  int64_t d = t.size(-1);
  return d == 0 ? 0 : t.numel() / d;
}

// RMSNorm over the last dimension, as transformers computes it (see kernels.h).
struct RmsNorm : public torch::autograd::Function<RmsNorm> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x_in, const Tensor& w_in, double eps) {
    Tensor x = x_in.contiguous(), w = w_in.contiguous();
    int64_t d = x.size(-1), rows = rows_of(x);
    Tensor y = at::empty(x.sizes(), x.options());
    Tensor rstd = at::empty({rows}, x.options().dtype(at::kFloat));
    dispatch(x, [&](auto tag) {
      using T = decltype(tag);
      at::parallel_for(0, rows, grain(d), [&](int64_t b, int64_t e) {
        ICPO_KERNEL(rms_forward, T, in<T>(x), in<T>(w), out<T>(y), rstd.data_ptr<float>(), b, e,
                    d, static_cast<float>(eps));
      });
    });
    ctx->save_for_backward({x, w, rstd});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    Tensor x = saved[0], w = saved[1], rstd = saved[2];
    Tensor dy = grads[0].to(x.scalar_type()).contiguous();
    int64_t d = x.size(-1), rows = rows_of(x);
    Tensor dx = at::empty(x.sizes(), x.options());
    bool need_dw = ctx->needs_input_grad(1);
    // Per-task partial sums of the weight's gradient, added up after the loop.
    int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads() * 4, rows));
    int64_t per = (rows + tasks - 1) / tasks;
    std::vector<float> partial(need_dw ? static_cast<size_t>(tasks * d) : 0, 0.f);
    dispatch(x, [&](auto tag) {
      using T = decltype(tag);
      at::parallel_for(0, tasks, 1, [&](int64_t tb, int64_t te) {
        for (int64_t task = tb; task < te; ++task) {
          int64_t b = std::min(rows, task * per), e = std::min(rows, (task + 1) * per);
          float* acc = need_dw ? partial.data() + task * d : nullptr;
          ICPO_KERNEL(rms_backward, T, in<T>(x), in<T>(w), in<T>(dy), rstd.const_data_ptr<float>(),
                      out<T>(dx), acc, b, e, d);
        }
      });
    });
    Tensor dw;
    if (need_dw) {
      Tensor sum = at::zeros({d}, x.options().dtype(at::kFloat));
      float* s = sum.data_ptr<float>();
      for (int64_t task = 0; task < tasks; ++task)
        for (int64_t i = 0; i < d; ++i) s[i] += partial[task * d + i];
      dw = sum.to(w.scalar_type()).view(w.sizes());
    }
    return {dx, dw, Tensor()};
  }
};

// silu(gate) * up of a fused projection [gate | up] (see kernels.h).
struct SwiGlu : public torch::autograd::Function<SwiGlu> {
  static Tensor forward(AutogradContext* ctx, const Tensor& y_in) {
    Tensor y = y_in.contiguous();
    int64_t i = y.size(-1) / 2, rows = rows_of(y);
    auto sizes = y.sizes().vec();
    sizes.back() = i;
    Tensor o = at::empty(sizes, y.options());
    dispatch(y, [&](auto tag) {
      using T = decltype(tag);
      at::parallel_for(0, rows, grain(2 * i), [&](int64_t b, int64_t e) {
        ICPO_KERNEL(swiglu_forward, T, in<T>(y), out<T>(o), b, e, i);
      });
    });
    ctx->save_for_backward({y});
    return o;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    Tensor y = ctx->get_saved_variables()[0];
    Tensor dout = grads[0].to(y.scalar_type()).contiguous();
    int64_t i = y.size(-1) / 2, rows = rows_of(y);
    Tensor dy = at::empty(y.sizes(), y.options());
    dispatch(y, [&](auto tag) {
      using T = decltype(tag);
      at::parallel_for(0, rows, grain(2 * i), [&](int64_t b, int64_t e) {
        ICPO_KERNEL(swiglu_backward, T, in<T>(y), in<T>(dout), out<T>(dy), b, e, i);
      });
    });
    return {dy};
  }
};

Tensor rope_apply(const Tensor& x, const Tensor& cos, const Tensor& sin, bool backward) {
  Tensor o = at::empty(x.sizes(), x.options());
  int64_t heads = x.size(2), dim = x.size(3), rows = x.size(0) * x.size(1) * heads;
  dispatch(x, [&](auto tag) {
    using T = decltype(tag);
    at::parallel_for(0, rows, grain(dim), [&](int64_t b, int64_t e) {
      ICPO_KERNEL(rope, T, in<T>(x), cos.const_data_ptr<float>(), sin.const_data_ptr<float>(),
                  out<T>(o), b, e, heads, dim, backward);
    });
  });
  return o;
}

// Rotary embedding of x (batch, seq, heads, dim) by f32 cos/sin (batch, seq, dim).
struct Rope : public torch::autograd::Function<Rope> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& cos, const Tensor& sin) {
    Tensor c = cos.contiguous(), s = sin.contiguous();
    ctx->save_for_backward({c, s});
    return rope_apply(x.contiguous(), c, s, false);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    Tensor dy = grads[0].contiguous();
    return {rope_apply(dy, saved[0], saved[1], true), Tensor(), Tensor()};
  }
};

void check_input(const Tensor& t, const char* what) {
  check(t.defined(), std::string(what) + " is undefined");
  check(t.device().is_cpu(), std::string(what) + " must be on the CPU");
  auto k = t.scalar_type();
  check(k == at::kFloat || k == at::kBFloat16,
        std::string(what) + " must be float32 or bfloat16, got " + std::string(c10::toString(k)));
}

// Per-token log-probabilities of `targets` (and the entropy of each next-token distribution)
// under logits = hidden · weightᵀ, a chunk of rows at a time, keeping no (rows, vocab) block for
// the backward: the backward recomputes each chunk's logits. Head memory is O(chunk × vocab)
// whatever the sequence length. ATen ops only, so it runs on any device.
struct ChunkedHead : public torch::autograd::Function<ChunkedHead> {
  static variable_list forward(AutogradContext* ctx, const Tensor& hidden, const Tensor& weight,
                               const Tensor& targets, bool entropy, int64_t chunk) {
    Tensor h = hidden.reshape({-1, hidden.size(-1)});
    Tensor t = targets.reshape({-1});
    int64_t n = h.size(0);
    auto f32 = h.options().dtype(at::kFloat);
    Tensor lp = at::empty({n}, f32);
    Tensor ent = at::zeros({n}, f32);
    at::NoGradGuard no_grad;
    for (int64_t s = 0; s < n; s += chunk) {
      int64_t e = std::min(n, s + chunk);
      Tensor z = at::matmul(h.slice(0, s, e), weight.t()).to(at::kFloat);
      Tensor lse = at::logsumexp(z, {-1});
      lp.slice(0, s, e).copy_(z.gather(-1, t.slice(0, s, e).unsqueeze(-1)).squeeze(-1) - lse);
      if (entropy) {
        Tensor p = (z - lse.unsqueeze(-1)).exp();
        ent.slice(0, s, e).copy_(lse - (p * z).sum(-1));
      }
    }
    ctx->save_for_backward({hidden, weight, targets});
    ctx->saved_data["chunk"] = chunk;
    return {lp.view(targets.sizes()), ent.view(targets.sizes())};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    Tensor hidden = saved[0], weight = saved[1], targets = saved[2];
    int64_t chunk = ctx->saved_data["chunk"].toInt();
    Tensor h = hidden.reshape({-1, hidden.size(-1)});
    Tensor t = targets.reshape({-1});
    int64_t n = h.size(0);
    Tensor g_lp = grads[0].defined() ? grads[0].reshape({-1}).to(at::kFloat) : Tensor();
    Tensor g_ent = grads[1].defined() ? grads[1].reshape({-1}).to(at::kFloat) : Tensor();
    Tensor dh = at::zeros_like(h);
    Tensor dw = at::zeros(weight.sizes(), weight.options().dtype(at::kFloat));
    at::NoGradGuard no_grad;
    for (int64_t s = 0; s < n; s += chunk) {
      int64_t e = std::min(n, s + chunk);
      Tensor hc = h.slice(0, s, e);
      Tensor z = at::matmul(hc, weight.t()).to(at::kFloat);
      Tensor lse = at::logsumexp(z, {-1}, true);
      Tensor logp = z - lse;
      Tensor p = logp.exp();
      Tensor dz = at::zeros_like(z);
      if (g_lp.defined()) {
        // d log p_target / dz = onehot(target) − p.
        Tensor g = g_lp.slice(0, s, e).unsqueeze(-1);
        dz.sub_(p * g).scatter_add_(-1, t.slice(0, s, e).unsqueeze(-1), g);
      }
      if (g_ent.defined()) {
        // H = −Σ p log p;  dH/dz_k = −p_k (log p_k + H).
        Tensor H = -(p * logp).sum(-1, true);
        dz.sub_(p * (logp + H) * g_ent.slice(0, s, e).unsqueeze(-1));
      }
      dh.slice(0, s, e).copy_(at::matmul(dz.to(weight.scalar_type()), weight));
      dw.addmm_(dz.t(), hc.to(at::kFloat));  // in place: no (vocab, hidden) temporary per chunk
    }
    return {dh.view(hidden.sizes()), dw.to(weight.scalar_type()), Tensor(), Tensor(), Tensor()};
  }
};

}  // namespace

extern "C" {

char* icpo_fused_rms_norm(const Tensor* x, const Tensor* w, double eps, Tensor** out) {
  return guarded([&] {
    check_input(*x, "rms_norm: x");
    check(x->dim() >= 1, "rms_norm: x must have at least one dimension");
    // Autograd Functions take defined tensors only: no weight is a weight of ones (exact).
    Tensor weight = at::ones({x->size(-1)}, x->options().requires_grad(false));
    if (w) {
      check_input(*w, "rms_norm: weight");
      check(w->numel() == x->size(-1),
            "rms_norm: weight " + dims(*w) + " must have x " + dims(*x) + "'s last dimension");
      check(w->scalar_type() == x->scalar_type(), "rms_norm: weight and x must share a dtype");
      weight = *w;
    }
    *out = new Tensor(RmsNorm::apply(*x, weight, eps));
  });
}

char* icpo_fused_swiglu(const Tensor* gate_up, Tensor** out) {
  return guarded([&] {
    check_input(*gate_up, "swiglu: gate_up");
    check(gate_up->dim() >= 1 && gate_up->size(-1) % 2 == 0,
          "swiglu: gate_up " + dims(*gate_up) + " must have an even last dimension (gate | up)");
    *out = new Tensor(SwiGlu::apply(*gate_up));
  });
}

char* icpo_fused_rope(const Tensor* x, const Tensor* cos, const Tensor* sin, Tensor** out) {
  return guarded([&] {
    check_input(*x, "rope: x");
    check(x->dim() == 4 && x->size(3) % 2 == 0,
          "rope: x " + dims(*x) + " must be (batch, seq, heads, head_dim) with an even head_dim");
    for (const Tensor* t : {cos, sin}) {
      check(t->defined() && t->device().is_cpu() && t->scalar_type() == at::kFloat,
            "rope: cos and sin must be float32 CPU tensors");
      check(t->dim() == 3 && t->size(0) == x->size(0) && t->size(1) == x->size(1) &&
                t->size(2) == x->size(3),
            "rope: cos/sin " + dims(*t) + " must be (batch, seq, head_dim) of x " + dims(*x));
    }
    *out = new Tensor(Rope::apply(*x, *cos, *sin));
  });
}

char* icpo_fused_single_query_attention(const Tensor* q, const Tensor* k, const Tensor* v,
                                        const Tensor* mask, Tensor** out) {
  return guarded([&] {
    for (const Tensor* t : {q, k, v}) {
      check(t->defined() && t->device().is_cpu() &&
                (t->scalar_type() == at::kFloat || t->scalar_type() == at::kBFloat16) &&
                t->scalar_type() == q->scalar_type(),
            "single_query_attention: q, k and v must be CPU tensors of one dtype, f32 or bf16");
    }
    check(mask->defined() && mask->device().is_cpu() && mask->scalar_type() == at::kFloat,
          "single_query_attention: the mask must be a float32 CPU tensor");
    check(q->dim() == 4 && q->size(2) == 1 && k->dim() == 4 && v->sizes() == k->sizes() &&
              k->size(0) == q->size(0) && k->size(3) == q->size(3) && k->size(1) >= 1 &&
              q->size(1) % k->size(1) == 0,
          "single_query_attention: q " + dims(*q) +
              " must be (batch, heads, 1, head_dim) and k, v (batch, kv_heads, len, head_dim) " +
              "with heads a multiple of kv_heads; got k " + dims(*k) + ", v " + dims(*v));
    int64_t b = q->size(0), nh = q->size(1), dim = q->size(3), nkv = k->size(1),
            len = k->size(2);
    check(mask->numel() == b * len,
          "single_query_attention: mask " + dims(*mask) + " must be (batch, 1, 1, len)");
    check(k->stride(3) == 1 && v->stride(3) == 1,
          "single_query_attention: k and v must be contiguous along head_dim");
    Tensor qc = q->contiguous(), mc = mask->reshape({b, len}).contiguous();
    Tensor o = at::empty({b, nh, 1, dim}, q->options());
    int64_t ks[3] = {k->stride(0), k->stride(1), k->stride(2)};
    int64_t vs[3] = {v->stride(0), v->stride(1), v->stride(2)};
    float scale = 1.f / std::sqrt(static_cast<float>(dim));
    const float* mp = mc.const_data_ptr<float>();
    int64_t g = nh / nkv;
    dispatch(*q, [&](auto zero) {
      using T = decltype(zero);
      const T *qp = in<T>(qc), *kp = in<T>(*k), *vp = in<T>(*v);
      T* op = static_cast<T*>(o.data_ptr());
      at::parallel_for(0, b * nkv, 1, [&](int64_t begin, int64_t end) {
        ICPO_KERNEL(single_query_attention, T, qp, kp, vp, mp, op, begin, end, nkv, g, dim, len,
                    ks, vs, scale);
      });
    });
    *out = new Tensor(o);
  });
}

char* icpo_chunked_head(const Tensor* hidden, const Tensor* weight, const Tensor* targets,
                        bool entropy, int64_t chunk, Tensor** logprobs, Tensor** ent) {
  return guarded([&] {
    check(hidden->defined() && weight->defined() && targets->defined(),
          "chunked_head: undefined input");
    check(weight->dim() == 2 && hidden->size(-1) == weight->size(1),
          "chunked_head: hidden " + dims(*hidden) + " and weight " + dims(*weight) +
              " must share the hidden size");
    check(targets->scalar_type() == at::kLong &&
              targets->numel() * hidden->size(-1) == hidden->numel(),
          "chunked_head: targets " + dims(*targets) + " must be int64 ids, one per row of hidden " +
              dims(*hidden));
    check(hidden->scalar_type() == weight->scalar_type(),
          "chunked_head: hidden and weight must share a dtype");
    check(chunk >= 1, "chunked_head: chunk must be at least 1");
    auto out = ChunkedHead::apply(*hidden, *weight, *targets, entropy, chunk);
    *logprobs = new Tensor(out[0]);
    *ent = new Tensor(out[1]);
  });
}

void icpo_fused_free_error(char* err) {
  std::free(err);
}

}  // extern "C"
