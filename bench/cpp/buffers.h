// Inputs for the native benchmarks. Their values never matter for timing, only that every byte
// is memory of its own (touched, so no shared zero page behind it), that floats are ordinary
// numbers (no NaN, infinity or subnormal slow paths) and, for weights, that a benchmark can
// cycle over enough distinct copies to read them from DRAM as a decode step does.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "moeweave/quant_formats.h"

namespace moeweave::bench {

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<uint8_t[], FreeDeleter>;

// 4 KiB-aligned (O_DIRECT's alignment, and every SIMD width), contents undefined.
Buffer aligned_buffer(int64_t bytes);

void fill_random_bytes(void* data, int64_t bytes, uint64_t seed);

// Uniform in [-range, range), as bf16.
void fill_random_bf16(uint16_t* data, int64_t n, float range, uint64_t seed);

// Copies of an object of `bytes_each` bytes that together span 4x the last-level cache.
int64_t copies_beyond_llc(int64_t bytes_each);

// `copies` slabs of one call's inputs (and outputs) side by side: a benchmark fills slab(0),
// replicate()s it into the others and gives call i slab(i), so that with copies_beyond_llc
// copies every call finds its operands in DRAM.
struct Slabs {
  Buffer storage;
  int64_t stride, copies;  // stride: a slab's bytes rounded up to 4 KiB
  uint8_t* slab(int64_t i) const { return storage.get() + (i % copies) * stride; }
};

Slabs make_slabs(int64_t bytes, int64_t copies);

void replicate(const Slabs& slabs);

// Bytes of a weight [n, k] as weight_set lays it out: what one product reads, packed values +
// scales.
int64_t weight_bytes(int64_t n, int64_t k, int bits);

// `count` distinct copies of one random weight [n, k] in the layout of quant_formats.h: bits
// 2/3/4/8 symmetric with bf16 scales per 64 columns (the Python benchmarks' format), or a plain
// bf16 matrix for bits 16.
struct WeightSet {
  std::vector<QuantMatrix> matrices;
  int64_t bytes_each;  // weight_bytes(n, k, bits)
  Slabs slabs;         // one per matrix: packed values, then scales
};

WeightSet weight_set(int64_t n, int64_t k, int bits, int64_t count);

}  // namespace moeweave::bench
