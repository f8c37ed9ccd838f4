/* One-token decode attention on a CPU, float32: what PyTorch's SDPA does for a query of
 * length 1, reading each key and value column once.
 *
 * For each row r and query head h (kv head g = h / (heads / kv_heads)):
 *   s[l]       = scale * q[r, h, :] . k[r, g, l, :]    for the columns the mask keeps
 *   out[r, h]  = sum_l softmax(s)[l] * v[r, g, l, :]
 *
 * Built and loaded by workers/engine/native.py, on the machine that runs it. Tensors
 * come as data pointers and strides in elements (the last dimension of q, k, v and out is
 * contiguous); the mask, when there is one, is one byte per column (0: masked), rows
 * m_row bytes apart. Rows and heads are split over OpenMP threads (the same runtime and
 * thread count as PyTorch's), each pair computed by one thread in one order, so a row's
 * result does not depend on the batch around it. A row whose columns are all masked
 * gets zeros.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

void loraq_decode_attention(const float *q, const float *k, const float *v,
                            const uint8_t *mask, float *out, int64_t rows, int64_t heads,
                            int64_t kv_heads, int64_t length, int64_t key_dim,
                            int64_t value_dim, float scale, int64_t q_row, int64_t q_head,
                            int64_t k_row, int64_t k_head, int64_t k_col, int64_t v_row,
                            int64_t v_head, int64_t v_col, int64_t m_row, int64_t o_row,
                            int64_t o_head) {
  const int64_t group = heads / kv_heads;
#pragma omp parallel
  {
    /* Scores, then probabilities, of one (row, head) pair: [length]. */
    float *p = malloc(sizeof(float) * (size_t)(length > 0 ? length : 1));
#pragma omp for collapse(2) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t h = 0; h < heads; ++h) {
        const uint8_t *keep = mask ? mask + r * m_row : NULL;
        const float *qh = q + r * q_row + h * q_head;
        const float *kh = k + r * k_row + (h / group) * k_head;
        const float *vh = v + r * v_row + (h / group) * v_head;
        float *oh = out + r * o_row + h * o_head;
        float best = -FLT_MAX;
        for (int64_t l = 0; l < length; ++l) {
          if (keep && !keep[l]) {
            p[l] = 0.f;
            continue;
          }
          const float *kl = kh + l * k_col;
          float dot = 0.f;
#pragma omp simd reduction(+ : dot)
          for (int64_t d = 0; d < key_dim; ++d) dot += qh[d] * kl[d];
          p[l] = dot * scale;
          if (p[l] > best) best = p[l];
        }
        /* Masked columns weigh 0; no infinities (this file is built with -ffast-math). */
        float total = 0.f;
#pragma omp simd reduction(+ : total)
        for (int64_t l = 0; l < length; ++l) {
          const float e = (!keep || keep[l]) ? expf(p[l] - best) : 0.f;
          p[l] = e;
          total += e;
        }
        for (int64_t d = 0; d < value_dim; ++d) oh[d] = 0.f;
        for (int64_t l = 0; l < length; ++l) {
          const float weight = p[l];
          if (weight == 0.f) continue;
          const float *vl = vh + l * v_col;
#pragma omp simd
          for (int64_t d = 0; d < value_dim; ++d) oh[d] += weight * vl[d];
        }
        const float inverse = total > 0.f ? 1.f / total : 0.f;
        for (int64_t d = 0; d < value_dim; ++d) oh[d] *= inverse;
      }
    }
    free(p);
  }
}
