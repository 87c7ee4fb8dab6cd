// The ISA-independent body of the attention kernels. attention_{scalar,avx2,avx512}.cpp each
// instantiate attention_items<Ops> with their own vector primitives:
//   Ops::to_float(dtype, row, out, d)       out[i] = row[i] as fp32   (row in `dtype`)
//   Ops::from_float(dtype, in, row, d)      row[i] = in[i] in `dtype` (rounded to nearest even)
//   Ops::scores(q, rows, d, keys, n, out, ld, work)   out[r * ld + j] = sum_i q[r, i] keys[j, i]
//       for every query row r (q: rows of d) and key j < n <= kKeyBlock; work: kKeyBlock x d floats
//   Ops::accumulate(p, ldp, rows, values, n, d, acc)   acc[r, i] += sum_j p[r, j] values[j, i]
//       for every row r (p: rows ldp apart; acc: rows of d)
//   Ops::max(x, visible, n)                 the largest x[i] with visible[i]; -inf if none
//   Ops::exp_visible(x, visible, n, shift)  x[i] = visible[i] ? exp(x[i] - shift) : 0; returns their sum
// (keys and values are fp32 rows of a converted block: [kKeyBlock, d], zeros past row n.)
// Ops::kPairs (bf16 caches on CPUs with AVX512-BF16) multiplies bf16 pairs instead, with fp32 sums:
//   Ops::pair_keys(keys, row_bytes, n, d, block)   a key block (the cache's rows, row_bytes
//       apart) in the layout pair_scores reads
//   Ops::pair_scores(q, rows, d, block, n, scale, out, ld)   out[r * ld + j] = scale q[r] . k[j]
//       for every query row r (bf16 pairs, rows of (d + 1) / 2 words, the last padded with 0)
//   Ops::pair_block(cache, row_bytes, visible, t0, n, d, block)   values as pairs of rows:
//       block[i, c] = v[2i, c] | v[2i + 1, c] << 16 ([kKeyBlock / 2, d] words, zeros as above)
//   Ops::accumulate_pairs(p, ldp, rows, block, n, d, acc)   acc[r, i] += sum_j bf16(p[r, j]) values[j, i]
//       for every row r (p: rows ldp apart; acc: rows of d)
// Everything here has internal linkage, so each ISA file keeps its own copy.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "moeweave/half.h"
#include "moeweave/kernels_cpu.h"

namespace moeweave::cpu {
namespace {

// Query heads of one key/value head handled by one work item, and keys converted per block.
// 8 heads take the whole group of Qwen3-30B-A3B's 32 query / 4 key-value heads, whose cache an
// item of 4 read twice (~10 % less time for a 4096-key decode step).
constexpr int64_t kHeadsPerItem = 8;
constexpr int64_t kKeyBlock = 16;
// Converting a block prefetches the rows this far ahead. Without, a thread waited on each row's
// lines in turn and read its cache at ~0.2 of the triad; 16-128 rows ahead were alike.
constexpr int64_t kPrefetchRows = 32;

// Queries of one work item (per head). Its keys and values are converted once per block for all
// of its rows, which a prompt needs (a decode step has one query). The scores of an item's rows
// are held over every key, so long caches get fewer queries: ~1 MiB of scores per item (a
// 4 MiB budget was faster at 2048 keys, slower at 4096).
constexpr int64_t kQueryRows = 16;
constexpr int64_t kScoreBytes = 1024 << 10;

inline int64_t query_rows_per_item(const AttentionArgs& a) {
  const int64_t row_bytes = kHeadsPerItem * std::max<int64_t>(a.keys, 1) * int64_t(sizeof(float));
  return std::clamp<int64_t>(kScoreBytes / row_bytes, 1, std::min(kQueryRows, std::max<int64_t>(a.queries, 1)));
}

inline int64_t attention_items_count(const AttentionArgs& a) {
  const int64_t group = a.heads / a.kv_heads, rows = query_rows_per_item(a);
  return a.batch * a.kv_heads * ((a.queries + rows - 1) / rows) * ((group + kHeadsPerItem - 1) / kHeadsPerItem);
}

inline float element_to_float(DType dtype, const char* base, int64_t i) {
  switch (dtype) {
    case DType::bf16: return bf16_to_float(reinterpret_cast<const uint16_t*>(base)[i]);
    case DType::f16: return f16_to_float(reinterpret_cast<const uint16_t*>(base)[i]);
    default: return reinterpret_cast<const float*>(base)[i];
  }
}

inline void store_element(DType dtype, char* base, int64_t i, float value) {
  switch (dtype) {
    case DType::bf16: reinterpret_cast<uint16_t*>(base)[i] = float_to_bf16(value); break;
    case DType::f16: reinterpret_cast<uint16_t*>(base)[i] = float_to_f16(value); break;
    default: reinterpret_cast<float*>(base)[i] = value;
  }
}

// body(std::integral_constant<int, R>, r) over rows [r, r + R) of `rows`: blocks of Block rows,
// then one block of the rows left, so that kernels keep a block's accumulators in registers.
template <int K, typename Body>
void rows_left(int64_t left, int64_t r, Body& body) {
  if constexpr (K > 0) {
    if (left == K) return body(std::integral_constant<int, K>{}, r);
    rows_left<K - 1>(left, r, body);
  }
}

template <int Block, typename Body>
void in_row_blocks(int64_t rows, Body&& body) {
  int64_t r = 0;
  for (; r + Block <= rows; r += Block) body(std::integral_constant<int, Block>{}, r);
  rows_left<Block - 1>(rows - r, r, body);
}

// The item-level products for Ops whose own take one query row at a time (the portable and AVX2
// levels): Ops::row_scores(q, keys, n, d, out) and Ops::row_accumulate(p, values, n, d, acc).
template <typename Ops>
struct RowByRow {
  static void scores(const float* q, int64_t rows, int64_t d, const float* keys, int64_t n, float* out, int64_t ld,
                     float*) {
    for (int64_t r = 0; r < rows; ++r) Ops::row_scores(q + r * d, keys, n, d, out + r * ld);
  }
  static void accumulate(const float* p, int64_t ldp, int64_t rows, const float* values, int64_t n, int64_t d,
                         float* acc) {
    for (int64_t r = 0; r < rows; ++r) Ops::row_accumulate(p + r * ldp, values, n, d, acc + r * d);
  }
};

// Rows t0 .. t0 + n - 1 of a cache, kPrefetchRows ahead of their use (past the end: a no-op).
inline void prefetch_ahead(const char* cache, int64_t row_bytes, int64_t t0, int64_t n, int64_t row_used) {
  for (int64_t t = t0 + kPrefetchRows; t < t0 + kPrefetchRows + n; ++t)
    for (int64_t line = 0; line < row_used; line += 64) __builtin_prefetch(cache + t * row_bytes + line);
}

// Rows t0 .. t0 + n - 1 of a key or value cache (row stride in bytes) as fp32 [kKeyBlock, d];
// zeros for the keys the query may not see and for the rows past n.
template <typename Ops>
void convert_block(DType dtype, const char* cache, int64_t row_bytes, const uint8_t* visible, int64_t t0, int64_t n,
                   int64_t d, float* block) {
  std::fill(block + n * d, block + kKeyBlock * d, 0.0f);
  prefetch_ahead(cache, row_bytes, t0, n, d * static_cast<int64_t>(dtype_size(dtype)));
  for (int64_t t = 0; t < n; ++t) {
    if (visible[t])
      Ops::to_float(dtype, cache + (t0 + t) * row_bytes, block + t * d, d);
    else
      std::fill(block + t * d, block + (t + 1) * d, 0.0f);
  }
}

// Work item = (batch b, key/value head, a block of up to query_rows_per_item queries, a chunk of
// up to kHeadsPerItem of the query heads that share that key/value head). Keys and values are
// converted to fp32 once per block of kKeyBlock and reused by every (head, query) row of the
// item; per row: the block's scores, a max-shifted softmax over the keys it sees (masked
// probabilities are exactly 0), and the probability-weighted sum of the value block. Blocks past
// the last key any row sees are skipped (half the keys of a causal prompt). A value no row of the
// item sees is zeros in the block, never read from the cache: masked slots may hold anything,
// NaN included (the fp32 path never reads such a key either; the pair path reads its keys in
// place, and the softmax drops the scores of keys a row does not see, whatever they are). A key
// some rows see is read for all of them, and weighs 0 where it is masked; the same sum as one
// row at a time, as long as the slots a sequence's queries see are finite.
template <typename Ops>
void attention_items(const AttentionArgs& a, int64_t item_begin, int64_t item_end) {
  const int64_t group = a.heads / a.kv_heads, chunks = (group + kHeadsPerItem - 1) / kHeadsPerItem;
  const int64_t rows_per_item = query_rows_per_item(a);
  const int64_t query_blocks = (a.queries + rows_per_item - 1) / rows_per_item;
  const int64_t rows_max = kHeadsPerItem * rows_per_item, esize = static_cast<int64_t>(dtype_size(a.dtype));
  thread_local std::vector<float> scratch;
  thread_local std::vector<uint8_t> seen_by_any;
  // The block takes kKeyBlock rows of fp32 or pair words, 32 columns at a time.
  const int64_t block_columns = (std::max(a.dk, a.dv) + 31) / 32 * 32;
  scratch.resize(rows_max * (a.keys + a.dk + a.dv) + 2 * kKeyBlock * block_columns);
  float* scores = scratch.data();               // [rows of the item, T]; row r = head r / nq, query r % nq
  float* query = scores + rows_max * a.keys;    // [rows of the item, dk]
  float* acc = query + rows_max * a.dk;         // [rows of the item, dv]
  float* block = acc + rows_max * a.dv;         // [kKeyBlock, block_columns]
  float* work = block + kKeyBlock * block_columns;  // [kKeyBlock, block_columns]
  uint32_t* const pairs = reinterpret_cast<uint32_t*>(block);  // the block as the pair path lays it out
  for (int64_t item = item_begin; item < item_end; ++item) {
    const int64_t chunk = item % chunks, qb = item / chunks % query_blocks;
    const int64_t kv = item / (chunks * query_blocks) % a.kv_heads, b = item / (chunks * query_blocks * a.kv_heads);
    const int64_t first = kv * group + chunk * kHeadsPerItem;  // first query head of the item
    const int64_t count = std::min(kHeadsPerItem, (kv + 1) * group - first);
    const int64_t s0 = qb * rows_per_item, nq = std::min(rows_per_item, a.queries - s0);
    const int64_t rows = count * nq;
    auto out_row = [&](int64_t r) { return (b * a.heads + first + r / nq) * a.queries + s0 + r % nq; };
    auto visible = [&](int64_t r) { return a.mask + (b * a.queries + s0 + r % nq) * a.keys; };
    for (int64_t r = 0; r < rows; ++r) {
      const char* row = static_cast<const char*>(a.q) + out_row(r) * a.dk * esize;
      if constexpr (Ops::kPairs) {  // bf16 as stored; the scale goes on the scores
        uint16_t* words = reinterpret_cast<uint16_t*>(query) + r * ((a.dk + 1) / 2) * 2;
        std::memcpy(words, row, a.dk * esize);
        if (a.dk % 2) words[a.dk] = 0;
      } else {
        Ops::to_float(a.dtype, row, query + r * a.dk, a.dk);
        for (int64_t i = 0; i < a.dk; ++i) query[r * a.dk + i] *= a.scale;
      }
    }
    // The keys any row sees (the row's own mask when there is one query), and the end of them.
    const uint8_t* any = visible(0);
    if (nq > 1) {
      seen_by_any.assign(any, any + a.keys);
      uint8_t* seen = seen_by_any.data();
      for (int64_t s = 1; s < nq; ++s) {
        const uint8_t* row = visible(s);  // one pass per query, which the compiler vectorises
        for (int64_t t = 0, keys = a.keys; t < keys; ++t) seen[t] |= row[t];
      }
      any = seen;
    }
    int64_t end = a.keys;
    while (end > 0 && !any[end - 1]) --end;

    const char* k = static_cast<const char*>(a.k) + (b * a.k_strides[0] + kv * a.k_strides[1]) * esize;
    const char* v = static_cast<const char*>(a.v) + (b * a.v_strides[0] + kv * a.v_strides[1]) * esize;
    const int64_t k_row_bytes = a.k_strides[2] * esize, v_row_bytes = a.v_strides[2] * esize;
    for (int64_t t0 = 0; t0 < end; t0 += kKeyBlock) {
      const int64_t n = std::min(kKeyBlock, end - t0);
      if constexpr (Ops::kPairs) {
        prefetch_ahead(k, k_row_bytes, t0, n, a.dk * esize);
        Ops::pair_keys(k + t0 * k_row_bytes, k_row_bytes, n, a.dk, pairs);
        Ops::pair_scores(reinterpret_cast<const uint32_t*>(query), rows, a.dk, pairs, n, a.scale, scores + t0, a.keys);
      } else {
        convert_block<Ops>(a.dtype, k, k_row_bytes, any + t0, t0, n, a.dk, block);
        Ops::scores(query, rows, a.dk, block, n, scores + t0, a.keys, work);
      }
    }
    float total[kHeadsPerItem * kQueryRows];
    for (int64_t r = 0; r < rows; ++r) {
      float* p = scores + r * a.keys;
      const float best = Ops::max(p, visible(r), end);
      if (best == -INFINITY) {  // sees no key: zero weights, zero output
        std::fill(p, p + end, 0.0f);
        total[r] = 0.0f;
        continue;
      }
      total[r] = Ops::exp_visible(p, visible(r), end, best);
    }
    std::fill(acc, acc + rows * a.dv, 0.0f);
    for (int64_t t0 = 0; t0 < end; t0 += kKeyBlock) {
      const int64_t n = std::min(kKeyBlock, end - t0);
      if constexpr (Ops::kPairs) {
        Ops::pair_block(v, v_row_bytes, any + t0, t0, n, a.dv, pairs);
        Ops::accumulate_pairs(scores + t0, a.keys, rows, pairs, n, a.dv, acc);
      } else {
        convert_block<Ops>(a.dtype, v, v_row_bytes, any + t0, t0, n, a.dv, block);
        Ops::accumulate(scores + t0, a.keys, rows, block, n, a.dv, acc);
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      const float norm = total[r] > 0.0f ? 1.0f / total[r] : 0.0f;
      float* row = acc + r * a.dv;
      for (int64_t i = 0; i < a.dv; ++i) row[i] *= norm;
      Ops::from_float(a.dtype, row, static_cast<char*>(a.out) + out_row(r) * a.dv * esize, a.dv);
    }
  }
}

}  // namespace
}  // namespace moeweave::cpu
