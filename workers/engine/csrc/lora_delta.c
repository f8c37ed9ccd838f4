/* The stacked LoRA delta of one base linear module on a CPU, float32, added in place:
 *
 *   out[n, :] += scale[s] * (x[n, :] @ a[s]) @ b[s]     s = the slot of row-token n
 *
 * a: [slots, in, rank] (A transposed), b: [slots, rank, out] (B transposed), as
 * workers/engine/stacked_lora.py keeps them. The pass's rows come grouped by slot (order,
 * starts, group_slot), so each group reads its adapter's matrices from memory once and
 * then from cache for its other rows, with no gather or scatter of the rows themselves;
 * each row has `tokens` row-tokens (1 in a decode step, more in a prefill). Groups are
 * split over OpenMP threads (PyTorch's runtime): their rows are disjoint, and each row is
 * computed by one thread in one order, whatever the batch. Built and loaded by
 * workers/engine/native.py.
 */
#include <stdint.h>
#include <stdlib.h>

enum { CHUNK = 16, WAYS = 4 }; /* rank columns per pass over x; k-steps in flight */

/* hidden[:rank] = x[:in] @ a ([in, rank]). A plain k-loop accumulates into one vector
 * and waits on each fused multiply-add; here CHUNK rank columns at a time run WAYS
 * independent accumulators over k, which the compiler keeps in registers. */
static void shrink(const float *x, const float *a, float *hidden, int64_t in, int64_t rank) {
  int64_t j0 = 0;
  for (; j0 + CHUNK <= rank; j0 += CHUNK) {
    float acc[WAYS][CHUNK] = {{0.f}};
    int64_t k = 0;
    for (; k + WAYS <= in; k += WAYS) {
      for (int w = 0; w < WAYS; ++w) {
        const float xk = x[k + w];
        const float *ak = a + (k + w) * rank + j0;
#pragma omp simd
        for (int j = 0; j < CHUNK; ++j) acc[w][j] += xk * ak[j];
      }
    }
    for (; k < in; ++k) {
      const float *ak = a + k * rank + j0;
#pragma omp simd
      for (int j = 0; j < CHUNK; ++j) acc[0][j] += x[k] * ak[j];
    }
#pragma omp simd
    for (int j = 0; j < CHUNK; ++j) hidden[j0 + j] = acc[0][j] + acc[1][j] + acc[2][j] + acc[3][j];
  }
  for (int64_t j = j0; j < rank; ++j) { /* a rank that is not a multiple of CHUNK */
    float sum = 0.f;
    for (int64_t k = 0; k < in; ++k) sum += x[k] * a[k * rank + j];
    hidden[j] = sum;
  }
}

/* out[:out_features] += scale * hidden[:rank] @ b ([rank, out_features]), four rank rows
 * a pass over out, so that out is loaded and stored a quarter as often. */
static void expand(const float *hidden, const float *b, float *out, float scale,
                   int64_t rank, int64_t out_features) {
  int64_t j = 0;
  for (; j + 4 <= rank; j += 4) {
    const float h0 = scale * hidden[j], h1 = scale * hidden[j + 1];
    const float h2 = scale * hidden[j + 2], h3 = scale * hidden[j + 3];
    const float *b0 = b + j * out_features, *b1 = b0 + out_features;
    const float *b2 = b1 + out_features, *b3 = b2 + out_features;
#pragma omp simd
    for (int64_t d = 0; d < out_features; ++d)
      out[d] += h0 * b0[d] + h1 * b1[d] + h2 * b2[d] + h3 * b3[d];
  }
  for (; j < rank; ++j) {
    const float h = scale * hidden[j];
    const float *bj = b + j * out_features;
#pragma omp simd
    for (int64_t d = 0; d < out_features; ++d) out[d] += h * bj[d];
  }
}

void loraq_lora_delta(const float *x, float *out, const float *a, const float *b,
                      const float *scale, const int64_t *order, const int64_t *starts,
                      const int64_t *group_slot, int64_t groups, int64_t tokens,
                      int64_t in, int64_t out_features, int64_t rank, int64_t x_row,
                      int64_t o_row) {
#pragma omp parallel
  {
    float *hidden = malloc(sizeof(float) * (size_t)(rank > 0 ? rank : 1)); /* [rank] */
#pragma omp for schedule(dynamic)
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t slot = group_slot[g];
      const float s = scale[slot];
      if (s == 0.f) continue;
      const float *as = a + slot * in * rank;
      const float *bs = b + slot * rank * out_features;
      for (int64_t i = starts[g]; i < starts[g + 1]; ++i) {
        for (int64_t t = 0; t < tokens; ++t) {
          const int64_t n = order[i] * tokens + t;
          const float *xn = x + n * x_row;
          float *on = out + n * o_row;
          shrink(xn, as, hidden, in, rank);
          expand(hidden, bs, on, s, rank, out_features);
        }
      }
    }
    free(hidden);
  }
}
