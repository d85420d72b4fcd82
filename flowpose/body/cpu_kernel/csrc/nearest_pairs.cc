// Nearest pairs of the part term, as an XLA FFI CPU custom call (see
// flowpose/body/cpu_kernel/nearest.py): per part, the index of each pixel's
// nearest vertex and of each vertex's nearest pixel, among the valid slots.
// XLA spent ~4 passes over the [P, Mp, Mv] distance tensor per step (forward
// minima, then the VJP's equality masks and weighted sums); this visits each
// pair once and writes only the two index arrays. The distances themselves
// are recomputed by XLA on the chosen pairs, so values and gradients stay
// XLA's (the gradient of a minimum flows through its argmin pair only).

#pragma GCC optimize("fp-contract=off")
#pragma STDC FP_CONTRACT OFF

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kBlock = 8;

#ifdef __AVX2__
// `kNum` blocks of 8 a's at once: independent compare-and-select chains, so the blend latency of
// one block overlaps the arithmetic of the others (one block alone waits on it every b).
template <int kNum>
void NearestBlocksAvx2(const float* ax, const float* ay, const float* bx, const float* by,
                       int64_t num_b, int32_t* arg) {
  __m256 x[kNum], y[kNum], best[kNum];
  __m256i best_arg[kNum];
  for (int k = 0; k < kNum; ++k) {
    x[k] = _mm256_loadu_ps(ax + k * kBlock), y[k] = _mm256_loadu_ps(ay + k * kBlock);
    best[k] = _mm256_set1_ps(std::numeric_limits<float>::infinity());
    best_arg[k] = _mm256_setzero_si256();
  }
  for (int64_t j = 0; j < num_b; ++j) {
    const __m256 bjx = _mm256_set1_ps(bx[j]), bjy = _mm256_set1_ps(by[j]);
    const __m256 slot = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int32_t>(j)));
    for (int k = 0; k < kNum; ++k) {
      const __m256 dx = _mm256_sub_ps(x[k], bjx), dy = _mm256_sub_ps(y[k], bjy);
      const __m256 d = _mm256_add_ps(_mm256_mul_ps(dx, dx), _mm256_mul_ps(dy, dy));
      const __m256 nearer = _mm256_cmp_ps(d, best[k], _CMP_LT_OQ);
      best[k] = _mm256_blendv_ps(best[k], d, nearer);
      best_arg[k] = _mm256_castps_si256(
          _mm256_blendv_ps(_mm256_castsi256_ps(best_arg[k]), slot, nearer));
    }
  }
  for (int k = 0; k < kNum; ++k) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(arg + k * kBlock), best_arg[k]);
  }
}
#endif

// For each of the `num_a` (a multiple of kBlock) points a, the index of its nearest point among
// the first `num_b` points b: squared distance dx^2 + dy^2 in float32, the first of equal
// distances (strict "<", ascending b: jnp.argmin's rule), 0 where none compares (NaN a, or
// every b NaN). Blocks of 8 a's stay in registers while all b's pass (AVX2 where compiled for
// it; the scalar loop is the same arithmetic).
void NearestInBlocks(const float* ax, const float* ay, int64_t num_a, const float* bx,
                     const float* by, int64_t num_b, int32_t* arg) {
#ifdef __AVX2__
  int64_t i0 = 0;
  for (; i0 + 4 * kBlock <= num_a; i0 += 4 * kBlock) {
    NearestBlocksAvx2<4>(ax + i0, ay + i0, bx, by, num_b, arg + i0);
  }
  switch ((num_a - i0) / kBlock) {  // The last 1-3 blocks together too.
    case 3: NearestBlocksAvx2<3>(ax + i0, ay + i0, bx, by, num_b, arg + i0); break;
    case 2: NearestBlocksAvx2<2>(ax + i0, ay + i0, bx, by, num_b, arg + i0); break;
    case 1: NearestBlocksAvx2<1>(ax + i0, ay + i0, bx, by, num_b, arg + i0); break;
    default: break;
  }
#else
  for (int64_t i = 0; i < num_a; ++i) {
    float best = std::numeric_limits<float>::infinity();
    int32_t best_arg = 0;
    for (int64_t j = 0; j < num_b; ++j) {
      const float dx = ax[i] - bx[j], dy = ay[i] - by[j];
      const float d = dx * dx + dy * dy;
      if (d < best) best = d, best_arg = static_cast<int32_t>(j);
    }
    arg[i] = best_arg;
  }
#endif
}

// verts [..., P, Mv, 2], pixels [..., P, Mp, 2], vertex_ok [..., P, Mv],
// pixel_ok [..., P, Mp] (leading dims equal). Outputs: pixel_arg
// [..., P, Mp] (nearest valid vertex slot of each pixel) and vertex_arg
// [..., P, Mv] (nearest valid pixel slot of each vertex); 0 where a point is
// invalid or has no valid partner. Distances (p - v)^2 summed over x, y in
// float32, in the order XLA's reference computes them; ties keep the lower
// slot (jnp.argmin's rule).
ffi::Error NearestImpl(ffi::Buffer<ffi::F32> verts, ffi::Buffer<ffi::F32> pixels,
                       ffi::Buffer<ffi::PRED> vertex_ok,
                       ffi::Buffer<ffi::PRED> pixel_ok,
                       ffi::ResultBuffer<ffi::S32> pixel_arg,
                       ffi::ResultBuffer<ffi::S32> vertex_arg) {
  const auto vd = verts.dimensions(), pd = pixels.dimensions();
  if (vd.size() < 3 || vd.size() != pd.size() || vd[vd.size() - 1] != 2 ||
      pd[pd.size() - 1] != 2) {
    return ffi::Error::InvalidArgument(
        "flowpose_nearest_pairs: expected verts [..., P, Mv, 2] and pixels "
        "[..., P, Mp, 2]");
  }
  const size_t r = vd.size();
  for (size_t i = 0; i + 2 < r; ++i) {
    if (vd[i] != pd[i]) {
      return ffi::Error::InvalidArgument(
          "flowpose_nearest_pairs: verts and pixels differ in [..., P]");
    }
  }
  const int64_t mv = vd[r - 2], mp = pd[r - 2];
  const int64_t groups = mv > 0 ? static_cast<int64_t>(verts.element_count()) / (2 * mv)
                                : static_cast<int64_t>(pixels.element_count()) /
                                      (2 * (mp > 0 ? mp : 1));
  if (vertex_ok.element_count() != static_cast<size_t>(groups * mv) ||
      pixel_ok.element_count() != static_cast<size_t>(groups * mp) ||
      pixel_arg->element_count() != static_cast<size_t>(groups * mp) ||
      vertex_arg->element_count() != static_cast<size_t>(groups * mv)) {
    return ffi::Error::InvalidArgument("flowpose_nearest_pairs: inconsistent shapes");
  }
  const float* v_all = verts.typed_data();
  const float* p_all = pixels.typed_data();
  const bool* vok_all = vertex_ok.typed_data();
  const bool* pok_all = pixel_ok.typed_data();
  int32_t* parg_all = pixel_arg->typed_data();
  int32_t* varg_all = vertex_arg->typed_data();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // Invalid points get NaN coordinates: a NaN distance is never "nearer", so they are never
  // chosen and the loops need no branch. Coordinates are split into x and y arrays padded to
  // blocks of 8 (the sets are only ~24-28 long).
  const int64_t mv_pad = (mv + kBlock - 1) / kBlock * kBlock;
  const int64_t mp_pad = (mp + kBlock - 1) / kBlock * kBlock;
  std::vector<float> vx(mv_pad), vy(mv_pad), px(mp_pad), py(mp_pad);
  std::vector<int32_t> varg(mv_pad), parg(mp_pad);
  for (int64_t g = 0; g < groups; ++g) {
    const float* v = v_all + 2 * mv * g;
    const float* p = p_all + 2 * mp * g;
    const bool* vok = vok_all + mv * g;
    const bool* pok = pok_all + mp * g;
    for (int64_t j = 0; j < mv_pad; ++j) {
      const bool ok = j < mv && vok[j];
      vx[j] = ok ? v[2 * j] : nan, vy[j] = ok ? v[2 * j + 1] : nan;
    }
    for (int64_t i = 0; i < mp_pad; ++i) {
      const bool ok = i < mp && pok[i];
      px[i] = ok ? p[2 * i] : nan, py[i] = ok ? p[2 * i + 1] : nan;
    }
    // Each pixel's nearest vertex, then each vertex's nearest pixel: the same loop with the
    // roles swapped (the distance is symmetric in float arithmetic: (a - b)^2 = (b - a)^2).
    NearestInBlocks(px.data(), py.data(), mp_pad, vx.data(), vy.data(), mv, parg.data());
    NearestInBlocks(vx.data(), vy.data(), mv_pad, px.data(), py.data(), mp, varg.data());
    std::copy(parg.begin(), parg.begin() + mp, parg_all + mp * g);
    std::copy(varg.begin(), varg.begin() + mv, varg_all + mv * g);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlowposeNearestPairs, NearestImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());
