// Row kernels of the fused ops (see fused.cpp), declared once per instruction set: kernels.cpp
// is compiled once for x86-64's baseline (namespace icpo_base) and, on x86-64, once more with
// AVX2 and FMA (icpo_avx2); fused.cpp picks one at run time. No libtorch in here.
//
// T is float or uint16_t (bfloat16 bits). Each function handles rows [begin, end).
#pragma once

#include <cstdint>

#define ICPO_DECLARE_KERNELS(NS)                                                                  \
  namespace NS {                                                                                  \
  /* y = T(T(x * r) * w), r = 1 / sqrt(mean(x^2) + eps) stored in rstd[row]. */                   \
  template <typename T>                                                                           \
  void rms_forward(const T* x, const T* w, T* y, float* rstd, int64_t begin, int64_t end,         \
                   int64_t d, float eps);                                                         \
  /* dx = r * (g - n * mean(g * n)), n = x * r, g = dy * w; acc (or null) += dy * T(n). */        \
  template <typename T>                                                                           \
  void rms_backward(const T* x, const T* w, const T* dy, const float* rstd, T* dx, float* acc,    \
                    int64_t begin, int64_t end, int64_t d);                                       \
  /* out = silu(gate) * up for rows [gate | up] of width 2i. */                                   \
  template <typename T>                                                                           \
  void swiglu_forward(const T* gate_up, T* out, int64_t begin, int64_t end, int64_t i);           \
  template <typename T>                                                                           \
  void swiglu_backward(const T* gate_up, const T* dout, T* dgate_up, int64_t begin, int64_t end,  \
                       int64_t i);                                                                \
  /* Rows are (position, head) pairs of x (positions, heads, dim); cos/sin (positions, dim). */   \
  template <typename T>                                                                           \
  void rope(const T* x, const float* cos, const float* sin, T* out, int64_t begin, int64_t end,   \
            int64_t heads, int64_t dim, bool backward);                                           \
  /* One query per (batch, head) over `len` cached keys, for (batch, kv head) pairs            \
     [begin, end), in f32 whatever T: q (batch, kv_heads * g, dim) contiguous; k, v strided     \
     (batch, kv head, key) with unit stride along dim; mask (batch, len) additive, -inf for      \
     unseen keys (weight 0). */                                                                  \
  template <typename T>                                                                           \
  void single_query_attention(const T* q, const T* k, const T* v, const float* mask, T* out,      \
                              int64_t begin, int64_t end, int64_t kv_heads, int64_t g,           \
                              int64_t dim, int64_t len, const int64_t* k_strides,                 \
                              const int64_t* v_strides, float scale);                             \
  }

ICPO_DECLARE_KERNELS(icpo_base)
ICPO_DECLARE_KERNELS(icpo_avx2)
