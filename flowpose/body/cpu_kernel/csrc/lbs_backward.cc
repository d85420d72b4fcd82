// The backward of lbs_kernel.cc (blend + sparse skinning + keypoints) with
// respect to the per-body inputs, an XLA FFI CPU custom call (see
// flowpose/body/cpu_kernel/ffi.py). For body b, vertex v (rows r = 3 v + c):
//   g[v]      = d_vertices[b, v] + sum_p regressor[p, v] d_keypoints[b, p]
//   x[v]      = the rest vertex (blends recomputed, as in the forward)
//   d_T[j]   += w[v,k] g[v] [x[v]; 1]^T             for j = idx[v,k]
//   d_x[v]    = sum_k w[v,k] R[idx[v,k]]^T g[v]
//   d_betas  += shapedirs[r]^T d_x[r]; d_features += posedirs[:, r] d_x[r]
// XLA's formulation of the same (lbs.skin_backward) writes a [B, 12, V]
// outer-product tensor and runs a [B * 12, V] @ [V, J] GEMM over dense
// weights (J = 31 where K = 4 are non-zero); here nothing V-sized is written.
// Layout and threading follow the forward: SIMD over blocks of 8 or 16 bodies,
// body-minor copies of the block's transforms, units (block x vertex chunk)
// claimed by the calling thread and helpers on XLA's intra-op pool, each unit
// with its own partial sums, added in a fixed order (results do not depend on
// timing). Without a vertex cotangent (a loss on keypoints only) only the
// keypoint regressor's vertices are visited; without a keypoint cotangent (a
// loss on vertices only) the regressor is not read at all.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "lbs_common.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace flowpose_lbs;  // NOLINT: the kernels' shared vocabulary

struct Problem {
  int64_t B, V, J, S, K, P, F;  // P keypoints, F pose features (0: none)
  const float *betas, *transforms;      // [B, S], [B, J, 3, 4]
  const float *features, *posedirs;     // [B, F], [F, V * 3], or null
  const float *v_template, *shapedirs;  // [V, 3], [V, 3, S]
  const int32_t* indices;               // [V, K]
  const float* weights;                 // [V, K]
  const float* d_vertices;              // [B, V, 3], or null (zero)
  const float* d_keypoints;             // [B, P, 3], or null (zero)
  const int32_t *kp_ptr, *kp_id;        // the regressor by vertex
  const float* kp_w;
  // Partial sums per (block, chunk): [E = 12 J + S + F][kMaxLanes] floats.
  float* partial;
  int64_t num_body_blocks, num_chunks, chunk, num_sums;
};

struct Scratch {  // per thread, one block at a time
  AlignedVector<v8> t_soa, beta_t, feat_t, dkp_t, xs, ct, dx, sums;
};

// The inverse of the forward's StoreTile: stage[r * L + l] =
// src[(b0 + l) * V * 3 + v0 * 3 + r] for l < nb, 0 for nb <= l < L.
void LoadTile(const float* src, int64_t V, int64_t b0, int64_t nb,
              int64_t v0, int64_t nvg, int64_t lanes, float* stage) {
#if defined(__AVX__)
  if (nvg == kGroup) {
    for (int64_t h = 0; h * 8 < lanes; ++h) {
      const int64_t nl = std::max<int64_t>(0, std::min<int64_t>(8, nb - h * 8));
      for (int blk = 0; blk < 3; ++blk) {
        __m256 r[8];
        for (int64_t i = 0; i < 8; ++i) {
          r[i] = i < nl ? _mm256_loadu_ps(src + (b0 + h * 8 + i) * V * 3 +
                                          v0 * 3 + blk * 8)
                        : _mm256_setzero_ps();
        }
        Transpose8x8(r);
        for (int i = 0; i < 8; ++i) {
          _mm256_store_ps(stage + (blk * 8 + i) * lanes + h * 8, r[i]);
        }
      }
    }
    return;
  }
#endif
  for (int64_t r = 0; r < 3 * nvg; ++r) {
    for (int64_t l = 0; l < lanes; ++l) {
      stage[r * lanes + l] =
          l < nb ? src[(b0 + l) * V * 3 + v0 * 3 + r] : 0.0f;
    }
  }
}

// acc[s] += sum_r B(r, s) dx[r] over `rows` rows (B as in BlendRows: row-major
// basis[r * stride + s], or kColumns basis[s * stride + r]), SB coefficients
// at a time in registers; N vectors of bodies.
template <typename V, int N, int SB, bool kColumns>
inline void BlendBackwardRows(const float* basis, int64_t stride,
                              int64_t rows, const V* dx, V* acc) {
  V a[SB][N];
  for (int i = 0; i < SB; ++i) {
    for (int n = 0; n < N; ++n) a[i][n] = acc[i * N + n];
  }
  for (int64_t r = 0; r < rows; ++r) {
    V d[N];
    for (int n = 0; n < N; ++n) d[n] = dx[r * N + n];
    for (int i = 0; i < SB; ++i) {
      const float c = kColumns ? basis[i * stride + r] : basis[r * stride + i];
      for (int n = 0; n < N; ++n) a[i][n] += c * d[n];
    }
  }
  for (int i = 0; i < SB; ++i) {
    for (int n = 0; n < N; ++n) acc[i * N + n] = a[i][n];
  }
}

// NV * 8 bodies: `dx` [rows][NV], `acc` [S][NV] v8.
template <int NV, bool kColumns>
void BlendBackward(const float* basis, int64_t stride, int64_t S, int64_t rows,
                   const v8* dx8, v8* acc8) {
  typedef typename Simd<NV>::V V;
  constexpr int N = Simd<NV>::kN, SB = 8 / N;
  const V* dx = AsSimd<NV>(dx8);
  V* acc = AsSimd<NV>(acc8);
  const int64_t step = kColumns ? stride : 1;
  int64_t s = 0;
  for (; s + SB <= S; s += SB) {
    BlendBackwardRows<V, N, SB, kColumns>(basis + s * step, stride, rows, dx,
                                          acc + s * N);
  }
  for (; s < S; ++s) {
    BlendBackwardRows<V, N, 1, kColumns>(basis + s * step, stride, rows, dx,
                                         acc + s * N);
  }
}

// One vertex for N vectors of bodies: adds w g [x; 1]^T to the transform sums
// `dt` [J][12][N] and writes d_x = sum_k w R^T g to `dx` ([3][N]).
template <typename V, int N>
inline void SkinVertexBackward(const Problem& p, int64_t v, const V* t_soa,
                               const V* xs, const V* g, V* dt, V* dx) {
  V x[3][N], d[3][N] = {};
  for (int c = 0; c < 3; ++c) {
    for (int n = 0; n < N; ++n) x[c][n] = xs[c * N + n];
  }
  const int32_t* idx = p.indices + p.K * v;
  const float* w = p.weights + p.K * v;
  for (int64_t k = 0; k < p.K; ++k) {
    const float wk = w[k];
    if (wk == 0.0f) continue;  // top-K weights are zero-padded
    const V* t = t_soa + idx[k] * 12 * N;
    V* acc = dt + idx[k] * 12 * N;
    for (int c = 0; c < 3; ++c) {
      for (int n = 0; n < N; ++n) {
        const V gw = wk * g[c * N + n];
        acc[(4 * c) * N + n] += gw * x[0][n];
        acc[(4 * c + 1) * N + n] += gw * x[1][n];
        acc[(4 * c + 2) * N + n] += gw * x[2][n];
        acc[(4 * c + 3) * N + n] += gw;
        d[0][n] += t[(4 * c) * N + n] * gw;
        d[1][n] += t[(4 * c + 1) * N + n] * gw;
        d[2][n] += t[(4 * c + 2) * N + n] * gw;
      }
    }
  }
  for (int c = 0; c < 3; ++c) {
    for (int n = 0; n < N; ++n) dx[c * N + n] = d[c][n];
  }
}

// Body-minor copies of the block's transforms, betas, features and keypoint
// cotangents ([E][L], L = 8 or 16 lanes), zeroed sums.
void PrepareBlock(const Problem& p, int64_t block, Scratch& s) {
  const int64_t b0 = block * kMaxLanes;
  const int64_t nb = std::min(kMaxLanes, p.B - b0);
  const int64_t L = nb > 8 ? 16 : 8;
  s.t_soa.resize(p.J * 12 * 2), s.beta_t.resize(p.S * 2);
  s.feat_t.resize(p.F * 2), s.dkp_t.resize(p.P * 3 * 2);
  s.xs.resize(3 * kGroup * 2), s.ct.resize(3 * kGroup * 2);
  s.dx.resize(3 * kGroup * 2), s.sums.assign(p.num_sums * 2, v8{});
  auto copy = [&](const float* src, int64_t n, AlignedVector<v8>& dst) {
    float* out = reinterpret_cast<float*>(dst.data());
    for (int64_t l = 0; l < L; ++l) {
      const float* row = src + (b0 + l) * n;
      for (int64_t e = 0; e < n; ++e) out[e * L + l] = l < nb ? row[e] : 0.f;
    }
  };
  copy(p.transforms, p.J * 12, s.t_soa);
  copy(p.betas, p.S, s.beta_t);
  if (p.F) copy(p.features, p.F, s.feat_t);
  if (p.d_keypoints) copy(p.d_keypoints, p.P * 3, s.dkp_t);
}

// Vertices [v0, v0 + nvg) of the block: cotangent, blend, skin backward,
// blend backward.
template <int NV>
void GroupStep(const Problem& p, int64_t block, int64_t v0, int64_t nvg,
               Scratch& s) {
  const int64_t b0 = block * kMaxLanes;
  const int64_t nb = std::min<int64_t>(8 * NV, p.B - b0);
  if (!p.d_vertices && p.kp_ptr[v0] == p.kp_ptr[v0 + nvg]) {
    return;  // zero cotangent on every vertex
  }
  v8* ct = s.ct.data();
  if (p.d_vertices) {
    LoadTile(p.d_vertices, p.V, b0, nb, v0, nvg, 8 * NV,
             reinterpret_cast<float*>(ct));
  } else {
    std::fill(ct, ct + 3 * NV * nvg, v8{});
  }
  for (int64_t k = 0; k < nvg && p.d_keypoints; ++k) {  // + regressor^T d_kp
    for (int32_t e = p.kp_ptr[v0 + k]; e < p.kp_ptr[v0 + k + 1]; ++e) {
      const v8* dkp = s.dkp_t.data() + 3 * NV * p.kp_id[e];
      const float r = p.kp_w[e];
      for (int i = 0; i < 3 * NV; ++i) ct[3 * NV * k + i] += r * dkp[i];
    }
  }
  v8* xs = s.xs.data();
  BlendGroup<NV, false>(p.shapedirs + 3 * v0 * p.S, p.S, p.S,
                        p.v_template + 3 * v0, 3 * nvg, s.beta_t.data(), xs);
  if (p.F) {
    BlendGroup<NV, true>(p.posedirs + 3 * v0, 3 * p.V, p.F, nullptr, 3 * nvg,
                         s.feat_t.data(), xs);
  }
  v8* sums = s.sums.data();
  constexpr int N = Simd<NV>::kN;
  for (int64_t k = 0; k < nvg; ++k) {
    SkinVertexBackward<typename Simd<NV>::V, N>(
        p, v0 + k, AsSimd<NV>(s.t_soa.data()), AsSimd<NV>(xs) + 3 * N * k,
        AsSimd<NV>(ct) + 3 * N * k, AsSimd<NV>(sums),
        AsSimd<NV>(s.dx.data()) + 3 * N * k);
  }
  BlendBackward<NV, false>(p.shapedirs + 3 * v0 * p.S, p.S, p.S, 3 * nvg,
                           s.dx.data(), sums + 12 * p.J * NV);
  if (p.F) {
    BlendBackward<NV, true>(p.posedirs + 3 * v0, 3 * p.V, p.F, 3 * nvg,
                            s.dx.data(), sums + (12 * p.J + p.S) * NV);
  }
}

void RunUnit(const Problem& p, int64_t unit, Scratch& s) {
  const int64_t block = unit / p.num_chunks, chunk = unit % p.num_chunks;
  PrepareBlock(p, block, s);
  const bool wide = p.B - block * kMaxLanes > 8;
  const int64_t v_begin = chunk * p.chunk;
  const int64_t v_end = std::min(p.V, v_begin + p.chunk);
  for (int64_t v0 = v_begin; v0 < v_end; v0 += kGroup) {
    const int64_t nvg = std::min(kGroup, v_end - v0);
    if (wide) {
      GroupStep<2>(p, block, v0, nvg, s);
    } else {
      GroupStep<1>(p, block, v0, nvg, s);
    }
  }
  // To the unit's slot as [E][kMaxLanes] floats (8-lane blocks: upper half 0).
  const int64_t L = wide ? 16 : 8;
  const float* sums = reinterpret_cast<const float*>(s.sums.data());
  float* out = p.partial + unit * p.num_sums * kMaxLanes;
  for (int64_t e = 0; e < p.num_sums; ++e) {
    for (int64_t l = 0; l < kMaxLanes; ++l) {
      out[e * kMaxLanes + l] = l < L ? sums[e * L + l] : 0.0f;
    }
  }
}

struct Shared {
  Problem p;
  int64_t num_units = 0;
  std::atomic<int64_t> next{0}, done{0};
};

void Work(Shared* sh) {
  thread_local Scratch scratch;
  for (;;) {
    const int64_t unit = sh->next.fetch_add(1, std::memory_order_relaxed);
    if (unit >= sh->num_units) break;
    RunUnit(sh->p, unit, scratch);
    sh->done.fetch_add(1, std::memory_order_release);
  }
}

ffi::Error LbsBackwardImpl(
    ffi::ThreadPool pool, ffi::Buffer<ffi::F32> betas,
    ffi::Buffer<ffi::F32> transforms, ffi::Buffer<ffi::F32> features,
    ffi::Buffer<ffi::F32> d_vertices, ffi::Buffer<ffi::F32> d_keypoints,
    ffi::Buffer<ffi::F32> posedirs, ffi::Buffer<ffi::F32> v_template,
    ffi::Buffer<ffi::F32> shapedirs, ffi::Buffer<ffi::S32> skin_indices,
    ffi::Buffer<ffi::F32> skin_weights, ffi::Buffer<ffi::F32> kp_regressor,
    ffi::ResultBuffer<ffi::F32> d_betas, ffi::ResultBuffer<ffi::F32> d_trans,
    ffi::ResultBuffer<ffi::F32> d_features) {
  auto sh = std::make_shared<Shared>();
  Problem& p = sh->p;
  const auto bd = betas.dimensions(), td = transforms.dimensions();
  const auto vd = v_template.dimensions(), sd = shapedirs.dimensions();
  const auto id = skin_indices.dimensions(), kd = kp_regressor.dimensions();
  if (bd.size() != 2 || td.size() != 4 || vd.size() != 2 || sd.size() != 3 ||
      id.size() != 2 || kd.size() != 2) {
    return ffi::Error::InvalidArgument("flowpose_lbs_bwd: bad operand ranks");
  }
  p.B = bd[0], p.S = bd[1], p.J = td[1], p.V = vd[0], p.K = id[1], p.P = kd[0];
  const auto fd = features.dimensions();
  p.F = features.element_count() ? fd[fd.size() - 1] : 0;
  const size_t B = p.B, V = p.V, F = p.F;
  if (td[0] != p.B || td[2] != 3 || td[3] != 4 || vd[1] != 3 ||
      sd[0] != p.V || sd[1] != 3 || sd[2] != p.S || id[0] != p.V ||
      skin_weights.element_count() != V * p.K || kd[1] != p.V ||
      (p.F && (fd.size() != 2 || fd[0] != p.B ||
               posedirs.element_count() != F * V * 3)) ||
      (d_vertices.element_count() && d_vertices.element_count() != B * V * 3) ||
      (d_keypoints.element_count() &&
       d_keypoints.element_count() != B * p.P * 3) ||
      (!d_vertices.element_count() && !d_keypoints.element_count()) ||
      d_betas->element_count() != B * p.S ||
      d_trans->element_count() != B * p.J * 12 ||
      d_features->element_count() != B * std::max<size_t>(F, 1)) {
    return ffi::Error::InvalidArgument("flowpose_lbs_bwd: inconsistent shapes");
  }
  p.betas = betas.typed_data(), p.transforms = transforms.typed_data();
  p.features = p.F ? features.typed_data() : nullptr;
  p.posedirs = p.F ? posedirs.typed_data() : nullptr;
  p.v_template = v_template.typed_data(), p.shapedirs = shapedirs.typed_data();
  p.indices = skin_indices.typed_data(), p.weights = skin_weights.typed_data();
  p.d_vertices = d_vertices.element_count() ? d_vertices.typed_data() : nullptr;
  p.d_keypoints =
      d_keypoints.element_count() ? d_keypoints.typed_data() : nullptr;
  uint32_t bad = 0;  // branch-free, so it vectorises
  for (int64_t i = 0; i < p.V * p.K; ++i) {
    bad |= static_cast<uint32_t>(p.indices[i]) >= static_cast<uint64_t>(p.J);
  }
  if (bad) return ffi::Error::InvalidArgument("flowpose_lbs_bwd: joint indices");
  thread_local CallBuffers buffers;
  if (p.d_keypoints) {
    BuildKeypointIndex(kp_regressor.typed_data(), p.P, p.V, &buffers);
  } else {
    buffers.kp_ptr.assign(p.V + 1, 0);  // no regressor entries
  }
  p.kp_ptr = buffers.kp_ptr.data(), p.kp_id = buffers.kp_id.data();
  p.kp_w = buffers.kp_w.data();
  p.num_sums = 12 * p.J + p.S + p.F;
  std::fill_n(d_features->typed_data(), d_features->element_count(), 0.f);
  if (p.B == 0) return ffi::Error::Success();
  // As the forward: enough units for every thread, vertex chunks >= 512.
  const int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t threads = std::max<int64_t>(
      1, std::min<int64_t>(hw, std::max<int64_t>(pool.num_threads(), 1)));
  p.num_body_blocks = (p.B + kMaxLanes - 1) / kMaxLanes;
  const int64_t want = (4 * threads + p.num_body_blocks - 1) /
                       p.num_body_blocks;
  p.num_chunks = std::max<int64_t>(1, std::min(want, p.V / 512));
  p.chunk = ((p.V + p.num_chunks - 1) / p.num_chunks + kGroup - 1) / kGroup *
            kGroup;
  p.num_chunks = std::max<int64_t>(1, (p.V + p.chunk - 1) / p.chunk);
  sh->num_units = p.num_body_blocks * p.num_chunks;
  buffers.partial.resize(sh->num_units * p.num_sums * kMaxLanes);
  p.partial = buffers.partial.data();
  const int64_t helpers = (p.d_vertices ? p.B * p.V : p.B * p.P * 64) < 4096
                              ? 0
                              : std::min(threads, sh->num_units) - 1;
  for (int64_t i = 0; i < helpers; ++i) {
    pool.Schedule([sh]() { Work(sh.get()); });
  }
  Work(sh.get());
  while (sh->done.load(std::memory_order_acquire) < sh->num_units) {
    std::this_thread::yield();
  }
  // Sum the chunks in a fixed order (double), scatter to the outputs.
  float* outs[3] = {d_trans->typed_data(), d_betas->typed_data(),
                    d_features->typed_data()};
  const int64_t sizes[3] = {12 * p.J, p.S, p.F}, offsets[3] = {0, 12 * p.J,
                                                               12 * p.J + p.S};
  for (int64_t b = 0; b < p.B; ++b) {
    const int64_t block = b / kMaxLanes, lane = b % kMaxLanes;
    for (int o = 0; o < 3; ++o) {
      for (int64_t e = 0; e < sizes[o]; ++e) {
        double sum = 0.0;
        for (int64_t c = 0; c < p.num_chunks; ++c) {
          const int64_t unit = block * p.num_chunks + c;
          sum += p.partial[(unit * p.num_sums + offsets[o] + e) * kMaxLanes +
                           lane];
        }
        outs[o][b * sizes[o] + e] = static_cast<float>(sum);
      }
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlowposeLbsBackward, LbsBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
