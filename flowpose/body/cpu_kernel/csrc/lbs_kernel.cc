// Fused shape + pose blend, sparse linear blend skinning and keypoint
// regression, an XLA FFI CPU custom call (see flowpose/body/cpu_kernel/ffi.py).
// For body b, vertex v, rows r = 3 v + c of the [V * 3] vertex vector:
//   x[r]     = v_template[r] + shapedirs[r] . betas[b] + posedirs[:, r] . f[b]
//   out[b,v] = sum_k w[v,k] * T[b, idx[v,k]] @ [x; 1]
//   kp[b,p]  = sum_v regressor[p, v] * out[b, v]      (sparse in v)
// SIMD over *bodies* (blocks of 8 or 16): T[b, idx] is a contiguous load from
// a body-minor copy of the block's transforms, and the per-vertex model data
// is loaded once per block (with posedirs, once per 4 blocks). Outputs go
// through 8x8 register transposes to [B, V, 3]. Units (blocks x vertex chunk)
// are claimed by the calling thread and helpers on XLA's intra-op pool; each
// (block, chunk) has its own keypoint slot, so results do not depend on timing.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "lbs_common.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace flowpose_lbs;  // NOLINT: the kernels' shared vocabulary
constexpr int64_t kFlushGroups = 32;  // keypoint sums: float for 256 vertices

struct Problem {
  int64_t B, V, J, S, K, P, F;  // P keypoints, F pose features (0: none)
  const float *betas, *transforms;    // [B, S], [B, J, 3, 4]
  const float *features, *posedirs;   // [B, F], [F, V * 3], or null
  const float *v_template, *shapedirs;  // [V, 3], [V, 3, S]
  const int32_t* indices;             // [V, K]
  const float* weights;               // [V, K]
  float* vertices;                    // [B, V, 3]
  // Keypoint regressor, compressed by vertex: entries kp_ptr[v]..kp_ptr[v+1]
  // of keypoint kp_id, vertex kp_vertex, weight kp_w.
  const int32_t *kp_ptr, *kp_id, *kp_vertex;
  const float* kp_w;
  // Keypoint sums [block][chunk][P][3][kMaxLanes], in double: a keypoint may
  // average thousands of vertices (cc0's ears: ~4000).
  v8d* kp_partial;
  int64_t num_body_blocks, blocks_per_unit, num_chunks, chunk;
};

struct Scratch {  // per thread; block i of a unit uses slot i of each array
  AlignedVector<v8> t_soa, beta_t, feat_t, kp_f, xs, stage_out;
};

// Skins one vertex for N vectors of bodies; `xs`/`out` hold [3][N] vectors,
// `t_soa` [J][12][N].
template <typename V, int N>
inline void SkinVertex(const Problem& p, int64_t v, const V* t_soa,
                       const V* xs, V* out) {
  V x[3][N];
  for (int c = 0; c < 3; ++c) {
    for (int n = 0; n < N; ++n) x[c][n] = xs[c * N + n];
  }
  V o[3][N] = {};
  const int32_t* idx = p.indices + p.K * v;
  const float* w = p.weights + p.K * v;
  for (int64_t k = 0; k < p.K; ++k) {
    const float wk = w[k];
    if (wk == 0.0f) continue;  // top-K weights are zero-padded
    const V* t = t_soa + idx[k] * 12 * N;
    for (int c = 0; c < 3; ++c) {
      for (int n = 0; n < N; ++n) {
        const V y = t[(4 * c + 3) * N + n] + t[(4 * c) * N + n] * x[0][n] +
                    t[(4 * c + 1) * N + n] * x[1][n] +
                    t[(4 * c + 2) * N + n] * x[2][n];
        o[c][n] += wk * y;
      }
    }
  }
  for (int c = 0; c < 3; ++c) {
    for (int n = 0; n < N; ++n) out[c * N + n] = o[c][n];
  }
}

// Adds the keypoint terms of vertices [v0, v0 + nvg) (outputs in `stage`,
// [3][NV] vectors per vertex) to the float sums kp_f [P][3][2].
template <int NV>
inline void AccumulateKeypoints(const Problem& p, int64_t v0, int64_t nvg,
                                const v8* stage, v8* kp_f) {
  for (int32_t e = p.kp_ptr[v0]; e < p.kp_ptr[v0 + nvg]; ++e) {
    const v8* o = stage + 3 * NV * (p.kp_vertex[e] - v0);
    v8* acc = kp_f + 3 * 2 * p.kp_id[e];
    const float r = p.kp_w[e];
    for (int c = 0; c < 3; ++c) {
      for (int n = 0; n < NV; ++n) acc[2 * c + n] += r * o[c * NV + n];
    }
  }
}

// dst[(b0 + l) * V * 3 + v0 * 3 + r] = stage[r * L + l] for l < nb.
void StoreTile(const float* stage, int64_t V, int64_t b0, int64_t nb,
               int64_t v0, int64_t nvg, int64_t lanes, float* dst) {
#if defined(__AVX__)
  if (nvg == kGroup) {
    for (int64_t h = 0; h * 8 < nb; ++h) {
      for (int blk = 0; blk < 3; ++blk) {
        __m256 r[8];
        for (int i = 0; i < 8; ++i) {
          r[i] = _mm256_load_ps(stage + (blk * 8 + i) * lanes + h * 8);
        }
        Transpose8x8(r);
        const int64_t nl = std::min<int64_t>(8, nb - h * 8);
        for (int64_t l = 0; l < nl; ++l) {
          _mm256_storeu_ps(dst + (b0 + h * 8 + l) * V * 3 + v0 * 3 + blk * 8,
                           r[l]);
        }
      }
    }
    return;
  }
#endif
  for (int64_t l = 0; l < nb; ++l) {
    for (int64_t r = 0; r < 3 * nvg; ++r) {
      dst[(b0 + l) * V * 3 + v0 * 3 + r] = stage[r * lanes + l];
    }
  }
}

// Body-minor copies of block i's transforms [J][12][L], betas [S][L] and
// features [F][L] (L = 16 lane slots; NV * 8 used), zeroed keypoint sums.
void PrepareBlock(const Problem& p, int64_t block, int64_t chunk, int64_t i,
                  Scratch& s) {
  const int64_t b0 = block * kMaxLanes;
  const int64_t nb = std::min(kMaxLanes, p.B - b0);
  const int64_t L = nb > 8 ? 16 : 8;
  float* t_soa = reinterpret_cast<float*>(s.t_soa.data() + i * p.J * 12 * 2);
  float* beta_t = reinterpret_cast<float*>(s.beta_t.data() + i * p.S * 2);
  float* feat_t = reinterpret_cast<float*>(s.feat_t.data() + i * p.F * 2);
  for (int64_t l = 0; l < L; ++l) {
    const bool valid = l < nb;
    const float* t = p.transforms + (b0 + l) * p.J * 12;
    for (int64_t e = 0; e < 12 * p.J; ++e) t_soa[e * L + l] = valid ? t[e] : 0;
    const float* bt = p.betas + (b0 + l) * p.S;
    for (int64_t e = 0; e < p.S; ++e) beta_t[e * L + l] = valid ? bt[e] : 0.f;
    const float* ft = p.features + (b0 + l) * p.F;
    for (int64_t e = 0; e < p.F; ++e) feat_t[e * L + l] = valid ? ft[e] : 0.f;
  }
  v8d* kp_acc = p.kp_partial + (block * p.num_chunks + chunk) * p.P * 3 * 2;
  std::fill(kp_acc, kp_acc + p.P * 3 * 2, v8d{});
  std::fill(s.kp_f.data() + i * p.P * 3 * 2,
            s.kp_f.data() + (i + 1) * p.P * 3 * 2, v8{});
}

// Adds block i's float keypoint sums to its double ones and zeroes them.
void FlushKeypoints(const Problem& p, int64_t block, int64_t chunk, int64_t i,
                    Scratch& s) {
  v8d* kp_acc = p.kp_partial + (block * p.num_chunks + chunk) * p.P * 3 * 2;
  v8* kp_f = s.kp_f.data() + i * p.P * 3 * 2;
  for (int64_t e = 0; e < p.P * 3 * 2; ++e) {
    kp_acc[e] += __builtin_convertvector(kp_f[e], v8d);
    kp_f[e] = v8{};
  }
}

// Vertices [v0, v0 + nvg) of block i: blend, skin, keypoints, store.
template <int NV>
void GroupStep(const Problem& p, int64_t block, int64_t i, int64_t v0,
               int64_t nvg, Scratch& s) {
  const int64_t b0 = block * kMaxLanes;
  const int64_t nb = std::min<int64_t>(8 * NV, p.B - b0);
  v8* xs = s.xs.data();
  BlendGroup<NV, false>(p.shapedirs + 3 * v0 * p.S, p.S, p.S,
                        p.v_template + 3 * v0, 3 * nvg,
                        s.beta_t.data() + i * p.S * 2, xs);
  if (p.F) {
    BlendGroup<NV, true>(p.posedirs + 3 * v0, 3 * p.V, p.F, nullptr, 3 * nvg,
                         s.feat_t.data() + i * p.F * 2, xs);
  }
  const v8* t_soa = s.t_soa.data() + i * p.J * 12 * 2;
  constexpr int N = Simd<NV>::kN;
  for (int64_t k = 0; k < nvg; ++k) {
    SkinVertex<typename Simd<NV>::V, N>(
        p, v0 + k, AsSimd<NV>(t_soa), AsSimd<NV>(xs) + 3 * N * k,
        AsSimd<NV>(s.stage_out.data()) + 3 * N * k);
  }
  AccumulateKeypoints<NV>(p, v0, nvg, s.stage_out.data(),
                          s.kp_f.data() + i * p.P * 3 * 2);
  StoreTile(reinterpret_cast<const float*>(s.stage_out.data()), p.V, b0, nb,
            v0, nvg, 8 * NV, p.vertices);
}

void RunUnit(const Problem& p, int64_t unit, Scratch& s) {
  const int64_t first = unit / p.num_chunks * p.blocks_per_unit;
  const int64_t chunk = unit % p.num_chunks;
  const int64_t blocks =
      std::min(p.num_body_blocks, first + p.blocks_per_unit) - first;
  s.t_soa.resize(blocks * p.J * 12 * 2);
  s.beta_t.resize(blocks * p.S * 2);
  s.feat_t.resize(blocks * p.F * 2);
  s.kp_f.resize(blocks * p.P * 3 * 2);
  s.xs.resize(3 * kGroup * 2);
  s.stage_out.resize(3 * kGroup * 2);
  for (int64_t i = 0; i < blocks; ++i) PrepareBlock(p, first + i, chunk, i, s);
  const int64_t v_begin = chunk * p.chunk;
  const int64_t v_end = std::min(p.V, v_begin + p.chunk);
  int64_t group = 0;
  for (int64_t v0 = v_begin; v0 < v_end; v0 += kGroup) {
    const int64_t nvg = std::min(kGroup, v_end - v0);
    for (int64_t i = 0; i < blocks; ++i) {
      const int64_t block = first + i;
      if (p.B - block * kMaxLanes > 8) {
        GroupStep<2>(p, block, i, v0, nvg, s);
      } else {
        GroupStep<1>(p, block, i, v0, nvg, s);
      }
    }
    if (++group % kFlushGroups == 0 || v0 + kGroup >= v_end) {
      for (int64_t i = 0; i < blocks; ++i) {
        FlushKeypoints(p, first + i, chunk, i, s);
      }
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

ffi::Error LbsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> betas,
                   ffi::Buffer<ffi::F32> transforms,
                   ffi::Buffer<ffi::F32> features,
                   ffi::Buffer<ffi::F32> posedirs,
                   ffi::Buffer<ffi::F32> v_template,
                   ffi::Buffer<ffi::F32> shapedirs,
                   ffi::Buffer<ffi::S32> skin_indices,
                   ffi::Buffer<ffi::F32> skin_weights,
                   ffi::Buffer<ffi::F32> kp_regressor,
                   ffi::ResultBuffer<ffi::F32> vertices,
                   ffi::ResultBuffer<ffi::F32> keypoints) {
  auto sh = std::make_shared<Shared>();
  Problem& p = sh->p;
  const auto bd = betas.dimensions(), td = transforms.dimensions();
  const auto vd = v_template.dimensions(), sd = shapedirs.dimensions();
  const auto id = skin_indices.dimensions(), kd = kp_regressor.dimensions();
  if (bd.size() != 2 || td.size() != 4 || vd.size() != 2 || sd.size() != 3 ||
      id.size() != 2 || kd.size() != 2) {
    return ffi::Error::InvalidArgument("flowpose_lbs: bad operand ranks");
  }
  p.B = bd[0], p.S = bd[1], p.J = td[1], p.V = vd[0], p.K = id[1], p.P = kd[0];
  const auto fd = features.dimensions();
  p.F = features.element_count() ? fd[fd.size() - 1] : 0;
  if (td[0] != p.B || td[2] != 3 || td[3] != 4 || vd[1] != 3 ||
      sd[0] != p.V || sd[1] != 3 || sd[2] != p.S || id[0] != p.V ||
      skin_weights.element_count() != static_cast<size_t>(p.V * p.K) ||
      kd[1] != p.V ||
      (p.F && (fd.size() != 2 || fd[0] != p.B ||
               posedirs.element_count() != size_t(p.F * p.V * 3))) ||
      vertices->element_count() != static_cast<size_t>(p.B * p.V * 3) ||
      keypoints->element_count() != static_cast<size_t>(p.B * p.P * 3)) {
    return ffi::Error::InvalidArgument("flowpose_lbs: inconsistent shapes");
  }
  p.betas = betas.typed_data(), p.transforms = transforms.typed_data();
  p.features = p.F ? features.typed_data() : nullptr;
  p.posedirs = p.F ? posedirs.typed_data() : nullptr;
  p.v_template = v_template.typed_data(), p.shapedirs = shapedirs.typed_data();
  p.indices = skin_indices.typed_data(), p.weights = skin_weights.typed_data();
  p.vertices = vertices->typed_data();
  uint32_t bad = 0;  // branch-free, so it vectorises
  for (int64_t i = 0; i < p.V * p.K; ++i) {
    bad |= static_cast<uint32_t>(p.indices[i]) >= static_cast<uint64_t>(p.J);
  }
  if (bad) return ffi::Error::InvalidArgument("flowpose_lbs: joint indices");
  thread_local CallBuffers buffers;
  BuildKeypointIndex(kp_regressor.typed_data(), p.P, p.V, &buffers);
  p.kp_ptr = buffers.kp_ptr.data(), p.kp_id = buffers.kp_id.data();
  p.kp_vertex = buffers.kp_vertex.data(), p.kp_w = buffers.kp_w.data();
  if (p.B == 0 || p.V == 0) {
    std::fill_n(keypoints->typed_data(), p.B * p.P * 3, 0.f);
    return ffi::Error::Success();
  }
  // Enough units to keep every thread busy; vertex chunks of >= 512. With
  // posedirs (the largest array, read once per unit) units take 4 blocks.
  const int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t threads = std::max<int64_t>(
      1, std::min<int64_t>(hw, std::max<int64_t>(pool.num_threads(), 1)));
  p.num_body_blocks = (p.B + kMaxLanes - 1) / kMaxLanes;
  p.blocks_per_unit = p.F ? 4 : 1;
  const int64_t supers =
      (p.num_body_blocks + p.blocks_per_unit - 1) / p.blocks_per_unit;
  const int64_t want = (4 * threads + supers - 1) / supers;
  p.num_chunks = std::max<int64_t>(1, std::min(want, p.V / 512));
  p.chunk = ((p.V + p.num_chunks - 1) / p.num_chunks + kGroup - 1) /
            kGroup * kGroup;
  p.num_chunks = (p.V + p.chunk - 1) / p.chunk;
  sh->num_units = supers * p.num_chunks;
  buffers.kp_partial.resize(p.num_body_blocks * p.num_chunks * p.P * 3 * 2);
  p.kp_partial = buffers.kp_partial.data();
  AdviseHugePages(p.vertices, p.B * p.V * 3 * sizeof(float));

  const int64_t helpers =
      p.B * p.V < 4096 ? 0 : std::min(threads, sh->num_units) - 1;
  for (int64_t i = 0; i < helpers; ++i) {
    // Helpers that start late find no units left; `sh` keeps the state alive.
    pool.Schedule([sh]() { Work(sh.get()); });
  }
  Work(sh.get());
  while (sh->done.load(std::memory_order_acquire) < sh->num_units) {
    std::this_thread::yield();
  }
  // Keypoints: sum the per-(block, chunk) partials in a fixed order.
  float* kp = keypoints->typed_data();
  const double* partial = reinterpret_cast<const double*>(p.kp_partial);
  for (int64_t b = 0; b < p.B; ++b) {
    const int64_t block = b / kMaxLanes, lane = b % kMaxLanes;
    for (int64_t e = 0; e < p.P * 3; ++e) {
      double sum = 0.0;
      for (int64_t c = 0; c < p.num_chunks; ++c) {
        const int64_t slot = block * p.num_chunks + c;
        sum += partial[(slot * p.P * 3 + e) * kMaxLanes + lane];
      }
      kp[b * p.P * 3 + e] = static_cast<float>(sum);
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlowposeLbs, LbsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
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
                                  .Ret<ffi::Buffer<ffi::F32>>());
