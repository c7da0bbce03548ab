/* Paged attention on CPU, float32: each query token attends over its sequence's cached
 * context, reading K/V blocks where they lie in the paged cache (no gather copy).
 *
 * Layouts (all contiguous, row-major):
 *   query, out:         (num_tokens, num_heads, head_dim)
 *   k_cache, v_cache:   (num_blocks, block_size, num_kv_heads, head_dim)
 *   block_tables:       (num_seqs, max_blocks_per_seq) int32
 *   token_seqs:         (num_tokens,) int32: the sequence (block-table row) of each token
 *   token_context_lens: (num_tokens,) int32: cached tokens it sees, or 0 to skip it
 * Query head h reads KV head h / (num_heads / num_kv_heads) (grouped-query attention).
 *
 * Keys and values are visited in tiles of at most 16 tokens with an online (running max)
 * softmax. With AVX-512 and head_dim a multiple of 16, a decode is one work item (every head,
 * each block read once and in order) and prefill tokens go 16 query rows at a time into the
 * lanes of a vector (a run of consecutive tokens of one sequence times the query heads of one
 * KV head); otherwise portable C that the compiler vectorizes, one work item per (token, KV
 * head). Work items are spread over `num_threads` OpenMP threads of the caller's process:
 * torch's own runtime, since this library links libgomp.so.1 and torch has already loaded it.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "vector_exp.h"

#define MAX_GROUP 16      /* query heads per KV head */
#define TILE 16           /* tokens per softmax tile */
#define MAX_HEAD_DIM 256
#define MAX_HEADS 64     /* query heads per rank, for the one-token-per-item path */

static void attend_one(const float *query, const float *k_cache, const float *v_cache,
                       const int32_t *block_table, int context_len, int kv_head,
                       int group, int num_kv_heads, int block_size, int head_dim, float scale,
                       float *out) {
    float acc[MAX_GROUP][MAX_HEAD_DIM];
    float running_max[MAX_GROUP], running_sum[MAX_GROUP];
    float scores[MAX_GROUP][TILE];
    const long token_stride = (long)num_kv_heads * head_dim;
    const long block_stride = token_stride * block_size;
    for (int g = 0; g < group; ++g) {
        running_max[g] = -INFINITY;
        running_sum[g] = 0.0f;
        for (int d = 0; d < head_dim; ++d) acc[g][d] = 0.0f;
    }
    const int num_blocks = (context_len + block_size - 1) / block_size;
    for (int b = 0; b < num_blocks; ++b) {
        const long base = (long)block_table[b] * block_stride + (long)kv_head * head_dim;
        const int block_tokens = b == num_blocks - 1 ? context_len - b * block_size : block_size;
        for (int start = 0; start < block_tokens; start += TILE) {
            const int tokens = block_tokens - start < TILE ? block_tokens - start : TILE;
            const float *keys = k_cache + base + start * token_stride;
            const float *values = v_cache + base + start * token_stride;
            for (int g = 0; g < group; ++g) {
                const float *q = query + (long)g * head_dim;
                float block_max = -INFINITY;
                for (int t = 0; t < tokens; ++t) {
                    const float *k = keys + t * token_stride;
                    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                    for (int d = 0; d < head_dim; ++d) dot += q[d] * k[d];
                    dot *= scale;
                    scores[g][t] = dot;
                    block_max = dot > block_max ? dot : block_max;
                }
                const float new_max = block_max > running_max[g] ? block_max : running_max[g];
                const float correction = exp_nonpositive(running_max[g] - new_max);
                float *row = scores[g];
                float block_sum = 0.0f;
#pragma omp simd reduction(+ : block_sum)
                for (int t = 0; t < tokens; ++t) {
                    const float p = exp_nonpositive(row[t] - new_max);
                    row[t] = p;
                    block_sum += p;
                }
                running_sum[g] = running_sum[g] * correction + block_sum;
                running_max[g] = new_max;
                float *a = acc[g];
#pragma omp simd
                for (int d = 0; d < head_dim; ++d) a[d] *= correction;
                for (int t = 0; t < tokens; ++t) {
                    const float p = scores[g][t];
                    const float *v = values + t * token_stride;
#pragma omp simd
                    for (int d = 0; d < head_dim; ++d) a[d] += p * v[d];
                }
            }
        }
    }
    for (int g = 0; g < group; ++g) {
        const float inv = 1.0f / running_sum[g];
        float *o = out + (long)g * head_dim;
#pragma omp simd
        for (int d = 0; d < head_dim; ++d) o[d] = acc[g][d] * inv;
    }
}

#ifdef __AVX512F__
#include <immintrin.h>

/* Lane t of the result is the sum of the 16 lanes of v[t]. */
static inline __m512 sum_lanes_16(const __m512 v[16]) {
    __m512 x[8], y[4];
    for (int i = 0; i < 8; ++i)
        x[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                             _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; ++i) {
        const __m512d a = _mm512_castps_pd(x[2 * i]), b = _mm512_castps_pd(x[2 * i + 1]);
        y[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    /* y[i]: tokens 4i..4i+3 as partial sums in each of the four 128-bit lanes */
    const __m512 z0 = _mm512_add_ps(_mm512_shuffle_f32x4(y[0], y[1], 0x88),
                                    _mm512_shuffle_f32x4(y[0], y[1], 0xDD));
    const __m512 z1 = _mm512_add_ps(_mm512_shuffle_f32x4(y[2], y[3], 0x88),
                                    _mm512_shuffle_f32x4(y[2], y[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(z0, z1, 0x88), _mm512_shuffle_f32x4(z0, z1, 0xDD));
}

#define MAX_CHUNKS (MAX_HEAD_DIM / 16)

/* One query token, every head, head_dim a multiple of 16: each KV block is read once, whole
 * and in order (all KV heads of a token are adjacent), and the next block is prefetched
 * while this one is computed (decode batches ran ~20% faster: blocks are scattered, and the
 * hardware prefetcher stops at page ends). Scores of 16 tokens at a time fill one vector. */
static inline __attribute__((always_inline)) void attend_token_avx512_impl(
    const float *query, const float *k_cache, const float *v_cache, const int32_t *block_table,
    int context_len, int num_heads, int num_kv_heads, int block_size, int head_dim, float scale,
    float *out, const int chunks, const int prefetch) {
    __m512 acc[MAX_HEADS][MAX_CHUNKS];
    float running_max[MAX_HEADS], running_sum[MAX_HEADS];
    float probs[16] __attribute__((aligned(64)));
    const int group = num_heads / num_kv_heads;
    const long token_stride = (long)num_kv_heads * head_dim;
    const long block_stride = token_stride * block_size;
    const __m512 scale_v = _mm512_set1_ps(scale);
    for (int h = 0; h < num_heads; ++h) {
        running_max[h] = -INFINITY;
        running_sum[h] = 0.0f;
        for (int c = 0; c < chunks; ++c) acc[h][c] = _mm512_setzero_ps();
    }
    const int num_blocks = (context_len + block_size - 1) / block_size;
    for (int b = 0; b < num_blocks; ++b) {
        const long base = (long)block_table[b] * block_stride;
        /* The next block, prefetched a slice per head iteration of this block's first tile:
         * issued all at once the requests stall the core (bench/README.md). Non-temporal:
         * a decode's blocks are read once per step, and the hint keeps them from evicting
         * the weights and activations the next projection reads (engine A/B: 8 of 10 pairs
         * faster, median -1.7%). */
        const int has_next = prefetch && b + 1 < num_blocks;
        const char *next_k = (const char *)(k_cache + (long)block_table[has_next ? b + 1 : b] * block_stride);
        const char *next_v = (const char *)(v_cache + (long)block_table[has_next ? b + 1 : b] * block_stride);
        const long block_bytes = block_stride * (long)sizeof(float);
        const long slice_bytes = (block_bytes / num_heads + 63) / 64 * 64;
        const int block_tokens = b == num_blocks - 1 ? context_len - b * block_size : block_size;
        for (int start = 0; start < block_tokens; start += 16) {
            const int tokens = block_tokens - start < 16 ? block_tokens - start : 16;
            const __mmask16 valid = (__mmask16)((1u << tokens) - 1u);
            for (int h = 0; h < num_heads; ++h) {
                if (has_next && start == 0) {
                    const long end = (h + 1) * slice_bytes < block_bytes ? (h + 1) * slice_bytes
                                                                          : block_bytes;
                    for (long offset = h * slice_bytes; offset < end; offset += 64) {
                        _mm_prefetch(next_k + offset, _MM_HINT_NTA);
                        _mm_prefetch(next_v + offset, _MM_HINT_NTA);
                    }
                }
                const long head_offset = (long)(h / group) * head_dim;
                const float *keys = k_cache + base + start * token_stride + head_offset;
                const float *values = v_cache + base + start * token_stride + head_offset;
                const float *q = query + (long)h * head_dim;
                __m512 products[16];
                for (int t = 0; t < 16; ++t) {
                    __m512 p = _mm512_setzero_ps();
                    if (t < tokens)
                        for (int c = 0; c < chunks; ++c)
                            p = _mm512_fmadd_ps(_mm512_loadu_ps(q + 16 * c),
                                                _mm512_loadu_ps(keys + t * token_stride + 16 * c), p);
                    products[t] = p;
                }
                __m512 scores = _mm512_mul_ps(sum_lanes_16(products), scale_v);
                scores = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), valid, scores);
                const float tile_max = _mm512_reduce_max_ps(scores);
                const float new_max = tile_max > running_max[h] ? tile_max : running_max[h];
                /* the running max rarely moves after the first tiles: skip the scalar exp */
                const float correction =
                    new_max == running_max[h] ? 1.0f : exp_nonpositive(running_max[h] - new_max);
                const __m512 p = _mm512_maskz_mov_ps(
                    valid, exp512_nonpositive(_mm512_sub_ps(scores, _mm512_set1_ps(new_max))));
                running_sum[h] = running_sum[h] * correction + _mm512_reduce_add_ps(p);
                running_max[h] = new_max;
                _mm512_store_ps(probs, p);
                /* two accumulators per chunk (even and odd tokens) halve the FMA chain */
                const __m512 correction_v = _mm512_set1_ps(correction);
                __m512 even[MAX_CHUNKS], odd[MAX_CHUNKS];
                for (int c = 0; c < chunks; ++c) {
                    even[c] = _mm512_mul_ps(acc[h][c], correction_v);
                    odd[c] = _mm512_setzero_ps();
                }
                int t = 0;
                for (; t + 1 < tokens; t += 2) {
                    const __m512 p0 = _mm512_set1_ps(probs[t]), p1 = _mm512_set1_ps(probs[t + 1]);
                    const float *v0 = values + t * token_stride, *v1 = v0 + token_stride;
                    for (int c = 0; c < chunks; ++c) {
                        even[c] = _mm512_fmadd_ps(p0, _mm512_loadu_ps(v0 + 16 * c), even[c]);
                        odd[c] = _mm512_fmadd_ps(p1, _mm512_loadu_ps(v1 + 16 * c), odd[c]);
                    }
                }
                if (t < tokens) {
                    const __m512 p0 = _mm512_set1_ps(probs[t]);
                    const float *v0 = values + t * token_stride;
                    for (int c = 0; c < chunks; ++c)
                        even[c] = _mm512_fmadd_ps(p0, _mm512_loadu_ps(v0 + 16 * c), even[c]);
                }
                for (int c = 0; c < chunks; ++c) acc[h][c] = _mm512_add_ps(even[c], odd[c]);
            }
        }
    }
    for (int h = 0; h < num_heads; ++h) {
        const __m512 inv = _mm512_set1_ps(1.0f / running_sum[h]);
        for (int c = 0; c < chunks; ++c)
            _mm512_storeu_ps(out + (long)h * head_dim + 16 * c, _mm512_mul_ps(acc[h][c], inv));
    }
}

/* Specialised for the common head sizes (64, 128) so the per-chunk loops unroll and the
 * accumulators stay in registers. */
static void attend_token_avx512(const float *query, const float *k_cache, const float *v_cache,
                              const int32_t *block_table, int context_len, int num_heads,
                              int num_kv_heads, int block_size, int head_dim, float scale,
                              float *out, int prefetch) {
    if (head_dim == 64)
        attend_token_avx512_impl(query, k_cache, v_cache, block_table, context_len, num_heads,
                               num_kv_heads, block_size, head_dim, scale, out, 4, prefetch);
    else if (head_dim == 128)
        attend_token_avx512_impl(query, k_cache, v_cache, block_table, context_len, num_heads,
                               num_kv_heads, block_size, head_dim, scale, out, 8, prefetch);
    else
        attend_token_avx512_impl(query, k_cache, v_cache, block_table, context_len, num_heads,
                               num_kv_heads, block_size, head_dim, scale, out, head_dim / 16, prefetch);
}

#define ROWS 16 /* query rows of a prefill work item: the lanes of one vector */

/* Prefill rows in vector lanes: up to 16 / group consecutive tokens of one sequence times the
 * `group` query heads of one KV head (lane r: token r / group, head r % group of the group),
 * so every K/V tile is read once for 16 rows and no score needs a horizontal sum. Scores of
 * a key are a vector over the rows (q·k with each k[d] broadcast), the running max and sum
 * are lane-wise, and the output accumulates transposed (head_dim vectors over the rows).
 * Prefill tokens re-read blocks that are in cache: compute bound, unlike decodes (the
 * per-token path ran these at under one instruction per cycle, its tile a single dependency
 * chain through a horizontal sum, a max and an exp). Lanes whose context is 0 (padding, or a
 * token to skip) see nothing and are not written. */
static void attend_rows_avx512(const float *query, const float *k_cache, const float *v_cache,
                               const int32_t *block_table, const int32_t *context_lens,
                               int num_tokens, int kv_head, int group, int num_heads,
                               int num_kv_heads, int block_size, int head_dim, float scale,
                               float *out) {
    __m512 q_t[MAX_HEAD_DIM];   /* (head_dim) vectors over the rows: scaled queries */
    __m512 acc_t[MAX_HEAD_DIM]; /* (head_dim) vectors over the rows: the weighted values */
    float rows_t[MAX_HEAD_DIM][ROWS] __attribute__((aligned(64))); /* transposes in and out */
    int32_t lane_context[ROWS] __attribute__((aligned(64)));
    const long token_stride = (long)num_kv_heads * head_dim;
    const long block_stride = token_stride * block_size;
    const int num_rows = num_tokens * group;
    int max_context = 0;
    for (int r = 0; r < ROWS; ++r) {
        lane_context[r] = r < num_rows ? context_lens[r / group] : 0;
        max_context = lane_context[r] > max_context ? lane_context[r] : max_context;
    }
    /* row r of the item is query row r / group * num_heads + kv_head * group + r % group;
     * with heads of one group adjacent, rows of one token are `group` consecutive heads */
    for (int r = 0; r < ROWS; ++r) {
        const float *q = query + ((long)(r / group) * num_heads + kv_head * group + r % group) *
                                     head_dim;
        if (r < num_rows)
            for (int d = 0; d < head_dim; ++d) rows_t[d][r] = q[d] * scale;
        else
            for (int d = 0; d < head_dim; ++d) rows_t[d][r] = 0.0f;
    }
    for (int d = 0; d < head_dim; ++d) {
        q_t[d] = _mm512_load_ps(rows_t[d]);
        acc_t[d] = _mm512_setzero_ps();
    }
    const __m512i context_v = _mm512_load_si512(lane_context);
    const __m512 floor_v = _mm512_set1_ps(-FLT_MAX); /* masked score: finite, so no inf - inf */
    __m512 running_max = floor_v, running_sum = _mm512_setzero_ps();
    const int num_blocks = (max_context + block_size - 1) / block_size;
    for (int b = 0; b < num_blocks; ++b) {
        const long base = (long)block_table[b] * block_stride + (long)kv_head * head_dim;
        const int block_tokens =
            b == num_blocks - 1 ? max_context - b * block_size : block_size;
        for (int start = 0; start < block_tokens; start += 16) {
            const int tokens = block_tokens - start < 16 ? block_tokens - start : 16;
            const float *keys = k_cache + base + start * token_stride;
            const float *values = v_cache + base + start * token_stride;
            const int first_key = b * block_size + start;
            __m512 s[16];
            for (int t = 0; t < 16; ++t) s[t] = _mm512_setzero_ps();
            for (int d = 0; d < head_dim; ++d) {
                const __m512 q = q_t[d];
                for (int t = 0; t < 16; ++t)
                    if (t < tokens)
                        s[t] = _mm512_fmadd_ps(_mm512_set1_ps(keys[t * token_stride + d]), q, s[t]);
            }
            __mmask16 valid[16];
            __m512 tile_max = floor_v;
            for (int t = 0; t < 16; ++t) {
                /* key first_key + t is visible to the rows whose context exceeds it */
                valid[t] = t < tokens ? _mm512_cmpgt_epi32_mask(context_v,
                                                                _mm512_set1_epi32(first_key + t))
                                      : 0;
                s[t] = _mm512_mask_mov_ps(floor_v, valid[t], s[t]);
                tile_max = _mm512_max_ps(tile_max, s[t]);
            }
            const __m512 new_max = _mm512_max_ps(running_max, tile_max);
            const __m512 correction = exp512_nonpositive(_mm512_sub_ps(running_max, new_max));
            running_max = new_max;
            __m512 tile_sum = _mm512_setzero_ps();
            for (int t = 0; t < 16; ++t) {
                s[t] = _mm512_maskz_mov_ps(valid[t],
                                           exp512_nonpositive(_mm512_sub_ps(s[t], new_max)));
                tile_sum = _mm512_add_ps(tile_sum, s[t]);
            }
            running_sum = _mm512_fmadd_ps(running_sum, correction, tile_sum);
            /* two accumulators per dimension (even and odd keys) halve the FMA chain */
            for (int d = 0; d < head_dim; ++d) {
                __m512 even = _mm512_mul_ps(acc_t[d], correction), odd = _mm512_setzero_ps();
                for (int t = 0; t < 16; t += 2) {
                    if (t < tokens)
                        even = _mm512_fmadd_ps(_mm512_set1_ps(values[t * token_stride + d]), s[t],
                                               even);
                    if (t + 1 < tokens)
                        odd = _mm512_fmadd_ps(_mm512_set1_ps(values[(t + 1) * token_stride + d]),
                                              s[t + 1], odd);
                }
                acc_t[d] = _mm512_add_ps(even, odd);
            }
        }
    }
    /* lanes of skipped rows hold a sum of 0: their output is not written */
    const __m512 inverse = _mm512_div_ps(_mm512_set1_ps(1.0f), running_sum);
    for (int d = 0; d < head_dim; ++d) _mm512_store_ps(rows_t[d], _mm512_mul_ps(acc_t[d], inverse));
    for (int r = 0; r < num_rows; ++r) {
        if (lane_context[r] <= 0) continue;
        float *o = out + ((long)(r / group) * num_heads + kv_head * group + r % group) * head_dim;
        for (int d = 0; d < head_dim; ++d) o[d] = rows_t[d][r];
    }
}
#endif

/* Every query token attends over the first token_context_lens[i] cached tokens of sequence
 * token_seqs[i] (its own position + 1: the new tokens are already in the cache), so one call
 * covers decodes and prefill chunks alike; tokens with a context length of 0 are skipped
 * and their rows of `out` left as they were. The first `num_streamed_tokens` tokens (the
 * decodes: one token per sequence, whose blocks nothing else reads) prefetch each next
 * block; prefill tokens re-read blocks already in cache and skip it (prefetching there cost
 * 5-27% on 2048- to 256-token chunks). Returns 0, -1 when a shape is beyond the fixed
 * limits above (the caller checks first), or -2 when the work list cannot be allocated. */
int paged_attention_f32(const float *query, const float *k_cache, const float *v_cache,
                        const int32_t *block_tables, const int32_t *token_seqs,
                        const int32_t *token_context_lens, float *out, int num_tokens,
                        int num_heads, int num_kv_heads, int head_dim, int block_size,
                        int max_blocks_per_seq, float scale, int num_streamed_tokens,
                        int num_threads) {
    const int group = num_heads / num_kv_heads;
    if (group > MAX_GROUP || head_dim > MAX_HEAD_DIM || num_heads % num_kv_heads) return -1;
#ifdef __AVX512F__
    if (head_dim % 16 == 0 && num_heads <= MAX_HEADS) {
        /* Work items: a token on the per-token path (decodes, and prefill tokens without a
         * neighbour of their sequence), or a run of up to ROWS / group consecutive prefill
         * tokens of one sequence with one KV head on the rows path. */
        const int run_limit = ROWS % group == 0 ? ROWS / group : 1;
        int32_t *items = malloc(sizeof(int32_t) * 3 * ((long)num_tokens * num_kv_heads + 1));
        if (items == NULL) return -2;
        long num_items = 0;
        for (int token = 0; token < num_tokens;) {
            int count = 1;
            if (token >= num_streamed_tokens)
                while (count < run_limit && token + count < num_tokens &&
                       token_seqs[token + count] == token_seqs[token])
                    ++count;
            for (int kv_head = 0; kv_head < (count > 1 ? num_kv_heads : 1); ++kv_head) {
                items[3 * num_items] = token;
                items[3 * num_items + 1] = count;
                items[3 * num_items + 2] = kv_head;
                ++num_items;
            }
            token += count;
        }
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
        for (long item = 0; item < num_items; ++item) {
            const int token = items[3 * item], count = items[3 * item + 1];
            const int32_t *block_table = block_tables + (long)token_seqs[token] * max_blocks_per_seq;
            const long offset = (long)token * num_heads * head_dim;
            if (count > 1) {
                attend_rows_avx512(query + offset, k_cache, v_cache, block_table,
                                   token_context_lens + token, count, items[3 * item + 2], group,
                                   num_heads, num_kv_heads, block_size, head_dim, scale,
                                   out + offset);
            } else if (token_context_lens[token] > 0) {
                attend_token_avx512(query + offset, k_cache, v_cache, block_table,
                                    token_context_lens[token], num_heads, num_kv_heads,
                                    block_size, head_dim, scale, out + offset,
                                    token < num_streamed_tokens);
            }
        }
        free(items);
        return 0;
    }
#endif
    const long items = (long)num_tokens * num_kv_heads;
#pragma omp parallel for schedule(dynamic, 4) num_threads(num_threads)
    for (long item = 0; item < items; ++item) {
        const int token = (int)(item / num_kv_heads);
        const int kv_head = (int)(item % num_kv_heads);
        if (token_context_lens[token] <= 0) continue;
        const long head_offset = ((long)token * num_heads + (long)kv_head * group) * head_dim;
        attend_one(query + head_offset, k_cache, v_cache,
                   block_tables + (long)token_seqs[token] * max_blocks_per_seq,
                   token_context_lens[token], kv_head, group, num_kv_heads, block_size, head_dim,
                   scale, out + head_offset);
    }
    return 0;
}
