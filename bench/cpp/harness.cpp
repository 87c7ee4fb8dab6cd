// main() of every native benchmark binary and the counters of harness.h.
#include "harness.h"

#include <cstdio>
#include <string>

#include "moeweave/isa.h"
#include "moeweave/thread_pool.h"
#include "triad.h"

namespace moeweave::bench {
namespace {

double triad = 0;  // bytes per second, measured once by main()

std::string fixed(double value, int digits) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.*f", digits, value);
  return text;
}

}  // namespace

void report_bytes(benchmark::State& state, int64_t bytes, double seconds) {
  state.SetBytesProcessed(bytes);
  // A plain ratio, not a benchmark rate counter: those print with a "/s" unit.
  state.counters["triad_frac"] = seconds > 0 ? double(bytes) / seconds / triad : 0.0;
}

void report_flops(benchmark::State& state, double flops_per_iteration) {
  state.counters["FLOP/s"] =
      benchmark::Counter(flops_per_iteration, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace moeweave::bench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  using namespace moeweave;
  bench::triad = bench::triad_bytes_per_second();
  benchmark::AddCustomContext("triad_GB/s", bench::fixed(bench::triad / 1e9, 1));
  benchmark::AddCustomContext("llc_MiB", std::to_string(bench::last_level_cache_bytes() >> 20));
  benchmark::AddCustomContext("threads", std::to_string(num_threads()));
  benchmark::AddCustomContext("isa", isa_name(current_isa()));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
