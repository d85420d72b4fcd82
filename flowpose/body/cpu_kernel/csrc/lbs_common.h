// Shared by the skinning kernel (lbs_kernel.cc) and its backward
// (lbs_backward.cc): SIMD types, the blend-shape loops over blocks of bodies,
// the 8x8 transposes between [B, V, 3] and body-minor tiles, the keypoint
// regressor's by-vertex index and the huge-page hint for large buffers.

#ifndef FLOWPOSE_BODY_CPU_KERNEL_CSRC_LBS_COMMON_H_
#define FLOWPOSE_BODY_CPU_KERNEL_CSRC_LBS_COMMON_H_

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace flowpose_lbs {

typedef float v8 __attribute__((vector_size(32)));
typedef double v8d __attribute__((vector_size(64)));  // keypoint sums
constexpr int64_t kMaxLanes = 16;  // bodies per block (two v8 per quantity)
constexpr int64_t kGroup = 8;      // vertices per transposed output tile

// std::allocator with 64-byte alignment: the v8 scratch buffers are also read
// as 512-bit vectors (`AsSimd`), whose loads need it.
template <typename T>
struct Aligned64 {
  typedef T value_type;
  Aligned64() = default;
  template <typename U>
  Aligned64(const Aligned64<U>&) {}  // NOLINT: rebinding, as std::allocator
  T* allocate(size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64)));
  }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  bool operator==(const Aligned64&) const { return true; }
  bool operator!=(const Aligned64&) const { return false; }
};
template <typename T>
using AlignedVector = std::vector<T, Aligned64<T>>;

// The SIMD type of a block of NV * 8 bodies: NV v8 per quantity, or, where
// AVX-512 is enabled, one 512-bit vector for 16 bodies (the same bytes: the
// scratch buffers stay arrays of v8, 64-byte aligned, every 16-body quantity
// at an even v8 offset, viewed through `AsSimd`).
template <int NV>
struct Simd {
  typedef v8 V;
  static constexpr int kN = NV;
};
#if defined(__AVX512F__)
typedef float v16 __attribute__((vector_size(64), may_alias));
template <>
struct Simd<2> {
  typedef v16 V;
  static constexpr int kN = 1;
};
#endif
template <int NV>
inline typename Simd<NV>::V* AsSimd(v8* x) {
  return reinterpret_cast<typename Simd<NV>::V*>(x);
}
template <int NV>
inline const typename Simd<NV>::V* AsSimd(const v8* x) {
  return reinterpret_cast<const typename Simd<NV>::V*>(x);
}

// Blend of R rows for N vectors of bodies: xs[r] = tpl[r] + sum_s B(r, s)
// coef[s] (or xs[r] += ... without tpl), B(r, s) = basis[r * stride + s]
// (row-major) or basis[s * stride + r] (kColumns). R * N = 12 independent
// accumulators keep both FMA pipes busy (FMA latency 4).
template <typename V, int N, int R, bool kColumns>
inline void BlendRows(const float* basis, int64_t stride, int64_t S,
                      const float* tpl, const V* coef, V* xs) {
  V acc[R][N];
  for (int r = 0; r < R; ++r) {
    for (int n = 0; n < N; ++n) {
      acc[r][n] = tpl ? V{} + tpl[r] : xs[r * N + n];
    }
  }
  for (int64_t s = 0; s < S; ++s) {
    V b[N];
    for (int n = 0; n < N; ++n) b[n] = coef[s * N + n];
    for (int r = 0; r < R; ++r) {
      const float c = kColumns ? basis[s * stride + r] : basis[r * stride + s];
      for (int n = 0; n < N; ++n) acc[r][n] += c * b[n];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int n = 0; n < N; ++n) xs[r * N + n] = acc[r][n];
  }
}

// `rows` rows from row0 = 3 * v0 of a basis, in runs of R, for NV * 8 bodies
// (`coef` [S][NV], `xs` [rows][NV] v8).
template <int NV, bool kColumns>
inline void BlendGroup(const float* basis, int64_t stride, int64_t S,
                       const float* tpl, int64_t rows, const v8* coef8,
                       v8* xs8) {
  typedef typename Simd<NV>::V V;
  constexpr int N = Simd<NV>::kN, R = 12 / N;
  const V* coef = AsSimd<NV>(coef8);
  V* xs = AsSimd<NV>(xs8);
  const int64_t step = kColumns ? 1 : stride;
  int64_t r = 0;
  for (; r + R <= rows; r += R) {
    BlendRows<V, N, R, kColumns>(basis + r * step, stride, S,
                                 tpl ? tpl + r : nullptr, coef, xs + r * N);
  }
  for (; r < rows; ++r) {
    BlendRows<V, N, 1, kColumns>(basis + r * step, stride, S,
                                 tpl ? tpl + r : nullptr, coef, xs + r * N);
  }
}

#if defined(__AVX__)
inline void Transpose8x8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}
#endif

// Asks for transparent huge pages on a large, freshly allocated output: on
// VMs, 4 KiB page faults on a new 80 MB buffer can cost more than the maths
// (~30 ms vs ~8 ms here). FLOWPOSE_LBS_HUGEPAGES=0 turns this off.
inline void AdviseHugePages([[maybe_unused]] void* data,
                     [[maybe_unused]] size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool enabled = [] {
    const char* env = std::getenv("FLOWPOSE_LBS_HUGEPAGES");
    return !(env && std::strcmp(env, "0") == 0);
  }();
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  if (!enabled || bytes < 4 * kHuge) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) &
                          ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) &
                        ~(kHuge - 1);
  if (end > begin) {
    madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  }
#endif
}

// Per-call buffers, kept per calling thread so that their memory is reused
// (fresh allocations page-fault, which is slow on VMs).
struct CallBuffers {
  std::vector<int32_t> kp_ptr, kp_id, kp_vertex, ks, vs, fill;
  std::vector<float> kp_w, ws;
  std::vector<v8d> kp_partial;
  std::vector<float> partial;  // the backward's per-(block, chunk) sums
};

// Compresses the [P, V] keypoint regressor by vertex (it is sparse in
// practice): one vectorised scan for the nonzeros, then a counting sort by
// vertex.
inline void BuildKeypointIndex(const float* reg, int64_t P, int64_t V,
                        CallBuffers* b) {
  std::vector<int32_t>& vs = b->vs;
  b->ks.clear(), vs.clear(), b->ws.clear();
  auto add = [&](int64_t k, int64_t v, float w) {
    b->ks.push_back(static_cast<int32_t>(k));
    vs.push_back(static_cast<int32_t>(v));
    b->ws.push_back(w);
  };
  for (int64_t k = 0; k < P; ++k) {
    const float* row = reg + k * V;
    int64_t v0 = 0;
#if defined(__AVX__)
    for (; v0 + 8 <= V; v0 += 8) {
      const __m256 x = _mm256_loadu_ps(row + v0);
      unsigned mask = static_cast<unsigned>(_mm256_movemask_ps(
          _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_NEQ_UQ)));
      for (; mask; mask &= mask - 1) {
        const int i = __builtin_ctz(mask);
        add(k, v0 + i, row[v0 + i]);
      }
    }
#endif
    for (; v0 < V; ++v0) {
      if (row[v0] != 0.0f) add(k, v0, row[v0]);
    }
  }
  std::vector<int32_t>& ptr = b->kp_ptr;
  ptr.assign(V + 1, 0);
  for (int32_t v : vs) ++ptr[v + 1];
  for (int64_t v = 0; v < V; ++v) ptr[v + 1] += ptr[v];
  b->kp_id.resize(vs.size());
  b->kp_vertex.resize(vs.size());
  b->kp_w.resize(vs.size());
  b->fill.assign(ptr.begin(), ptr.end() - 1);
  for (size_t e = 0; e < vs.size(); ++e) {  // k-major, so ids ascend per v
    const int32_t at = b->fill[vs[e]]++;
    b->kp_id[at] = b->ks[e];
    b->kp_vertex[at] = vs[e];
    b->kp_w[at] = b->ws[e];
  }
}

}  // namespace flowpose_lbs

#endif  // FLOWPOSE_BODY_CPU_KERNEL_CSRC_LBS_COMMON_H_
