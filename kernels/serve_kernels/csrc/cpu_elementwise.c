/* The Llama block's elementwise steps on CPU, float32, each one pass over contiguous rows:
 *   add_rms_norm_f32:  residual += x (when x is given); out = residual * rsqrt(mean(residual^2)
 *                      + eps) * weight, in HF's order of operations
 *   silu_and_mul_f32:  out[t, j] = silu(gate_up[t, j]) * gate_up[t, inter + j]
 *   rotary_store_kv_f32: q and k rotated out of the qkv projection, k and v written to
 *                      their cache slots
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

/* Rotary embedding of q and k straight out of the fused qkv projection, with the K/V write
 * into the paged cache (HF's GPT-NeoX half rotation, its float operations in its order:
 * x * cos + rotate_half(x) * sin, as separate products and a sum):
 *   qkv:         (tokens, row_stride) rows: [q heads | k heads | v heads], head_dim each
 *   positions:   (tokens,) int64
 *   cos_sin:     (max_position, 2, head_dim): [cos | cos] and [-sin | sin] per position
 *   query_out:   (tokens, num_heads, head_dim), the rotated queries
 *   k/v_cache:   (num_blocks * block_size, num_kv_heads, head_dim) flattened slots
 *   slot_mapping:(tokens,) int64 slot of each token
 */
static inline void rotate_head(const float *x, const float *cos, const float *sin, float *out,
                               int head_dim) {
    const int half = head_dim / 2;
#pragma omp simd
    for (int d = 0; d < half; ++d) out[d] = x[d] * cos[d] + x[d + half] * sin[d];
#pragma omp simd
    for (int d = half; d < head_dim; ++d) out[d] = x[d] * cos[d] + x[d - half] * sin[d];
}

void rotary_store_kv_f32(const float *qkv, long row_stride, const int64_t *positions,
                         const float *cos_sin, float *query_out, float *k_cache, float *v_cache,
                         const int64_t *slot_mapping, int tokens, int num_heads,
                         int num_kv_heads, int head_dim, int num_threads) {
    const long kv_width = (long)num_kv_heads * head_dim;
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int t = 0; t < tokens; ++t) {
        const float *row = qkv + (long)t * row_stride;
        const float *cos = cos_sin + positions[t] * 2 * head_dim;
        const float *sin = cos + head_dim;
        for (int h = 0; h < num_heads; ++h)
            rotate_head(row + (long)h * head_dim, cos, sin,
                        query_out + ((long)t * num_heads + h) * head_dim, head_dim);
        const float *keys = row + (long)num_heads * head_dim;
        float *k_slot = k_cache + slot_mapping[t] * kv_width;
        for (int h = 0; h < num_kv_heads; ++h)
            rotate_head(keys + (long)h * head_dim, cos, sin, k_slot + (long)h * head_dim,
                        head_dim);
        const float *values = keys + kv_width;
        float *v_slot = v_cache + slot_mapping[t] * kv_width;
#pragma omp simd
        for (long j = 0; j < kv_width; ++j) v_slot[j] = values[j];
    }
}

/* out[r] = the index of row r's largest value, the first one on ties, the first NaN if the
 * row has one (torch.argmax's answers). */
void argmax_rows_f32(const float *x, int rows, int cols, int64_t *out, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int r = 0; r < rows; ++r) {
        const float *row = x + (long)r * cols;
        int best = 0;
        float best_value = row[0];
        int j = 0;
#ifdef __AVX512F__
        if (cols >= 16) {
            /* per lane: the largest value so far and where; NaNs are looked for at the end */
            __m512 lane_max = _mm512_loadu_ps(row);
            __m512i lane_index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,
                                                   14, 15);
            __m512i index = lane_index;
            const __m512i step = _mm512_set1_epi32(16);
            __mmask16 nan_seen = _mm512_cmp_ps_mask(lane_max, lane_max, _CMP_UNORD_Q);
            for (j = 16; j + 16 <= cols; j += 16) {
                index = _mm512_add_epi32(index, step);
                const __m512 v = _mm512_loadu_ps(row + j);
                const __mmask16 greater = _mm512_cmp_ps_mask(v, lane_max, _CMP_GT_OQ);
                lane_max = _mm512_mask_mov_ps(lane_max, greater, v);
                lane_index = _mm512_mask_mov_epi32(lane_index, greater, index);
                nan_seen |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            }
            if (nan_seen) {
                j = 0; /* rare: the scalar loop below finds the first NaN */
            } else {
                float values[16];
                int32_t indices[16];
                _mm512_storeu_ps(values, lane_max);
                _mm512_storeu_si512(indices, lane_index);
                best_value = values[0];
                best = indices[0];
                for (int lane = 1; lane < 16; ++lane)
                    if (values[lane] > best_value ||
                        (values[lane] == best_value && indices[lane] < best)) {
                        best_value = values[lane];
                        best = indices[lane];
                    }
            }
        }
#endif
        for (; j < cols; ++j) {
            const float v = row[j];
            if (v != v) { /* NaN */
                best = j;
                break;
            }
            if (v > best_value) {
                best_value = v;
                best = j;
            }
        }
        out[r] = best;
    }
}
