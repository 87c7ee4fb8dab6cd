// What every native benchmark binary shares: main() (harness.cpp) measures the STREAM triad once
// before any benchmark runs, and run() reports each benchmark's bytes per second next to the
// fraction of that triad they make (counter "triad_frac"), so that a row reads the same on a
// machine whose memory is twice as fast. Register benchmarks with ->UseRealTime(): the kernels
// run on the thread pool, and a rate per CPU second of the main thread would mean nothing.
#pragma once

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <memory>

namespace moeweave::bench {

// Sets bytes_per_second and triad_frac from the bytes the benchmark loop moved in `seconds`.
void report_bytes(benchmark::State& state, int64_t bytes, double seconds);

// Runs the benchmark loop over step(), which does one call and returns the bytes it moved;
// returns the loop's seconds.
template <typename Step>
double run(benchmark::State& state, Step step) {
  int64_t bytes = 0;
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) bytes += step();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  report_bytes(state, bytes, seconds);
  return seconds;
}

// The runner calls a benchmark function several times (it grows the iteration count between
// calls), and inputs spanning 4x the last-level cache take a while to build: this keeps the
// inputs of the latest configuration only, so two such sets are never held at once.
template <typename Key, typename Inputs>
class Latest {
 public:
  template <typename Make>
  const Inputs& get(const Key& key, Make make) {
    if (!inputs_ || key != key_) {
      inputs_.reset();
      inputs_ = std::make_unique<Inputs>(make());
      key_ = key;
    }
    return *inputs_;
  }

 private:
  Key key_{};
  std::unique_ptr<Inputs> inputs_;
};

// Adds a FLOP/s counter, for the compute-bound shapes.
void report_flops(benchmark::State& state, double flops_per_iteration);

}  // namespace moeweave::bench
