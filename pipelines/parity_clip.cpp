// Parity runners for the CLIP towers (transformers 4.40.2 golden fixtures clip_text,
// clip_text_proj, clip_vision_proj). Every `output.*` of a fixture is compared; one the runner
// does not produce is a failing line, so nothing is skipped silently.
#include <map>
#include <string>

#include <ATen/core/grad_mode.h>

#include "core/error.h"
#include "core/state_dict.h"
#include "diffusion/clip.h"
#include "pipelines/parity.h"

namespace iris {

namespace {

using Outputs = std::map<std::string, at::Tensor>;  // name without "output." -> tensor

// Fixture parameters carry their real names; inputs and outputs are not parameters.
RenameTable parameters_only() {
  RenameTable t;
  t.ignore("input.").ignore("output.");
  return t;
}

void add_hidden_states(const std::vector<at::Tensor>& hs, Outputs& got) {
  for (size_t i = 0; i < hs.size(); ++i) got["hidden_states." + std::to_string(i)] = hs[i];
}

void compare_all(const Fixture& fx, const Outputs& got, std::vector<ParityLine>& lines) {
  report_outputs(fx, lines, [&](const std::string& key) -> std::optional<ParityLine> {
    auto it = got.find(key);
    if (it == got.end()) return std::nullopt;
    return compare(key, it->second, fx.tensor("output." + key));
  });
}

// The early-stop path (what IP-Adapter Plus and LLaVA use): hidden_states[-2] computed alone
// must match the fixture's penultimate hidden state.
template <typename Model>
void check_early_stop(const Fixture& fx, Model& model, const at::Tensor& input, int64_t num_layers,
                      std::vector<ParityLine>& lines) {
  if (num_layers < 1) return;
  const std::string name = "hidden_states." + std::to_string(num_layers - 1);
  if (!fx.has("output." + name)) return;
  lines.push_back(compare(name + " (hidden_state(-2), stopped early)", model->hidden_state(input, -2),
                          fx.tensor("output." + name)));
}

void run_text(const Fixture& fx, bool with_projection, std::vector<ParityLine>& lines) {
  const ClipTextConfig cfg = ClipTextConfig::from_json(fx.config, fx.path + ": config");
  ClipTextModel model(cfg, with_projection);
  model->eval();
  load_state_dict(*model, *fx.store, parameters_only());
  at::NoGradGuard no_grad;
  const at::Tensor ids = fx.tensor("input.input_ids");
  ClipTextOptions opt;
  opt.output_hidden_states = true;
  if (fx.has("input.attention_mask")) opt.attention_mask = fx.tensor("input.attention_mask");
  const ClipTextOutput out = model->forward(ids, opt);
  Outputs got{{"last_hidden_state", out.last_hidden_state}, {"pooler_output", out.pooler_output}};
  if (out.text_embeds.defined()) got["text_embeds"] = out.text_embeds;
  add_hidden_states(out.hidden_states, got);
  compare_all(fx, got, lines);
  if (!fx.has("input.attention_mask")) check_early_stop(fx, model, ids, cfg.num_hidden_layers, lines);
}

void run_vision(const Fixture& fx, bool with_projection, std::vector<ParityLine>& lines) {
  const ClipVisionConfig cfg = ClipVisionConfig::from_json(fx.config, fx.path + ": config");
  ClipVisionModel model(cfg, with_projection);
  model->eval();
  load_state_dict(*model, *fx.store, parameters_only());
  at::NoGradGuard no_grad;
  const at::Tensor pixels = fx.tensor("input.pixel_values");
  const ClipVisionOutput out = model->forward(pixels, /*output_hidden_states=*/true);
  Outputs got{{"last_hidden_state", out.last_hidden_state}, {"pooler_output", out.pooler_output}};
  if (out.image_embeds.defined()) got["image_embeds"] = out.image_embeds;
  add_hidden_states(out.hidden_states, got);
  compare_all(fx, got, lines);
  check_early_stop(fx, model, pixels, cfg.num_hidden_layers, lines);
}

}  // namespace

void register_clip_parity(ParityRegistry& r) {
  r.add("transformers.CLIPTextModel", [](const Fixture& fx, std::vector<ParityLine>& l) { run_text(fx, false, l); });
  r.add("transformers.CLIPTextModelWithProjection",
        [](const Fixture& fx, std::vector<ParityLine>& l) { run_text(fx, true, l); });
  r.add("transformers.CLIPVisionModel", [](const Fixture& fx, std::vector<ParityLine>& l) { run_vision(fx, false, l); });
  r.add("transformers.CLIPVisionModelWithProjection",
        [](const Fixture& fx, std::vector<ParityLine>& l) { run_vision(fx, true, l); });
}

}  // namespace iris
