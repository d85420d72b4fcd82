// Rest joints, forward kinematics and skinning transforms for a batch of
// bodies, and their backward, as XLA FFI CPU custom calls (see
// flowpose/body/cpu_kernel/ffi.py). XLA runs the forward as a dense
// [J, V] @ [V, 3 S] product per call (the regressor is ~99% zeros: ~0.9 ms
// for cc0) and ~10 small per-tree-level fusions (~5 ms at batch 512); this
// takes ~0.2 ms. It also returns the joint basis [j_template | j_shapedirs]
// per body, the residual of the backward. XLA's backward of the same is ~100
// tiny ops (per-level gathers, scatter-adds, 3x3 reductions: ~3 ms at batch
// 64, WORKSPACE.md issue 15); the backward here walks the tree once per body.

#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Calls add(v) for every v < V with row[v] != 0 (NaN included), ascending; the
// regressor rows are ~99% zeros, so the scan is the cost (8 at a time).
template <typename F>
inline void ForNonzeros(const float* row, int64_t V, F add) {
  int64_t v = 0;
#if defined(__AVX__)
  for (; v + 8 <= V; v += 8) {
    unsigned mask = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(
        _mm256_loadu_ps(row + v), _mm256_setzero_ps(), _CMP_NEQ_UQ)));
    for (; mask; mask &= mask - 1) add(v + __builtin_ctz(mask));
  }
#endif
  for (; v < V; ++v) {
    if (row[v] != 0.0f) add(v);
  }
}

// rest[e] = basis[e][0] + sum_s basis[e][1 + s] betas[s] for e < 3 J
// (basis rows [J * 3][S + 1]).
void RestJoints(const float* basis, const float* betas, int64_t J, int64_t S,
                float* rest) {
  // s outer: independent sums per row (a per-row reduction over s would be a
  // serial chain of adds).
  for (int64_t e = 0; e < J * 3; ++e) rest[e] = basis[e * (S + 1)];
  for (int64_t s = 0; s < S; ++s) {
    for (int64_t e = 0; e < J * 3; ++e) rest[e] += basis[e * (S + 1) + 1 + s] * betas[s];
  }
}

// One body's global frames: G_j = G_parent(j) R_j (G_root = R_root) and
// pos_j = G_parent(j) (rest_j - rest_parent(j)) + pos_parent(j) (pos_root =
// rest_root); `g` [J][3][3], `pos` [J][3] (without the translation).
void PoseBody(const float* r, const float* x, const int32_t* par, int64_t J,
              float* g, float* pos) {
  for (int64_t j = 0; j < J; ++j) {
    const int32_t q = par[j];
    if (q < 0) {
      for (int e = 0; e < 9; ++e) g[9 * j + e] = r[9 * j + e];
      for (int c = 0; c < 3; ++c) pos[3 * j + c] = x[3 * j + c];
      continue;
    }
    const float* gq = g + 9 * q;
    const float off[3] = {x[3 * j] - x[3 * q], x[3 * j + 1] - x[3 * q + 1],
                          x[3 * j + 2] - x[3 * q + 2]};
    for (int a = 0; a < 3; ++a) {
      for (int c = 0; c < 3; ++c) {
        g[9 * j + 3 * a + c] = gq[3 * a] * r[9 * j + c] +
                               gq[3 * a + 1] * r[9 * j + 3 + c] +
                               gq[3 * a + 2] * r[9 * j + 6 + c];
      }
      pos[3 * j + a] = gq[3 * a] * off[0] + gq[3 * a + 1] * off[1] +
                       gq[3 * a + 2] * off[2] + pos[3 * q + a];
    }
  }
}

// rest_j = j_template_j + j_shapedirs_j . betas, with j_template =
// j_regressor @ v_template and j_shapedirs = j_regressor @ shapedirs (summed
// in double over the regressor's nonzeros, once per call). Then, per body,
// G_j = G_parent(j) [R_j | rest_j - rest_parent(j)],
// transforms_j = [Rg_j | tg_j - Rg_j rest_j + transl], joints_j = tg_j + transl.
ffi::Error FkImpl(ffi::Buffer<ffi::F32> rotmats, ffi::Buffer<ffi::F32> betas,
                  ffi::Buffer<ffi::F32> transl, ffi::Buffer<ffi::S32> parents,
                  ffi::Buffer<ffi::F32> j_regressor,
                  ffi::Buffer<ffi::F32> v_template,
                  ffi::Buffer<ffi::F32> shapedirs,
                  ffi::ResultBuffer<ffi::F32> transforms,
                  ffi::ResultBuffer<ffi::F32> joints,
                  ffi::ResultBuffer<ffi::F32> joint_rotmats,
                  ffi::ResultBuffer<ffi::F32> joint_basis) {
  const auto rd = rotmats.dimensions(), bd = betas.dimensions();
  const auto jd = j_regressor.dimensions();
  if (rd.size() != 4 || rd[2] != 3 || rd[3] != 3 || bd.size() != 2 ||
      jd.size() != 2) {
    return ffi::Error::InvalidArgument("flowpose_fk: bad operand ranks");
  }
  const int64_t B = rd[0], J = rd[1], S = bd[1], V = jd[1];
  if (bd[0] != B || jd[0] != J ||
      transl.element_count() != static_cast<size_t>(B * 3) ||
      parents.element_count() != static_cast<size_t>(J) ||
      v_template.element_count() != static_cast<size_t>(V * 3) ||
      shapedirs.element_count() != static_cast<size_t>(V * 3 * S) ||
      joint_basis->element_count() != static_cast<size_t>(B * J * 3 * (S + 1))) {
    return ffi::Error::InvalidArgument("flowpose_fk: inconsistent shapes");
  }
  const int32_t* par = parents.typed_data();
  for (int64_t j = 0; j < J; ++j) {
    if (par[j] >= j || par[j] < -1) {
      return ffi::Error::InvalidArgument("flowpose_fk: need parents[j] < j");
    }
  }
  // basis[j][c][0] = j_template, basis[j][c][1 + s] = j_shapedirs.
  std::vector<double> acc(J * 3 * (S + 1), 0.0);
  const float* reg = j_regressor.typed_data();
  const float* tpl = v_template.typed_data();
  const float* sd = shapedirs.typed_data();
  for (int64_t j = 0; j < J; ++j) {
    ForNonzeros(reg + j * V, V, [&](int64_t v) {
      const double w = reg[j * V + v];
      for (int64_t c = 0; c < 3; ++c) {
        double* a = acc.data() + (j * 3 + c) * (S + 1);
        a[0] += w * tpl[3 * v + c];
        for (int64_t s = 0; s < S; ++s) a[1 + s] += w * sd[(3 * v + c) * S + s];
      }
    });
  }
  const std::vector<float> basis(acc.begin(), acc.end());
  // Also out, per body (the backward's betas cotangent needs j_shapedirs; XLA
  // would form it with the dense [J, V] @ [V, 3 S] product per call).
  for (int64_t b = 0; b < B; ++b) {
    std::memcpy(joint_basis->typed_data() + b * J * 3 * (S + 1), basis.data(),
                basis.size() * sizeof(float));
  }
  const float* R = rotmats.typed_data();
  const float* bt = betas.typed_data();
  const float* tr = transl.typed_data();
  std::vector<float> rest(J * 3);
  for (int64_t b = 0; b < B; ++b) {
    RestJoints(basis.data(), bt + b * S, J, S, rest.data());
    float* g = joint_rotmats->typed_data() + b * J * 9;
    float* pos = joints->typed_data() + b * J * 3;
    PoseBody(R + b * J * 9, rest.data(), par, J, g, pos);
    const float* t = tr + b * 3;
    float* T = transforms->typed_data() + b * J * 12;
    for (int64_t j = 0; j < J; ++j) {
      const float* gj = g + 9 * j;
      const float* x = rest.data() + 3 * j;
      for (int a = 0; a < 3; ++a) {
        for (int c = 0; c < 3; ++c) T[12 * j + 4 * a + c] = gj[3 * a + c];
        T[12 * j + 4 * a + 3] = pos[3 * j + a] - (gj[3 * a] * x[0] +
                                                  gj[3 * a + 1] * x[1] +
                                                  gj[3 * a + 2] * x[2]) + t[a];
      }
    }
    for (int64_t j = 0; j < J; ++j) {
      for (int a = 0; a < 3; ++a) pos[3 * j + a] += t[a];
    }
  }
  return ffi::Error::Success();
}

// The VJP of FkImpl w.r.t. rotmats, betas and transl (and the rest joints,
// for the model arrays' cotangents in XLA). Per body: recompute the frames,
// fold the transforms' and joints' cotangents into d_G_j, d_pos_j and d_rest_j,
// then walk the tree leaves-first (parents[j] < j, so a joint's sums are
// complete before it is visited):
//   pos_j = G_p (rest_j - rest_p) + pos_p:  d_G_p += d_pos_j o_j^T,
//     d_rest_j += G_p^T d_pos_j, d_rest_p -= G_p^T d_pos_j, d_pos_p += d_pos_j
//   G_j = G_p R_j:  d_G_p += d_G_j R_j^T,  d_R_j = G_p^T d_G_j
// and d_betas = j_shapedirs^T d_rest from the forward's joint basis.
ffi::Error FkBackwardImpl(
    ffi::Buffer<ffi::F32> rotmats, ffi::Buffer<ffi::F32> betas,
    ffi::Buffer<ffi::S32> parents, ffi::Buffer<ffi::F32> joint_basis,
    ffi::Buffer<ffi::F32> d_transforms, ffi::Buffer<ffi::F32> d_joints,
    ffi::Buffer<ffi::F32> d_joint_rotmats, ffi::ResultBuffer<ffi::F32> d_rot,
    ffi::ResultBuffer<ffi::F32> d_betas, ffi::ResultBuffer<ffi::F32> d_transl,
    ffi::ResultBuffer<ffi::F32> d_rest) {
  const auto rd = rotmats.dimensions(), bd = betas.dimensions();
  if (rd.size() != 4 || rd[2] != 3 || rd[3] != 3 || bd.size() != 2) {
    return ffi::Error::InvalidArgument("flowpose_fk_bwd: bad operand ranks");
  }
  const int64_t B = rd[0], J = rd[1], S = bd[1];
  const size_t n = B * J;
  if (bd[0] != B || parents.element_count() != static_cast<size_t>(J) ||
      joint_basis.element_count() != n * 3 * (S + 1) ||
      d_transforms.element_count() != n * 12 ||
      d_joints.element_count() != n * 3 ||
      d_joint_rotmats.element_count() != n * 9 ||
      d_rot->element_count() != n * 9 ||
      d_betas->element_count() != static_cast<size_t>(B * S) ||
      d_transl->element_count() != static_cast<size_t>(B * 3) ||
      d_rest->element_count() != n * 3) {
    return ffi::Error::InvalidArgument("flowpose_fk_bwd: inconsistent shapes");
  }
  const int32_t* par = parents.typed_data();
  for (int64_t j = 0; j < J; ++j) {
    if (par[j] >= j || par[j] < -1) {
      return ffi::Error::InvalidArgument("flowpose_fk_bwd: need parents[j] < j");
    }
  }
  std::vector<float> x(J * 3), g(J * 9), pos(J * 3), dg(J * 9), dpos(J * 3);
  for (int64_t b = 0; b < B; ++b) {
    const float* basis = joint_basis.typed_data() + b * J * 3 * (S + 1);
    const float* r = rotmats.typed_data() + b * J * 9;
    RestJoints(basis, betas.typed_data() + b * S, J, S, x.data());
    PoseBody(r, x.data(), par, J, g.data(), pos.data());
    const float* dt = d_transforms.typed_data() + b * J * 12;
    const float* dj = d_joints.typed_data() + b * J * 3;
    const float* dgo = d_joint_rotmats.typed_data() + b * J * 9;
    float* dx = d_rest->typed_data() + b * J * 3;
    float* dr = d_rot->typed_data() + b * J * 9;
    float* dtr = d_transl->typed_data() + b * 3;
    dtr[0] = dtr[1] = dtr[2] = 0.f;
    // The transforms [G_j | pos_j - G_j rest_j + transl] and joints pos_j + transl.
    for (int64_t j = 0; j < J; ++j) {
      const float* db = dt + 12 * j + 3;  // stride 4: d of the translation column
      const float* gj = g.data() + 9 * j;
      for (int a = 0; a < 3; ++a) {
        dtr[a] += db[4 * a] + dj[3 * j + a];
        dpos[3 * j + a] = db[4 * a] + dj[3 * j + a];
        for (int c = 0; c < 3; ++c) {
          dg[9 * j + 3 * a + c] = dgo[9 * j + 3 * a + c] + dt[12 * j + 4 * a + c] -
                                  db[4 * a] * x[3 * j + c];
        }
      }
      for (int c = 0; c < 3; ++c) {
        dx[3 * j + c] = -(gj[c] * db[0] + gj[3 + c] * db[4] + gj[6 + c] * db[8]);
      }
    }
    for (int64_t j = J - 1; j >= 0; --j) {
      const int32_t q = par[j];
      const float* dgj = dg.data() + 9 * j;
      if (q < 0) {
        for (int e = 0; e < 9; ++e) dr[9 * j + e] = dgj[e];
        for (int c = 0; c < 3; ++c) dx[3 * j + c] += dpos[3 * j + c];
        continue;
      }
      const float* gq = g.data() + 9 * q;
      const float* rj = r + 9 * j;
      float* dgq = dg.data() + 9 * q;
      const float* dp = dpos.data() + 3 * j;
      for (int c = 0; c < 3; ++c) {
        const float off = x[3 * j + c] - x[3 * q + c];
        const float d_off = gq[c] * dp[0] + gq[3 + c] * dp[1] + gq[6 + c] * dp[2];
        dx[3 * j + c] += d_off;
        dx[3 * q + c] -= d_off;
        dpos[3 * q + c] += dp[c];
        for (int a = 0; a < 3; ++a) dgq[3 * a + c] += dp[a] * off;
      }
      for (int a = 0; a < 3; ++a) {
        for (int c = 0; c < 3; ++c) {
          dgq[3 * a + c] += dgj[3 * a] * rj[3 * c] + dgj[3 * a + 1] * rj[3 * c + 1] +
                            dgj[3 * a + 2] * rj[3 * c + 2];
          dr[9 * j + 3 * a + c] = gq[a] * dgj[c] + gq[3 + a] * dgj[3 + c] +
                                  gq[6 + a] * dgj[6 + c];
        }
      }
    }
    float* dbeta = d_betas->typed_data() + b * S;
    for (int64_t s = 0; s < S; ++s) dbeta[s] = 0.f;
    for (int64_t e = 0; e < J * 3; ++e) {
      const float* row = basis + e * (S + 1) + 1;
      for (int64_t s = 0; s < S; ++s) dbeta[s] += row[s] * dx[e];
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlowposeFk, FkImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlowposeFkBackward, FkBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
