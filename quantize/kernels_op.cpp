// The native kernel as the CPU kernels of the torch operators tinyllm::native_matmul (quantized W)
// and tinyllm::native_linear (float32 W), whose schemas and shape functions quantize/native.py
// registers. A compiled graph calls it through the
// dispatcher with no Python in between, which at ~30 quantized matmuls a token is most of what
// a Python kernel would cost. Built against torch's headers by native.py, only when a quantized
// model is compiled, and linked to the kernels.so that ctypes calls (the same code, loaded once).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "kernels.h"

namespace {

at::Tensor native_matmul(const at::Tensor &x, const at::Tensor &codes, const at::Tensor &scales,
                         const std::optional<at::Tensor> &mins, c10::string_view fmt, int64_t group) {
    TORCH_CHECK(x.is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous(),
                "tinyllm::native_matmul: x must be contiguous float32 on the CPU");
    int32_t format = fmt == "q8_0" ? Q8_0 : fmt == "q4_0" ? Q4_0 : fmt == "q4_1" ? Q4_1 : -1;
    tl_matrix w{format, static_cast<int32_t>(group), scales.size(0), scales.size(1) * group, codes.data_ptr(),
                scales.data_ptr<float>(), mins ? mins->data_ptr<float>() : nullptr};
    std::vector<int64_t> sizes = x.sizes().vec();
    sizes.back() = w.n;
    at::Tensor y = at::empty(sizes, x.options());
    int code = tl_matmul(&w, x.data_ptr<float>(), y.data_ptr<float>(), x.numel() / w.k, at::get_num_threads());
    TORCH_CHECK(code != -2, "native kernel: out of memory");
    TORCH_CHECK(code == 0, "native kernel: bad matrix descriptor (code ", code, ")");
    return y;
}

at::Tensor native_linear(const at::Tensor &x, const at::Tensor &w) {
    TORCH_CHECK(x.is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous() && w.is_contiguous() &&
                    w.scalar_type() == at::kFloat && w.dim() == 2 && x.size(-1) == w.size(1),
                "tinyllm::native_linear: x [..., K] and w [N, K] must be contiguous float32 on the CPU");
    tl_matrix m{F32, 0, w.size(0), w.size(1), w.data_ptr(), nullptr, nullptr};
    std::vector<int64_t> sizes = x.sizes().vec();
    sizes.back() = m.n;
    at::Tensor y = at::empty(sizes, x.options());
    TORCH_CHECK(tl_matmul(&m, x.data_ptr<float>(), y.data_ptr<float>(), x.numel() / m.k, at::get_num_threads()) == 0,
                "native kernel: bad float32 matrix");
    return y;
}

} // namespace

TORCH_LIBRARY_IMPL(tinyllm, CPU, m) {
    m.impl("native_matmul", TORCH_FN(native_matmul));
    m.impl("native_linear", TORCH_FN(native_linear));
}
