/* The Llama block's elementwise steps on CPU, float32, each one pass over contiguous rows:
 *   add_rms_norm_f32:  residual += x (when x is given); out = residual * rsqrt(mean(residual^2)
 *                      + eps) * weight, in HF's order of operations
 *   silu_and_mul_f32:  out[t, j] = silu(gate_up[t, j]) * gate_up[t, inter + j]
 * Rows are spread over `num_threads` OpenMP threads (torch's runtime: see native_build.py).
 */
#include <math.h>
#include <stdint.h>

#include "vector_exp.h"

void add_rms_norm_f32(const float *x, float *residual, const float *weight, float *out,
                      int tokens, int hidden, float eps, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int t = 0; t < tokens; ++t) {
        float *row = residual + (long)t * hidden;
        float sum_squares = 0.0f;
        if (x != 0) {
            const float *add = x + (long)t * hidden;
#pragma omp simd reduction(+ : sum_squares)
            for (int j = 0; j < hidden; ++j) {
                const float value = row[j] + add[j];
                row[j] = value;
                sum_squares += value * value;
            }
        } else {
#pragma omp simd reduction(+ : sum_squares)
            for (int j = 0; j < hidden; ++j) sum_squares += row[j] * row[j];
        }
        const float inverse_rms = 1.0f / sqrtf(sum_squares / (float)hidden + eps);
        float *o = out + (long)t * hidden;
#pragma omp simd
        for (int j = 0; j < hidden; ++j) o[j] = (row[j] * inverse_rms) * weight[j];
    }
}

/* silu(g) = g * sigmoid(g), sigmoid from e^-|g| (never overflows). */
static inline float silu(float g) {
    const float e = exp_nonpositive(-fabsf(g));
    const float sigmoid = g >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
    return g * sigmoid;
}

void silu_and_mul_f32(const float *gate_up, float *out, int tokens, int inter,
                      int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int t = 0; t < tokens; ++t) {
        const float *gate = gate_up + (long)t * 2 * inter;
        const float *up = gate + inter;
        float *o = out + (long)t * inter;
        int j = 0;
#ifdef __AVX512F__
        const __m512 one = _mm512_set1_ps(1.0f);
        for (; j + 16 <= inter; j += 16) {
            const __m512 g = _mm512_loadu_ps(gate + j);
            const __m512 e = exp512_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(),
                                                              _mm512_abs_ps(g)));
            const __m512 denominator = _mm512_add_ps(one, e);
            const __mmask16 negative = _mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_LT_OQ);
            const __m512 numerator = _mm512_mask_mov_ps(one, negative, e);
            const __m512 sigmoid = _mm512_div_ps(numerator, denominator);
            _mm512_storeu_ps(o + j,
                             _mm512_mul_ps(_mm512_mul_ps(g, sigmoid), _mm512_loadu_ps(up + j)));
        }
#endif
        for (; j < inter; ++j) o[j] = silu(gate[j]) * up[j];
    }
}
