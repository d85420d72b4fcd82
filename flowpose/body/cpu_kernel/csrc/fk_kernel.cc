// Rest joints, forward kinematics and skinning transforms for a batch of
// bodies, as an XLA FFI CPU custom call (see flowpose/body/cpu_kernel/ffi.py).
// XLA runs the same maths as a dense [J, V] @ [V, 3 S] product per call (the
// regressor is ~99% zeros: ~0.9 ms for cc0) and ~10 small per-tree-level
// fusions (~5 ms at batch 512); this takes ~0.2 ms. It also returns the joint
// basis [j_template | j_shapedirs] per body, the residual of the XLA backward.

#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

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
    for (int64_t v = 0; v < V; ++v) {
      if (v % 8 == 0 && v + 8 <= V) {  // skip runs of 8 zeros (vectorised)
        uint32_t any = 0;
        for (int i = 0; i < 8; ++i) {
          uint32_t bits;
          std::memcpy(&bits, reg + j * V + v + i, sizeof(bits));
          any |= bits & 0x7fffffffu;
        }
        if (!any) {
          v += 7;
          continue;
        }
      }
      const double w = reg[j * V + v];
      if (w == 0.0) continue;
      for (int64_t c = 0; c < 3; ++c) {
        double* a = acc.data() + (j * 3 + c) * (S + 1);
        a[0] += w * tpl[3 * v + c];
        for (int64_t s = 0; s < S; ++s) a[1 + s] += w * sd[(3 * v + c) * S + s];
      }
    }
  }
  const std::vector<float> basis(acc.begin(), acc.end());
  // Also out, per body (the backward's betas cotangent needs j_shapedirs; XLA
  // would form it with the dense [J, V] @ [V, 3 S] product per call).
  for (int64_t b = 0; b < B; ++b) {
    std::memcpy(joint_basis->typed_data() + b * J * 3 * (S + 1), basis.data(),
                basis.size() * sizeof(float));
  }
  std::vector<float> rest(J * 3);
  const float* R = rotmats.typed_data();
  const float* bt = betas.typed_data();
  const float* tr = transl.typed_data();
  float* T = transforms->typed_data();
  float* P = joints->typed_data();
  float* G = joint_rotmats->typed_data();
  for (int64_t b = 0; b < B; ++b) {
    const float* r = R + b * J * 9;
    const float* t = tr + b * 3;
    float* x = rest.data();
    for (int64_t e = 0; e < J * 3; ++e) {
      const float* row = basis.data() + e * (S + 1);
      float sum = 0.f;
      for (int64_t s = 0; s < S; ++s) sum += row[1 + s] * bt[b * S + s];
      x[e] = row[0] + sum;
    }
    float* g = G + b * J * 9;
    float* pos = P + b * J * 3;  // world positions without transl, then with
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
    for (int64_t j = 0; j < J; ++j) {
      float* tj = T + (b * J + j) * 12;
      const float* gj = g + 9 * j;
      for (int a = 0; a < 3; ++a) {
        for (int c = 0; c < 3; ++c) tj[4 * a + c] = gj[3 * a + c];
        tj[4 * a + 3] = pos[3 * j + a] - (gj[3 * a] * x[3 * j] +
                                          gj[3 * a + 1] * x[3 * j + 1] +
                                          gj[3 * a + 2] * x[3 * j + 2]) + t[a];
      }
    }
    for (int64_t j = 0; j < J; ++j) {
      for (int a = 0; a < 3; ++a) pos[3 * j + a] += t[a];
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
