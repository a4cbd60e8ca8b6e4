#include "pipelines/visor_training.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <ATen/core/grad_mode.h>

#include "core/error.h"
#include "core/tensor_io.h"
#include "pipelines/trainer.h"
#include "pipelines/vlm_eval.h"
#include "pipelines/vlm_training.h"
#include "world/render.h"
#include "world/rng.h"

namespace fs = std::filesystem;

namespace iris {

namespace {

std::string str(int64_t v) { return std::to_string(v); }

std::function<void(const std::string&)> log_of(const VisorTrainOptions& o) {
  if (o.log) return o.log;
  return [](const std::string& line) {
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  };
}

void check_options(const VisorTrainOptions& o) {
  auto bad = [](const std::string& what) { throw ConfigError("train visor: " + what); };
  if (o.llava_dir.empty()) bad("--from (the LLaVA folder to start from) is required");
  if (o.out_dir.empty()) bad("--out (the VISOR folder to write) is required");
  if (o.steps < 0) bad("--steps must be >= 0, found " + str(o.steps));
  if (o.batch < 1) bad("--batch must be >= 1, found " + str(o.batch));
  if (o.questions_per_image < 1) bad("--questions-per-image must be >= 1, found " + str(o.questions_per_image));
  if (o.cross_layers < 0) bad("--cross-layers must be >= 0 (0: default), found " + str(o.cross_layers));
  if (o.self_layers < -1) bad("--self-layers must be >= 0, found " + str(o.self_layers));
  if (o.router_examples < 0 || o.router_steps < 0) bad("--router-examples and --router-steps must be >= 0");
  if (o.eval_questions < 0) bad("--eval must be >= 0, found " + str(o.eval_questions));
  if (o.position_kernel < 0 || (o.position_kernel > 0 && o.position_kernel % 2 == 0))
    bad("--position-kernel must be a positive odd number (0: default), found " + str(o.position_kernel));
  if (o.lookup_weight < 0) bad("--lookup must be >= 0, found " + std::to_string(o.lookup_weight));
  if (o.lookup_block < -1) bad("--lookup-block must be >= 0 (or -1: the last), found " + str(o.lookup_block));
  if (o.max_new_tokens < 1) bad("--max-tokens must be >= 1, found " + str(o.max_new_tokens));
  if (!(o.lr > 0) || !(o.router_lr > 0)) bad("learning rates must be positive");
  if (o.describe_probability < 0 || o.describe_probability > 1) bad("describe probability must be in [0, 1]");
}

// The default layout: cross-attention in half the LM layers (rounded up), as many self-attention blocks.
VisorConfig layout_of(const VisorTrainOptions& o, const LlamaConfig& text) {
  const int64_t L = text.num_hidden_layers;
  const int64_t n_cross = o.cross_layers > 0 ? o.cross_layers : std::max<int64_t>(1, (L + 1) / 2);
  const int64_t n_self = o.self_layers >= 0 ? o.self_layers : n_cross;
  VisorConfig c = VisorConfig::uniform(L, n_cross, n_self);
  c.self_attention_intermediate_size = o.sa_intermediate;
  c.router_hidden_size = o.router_hidden;
  if (o.position_kernel > 0) c.position_conv_kernel = o.position_kernel;
  c.position_embedding = o.position_embedding;
  c.validate(text, "train visor");
  return c;
}

std::vector<int64_t> without_image_token(const std::vector<int64_t>& ids, int64_t image_token) {
  std::vector<int64_t> out;
  for (int64_t id : ids)
    if (id != image_token) out.push_back(id);
  return out;
}

void set_requires_grad(torch::nn::Module& m, bool on) {
  for (auto& p : m.parameters(true)) p.set_requires_grad(on);
}

// Everything of the LLaVA folder but its config and weights (tokenizer, preprocessor, ...).
void copy_side_files(const std::string& from, const std::string& to) {
  for (const auto& e : fs::directory_iterator(from)) {
    if (!e.is_regular_file()) continue;
    const std::string name = e.path().filename().string();
    if (name == "config.json" || name.find(".safetensors") != std::string::npos) continue;
    fs::copy_file(e.path(), fs::path(to) / name, fs::copy_options::overwrite_existing);
  }
}

void export_visor(VisorModel& m, const VisorTrainOptions& o) {
  save_visor(m.visor, read_json_file((fs::path(o.llava_dir) / "config.json").string()), o.out_dir, o.f16);
  copy_side_files(o.llava_dir, o.out_dir);
}

}  // namespace

// =============================================================================================
// Data

std::vector<VisorVqaItem> visor_vqa_items(uint64_t seed, int64_t count, world::Split split, double describe_probability,
                                          bool balance_existence, int64_t per_scene) {
  if (per_scene < 1) throw ConfigError("VISOR data: questions per image must be >= 1, found " + str(per_scene));
  std::vector<VisorVqaItem> out;
  const uint64_t base = world::hash_combine(seed, 0x5150ull);
  for (uint64_t i = 0; static_cast<int64_t>(out.size()) < count; ++i) {
    if (i > static_cast<uint64_t>(count) * 1000 + 1000)
      throw ConfigError("VISOR data: no scenes of the " + std::string(world::name(split)) + " split");
    world::Scene scene = world::sample_scene(world::sample_seed(base, i));
    if (world::scene_split(scene) != split) continue;
    world::Rng rng(world::hash_combine(scene.seed, 0x7155ull));
    world::QuestionOptions qo;
    qo.split = split;
    qo.describe = rng.chance(describe_probability);
    std::vector<world::Question> qs = world::make_questions(scene, rng, qo);
    if (balance_existence) world::balance_existence_probes(qs, rng);
    if (qs.empty()) continue;
    size_t pick = rng.below(qs.size());
    if (qo.describe)
      for (size_t c = 0; c < qs.size(); ++c)
        if (qs[c].kind == "describe") pick = c;
    const Image image = world::render_scene(scene);
    // The first question as ever (one per scene draws the same items); more drawn without
    // replacement from the rest, each its own item sharing the image.
    for (int64_t k = 0; k < per_scene && !qs.empty() && static_cast<int64_t>(out.size()) < count; ++k) {
      if (k > 0) pick = rng.below(qs.size());
      out.push_back({scene, qs[pick], image});
      qs.erase(qs.begin() + static_cast<std::ptrdiff_t>(pick));
    }
  }
  return out;
}

// =============================================================================================
// Losses and labels

at::Tensor visor_answer_loss(VisorModel& m, const std::vector<VisorVqaItem>& batch, int64_t budget,
                             double lookup_weight, int64_t lookup_block, double* lookup_mass) {
  if (batch.empty()) throw ConfigError("VISOR loss: empty batch");
  const LlavaConfig& c = m.visor->config();
  const int64_t eos = c.text.eos_token_ids.at(0);
  const int64_t B = static_cast<int64_t>(batch.size());
  std::vector<std::vector<int64_t>> seqs;
  std::vector<int64_t> prompt_lengths;
  std::vector<at::Tensor> pixels;  // one per scene: consecutive items of one scene share it
  std::vector<int64_t> image_of;
  int64_t T = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const VisorVqaItem& item = batch[i];
    if (i == 0 || item.scene.seed != batch[i - 1].scene.seed) pixels.push_back(vqa_pixels(m.base, item.image));
    image_of.push_back(static_cast<int64_t>(pixels.size()) - 1);
    std::vector<int64_t> seq = without_image_token(vqa_prompt_ids(m.base, item.question.question), c.image_token_index);
    prompt_lengths.push_back(static_cast<int64_t>(seq.size()));
    for (int id : m.base.tokenizer.encode(item.question.answer)) seq.push_back(id);
    seq.push_back(eos);
    T = std::max<int64_t>(T, static_cast<int64_t>(seq.size()));
    seqs.push_back(std::move(seq));
  }
  // Right padding (causal attention: real tokens never see it); targets -100 = no loss.
  at::Tensor ids = at::full({B, T}, eos, at::TensorOptions().dtype(at::kLong));
  at::Tensor targets = at::full({B, T}, -100, at::TensorOptions().dtype(at::kLong));
  auto id = ids.accessor<int64_t, 2>();
  auto tg = targets.accessor<int64_t, 2>();
  for (int64_t b = 0; b < B; ++b) {
    const std::vector<int64_t>& s = seqs[b];
    for (size_t k = 0; k < s.size(); ++k) id[b][k] = s[k];
    for (size_t k = static_cast<size_t>(prompt_lengths[b]); k < s.size(); ++k) tg[b][k - 1] = s[k];
  }
  at::Tensor tower;
  {
    at::NoGradGuard no_grad;  // the vision tower stays frozen
    tower = m.visor->llava->vision_features(at::cat(pixels, 0));
  }
  VisorInput in;
  in.input_ids = ids;
  in.image_features = m.visor->llava->multi_modal_projector(tower)  // [scenes, N, H] -> [B, N, H]
                          .index_select(0, at::tensor(image_of, at::kLong).to(tower.device()));
  in.prompt_lengths = at::tensor(prompt_lengths, at::TensorOptions().dtype(at::kLong));
  VisorForwardOptions fo;
  fo.budgets = {budget};
  const int64_t n_cross = static_cast<int64_t>(m.visor->visor_config().cross_attention_layers.size());
  const bool lookup = lookup_weight > 0;
  if (lookup) {
    if (lookup_block < -1 || lookup_block >= n_cross)
      throw ConfigError("VISOR lookup loss: cross-attention block " + str(lookup_block) + " is outside 0.." +
                        str(n_cross - 1) + " (or -1 for the last)");
    fo.record_cross_block = lookup_block < 0 ? n_cross - 1 : lookup_block;
  }
  const VisorOutput out = m.visor->forward(in, nullptr, fo);
  const at::Tensor& logits = out.logits;  // [B, T, V]
  at::Tensor loss = at::cross_entropy_loss(logits.reshape({B * T, -1}).to(at::kFloat),
                                           targets.view({-1}).to(logits.device()), {}, at::Reduction::Mean, -100);
  if (lookup_mass) *lookup_mass = -1;
  if (!lookup) return loss;
  // Rows: the position whose logits predict the answer's first token; mask: the items' patches.
  const int64_t N = out.cross_weights.size(2);
  const auto grid = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(N))));
  if (grid * grid != N)
    throw ShapeError("VISOR lookup loss: " + str(N) + " image tokens do not form a square patch grid");
  std::vector<int64_t> rows;
  std::vector<float> mask;
  for (int64_t b = 0; b < B; ++b) {
    const std::vector<int>& items = batch[b].question.items;
    if (items.empty()) continue;
    const std::vector<float> row = lookup_patch_row(patch_owners(batch[b].scene, grid), items);
    if (row.empty()) continue;  // items too small to own a patch
    rows.push_back(b * T + prompt_lengths[b] - 1);
    mask.insert(mask.end(), row.begin(), row.end());
  }
  if (rows.empty()) return loss;
  const at::Tensor m_rows = at::tensor(mask, at::kFloat).view({static_cast<int64_t>(rows.size()), N});
  const at::Tensor w = out.cross_weights.reshape({B * T, N}).index_select(0, at::tensor(rows, at::kLong).to(logits.device()));
  const at::Tensor on = (w.to(at::kFloat) * m_rows.to(w.device())).sum(1);  // [M]
  if (lookup_mass) *lookup_mass = on.mean().item<double>();
  return loss - lookup_weight * on.clamp_min(1e-6).log().mean();
}

namespace {

// The router's input [2H] for a prompt and its image (pooled text + pooled image at the
// router's slot), as a plain tensor (not an inference one): the router trains on it.
at::Tensor router_input_features(VisorModel& m, const std::vector<int64_t>& ids, const at::Tensor& pixels) {
  at::NoGradGuard no_grad;
  VisorInput in;
  const std::vector<int64_t> text = without_image_token(ids, m.visor->config().image_token_index);
  in.input_ids = at::tensor(text, at::TensorOptions().dtype(at::kLong)).view({1, -1});
  in.image_features = m.visor->image_features(pixels);
  VisorForwardOptions fo;
  fo.router_features_only = true;
  return m.visor->forward(in, nullptr, fo).router_features.select(0, 0).clone();
}

}  // namespace

int64_t visor_pseudo_label(VisorModel& m, const VisorVqaItem& item, int64_t max_new_tokens, at::Tensor* features,
                           VisorTrainOptions::RouterLabel rule) {
  const bool by_correctness = rule == VisorTrainOptions::RouterLabel::kCorrect;
  const std::vector<int64_t> ids = vqa_prompt_ids(m.base, item.question.question);
  const at::Tensor pixels = vqa_pixels(m.base, item.image);
  if (features) *features = router_input_features(m, ids, pixels);
  const int64_t S = m.visor->max_budget();
  GenerateOptions g;
  g.max_new_tokens = max_new_tokens;
  auto answer = [&](int64_t b) { return visor_generate(m.visor, ids, pixels, b, g).result.tokens; };
  auto right = [&](const std::vector<int64_t>& tokens) {
    return answers_match(m.base.detokenize(tokens), item.question.answer);
  };
  const std::vector<int64_t> full = answer(S);
  // METHODS.md's rule: the cheapest configuration reaching the full model's accuracy on this
  // question; when the full budget is wrong, every budget does, so the cheapest.
  if (by_correctness && !right(full)) return 0;
  for (int64_t b = 0; b < S; ++b) {
    const std::vector<int64_t> tokens = answer(b);
    if (by_correctness ? right(tokens) : tokens == full) return b;
  }
  return S;
}

// =============================================================================================
// Evaluation

std::vector<VisorEvalRow> evaluate_visor(VisorModel& m, VqaModel* llava, const std::vector<VisorVqaItem>& items,
                                         int64_t max_new_tokens) {
  std::vector<VisorEvalRow> rows;
  if (llava) {
    VisorEvalRow r{"llava", -2};
    VqaOptions vo;
    vo.max_new_tokens = max_new_tokens;
    const LlavaConfig& lc = llava->model->config();
    for (const VisorVqaItem& item : items) {
      const VqaAnswer a = ask(*llava, item.image, item.question.question, vo);
      const bool ok = answers_match(a.text, item.question.answer);
      r.correct += ok;
      r.by_kind[item.question.kind].first += ok;
      ++r.by_kind[item.question.kind].second;
      const VisualWorkload w = visual_workload(vqa_prompt_ids(*llava, item.question.question, vo), lc.image_token_index,
                                               lc.image_feature_tokens(), static_cast<int64_t>(a.tokens.size()));
      r.mean_visual_flops += llava_visual_flops(lc.text, w).total();
      ++r.asked;
    }
    rows.push_back(r);
  }
  const int64_t S = m.visor->max_budget();
  for (int64_t b = 0; b <= S + (S > 0 ? 1 : 0); ++b) {
    const int64_t budget = b <= S ? b : -1;
    VisorEvalRow r{budget < 0 ? "router" : "budget " + str(budget), budget};
    if (budget < 0) r.chosen.assign(static_cast<size_t>(S + 1), 0);
    VisorAskOptions o;
    o.vqa.max_new_tokens = max_new_tokens;
    o.budget = budget;
    for (const VisorVqaItem& item : items) {
      const VisorAnswer a = visor_ask(m, item.image, item.question.question, o);
      const bool ok = answers_match(a.answer.text, item.question.answer);
      r.correct += ok;
      r.by_kind[item.question.kind].first += ok;
      ++r.by_kind[item.question.kind].second;
      r.mean_visual_flops += a.flops.total();
      if (budget < 0) ++r.chosen[static_cast<size_t>(a.budget)];
      ++r.asked;
    }
    rows.push_back(r);
  }
  for (VisorEvalRow& r : rows)
    if (r.asked) r.mean_visual_flops /= static_cast<double>(r.asked);
  return rows;
}

std::string format_visor_eval(const std::vector<VisorEvalRow>& rows) {
  double llava = 0;
  for (const VisorEvalRow& r : rows)
    if (r.budget == -2) llava = r.mean_visual_flops;
  std::string out = "path        accuracy        visual MFLOPs/answer   saving vs LLaVA\n";
  char buf[200];
  for (const VisorEvalRow& r : rows) {
    std::snprintf(buf, sizeof(buf), "%-10s  %4lld/%-4lld %5.1f%%  %12.2f           ", r.name.c_str(),
                  static_cast<long long>(r.correct), static_cast<long long>(r.asked), 100.0 * r.accuracy(),
                  r.mean_visual_flops / 1e6);
    out += buf;
    if (llava > 0 && r.mean_visual_flops > 0) {
      std::snprintf(buf, sizeof(buf), "%.2fx", llava / r.mean_visual_flops);
      out += buf;
    } else {
      out += "-";
    }
    if (!r.chosen.empty()) {
      out += "  (chosen:";
      for (size_t b = 0; b < r.chosen.size(); ++b) out += " " + str(static_cast<int64_t>(b)) + "=" + str(r.chosen[b]);
      out += ")";
    }
    out += "\n";
  }
  // By question kind: which kinds a gap between the paths comes from.
  std::map<std::string, int64_t> kinds;
  for (const VisorEvalRow& r : rows)
    for (const auto& [k, cn] : r.by_kind) kinds[k] = std::max(kinds[k], cn.second);
  if (!kinds.empty()) {
    out += "by kind (% right)";
    for (const auto& [k, n] : kinds) {
      std::snprintf(buf, sizeof(buf), " %9s", (k.substr(0, 6) + "/" + str(n)).c_str());
      out += buf;
    }
    out += "\n";
    for (const VisorEvalRow& r : rows) {
      std::snprintf(buf, sizeof(buf), "  %-15s", r.name.c_str());
      out += buf;
      for (const auto& [k, n] : kinds) {
        const auto it = r.by_kind.find(k);
        if (it == r.by_kind.end() || it->second.second == 0) {
          out += "         -";
        } else {
          std::snprintf(buf, sizeof(buf), " %9.1f", 100.0 * static_cast<double>(it->second.first) / it->second.second);
          out += buf;
        }
      }
      out += "\n";
    }
  }
  return out;
}

Json visor_eval_json(const std::vector<VisorEvalRow>& rows) {
  Json j = Json::array();
  for (const VisorEvalRow& r : rows) {
    Json row = {{"name", r.name}, {"budget", r.budget}, {"asked", r.asked}, {"correct", r.correct},
                {"accuracy", r.accuracy()}, {"mean_visual_flops", r.mean_visual_flops}};
    if (!r.chosen.empty()) row["chosen"] = r.chosen;
    Json kinds = Json::object();
    for (const auto& [k, cn] : r.by_kind) kinds[k] = {{"correct", cn.first}, {"asked", cn.second}};
    row["by_kind"] = kinds;
    j.push_back(row);
  }
  return j;
}

// =============================================================================================
// The run

VisorTrainReport train_visor(const VisorTrainOptions& o) {
  check_options(o);
  const auto log = log_of(o);
  const std::string work = o.work_dir;
  auto work_path = [&](const std::string& name) { return work.empty() ? std::string() : (fs::path(work) / name).string(); };
  VisorTrainReport report;

  // ---- 1. init ----
  VisorModel m{VqaModel::load(o.llava_dir), nullptr};
  const LlamaConfig& text = m.base.model->config().text;
  m.visor = VisorForConditionalGeneration(m.base.model, layout_of(o, text));
  m.visor->init_from_language_model(o.seed);
  const VisorConfig& vc = m.visor->visor_config();
  const int64_t S = vc.num_self();
  if (vc.position_embedding) {
    // A sin-cos position table at the RMS of the projected image tokens (VisorPositionConv::init_sincos).
    std::vector<at::Tensor> pixels;
    for (const VisorVqaItem& item : visor_vqa_items(world::hash_combine(o.seed, 0x9e0ull), 8, world::Split::Train, 0.0))
      pixels.push_back(vqa_pixels(m.base, item.image));
    at::NoGradGuard no_grad;
    const double rms = m.visor->image_features(at::cat(pixels, 0)).to(at::kFloat).pow(2).mean().sqrt().item<double>();
    m.visor->visor->position_conv->init_sincos(rms);
    log("position embedding: sin-cos table at the image tokens' RMS " + std::to_string(rms));
  }
  {
    std::string line = "VISOR layout: " + str(text.num_hidden_layers) + " text layers, cross-attention at slots";
    for (int64_t s : vc.cross_attention_layers) line += " " + str(s);
    line += ", self-attention at slots";
    for (int64_t s : vc.self_attention_layers) line += " " + str(s);
    log(line + " (budgets 0.." + str(S) + ")");
  }

  // ---- 2. universal training ----
  set_requires_grad(*m.visor, false);
  set_requires_grad(*m.visor->visor, true);
  if (m.visor->visor->router) set_requires_grad(*m.visor->visor->router, false);
  set_requires_grad(*m.visor->llava->multi_modal_projector, true);
  if (o.train_language_model) set_requires_grad(*m.visor->language_model, true);
  {
    TrainerOptions t;
    t.name = "visor";
    t.steps = o.steps;
    t.lr = o.lr;
    t.warmup_steps = std::min(o.warmup, o.steps);
    t.seed = o.seed;
    t.log_every = o.log_every;
    t.checkpoint_every = o.checkpoint_every;
    t.checkpoint_dir = work_path("universal");
    t.log = log;
    t.progress = o.progress;
    Trainer trainer(named_trainable_parameters(*m.visor), t);
    if (trainer.resume()) log("resumed universal training at step " + str(trainer.current_step()));
    double mass_sum = 0;
    int64_t mass_n = 0;
    trainer.run([&](int64_t step, at::Generator& gen) {
      const int64_t budget = at::randint(0, S + 1, {1}, gen).item<int64_t>();
      const auto batch = visor_vqa_items(trainer.step_seed(), o.batch * o.questions_per_image, world::Split::Train,
                                         o.describe_probability, o.balance_existence, o.questions_per_image);
      double mass = -1;
      at::Tensor loss = visor_answer_loss(m, batch, budget, o.lookup_weight, o.lookup_block, &mass);
      if (mass >= 0) mass_sum += mass, ++mass_n;
      if (mass_n > 0 && o.checkpoint_every > 0 && (step + 1) % o.checkpoint_every == 0) {
        log("[visor] lookup head's weight on the answers' patches: " + str(std::lround(100 * mass_sum / mass_n)) + "%");
        mass_sum = 0, mass_n = 0;
      }
      report.universal_losses.push_back(loss.item<double>());
      return loss;
    });
    report.universal_step = trainer.current_step();
  }
  set_requires_grad(*m.visor, false);
  m.visor->eval();
  export_visor(m, o);
  if (!report.universal_losses.empty() && !work.empty()) {
    // The universal model moved: labels and router made from the old one are stale.
    fs::remove(work_path("router_data.safetensors"));
    fs::remove(work_path("router_data-correct.safetensors"));
    fs::remove_all(work_path("router"));
  }

  // ---- 3. pseudo-labels, 4. router ----
  if (S > 0 && o.router_examples > 0) {
    at::Tensor features, labels;  // [R, 2H] float, [R] int64
    const bool by_correctness = o.router_label == VisorTrainOptions::RouterLabel::kCorrect;
    // One file per rule, so that a rerun with the other rule labels afresh.
    const std::string data_path = work_path(by_correctness ? "router_data-correct.safetensors" : "router_data.safetensors");
    if (!data_path.empty() && fs::exists(data_path)) {
      const TensorStore store = TensorStore::open(data_path);
      features = read_tensor(store, "features");
      labels = read_tensor(store, "labels");
      if (labels.numel() != o.router_examples || features.size(0) != labels.numel()) features = labels = at::Tensor();
      else log("read " + str(labels.numel()) + " router labels from " + data_path);
    }
    if (!labels.defined()) {
      log("labelling " + str(o.router_examples) + " questions: " +
          (by_correctness ? "cheapest budget as right as the full budget" : "cheapest budget keeping the full budget's answer"));
      if (!work.empty()) fs::remove_all(work_path("router"));  // a router trained on other labels is stale
      const auto items = visor_vqa_items(world::hash_combine(o.seed, 0x7072ull), o.router_examples, world::Split::Train,
                                         o.describe_probability);
      std::vector<at::Tensor> rows;
      std::vector<int64_t> ls;
      for (size_t i = 0; i < items.size(); ++i) {
        o.progress.check_cancel();
        at::Tensor f;
        ls.push_back(visor_pseudo_label(m, items[i], o.max_new_tokens, &f, o.router_label));
        rows.push_back(f);
      }
      features = at::stack(rows);
      labels = at::tensor(ls, at::TensorOptions().dtype(at::kLong));
      if (!data_path.empty()) {
        fs::create_directories(work);
        write_safetensors(data_path, {{"features", features}, {"labels", labels}});
      }
    }
    report.label_counts.assign(static_cast<size_t>(S + 1), 0);
    for (int64_t i = 0; i < labels.numel(); ++i) ++report.label_counts[static_cast<size_t>(labels[i].item<int64_t>())];
    std::string counts = "pseudo-labels:";
    for (int64_t b = 0; b <= S; ++b) counts += " budget " + str(b) + " x" + str(report.label_counts[b]);
    log(counts);

    VisorRouter router = m.visor->visor->router;
    set_requires_grad(*router, true);
    TrainerOptions t;
    t.name = "router";
    t.steps = o.router_steps;
    t.lr = o.router_lr;
    t.weight_decay = 0.0;
    t.seed = o.seed + 1;
    t.log_every = o.log_every;
    t.checkpoint_every = o.checkpoint_every;
    t.checkpoint_dir = work_path("router");
    t.log = log;
    t.progress = o.progress;
    Trainer trainer(named_trainable_parameters(*router, "visor.router."), t);
    if (trainer.resume()) log("resumed router training at step " + str(trainer.current_step()));
    trainer.run([&](int64_t, at::Generator&) {
      at::Tensor loss = at::cross_entropy_loss(router(features), labels);
      report.router_losses.push_back(loss.item<double>());
      return loss;
    });
    set_requires_grad(*router, false);
    {
      at::NoGradGuard no_grad;
      report.router_train_accuracy = router(features).argmax(-1).eq(labels).to(at::kDouble).mean().item<double>();
    }
    log("router accuracy on its pseudo-labels: " + std::to_string(report.router_train_accuracy));
    export_visor(m, o);
  }
  report.output = o.out_dir;
  log("wrote " + o.out_dir);

  // ---- 5. evaluation ----
  if (o.eval_questions > 0) {
    log("evaluating on " + str(o.eval_questions) + " held-out questions");
    const auto items = visor_vqa_items(world::hash_combine(o.seed, 0xe7a1ull), o.eval_questions,
                                       world::Split::HeldOut, 0.0);
    VqaModel llava = VqaModel::load(o.llava_dir);
    report.eval = evaluate_visor(m, &llava, items, o.max_new_tokens);
    log(format_visor_eval(report.eval));
    const fs::path p = fs::path(o.out_dir) / "visor_eval.json";
    std::ofstream f(p);
    if (!(f << visor_eval_json(report.eval).dump(2) << "\n")) throw IoError(p.string() + ": cannot write");
  }
  return report;
}

}  // namespace iris
