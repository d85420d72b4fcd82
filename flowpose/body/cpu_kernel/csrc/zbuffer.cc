// Z-buffer rasterization of a triangle mesh, the loop form of
// flowpose/evidence/zbuffer.py's `rasterize` (same arithmetic in double, same
// operation order, no FMA contraction, same tie rule), for the fitter's
// per-stage visibility renders: numpy spends ~0.1-0.5 s per 1000 px body
// on candidate-pixel arrays and a sort of all fragments; this visits each
// triangle's pixel-centre box once. A plain C function (ctypes, no XLA): it
// runs on the host between fitting stages. See cpu_kernel/raster.py.

#pragma GCC optimize("fp-contract=off")
#pragma STDC FP_CONTRACT OFF

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

extern "C" {

// uv [V, 2], z [V] (camera-frame depth), faces [F, 3]; outputs [H * W]:
// depth (inf where empty), face_index (-1 where empty), barycentric [H*W, 3]
// (0 where empty). Triangles with a vertex nearer than `near`, degenerate or
// off-image ones are skipped. Returns 0, or 1 on a face index out of range.
//
// flowpose_zbuffer_window: the same z-buffer of an (H, W) image, stored only in
// the window of rows [row0, row0 + rows) and columns [col0, col0 + cols)
// (row-major [rows, cols] outputs; `barycentric` may be null). Pixels of the
// window hold exactly what flowpose_zbuffer writes there; the caller picks a
// window that holds every drawn pixel (raster.py: the projected mesh's box),
// so a 1000 px image of a person costs its box, not 1M pixels.
//
// flowpose_zbuffer_window_masked: the same, drawing only the window pixels with
// needed[p] != 0 (row-major [rows, cols]; null = all); the others stay empty.
// A subset's visibility reads only the 2 x 2 pixels around each of its vertices
// (flowpose_vertex_visibility), so drawing just those gives the same answer for
// ~1/3 less time per render (issue 15).
int flowpose_zbuffer_window_masked(const double* uv, const double* z,
                                   int64_t num_vertices, const int64_t* faces,
                                   int64_t num_faces, int64_t height,
                                   int64_t width, double near, int64_t row0,
                                   int64_t col0, int64_t rows, int64_t cols,
                                   const uint8_t* needed, float* depth,
                                   int32_t* face_index, float* barycentric) {
  const int64_t num_pixels = rows * cols;
  std::vector<double> best(num_pixels, std::numeric_limits<double>::infinity());
  for (int64_t p = 0; p < num_pixels; ++p) {
    depth[p] = std::numeric_limits<float>::infinity();
    face_index[p] = -1;
    if (barycentric) {
      barycentric[3 * p] = barycentric[3 * p + 1] = barycentric[3 * p + 2] = 0;
    }
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
    // The window (whole pixels, so the clipped bounds stay integers).
    const int64_t r_lo = std::max(static_cast<int64_t>(row_lo), row0);
    const int64_t r_hi = std::min(static_cast<int64_t>(row_hi), row0 + rows - 1);
    const int64_t c_lo = std::max(static_cast<int64_t>(col_lo), col0);
    const int64_t c_hi = std::min(static_cast<int64_t>(col_hi), col0 + cols - 1);
    if (area2 < 0) {  // an exact sign flip: "inside" is >= 0 on every edge
      for (int e = 0; e < 3; ++e) a[e] = -a[e], b[e] = -b[e], c[e] = -c[e];
    }
    const double inv_z[3] = {1.0 / z0, 1.0 / z1, 1.0 / z2};
    for (int64_t r = r_lo; r <= r_hi; ++r) {
      const double py = static_cast<double>(r) + 0.5;
      for (int64_t col = c_lo; col <= c_hi; ++col) {
        if (needed && !needed[(r - row0) * cols + (col - col0)]) continue;
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
        const int64_t p = (r - row0) * cols + (col - col0);
        // Nearest wins; equal depths keep the lower face index (faces ascend).
        if (d < best[p]) {
          best[p] = d;
          depth[p] = static_cast<float>(d);
          face_index[p] = static_cast<int32_t>(f);
          if (barycentric) {
            for (int e = 0; e < 3; ++e) {
              barycentric[3 * p + e] = static_cast<float>(w[e] / inv_depth);
            }
          }
        }
      }
    }
  }
  return 0;
}

int flowpose_zbuffer_window(const double* uv, const double* z,
                            int64_t num_vertices, const int64_t* faces,
                            int64_t num_faces, int64_t height, int64_t width,
                            double near, int64_t row0, int64_t col0,
                            int64_t rows, int64_t cols, float* depth,
                            int32_t* face_index, float* barycentric) {
  return flowpose_zbuffer_window_masked(uv, z, num_vertices, faces, num_faces,
                                        height, width, near, row0, col0, rows,
                                        cols, nullptr, depth, face_index,
                                        barycentric);
}

int flowpose_zbuffer(const double* uv, const double* z, int64_t num_vertices,
                     const int64_t* faces, int64_t num_faces, int64_t height,
                     int64_t width, double near, float* depth,
                     int32_t* face_index, float* barycentric) {
  return flowpose_zbuffer_window(uv, z, num_vertices, faces, num_faces, height,
                                 width, near, 0, 0, height, width, depth,
                                 face_index, barycentric);
}

// Visibility of a vertex subset from a z-buffer window: the loop form of
// flowpose/evidence/visibility.py's `vertex_visibility` (same float64 steps in
// the same order). x_cam [V, 3] camera-frame vertices, uv [V, 2] their pixels,
// depth/face_index the window [rows, cols] at (row0, col0) of the image
// (pixels outside it are empty), subset [S] vertex indices, inside [S] (1:
// finite, in front and inside the image, as computed by the caller). Writes
// out [S] (1 = visible). Returns 0, or 1 on an index out of range.
int flowpose_vertex_visibility(const double* x_cam, const double* uv,
                               int64_t num_vertices, const int64_t* faces,
                               int64_t num_faces, const float* depth,
                               const int32_t* face_index, int64_t row0,
                               int64_t col0, int64_t rows, int64_t cols,
                               double fx, double fy, double cx, double cy,
                               double tol, const int64_t* subset,
                               int64_t num_subset, const uint8_t* inside,
                               uint8_t* out) {
  for (int64_t s = 0; s < num_subset; ++s) {
    const int64_t v = subset[s];
    if (v < 0 || v >= num_vertices) return 1;
    out[s] = 0;
    if (!inside[s]) continue;
    const double u = uv[2 * v], w = uv[2 * v + 1];
    const double r0 = std::floor(w - 0.5), c0 = std::floor(u - 0.5);
    const double ray[3] = {(u - cx) / fx, (w - cy) / fy, 1.0};
    bool covered[4], in_front[4], any_covered = false, any_front = false;
    bool own = false;
    for (int k = 0; k < 4; ++k) {  // (r0, c0), (r0, c0+1), (r0+1, c0), ...
      const int64_t r = static_cast<int64_t>(r0) + k / 2 - row0;
      const int64_t c = static_cast<int64_t>(c0) + k % 2 - col0;
      int32_t f = -1;
      double zbuf = std::numeric_limits<double>::infinity();
      if (r >= 0 && r < rows && c >= 0 && c < cols) {
        f = face_index[r * cols + c];
        zbuf = static_cast<double>(depth[r * cols + c]);
      }
      if (f >= num_faces) return 1;
      covered[k] = f >= 0;
      const int64_t* tri = faces + 3 * (f >= 0 ? f : 0);
      for (int i = 0; i < 3; ++i) {
        if (tri[i] < 0 || tri[i] >= num_vertices) return 1;
        own |= covered[k] && tri[i] == v;
      }
      const double* p0 = x_cam + 3 * tri[0];
      const double* p1 = x_cam + 3 * tri[1];
      const double* p2 = x_cam + 3 * tri[2];
      const double e1[3] = {p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2]};
      const double e2[3] = {p2[0] - p0[0], p2[1] - p0[1], p2[2] - p0[2]};
      const double n[3] = {e1[1] * e2[2] - e1[2] * e2[1],
                           e1[2] * e2[0] - e1[0] * e2[2],
                           e1[0] * e2[1] - e1[1] * e2[0]};
      const double num = (n[0] * p0[0] + n[1] * p0[1]) + n[2] * p0[2];
      const double den = (n[0] * ray[0] + n[1] * ray[1]) + n[2] * ray[2];
      double plane_z = num / den;
      if (!(std::isfinite(plane_z) && plane_z > 0)) plane_z = zbuf;
      in_front[k] = covered[k] && x_cam[3 * v + 2] <= plane_z + tol;
      any_covered |= covered[k];
      any_front |= in_front[k];
    }
    // The containing pixel (floor(u), floor(v)) is one of the 4.
    double k_raw = 2 * (std::floor(w) - r0) + std::floor(u) - c0;
    const int k = static_cast<int>(std::fmin(std::fmax(k_raw, 0.0), 3.0));
    const bool depth_ok = covered[k] ? in_front[k] : any_front;
    out[s] = own || depth_ok || !any_covered;
  }
  return 0;
}

}  // extern "C"
