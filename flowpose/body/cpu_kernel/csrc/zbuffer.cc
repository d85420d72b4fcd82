// Z-buffer rasterization of a triangle mesh, the loop form of
// flowpose/evidence/zbuffer.py's `rasterize` (same arithmetic in double, same
// operation order, no FMA contraction, same tie rule), for the fitter's
// per-stage visibility renders: numpy spends ~0.1-0.5 s per 1000 px body
// on candidate-pixel arrays and a sort of all fragments; this visits each
// triangle's pixel-centre box once. A plain C function (ctypes, no XLA): it
// runs on the host between fitting stages. See cpu_kernel/raster.py.

#pragma GCC optimize("fp-contract=off")
#pragma STDC FP_CONTRACT OFF

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

extern "C" {

// uv [V, 2], z [V] (camera-frame depth), faces [F, 3]; outputs [H * W]:
// depth (inf where empty), face_index (-1 where empty), barycentric [H*W, 3]
// (0 where empty). Triangles with a vertex nearer than `near`, degenerate or
// off-image ones are skipped. Returns 0, or 1 on a face index out of range.
int flowpose_zbuffer(const double* uv, const double* z, int64_t num_vertices,
                     const int64_t* faces, int64_t num_faces, int64_t height,
                     int64_t width, double near, float* depth,
                     int32_t* face_index, float* barycentric) {
  const int64_t num_pixels = height * width;
  std::vector<double> best(num_pixels, std::numeric_limits<double>::infinity());
  for (int64_t p = 0; p < num_pixels; ++p) {
    depth[p] = std::numeric_limits<float>::infinity();
    face_index[p] = -1;
    barycentric[3 * p] = barycentric[3 * p + 1] = barycentric[3 * p + 2] = 0;
  }
  for (int64_t f = 0; f < num_faces; ++f) {
    const int64_t* tri = faces + 3 * f;
    for (int i = 0; i < 3; ++i) {
      if (tri[i] < 0 || tri[i] >= num_vertices) return 1;
    }
    const double z0 = z[tri[0]], z1 = z[tri[1]], z2 = z[tri[2]];
    if (!(z0 >= near && z1 >= near && z2 >= near)) continue;
    const double x0 = uv[2 * tri[0]], y0 = uv[2 * tri[0] + 1];
    const double x1 = uv[2 * tri[1]], y1 = uv[2 * tri[1] + 1];
    const double x2 = uv[2 * tri[2]], y2 = uv[2 * tri[2] + 1];
    // Edge i is opposite vertex i: (A, B, C) of cross(b - a, p - a).
    double a[3] = {y1 - y2, y2 - y0, y0 - y1};
    double b[3] = {x2 - x1, x0 - x2, x1 - x0};
    double c[3] = {x1 * y2 - x2 * y1, x2 * y0 - x0 * y2, x0 * y1 - x1 * y0};
    const double area2 = a[2] * x2 + b[2] * y2 + c[2];
    const double abs_area2 = std::fabs(area2);
    if (!(abs_area2 > 1e-12)) continue;
    const double u_min = std::fmin(std::fmin(x0, x1), x2);
    const double u_max = std::fmax(std::fmax(x0, x1), x2);
    const double v_min = std::fmin(std::fmin(y0, y1), y2);
    const double v_max = std::fmax(std::fmax(y0, y1), y2);
    if (!std::isfinite(u_min + u_max + v_min + v_max)) continue;
    const double col_lo = std::fmin(std::fmax(std::ceil(u_min - 0.5), 0.0),
                                    static_cast<double>(width));
    const double col_hi = std::fmin(std::fmax(std::floor(u_max - 0.5), -1.0),
                                    static_cast<double>(width - 1));
    const double row_lo = std::fmin(std::fmax(std::ceil(v_min - 0.5), 0.0),
                                    static_cast<double>(height));
    const double row_hi = std::fmin(std::fmax(std::floor(v_max - 0.5), -1.0),
                                    static_cast<double>(height - 1));
    if (col_hi < col_lo || row_hi < row_lo) continue;
    if (area2 < 0) {  // an exact sign flip: "inside" is >= 0 on every edge
      for (int e = 0; e < 3; ++e) a[e] = -a[e], b[e] = -b[e], c[e] = -c[e];
    }
    const double inv_z[3] = {1.0 / z0, 1.0 / z1, 1.0 / z2};
    for (int64_t r = static_cast<int64_t>(row_lo);
         r <= static_cast<int64_t>(row_hi); ++r) {
      const double py = static_cast<double>(r) + 0.5;
      for (int64_t col = static_cast<int64_t>(col_lo);
           col <= static_cast<int64_t>(col_hi); ++col) {
        const double px = static_cast<double>(col) + 0.5;
        double value[3];
        bool inside = true;
        for (int e = 0; e < 3; ++e) {
          const double ax = a[e] * px;
          const double by = b[e] * py;
          value[e] = (ax + by) + c[e];
          inside &= value[e] >= 0;
        }
        if (!inside) continue;
        double w[3];
        for (int e = 0; e < 3; ++e) w[e] = (value[e] / abs_area2) * inv_z[e];
        const double inv_depth = (w[0] + w[1]) + w[2];
        const double d = 1.0 / inv_depth;
        const int64_t p = r * width + col;
        // Nearest wins; equal depths keep the lower face index (faces ascend).
        if (d < best[p]) {
          best[p] = d;
          depth[p] = static_cast<float>(d);
          face_index[p] = static_cast<int32_t>(f);
          for (int e = 0; e < 3; ++e) {
            barycentric[3 * p + e] = static_cast<float>(w[e] / inv_depth);
          }
        }
      }
    }
  }
  return 0;
}

}  // extern "C"
