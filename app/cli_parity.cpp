// iris parity FIXTURE...: compare Iris with the reference implementations' golden outputs.
#include <cstdio>
#include <string>
#include <vector>

#include "app/cli.h"
#include "core/error.h"
#include "pipelines/parity.h"

namespace iris::cli {

void add_parity_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("parity", "Check Iris against golden fixtures (../shared/fixtures)");
  auto files = std::make_shared<std::vector<std::string>>();
  auto roundtrip_only = std::make_shared<bool>(false);
  auto list = std::make_shared<bool>(false);
  cmd->add_option("fixtures", *files, "Fixture files (.safetensors or .jsonl golden tables)");
  cmd->add_flag("--roundtrip-only", *roundtrip_only, "Only the safetensors read/write round trip");
  cmd->add_flag("--list-classes", *list, "List the reference classes this build can check");
  cmd->callback([files, roundtrip_only, list] {
    if (*list) {
      for (const std::string& c : parity_registry().classes()) std::printf("%s\n", c.c_str());
      return;
    }
    if (files->empty()) throw ConfigError("parity: no fixture given");
    int failed = 0, unsupported = 0;
    for (const std::string& f : *files) {
      ParityOutcome out;
      try {
        out = run_parity(f, *roundtrip_only);
      } catch (const std::exception& e) {
        std::printf("%s: ERROR %s\n", f.c_str(), e.what());
        ++failed;
        continue;
      }
      for (const ParityLine& l : out.lines) {
        std::printf("%s  %-44s max_abs %.3e  max_rel %.3e  %s%s%s\n", f.c_str(), l.name.c_str(), l.max_abs,
                    l.max_rel, l.pass ? "PASS" : "FAIL", l.detail.empty() ? "" : "  ", l.detail.c_str());
        if (!l.pass) ++failed;
      }
      if (!out.class_supported) {
        std::printf("%s  class \"%s\": NOT RUN (no runner in this build)\n", f.c_str(), out.cls.c_str());
        ++unsupported;
      }
    }
    std::fflush(stdout);
    if (failed) throw Error("parity: " + std::to_string(failed) + " comparison(s) failed");
    if (unsupported) throw Error("parity: " + std::to_string(unsupported) + " fixture(s) of classes with no runner yet");
  });
}

}  // namespace iris::cli
