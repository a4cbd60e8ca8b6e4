// Core benchmarks. Report ratios against a reference measured in the same run:
//  - safetensors load (parse + copy to tensors) vs a plain memcpy of the same bytes;
//  - attention() vs the explicit matmul-softmax path.
#include <benchmark/benchmark.h>

#include <cstring>
#include <filesystem>

#include "core/attention.h"
#include "core/runtime.h"
#include "core/runtime_env.h"
#include "core/tensor_io.h"

namespace {

const std::string& bench_file() {
  static const std::string path = [] {
    std::string p = (std::filesystem::temp_directory_path() / "iris_bench_core.safetensors").string();
    std::vector<std::pair<std::string, at::Tensor>> ts;
    for (int i = 0; i < 64; ++i) ts.emplace_back("layer." + std::to_string(i) + ".weight", at::randn({512, 512}));
    iris::write_safetensors(p, ts);
    return p;
  }();
  return path;
}

void BM_SafetensorsLoad(benchmark::State& state) {
  for (auto _ : state) {
    iris::TensorStore s = iris::TensorStore::open(bench_file());
    auto all = iris::read_all(s);
    benchmark::DoNotOptimize(all);
  }
  state.SetBytesProcessed(state.iterations() * 64 * 512 * 512 * 4);
}
BENCHMARK(BM_SafetensorsLoad)->Unit(benchmark::kMillisecond);

void BM_MemcpyReference(benchmark::State& state) {
  iris::MappedFile f(bench_file());
  std::vector<uint8_t> dst(f.size());
  for (auto _ : state) {
    std::memcpy(dst.data(), f.data(), f.size());
    benchmark::DoNotOptimize(dst.data());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(f.size()));
}
BENCHMARK(BM_MemcpyReference)->Unit(benchmark::kMillisecond);

void attention_bench(benchmark::State& state, bool force_explicit) {
  at::Tensor q = at::randn({2, 8, 1024, 64}), k = at::randn({2, 8, 77, 64}), v = at::randn({2, 8, 77, 64});
  iris::AttentionOptions opt;
  opt.force_explicit = force_explicit;
  for (auto _ : state) benchmark::DoNotOptimize(iris::attention(q, k, v, opt));
}
void BM_AttentionDefault(benchmark::State& s) { attention_bench(s, false); }
void BM_AttentionExplicit(benchmark::State& s) { attention_bench(s, true); }
BENCHMARK(BM_AttentionDefault)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_AttentionExplicit)->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  iris::ensure_passive_openmp(argc, argv);
  iris::set_threads(0);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
