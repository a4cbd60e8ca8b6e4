#include "pipelines/vlm_ask.h"

#include <algorithm>
#include <cstdio>
#include <vector>

#include "core/error.h"
#include "core/heatmap.h"
#include "pipelines/visor_vqa.h"
#include "vlm/visor.h"

namespace iris {

namespace {

// The LLaVA path's visual FLOPs (every layer over the image tokens).
std::string llava_flops_line(VqaModel& m, const std::string& question, const VqaOptions& v, const VqaAnswer& a) {
  const LlavaConfig& c = m.model->config();
  const VisualWorkload w = visual_workload(vqa_prompt_ids(m, question, v), c.image_token_index,
                                           c.image_feature_tokens(), static_cast<int64_t>(a.tokens.size()));
  return llava_visual_flops(c.text, w).line();
}

std::string methods_line(const VqaAnswer& a, const FaithfulnessOptions& f) {
  std::string s = "methods: " + a.methods;
  char buf[200];
  if (f.var) {
    std::snprintf(buf, sizeof buf, "; VAR: %lld of %lld examined attention rows redistributed",
                  static_cast<long long>(a.var_rows_changed), static_cast<long long>(a.var_rows_examined));
    s += buf;
  }
  if (f.sgrs) {
    std::snprintf(buf, sizeof buf, "; SGRS: %lld first draws accepted, %lld redrawn, %lld fallbacks",
                  static_cast<long long>(a.sgrs.first_draw_accepted), static_cast<long long>(a.sgrs.redrawn),
                  static_cast<long long>(a.sgrs.fallbacks));
    s += buf;
  }
  return s;
}

}  // namespace

void validate_ask_options(const VlmAskOptions& o, bool visor_folder) {
  if (o.vqa.max_new_tokens < 1)
    throw ConfigError("max new tokens " + std::to_string(o.vqa.max_new_tokens) + ": must be >= 1");
  if (o.draft_chain < 0) throw ConfigError("draft chain " + std::to_string(o.draft_chain) + ": must be >= 0");
  if (o.compare && o.draft.empty()) throw ConfigError("compare needs a ViSpec draft");
  if (visor_folder && !o.draft.empty())
    throw ConfigError("a ViSpec draft runs on LLaVA folders, not on a VISOR folder");
  if (o.visor_budget < -1) throw ConfigError("VISOR budget " + std::to_string(o.visor_budget) + ": must be >= 0 (or auto)");
  if (!visor_folder && o.visor_budget >= 0)
    throw ConfigError("a VISOR budget needs a VISOR folder (iris train visor makes one)");
  if (o.vqa.faithfulness.any() || o.vqa.saliency_map) {
    if (visor_folder) throw ConfigError("VAR, LocoRE, SGRS and saliency maps run on plain LLaVA decoding, not on a VISOR folder");
    if (!o.draft.empty()) throw ConfigError("VAR, LocoRE, SGRS and saliency maps run on plain LLaVA decoding, not with a ViSpec draft");
  }
}

Image saliency_overlay(const Image& picture, const at::Tensor& map, int min_side) {
  if (!map.defined() || map.dim() != 2) throw ShapeError("saliency overlay: the map must be [rows, columns]");
  const at::Tensor m = map.detach().to(at::kCPU, at::kFloat).contiguous();
  const std::vector<float> values(m.data_ptr<float>(), m.data_ptr<float>() + m.numel());
  const Image rgb = to_rgb(picture);
  const int side = std::min(rgb.width, rgb.height);
  const int out = std::max(side, min_side);
  return heatmap_overlay(center_crop(rgb, side, side), values, static_cast<int>(m.size(0)), static_cast<int>(m.size(1)),
                         out, out);
}

VlmAsker::VlmAsker() = default;
VlmAsker::~VlmAsker() = default;
VlmAsker::VlmAsker(VlmAsker&&) noexcept = default;
VlmAsker& VlmAsker::operator=(VlmAsker&&) noexcept = default;

VqaModel* VlmAsker::model() { return visor_ ? &visor_->base : llava_.get(); }

void VlmAsker::load(const std::string& folder) {
  if (folder.empty()) throw ConfigError("no VLM folder given");
  if (folder == folder_ && (llava_ || visor_)) return;
  llava_.reset();
  visor_.reset();
  draft_.reset();
  folder_.clear();
  draft_folder_.clear();
  if (is_visor_folder(folder)) visor_ = std::make_unique<VisorModel>(VisorModel::load(folder));
  else llava_ = std::make_unique<VqaModel>(VqaModel::load(folder));
  folder_ = folder;
}

VlmAskResult VlmAsker::ask(const std::string& folder, const Image& image, const std::string& question,
                           const VlmAskOptions& o, const TextCallback& on_text) {
  if (question.find_first_not_of(" \t\r\n\v\f") == std::string::npos) throw ConfigError("the question is empty");
  validate_ask_options(o, is_visor_folder(folder));  // option errors before any weight is read
  make_sampler(o.vqa.sampling);
  load(folder);
  VlmAskResult r;
  if (visor_) {
    if (o.visor_budget > visor_->visor->max_budget())
      throw ConfigError("VISOR budget " + std::to_string(o.visor_budget) + ": this model's budgets are 0.." +
                        std::to_string(visor_->visor->max_budget()) + " (or auto)");
    VisorAskOptions vo;
    vo.vqa = o.vqa;
    vo.budget = o.visor_budget;
    const VisorAnswer a = visor_ask(*visor_, image, question, vo, on_text);
    r.answer = a.answer;
    r.visor = true;
    r.stats = {a.answer.stats.line() + ", " + a.line()};
    return r;
  }
  if (!o.draft.empty()) {
    if (!draft_ || draft_folder_ != o.draft) {
      draft_.reset();
      draft_folder_.clear();
      VispecDraft d = load_vispec_draft(o.draft);
      d->attach(llava_->model->language_model);  // a draft for another model fails here, before decoding
      draft_ = std::make_unique<VispecDraft>(std::move(d));
      draft_folder_ = o.draft;
    }
    SpeculativeAskOptions so;
    if (o.draft_chain > 0) so.tree = DraftTreeOptions::chain(o.draft_chain);
    so.compare = o.compare;
    const SpeculativeAnswer a = ask_speculative(*llava_, *draft_, image, question, o.vqa, so, on_text);
    r.answer = a.answer;
    r.speculative = true;
    r.identical = a.identical;
    r.stats = {a.answer.stats.line(), a.line()};
    return r;
  }
  r.answer = iris::ask(*llava_, image, question, o.vqa, on_text);
  r.stats = {r.answer.stats.line() + ", " + llava_flops_line(*llava_, question, o.vqa, r.answer)};
  if (r.answer.methods != "baseline") r.stats.push_back(methods_line(r.answer, o.vqa.faithfulness));
  return r;
}

}  // namespace iris
