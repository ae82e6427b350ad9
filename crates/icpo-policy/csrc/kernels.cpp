// The row kernels declared in kernels.h, written as plain loops the compiler vectorises; build.rs
// compiles this file once per instruction set with -DICPO_NS=<namespace>. Arithmetic is f32;
// bfloat16 is converted with bit operations (round to nearest even) so the loops vectorise.

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels.h"

#ifndef ICPO_NS
#error "compile with -DICPO_NS=icpo_base or -DICPO_NS=icpo_avx2"
#endif

namespace ICPO_NS {
namespace {

using bf16 = uint16_t;

inline float ld(float v) { return v; }

inline float ld(bf16 v) {
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <typename T>
inline T st(float f);

template <>
inline float st<float>(float f) {
  return f;
}

template <>
inline bf16 st<bf16>(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return f != f ? static_cast<bf16>(0x7fc0) : static_cast<bf16>(rounded);
}

// exp for the sigmoid: Cephes' expf polynomial after reducing by ln 2 (about 1 ulp), written
// so that it vectorises (converting k to an integer vectorises only with -fno-trapping-math).
// Inputs are clamped to [-60, 60]: the sigmoid is then exact to f32 except beyond ±60, where it
// is off by less than 1e-26; a wider range lets the compiler's folded result for clamped lanes,
// x · sigmoid(±88), go subnormal, and every subnormal costs a microcode assist (12x slower
// measured). NaN stays NaN.
inline float exp_f32(float x) {
  x = x < -60.f ? -60.f : x;
  x = x > 60.f ? 60.f : x;
  float k = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - k * 0.693359375f + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float e = p * r * r + r + 1.f;
  uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return e * scale;
}

inline float sigmoid(float x) { return 1.f / (1.f + exp_f32(-x)); }

}  // namespace

template <typename T>
void rms_forward(const T* __restrict x, const T* __restrict w, T* __restrict y,
                 float* __restrict rstd, int64_t begin, int64_t end, int64_t d, float eps) {
  for (int64_t row = begin; row < end; ++row) {
    const T* __restrict xr = x + row * d;
    T* __restrict yr = y + row * d;
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < d; ++i) ss += ld(xr[i]) * ld(xr[i]);
    float r = 1.f / std::sqrt(ss / static_cast<float>(d) + eps);
    rstd[row] = r;
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) yr[i] = st<T>(ld(st<T>(ld(xr[i]) * r)) * ld(w[i]));
  }
}

template <typename T>
void rms_backward(const T* __restrict x, const T* __restrict w, const T* __restrict dy,
                  const float* __restrict rstd, T* __restrict dx, float* __restrict acc,
                  int64_t begin, int64_t end, int64_t d) {
  for (int64_t row = begin; row < end; ++row) {
    const T* __restrict xr = x + row * d;
    const T* __restrict gr = dy + row * d;
    T* __restrict dxr = dx + row * d;
    float r = rstd[row];
    float dot = 0.f;
#pragma omp simd reduction(+ : dot)
    for (int64_t i = 0; i < d; ++i) dot += ld(gr[i]) * ld(w[i]) * ld(xr[i]);
    float mean = dot * r / static_cast<float>(d);
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) {
      float n = ld(xr[i]) * r;
      dxr[i] = st<T>(r * (ld(gr[i]) * ld(w[i]) - n * mean));
    }
    if (acc) {
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) acc[i] += ld(gr[i]) * ld(st<T>(ld(xr[i]) * r));
    }
  }
}

template <typename T>
void swiglu_forward(const T* __restrict gate_up, T* __restrict out, int64_t begin, int64_t end,
                    int64_t i) {
  for (int64_t row = begin; row < end; ++row) {
    const T* __restrict g = gate_up + row * 2 * i;
    const T* __restrict u = g + i;
    T* __restrict o = out + row * i;
#pragma omp simd
    for (int64_t k = 0; k < i; ++k) {
      float gv = ld(g[k]);
      o[k] = st<T>(gv * sigmoid(gv) * ld(u[k]));
    }
  }
}

template <typename T>
void swiglu_backward(const T* __restrict gate_up, const T* __restrict dout,
                     T* __restrict dgate_up, int64_t begin, int64_t end, int64_t i) {
  for (int64_t row = begin; row < end; ++row) {
    const T* __restrict g = gate_up + row * 2 * i;
    const T* __restrict u = g + i;
    const T* __restrict d = dout + row * i;
    T* __restrict dg = dgate_up + row * 2 * i;
    T* __restrict du = dg + i;
#pragma omp simd
    for (int64_t k = 0; k < i; ++k) {
      float gv = ld(g[k]), dv = ld(d[k]);
      float s = sigmoid(gv);
      dg[k] = st<T>(dv * ld(u[k]) * s * (1.f + gv * (1.f - s)));
      du[k] = st<T>(dv * gv * s);
    }
  }
}

template <typename T>
void rope(const T* __restrict x, const float* __restrict cos, const float* __restrict sin,
          T* __restrict out, int64_t begin, int64_t end, int64_t heads, int64_t dim,
          bool backward) {
  int64_t half = dim / 2;
  for (int64_t row = begin; row < end; ++row) {
    const float* __restrict c = cos + (row / heads) * dim;
    const float* __restrict s = sin + (row / heads) * dim;
    const T* __restrict xr = x + row * dim;
    T* __restrict o = out + row * dim;
    if (backward) {
      // dx1 = dy1 * c1 + dy2 * s2,  dx2 = dy2 * c2 - dy1 * s1.
#pragma omp simd
      for (int64_t k = 0; k < half; ++k) {
        float x1 = ld(xr[k]), x2 = ld(xr[k + half]);
        o[k] = st<T>(x1 * c[k] + x2 * s[k + half]);
        o[k + half] = st<T>(x2 * c[k + half] - x1 * s[k]);
      }
    } else {
      // out = x * cos + cat(-x2, x1) * sin.
#pragma omp simd
      for (int64_t k = 0; k < half; ++k) {
        float x1 = ld(xr[k]), x2 = ld(xr[k + half]);
        o[k] = st<T>(x1 * c[k] - x2 * s[k]);
        o[k + half] = st<T>(x2 * c[k + half] + x1 * s[k + half]);
      }
    }
  }
}

#define ICPO_INSTANTIATE(T)                                                                     \
  template void rms_forward<T>(const T*, const T*, T*, float*, int64_t, int64_t, int64_t,       \
                               float);                                                          \
  template void rms_backward<T>(const T*, const T*, const T*, const float*, T*, float*,         \
                                int64_t, int64_t, int64_t);                                     \
  template void swiglu_forward<T>(const T*, T*, int64_t, int64_t, int64_t);                     \
  template void swiglu_backward<T>(const T*, const T*, T*, int64_t, int64_t, int64_t);          \
  template void rope<T>(const T*, const float*, const float*, T*, int64_t, int64_t, int64_t,    \
                        int64_t, bool);

ICPO_INSTANTIATE(float)
ICPO_INSTANTIATE(uint16_t)


// A decode step's attention: one query row per head, so the products are dot products over a
// head's cache. Keys are taken 8 at a time and values 4 at a time so that independent sums
// hide the FMA latency (one key at a time is a chain of dim/8 dependent FMAs per key). Softmax
// in f32 with the maximum subtracted (as libtorch's); unseen keys get weight exactly 0.
template <typename T>
void single_query_attention(const T* __restrict q, const T* __restrict k, const T* __restrict v,
                            const float* __restrict mask, T* __restrict out, int64_t begin,
                            int64_t end, int64_t kv_heads, int64_t g, int64_t dim, int64_t len,
                            const int64_t* k_strides, const int64_t* v_strides, float scale) {
  std::vector<float> scores(static_cast<size_t>(len)), acc(static_cast<size_t>(dim)),
      query(static_cast<size_t>(dim));
  float* __restrict s = scores.data();
  float* __restrict o = acc.data();
  float* __restrict qr = query.data();
  const float inf = std::numeric_limits<float>::infinity();
  const int64_t ks = k_strides[2], vs = v_strides[2];
  for (int64_t pair = begin; pair < end; ++pair) {
    int64_t b = pair / kv_heads, kh = pair % kv_heads;
    const T* kb = k + b * k_strides[0] + kh * k_strides[1];
    const T* vb = v + b * v_strides[0] + kh * v_strides[1];
    const float* m = mask + b * len;
    for (int64_t h = 0; h < g; ++h) {
      const T* __restrict qh = q + (pair * g + h) * dim;
#pragma omp simd
      for (int64_t i = 0; i < dim; ++i) qr[i] = ld(qh[i]);
      int64_t j = 0;
      for (; j + 8 <= len; j += 8) {
        const T* kr = kb + j * ks;
        float d0 = 0.f, d1 = 0.f, d2 = 0.f, d3 = 0.f, d4 = 0.f, d5 = 0.f, d6 = 0.f, d7 = 0.f;
#pragma omp simd reduction(+ : d0, d1, d2, d3, d4, d5, d6, d7)
        for (int64_t i = 0; i < dim; ++i) {
          float x = qr[i];
          d0 += x * ld(kr[i]);
          d1 += x * ld(kr[ks + i]);
          d2 += x * ld(kr[2 * ks + i]);
          d3 += x * ld(kr[3 * ks + i]);
          d4 += x * ld(kr[4 * ks + i]);
          d5 += x * ld(kr[5 * ks + i]);
          d6 += x * ld(kr[6 * ks + i]);
          d7 += x * ld(kr[7 * ks + i]);
        }
        s[j] = d0;
        s[j + 1] = d1;
        s[j + 2] = d2;
        s[j + 3] = d3;
        s[j + 4] = d4;
        s[j + 5] = d5;
        s[j + 6] = d6;
        s[j + 7] = d7;
      }
      for (; j < len; ++j) {
        const T* __restrict kr = kb + j * ks;
        float d = 0.f;
#pragma omp simd reduction(+ : d)
        for (int64_t i = 0; i < dim; ++i) d += qr[i] * ld(kr[i]);
        s[j] = d;
      }
      float mx = -inf;
      for (int64_t j2 = 0; j2 < len; ++j2) {
        s[j2] = s[j2] * scale + m[j2];
        mx = s[j2] > mx ? s[j2] : mx;
      }
      float sum = 0.f;
      for (int64_t j2 = 0; j2 < len; ++j2) {
        float p = m[j2] == -inf ? 0.f : exp_f32(s[j2] - mx);
        s[j2] = p;
        sum += p;
      }
      float inv = 1.f / sum;
#pragma omp simd
      for (int64_t i = 0; i < dim; ++i) o[i] = 0.f;
      j = 0;
      for (; j + 4 <= len; j += 4) {
        const T* vr = vb + j * vs;
        float p0 = s[j] * inv, p1 = s[j + 1] * inv, p2 = s[j + 2] * inv, p3 = s[j + 3] * inv;
#pragma omp simd
        for (int64_t i = 0; i < dim; ++i)
          o[i] += p0 * ld(vr[i]) + p1 * ld(vr[vs + i]) + p2 * ld(vr[2 * vs + i]) +
                  p3 * ld(vr[3 * vs + i]);
      }
      for (; j < len; ++j) {
        const T* __restrict vr = vb + j * vs;
        float p = s[j] * inv;
#pragma omp simd
        for (int64_t i = 0; i < dim; ++i) o[i] += p * ld(vr[i]);
      }
      T* __restrict oh = out + (pair * g + h) * dim;
#pragma omp simd
      for (int64_t i = 0; i < dim; ++i) oh[i] = st<T>(o[i]);
    }
  }
}

template void single_query_attention<float>(const float*, const float*, const float*,
                                            const float*, float*, int64_t, int64_t, int64_t,
                                            int64_t, int64_t, int64_t, const int64_t*,
                                            const int64_t*, float);
template void single_query_attention<uint16_t>(const uint16_t*, const uint16_t*, const uint16_t*,
                                               const float*, uint16_t*, int64_t, int64_t,
                                               int64_t, int64_t, int64_t, int64_t,
                                               const int64_t*, const int64_t*, float);

}  // namespace ICPO_NS
