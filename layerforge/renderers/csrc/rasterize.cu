// Visibility z-buffer for layerforge.renderers.mesh (backend "cuda").
//
// One thread per (batch, face) pair that survived culling on the host. The thread walks the
// face's conservative pixel bounding box, runs the coverage test and the perspective-correct
// depth in float32 with *exactly* the operation order of mesh._depth_keys (this file is
// compiled with --fmad=false, so no multiply-add contraction changes the rounding), and
// atomicMin's the packed key (float depth bits << 32 | face id) into a 64-bit z-buffer.
// Depth is positive, so its IEEE bits order like the floats; the minimum key is the nearest
// face, ties broken by the smallest face id. A resolve pass turns keys into face ids.
#include <cstdint>
#include <cuda_runtime.h>

namespace {

constexpr unsigned long long kEmpty = 0x7fffffffffffffffULL;

__global__ void zbuffer_kernel(
    const float* __restrict__ xy,      // [M, 3, 2] pixel coordinates of the 3 vertices
    const float* __restrict__ edge,    // [M, 3, 2] edge k = v_{k+2} - v_{k+1}
    const float* __restrict__ inv_z,   // [M, 3] 1 / camera z
    const float* __restrict__ area,    // [M] signed screen area
    const int64_t* __restrict__ bbox,  // [M, 4] j0, j1, i0, i1 inclusive, clipped
    const int64_t* __restrict__ batch, // [M]
    const int64_t* __restrict__ face,  // [M]
    int64_t m, int height, int width, float far,
    unsigned long long* __restrict__ zbuf) {  // [B, H, W]
  const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (t >= m) return;
  const float* v = xy + t * 6;
  const float* e = edge + t * 6;
  const float* iz = inv_z + t * 3;
  const float a = area[t];
  const bool pos = a > 0.0f;
  const int64_t j0 = bbox[t * 4 + 0], j1 = bbox[t * 4 + 1];
  const int64_t i0 = bbox[t * 4 + 2], i1 = bbox[t * 4 + 3];
  const unsigned long long fid = (unsigned long long)(uint32_t)face[t];
  unsigned long long* zb = zbuf + batch[t] * (int64_t)height * width;
  for (int64_t i = i0; i <= i1; ++i) {
    const float py = (float)i + 0.5f;
    for (int64_t j = j0; j <= j1; ++j) {
      const float px = (float)j + 0.5f;
      const float w0 = e[0] * (py - v[3]) - e[1] * (px - v[2]);
      const float w1 = e[2] * (py - v[5]) - e[3] * (px - v[4]);
      const float w2 = e[4] * (py - v[1]) - e[5] * (px - v[0]);
      const bool inside = pos ? (w0 >= 0.0f && w1 >= 0.0f && w2 >= 0.0f)
                              : (w0 <= 0.0f && w1 <= 0.0f && w2 <= 0.0f);
      if (!inside) continue;
      float inv = (w0 / a) * iz[0] + (w1 / a) * iz[1];
      inv = inv + (w2 / a) * iz[2];
      const float depth = 1.0f / inv;
      if (!(depth <= far && depth > 0.0f)) continue;
      const unsigned long long key =
          ((unsigned long long)__float_as_uint(depth) << 32) | fid;
      atomicMin(zb + i * width + j, key);
    }
  }
}

__global__ void resolve_kernel(const unsigned long long* __restrict__ zbuf, int64_t n,
                               int64_t* __restrict__ face_id) {
  const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (t >= n) return;
  const unsigned long long k = zbuf[t];
  face_id[t] = (k == kEmpty) ? -1 : (int64_t)(k & 0xffffffffULL);
}

}  // namespace

void lf_zbuffer_launch(const float* xy, const float* edge, const float* inv_z, const float* area,
                       const int64_t* bbox, const int64_t* batch, const int64_t* face, int64_t m,
                       int height, int width, float far, unsigned long long* zbuf,
                       cudaStream_t stream) {
  if (m == 0) return;
  const int threads = 128;
  const int64_t blocks = (m + threads - 1) / threads;
  zbuffer_kernel<<<(unsigned)blocks, threads, 0, stream>>>(xy, edge, inv_z, area, bbox, batch, face,
                                                          m, height, width, far, zbuf);
}

void lf_resolve_launch(const unsigned long long* zbuf, int64_t n, int64_t* face_id,
                       cudaStream_t stream) {
  if (n == 0) return;
  const int threads = 256;
  const int64_t blocks = (n + threads - 1) / threads;
  resolve_kernel<<<(unsigned)blocks, threads, 0, stream>>>(zbuf, n, face_id);
}
