/* The native kernel's interface (kernels.c): what quantize/native.py calls through ctypes and
 * kernels_op.cpp through C++. */
#ifndef TINYLLM_KERNELS_H
#define TINYLLM_KERNELS_H
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { Q8_0 = 0, Q4_0 = 1, Q4_1 = 2, F32 = 3 };

/* One matrix (mirrored in native.py as a ctypes Structure), so that a call passes one pointer
 * instead of seven arguments. F32: `codes` is the float32 W [n, k] itself, group and scales unused. */
struct tl_matrix {
    int32_t fmt, group;
    int64_t n, k;
    const void *codes;
    const float *scales, *mins;
};

const char *tl_isa(void);
/* y [m_rows, n] = x [m_rows, k] W^T; 0, or -1 for a bad descriptor, -2 out of memory. */
int tl_matmul(const struct tl_matrix *w, const float *x, float *y, long m_rows, int threads);
/* out [n, k] = W in float32; 0 or -1. */
int tl_dequantize(const struct tl_matrix *w, float *out, int threads);

#ifdef __cplusplus
}
#endif
#endif
