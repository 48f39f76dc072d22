// Python binding for rasterize.cu (host side; the .cu file has no torch headers so it
// compiles quickly).
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

void lf_zbuffer_launch(const float* xy, const float* edge, const float* inv_z, const float* area,
                       const int64_t* bbox, const int64_t* batch, const int64_t* face, int64_t m,
                       int height, int width, float far, unsigned long long* zbuf,
                       cudaStream_t stream);
void lf_resolve_launch(const unsigned long long* zbuf, int64_t n, int64_t* face_id,
                       cudaStream_t stream);

namespace {

void check(const torch::Tensor& t, torch::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == dtype, name, " has the wrong dtype");
}

// Returns face ids [B, H, W] int64 (-1 where empty).
torch::Tensor visibility(torch::Tensor xy, torch::Tensor edge, torch::Tensor inv_z,
                         torch::Tensor area, torch::Tensor bbox, torch::Tensor batch,
                         torch::Tensor face, int64_t b, int64_t height, int64_t width,
                         double far) {
  check(xy, torch::kFloat32, "xy");
  check(edge, torch::kFloat32, "edge");
  check(inv_z, torch::kFloat32, "inv_z");
  check(area, torch::kFloat32, "area");
  check(bbox, torch::kInt64, "bbox");
  check(batch, torch::kInt64, "batch");
  check(face, torch::kInt64, "face");
  const c10::cuda::CUDAGuard guard(xy.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  auto opts = xy.options().dtype(torch::kInt64);
  auto zbuf = torch::full({b, height, width}, INT64_MAX, opts);
  lf_zbuffer_launch(xy.data_ptr<float>(), edge.data_ptr<float>(), inv_z.data_ptr<float>(),
                    area.data_ptr<float>(), bbox.data_ptr<int64_t>(), batch.data_ptr<int64_t>(),
                    face.data_ptr<int64_t>(), xy.size(0), (int)height, (int)width, (float)far,
                    reinterpret_cast<unsigned long long*>(zbuf.data_ptr<int64_t>()), stream);
  auto face_id = torch::empty({b, height, width}, opts);
  lf_resolve_launch(reinterpret_cast<const unsigned long long*>(zbuf.data_ptr<int64_t>()),
                    zbuf.numel(), face_id.data_ptr<int64_t>(), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return face_id;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("visibility", &visibility, "nearest face per pixel centre (z-buffer + resolve)");
}
