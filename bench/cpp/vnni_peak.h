// The compute limit of the integer dot products, for the shapes where quant_matmul is compute-bound
// rather than memory-bound (a server's decode batch, prefill): a triad says nothing about those.
#pragma once

namespace moeweave::bench {

// int8 multiply-adds per second that AVX-512 VNNI's vpdpbusd sustains on every thread of the pool
// (12 independent accumulators per thread, operands in registers, nothing else issued: no kernel
// can exceed it), best of 5 repetitions; 0 where the CPU lacks AVX-512 VNNI.
double vnni_peak_macs_per_second();

}  // namespace moeweave::bench
