// `iris train vlm` (pipelines/vlm_training.h) on test-sized models: the written folder loads with
// VqaModel::load and answers; the first turn is tokenized exactly like vqa_prompt_ids; an
// interrupted run resumes to the same weights; the loss falls on a fixed batch; bad inputs give
// clear errors.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/safetensors.h"
#include "core/tensor_io.h"
#include "diffusion/clip.h"
#include "pipelines/random_model.h"
#include "pipelines/starter_pack.h"
#include "pipelines/vlm_training.h"
#include "pipelines/vqa.h"
#include "test_util.h"
#include "world/render.h"
#include "world/scene.h"

namespace fs = std::filesystem;
using namespace iris;

namespace {

// A random test-sized CLIP vision encoder folder, like the pack's image_encoder/.
std::string make_encoder(const fs::path& dir, uint64_t seed = 3) {
  const Json cfg = starter_vision_config(/*tiny=*/true);
  torch::NoGradGuard no_grad;
  at::manual_seed(seed);
  ClipVisionModel enc(ClipVisionConfig::from_json(cfg, "test encoder"), true);
  write_json((dir / "config.json").string(), cfg);
  write_weights((dir / "model.safetensors").string(), *enc, false);
  write_json((dir / "preprocessor_config.json").string(),
             {{"size", {{"shortest_edge", 64}}}, {"crop_size", {{"height", 64}, {"width", 64}}}, {"resample", 3}});
  return dir.string();
}

std::string make_tokenizer(const fs::path& path) {
  std::ofstream f(path, std::ios::binary);
  f << tiny_sentencepiece_model();
  return path.string();
}

std::string read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

VlmTrainOptions tiny_options(const fs::path& root, int64_t steps) {
  VlmTrainOptions o;
  o.encoder_dir = make_encoder(root / "encoder");
  o.tokenizer_path = make_tokenizer(root / "tok.model");
  o.out_dir = (root / "out").string();
  o.work_dir = (root / "work").string();
  o.tiny = true;
  o.seed = 7;
  for (VlmStageSchedule* s : {&o.augment, &o.text, &o.align, &o.finetune}) s->steps = steps;
  o.log = [](const std::string&) {};
  return o;
}

// The error a run stops with ("(no error)" when it finishes).
std::string message_of(const VlmTrainOptions& x) {
  try {
    train_vlm(x);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

world::Question question(const std::string& q, const std::string& a) {
  world::Question x;
  x.kind = "color";
  x.question = q;
  x.answer = a;
  return x;
}

}  // namespace

TEST(VlmTraining, TinyFtzRunWritesAFolderThatLoadsAndAnswers) {
  const fs::path root = testing_util::scratch_dir();
  VlmTrainOptions o = tiny_options(root, 2);
  o.ftz = true;
  o.check = 3;
  const VlmTrainReport r = train_vlm(o);
  ASSERT_EQ(r.stages.size(), 4u);
  EXPECT_EQ(r.stages[0].name, "augment");
  for (const VlmStageReport& s : r.stages) {
    EXPECT_FALSE(s.skipped) << s.name;
    EXPECT_EQ(s.final_step, 2) << s.name;
    for (double l : s.losses) EXPECT_TRUE(std::isfinite(l)) << s.name;
  }
  EXPECT_EQ(r.check.questions, 3);

  for (const char* f : {"config.json", "model.safetensors", "tokenizer.model", "preprocessor_config.json",
                        "generation_config.json"})
    EXPECT_TRUE(fs::is_regular_file(root / "out" / f)) << f;
  const Json cfg = read_json_file((root / "out/config.json").string());
  const VlmVocab vocab = VlmVocab::load(o.tokenizer_path);
  EXPECT_EQ(cfg["image_token_index"].get<int64_t>(), static_cast<int64_t>(vocab.tokenizer.vocab_size()));
  EXPECT_EQ(cfg["text_config"]["vocab_size"].get<int64_t>(), vocab.vocab_size);
  EXPECT_TRUE(cfg.contains("ftz"));
  const TensorStore store = TensorStore::open((root / "out/model.safetensors").string());
  EXPECT_EQ(store.info("multi_modal_projector.linear_1.weight").dtype, DType::F16);
  bool has_ftz = false;
  for (const std::string& n : store.names()) has_ftz = has_ftz || n.rfind("ftz.augmenting_encoder.", 0) == 0;
  EXPECT_TRUE(has_ftz);

  VqaModel m = VqaModel::load((root / "out").string());
  EXPECT_TRUE(static_cast<bool>(m.model->ftz));
  VqaOptions vo;
  vo.max_new_tokens = 4;
  const VqaAnswer a = ask(m, world::render_scene(world::sample_scene(1)), "What color is the circle?", vo);
  EXPECT_GE(a.stats.generated_tokens, 1);
  EXPECT_EQ(a.stats.prompt_tokens, a.stats.text_tokens - 1 + m.model->config().image_feature_tokens());
}

TEST(VlmTraining, AugmentWithPositionAndDenseLabelsTrainsAndShips) {
  const fs::path root = testing_util::scratch_dir();
  VlmTrainOptions o = tiny_options(root, 0);
  o.ftz = true;
  o.sizes.aug_position = true;
  o.augment_labels = true;
  o.augment.steps = 30;
  o.augment.batch = 4;
  o.fixed_batch = true;
  const VlmTrainReport r = train_vlm(o);
  ASSERT_EQ(r.stages[0].name, "augment");
  const std::vector<double>& l = r.stages[0].losses;
  ASSERT_EQ(l.size(), 30u);
  // Reconstruction + 0.1 x three cross-entropies: the label terms dominate at the start and
  // fall on a fixed batch.
  EXPECT_GT(l.front(), 0.1 * std::log(4.0));
  EXPECT_LT(l.back(), 0.8 * l.front());
  const Json cfg = read_json_file((root / "out/config.json").string());
  EXPECT_TRUE(cfg["ftz"]["augmenting_encoder"]["position_embedding"].get<bool>());
  const TensorStore store = TensorStore::open((root / "out/model.safetensors").string());
  EXPECT_TRUE(store.contains("ftz.augmenting_encoder.position_embedding"));
  // The label heads are training aids: not in the exported model.
  for (const std::string& n : store.names()) EXPECT_EQ(n.find("_head"), std::string::npos) << n;
  VqaModel m = VqaModel::load((root / "out").string());
  VqaOptions vo;
  vo.max_new_tokens = 2;
  EXPECT_GE(ask(m, world::render_scene(world::sample_scene(2)), "What color is the circle?", vo).stats.generated_tokens, 1);
}

TEST(VlmTraining, FirstTurnIsTokenizedLikeVqaPromptIds) {
  const fs::path root = testing_util::scratch_dir();
  write_random_llava((root / "llava").string(), tiny_llava_spec());
  const VqaModel m = VqaModel::load((root / "llava").string());
  const VlmVocab v = VlmVocab::load((root / "llava/tokenizer.model").string());
  ASSERT_EQ(v.image_token, m.model->config().image_token_index);

  const std::vector<world::Question> qs = {question("What color is the circle?", "red"),
                                           question("Is there a blue square?", "no")};
  const VlmSequence s = vlm_image_sequence(v, qs, 200);
  const std::vector<int64_t> prompt = vqa_prompt_ids(m, qs[0].question);
  ASSERT_GT(s.ids.size(), prompt.size());
  EXPECT_EQ(std::vector<int64_t>(s.ids.begin(), s.ids.begin() + static_cast<long>(prompt.size())), prompt);
  EXPECT_EQ(s.ids[static_cast<size_t>(s.image_position)], v.image_token);
  EXPECT_EQ(s.turns, 2);

  // First answer + EOS are targets, the prompt is not; then "USER: q ASSISTANT:" (no target)
  // and the second answer + EOS (targets).
  std::vector<int64_t> want = prompt;
  std::vector<uint8_t> target(prompt.size(), 0);
  auto add = [&](std::vector<int64_t> ids, bool t) {
    want.insert(want.end(), ids.begin(), ids.end());
    target.insert(target.end(), ids.size(), t ? 1 : 0);
  };
  std::vector<int64_t> a1 = v.encode("red"), a2 = v.encode("no");
  a1.push_back(v.eos);
  a2.push_back(v.eos);
  add(a1, true);
  add(v.encode("USER: Is there a blue square? ASSISTANT:"), false);
  add(a2, true);
  EXPECT_EQ(s.ids, want);
  EXPECT_EQ(s.target, target);

  // Too little room: the second turn is left out, the first answer kept.
  const VlmSequence short_seq = vlm_image_sequence(v, qs, static_cast<int64_t>(prompt.size() + a1.size()));
  EXPECT_EQ(short_seq.turns, 1);
  EXPECT_EQ(short_seq.ids.size(), prompt.size() + a1.size());

  // Isolated turns: "<s> USER: <image>" once, then each question as its first turn would go on
  // after the image; turn_of marks the prefix 0 and each turn's tokens with its number.
  const VlmSequence iso = vlm_image_sequence(v, qs, 200, /*isolated=*/true);
  ASSERT_EQ(iso.turns, 2);
  ASSERT_EQ(iso.turn_of.size(), iso.ids.size());
  EXPECT_EQ(iso.image_position, s.image_position);
  const auto after_image = [&](const std::string& q) {
    const std::vector<int64_t> p = vqa_prompt_ids(m, q);
    return std::vector<int64_t>(p.begin() + s.image_position + 1, p.end());
  };
  std::vector<int64_t> iso_want(prompt.begin(), prompt.begin() + s.image_position + 1);
  std::vector<int32_t> turn_want(iso_want.size(), 0);
  for (int k = 0; k < 2; ++k) {
    std::vector<int64_t> turn = after_image(qs[static_cast<size_t>(k)].question);
    const std::vector<int64_t>& a = k == 0 ? a1 : a2;
    turn.insert(turn.end(), a.begin(), a.end());
    iso_want.insert(iso_want.end(), turn.begin(), turn.end());
    turn_want.insert(turn_want.end(), turn.size(), k + 1);
  }
  EXPECT_EQ(iso.ids, iso_want);
  EXPECT_EQ(iso.turn_of, turn_want);
  EXPECT_EQ(std::count(iso.target.begin(), iso.target.end(), 1), static_cast<long>(a1.size() + a2.size()));
  EXPECT_TRUE(s.turn_of.empty());

  // Text sequences: the context where the image goes, loss on every token after BOS.
  const VlmSequence t = vlm_text_sequence(v, "A red circle.", qs, 200);
  EXPECT_EQ(t.image_position, -1);
  EXPECT_EQ(std::count(t.ids.begin(), t.ids.end(), v.image_token), 0);
  EXPECT_EQ(t.target[0], 0);
  EXPECT_EQ(std::count(t.target.begin(), t.target.end(), 1), static_cast<long>(t.ids.size()) - 1);
}

TEST(VlmTraining, InterruptedRunResumesToTheSameWeights) {
  const fs::path root = testing_util::scratch_dir();
  VlmTrainOptions a = tiny_options(root / "a", 3);
  a.checkpoint_every = 1;
  train_vlm(a);

  VlmTrainOptions b = tiny_options(root / "b", 3);
  b.checkpoint_every = 1;
  int steps = 0;
  b.progress.on_step = [&](int, int, const std::string&) { ++steps; };
  b.progress.should_cancel = [&] { return steps >= 4; };  // stops inside align (text 3 + 1)
  EXPECT_THROW(train_vlm(b), Cancelled);
  EXPECT_FALSE(fs::exists(root / "b/out/model.safetensors"));

  b.progress = Progress();
  const VlmTrainReport r = train_vlm(b);
  ASSERT_EQ(r.stages.size(), 3u);
  EXPECT_TRUE(r.stages[0].skipped);  // text was done
  EXPECT_EQ(r.stages[1].start_step, 1);
  EXPECT_EQ(r.stages[1].final_step, 3);
  EXPECT_EQ(r.stages[2].start_step, 0);
  EXPECT_EQ(read_bytes(root / "a/out/model.safetensors"), read_bytes(root / "b/out/model.safetensors"));

  // Everything done: a third run skips every stage and writes the same folder.
  const VlmTrainReport again = train_vlm(b);
  for (const VlmStageReport& s : again.stages) EXPECT_TRUE(s.skipped) << s.name;
  EXPECT_EQ(read_bytes(root / "a/out/model.safetensors"), read_bytes(root / "b/out/model.safetensors"));
}

TEST(VlmTraining, LossFallsOnAFixedBatch) {
  const fs::path root = testing_util::scratch_dir();
  VlmTrainOptions o = tiny_options(root, 0);
  o.work_dir.clear();
  o.fixed_batch = true;
  o.finetune.steps = 15;
  o.finetune.lr = 5e-3;
  o.finetune.warmup = 0;
  const VlmTrainReport r = train_vlm(o);
  const std::vector<double>& l = r.stages.back().losses;
  ASSERT_EQ(l.size(), 15u);
  EXPECT_LT(l.back(), 0.5 * l.front()) << "first " << l.front() << " last " << l.back();
}

TEST(VlmTraining, BadInputsFailWithClearErrors) {
  const fs::path root = testing_util::scratch_dir();
  VlmTrainOptions o = tiny_options(root, 1);
  {
    VlmTrainOptions x = o;
    x.encoder_dir = (root / "no_encoder").string();
    EXPECT_THROW(train_vlm(x), IoError);
    EXPECT_NE(message_of(x).find("no_encoder: no such vision encoder folder"), std::string::npos) << message_of(x);
  }
  {
    VlmTrainOptions x = o;
    x.tokenizer_path = (root / "missing.model").string();
    EXPECT_THROW(train_vlm(x), IoError);
    EXPECT_NE(message_of(x).find("missing.model: no such tokenizer file"), std::string::npos) << message_of(x);
  }
  {
    VlmTrainOptions x = o;
    x.tokenizer_path = (root / "bad.model").string();
    std::ofstream(x.tokenizer_path) << "not a sentencepiece model";
    EXPECT_THROW(train_vlm(x), FormatError);
  }
  {
    // A work folder made with other sizes is refused, naming the file.
    VlmTrainOptions x = o;
    for (VlmStageSchedule* s : {&x.augment, &x.text, &x.align, &x.finetune}) s->steps = 0;
    train_vlm(x);
    x.sizes.hidden = 32;
    EXPECT_THROW(train_vlm(x), ConfigError);
    EXPECT_NE(message_of(x).find("vlm_run.json"), std::string::npos) << message_of(x);
  }
  {
    // Dense labels on frozen vision features could not change them: refused.
    VlmTrainOptions x = o;
    x.finetune_labels = 0.5;
    EXPECT_THROW(train_vlm(x), ConfigError);
    EXPECT_NE(message_of(x).find("only with train_vision"), std::string::npos) << message_of(x);
    x.train_vision = true;
    x.finetune_labels = -1;
    EXPECT_NE(message_of(x).find("must be >= 0"), std::string::npos) << message_of(x);
  }
  {
    // Labels on a patch grid the 64-pixel scenes do not split into (48 / 16 = 3): refused
    // before any stage runs.
    VlmTrainOptions x = o;
    x.train_vision = true;
    x.finetune_labels = 0.5;
    const fs::path dir = root / "encoder48";
    fs::create_directories(dir);
    Json cfg = starter_vision_config(/*tiny=*/true);
    cfg["image_size"] = 48;
    torch::NoGradGuard no_grad;
    ClipVisionModel enc(ClipVisionConfig::from_json(cfg, "encoder48"), true);
    write_json((dir / "config.json").string(), cfg);
    write_weights((dir / "model.safetensors").string(), *enc, false);
    x.encoder_dir = dir.string();
    x.work_dir = (root / "work48").string();
    EXPECT_THROW(train_vlm(x), ConfigError);
    EXPECT_NE(message_of(x).find("3x3 whole patches"), std::string::npos) << message_of(x);
    EXPECT_FALSE(fs::exists(root / "work48" / "text")) << "no stage ran";
  }
}

TEST(VlmTraining, FinetuneWithDenseLabelsMovesTheVisionTower) {
  const fs::path root = testing_util::scratch_dir();
  VlmTrainOptions o = tiny_options(root, 0);
  o.train_vision = true;
  o.finetune_labels = 1.0;
  o.finetune.steps = 3;
  o.finetune.warmup = 0;
  o.finetune.lr = 1e-2;
  o.fixed_batch = true;
  const VlmTrainReport r = train_vlm(o);
  ASSERT_EQ(r.stages.back().name, "finetune");
  ASSERT_EQ(r.stages.back().losses.size(), 3u);
  // The loss carries the three label cross-entropies (~log 10 + log 6 + log 4 nats at the start).
  EXPECT_GT(r.stages.back().losses.front(), 4.0);
  // The exported tower differs from the encoder it started from; no label head is exported.
  const TensorStore enc = TensorStore::open((fs::path(o.encoder_dir) / "model.safetensors").string());
  const TensorStore out = TensorStore::open((root / "out/model.safetensors").string());
  for (const std::string& n : out.names()) EXPECT_EQ(n.find("_head"), std::string::npos) << n;
  // (The tiny tower's features are hidden_states[-2] of 1 layer: its embeddings.)
  const std::string w = "vision_model.embeddings.patch_embedding.weight";
  ASSERT_TRUE(enc.contains(w)) << "encoder names changed";
  ASSERT_TRUE(out.contains("vision_tower." + w));
  EXPECT_FALSE(at::allclose(read_tensor(enc, w), read_tensor(out, "vision_tower." + w), 1e-3, 1e-3));
}

// --paraphrase rewords the text stage's contexts (every synonym at p = 1, answers untouched);
// --finetune-text turns that share of the fine-tune's steps into text steps, which leave the
// vision tower alone; both may join a fine-tune already under way (a warm restart), and a
// change of either is refused, as are values out of range.
TEST(VlmTraining, ParaphrasedTextAndTextStepsInTheFinetune) {
  const fs::path root = testing_util::scratch_dir();
  VlmTrainOptions o = tiny_options(root, 0);
  o.text.steps = 1;
  o.paraphrase = 1.0;
  std::string example;
  o.log = [&](const std::string& line) {
    if (line.rfind("[text] example: ", 0) == 0) example = line;
  };
  train_vlm(o);
  ASSERT_FALSE(example.empty());
  // The context is the first turn's text, up to the first newline (logged as "|").
  const std::string context = example.substr(0, example.find('|'));
  for (const char* w : {" large ", " small ", " medium ", " shows ", " drawn ", " objects ", " raising "})
    EXPECT_EQ(context.find(w), std::string::npos) << w << " in " << context;
  bool reworded = false;  // and some synonym is there (this seed's context is a description)
  for (const char* w : {" big ", " huge ", " little ", " tiny ", "-sized ", " things ", " shapes ", " rendered ",
                        " painted ", " contains ", " displays ", " depicts ", " located ", " placed ", " positioned ",
                        " situated "})
    reworded = reworded || context.find(w) != std::string::npos;
  EXPECT_TRUE(reworded) << context;

  // All fine-tune steps text steps: the trainable tower does not move; image steps move it.
  const TensorStore enc = TensorStore::open((fs::path(o.encoder_dir) / "model.safetensors").string());
  const std::string w = "vision_model.embeddings.patch_embedding.weight";
  auto tower_moved = [&](double share, const std::string& name) {
    VlmTrainOptions x = tiny_options(root, 0);
    x.work_dir = (root / name).string();
    x.out_dir = (root / (name + "-out")).string();
    x.train_vision = true;
    x.finetune.steps = 3;
    x.finetune.warmup = 0;
    x.finetune.lr = 1e-2;
    x.finetune_text_share = share;
    train_vlm(x);
    const TensorStore out = TensorStore::open((root / (name + "-out") / "model.safetensors").string());
    return !at::allclose(read_tensor(enc, w), read_tensor(out, "vision_tower." + w), 1e-3, 1e-3);
  };
  EXPECT_FALSE(tower_moved(0.999999, "all-text"));
  EXPECT_TRUE(tower_moved(0.0, "all-image"));

  // Joining a fine-tune under way, then changing the mix.
  VlmTrainOptions j = tiny_options(root, 0);
  j.work_dir = (root / "join").string();
  j.finetune.steps = 1;
  train_vlm(j);
  j.finetune.steps = 2;
  j.paraphrase = 0.5;
  j.finetune_text_share = 0.2;
  EXPECT_NO_THROW(train_vlm(j));
  j.finetune.steps = 3;
  j.finetune_text_share = 0.3;
  EXPECT_THROW(train_vlm(j), ConfigError);

  VlmTrainOptions bad = tiny_options(root, 0);
  bad.work_dir.clear();
  bad.paraphrase = 1.5;
  EXPECT_THROW(train_vlm(bad), ConfigError);
  bad.paraphrase = 0;
  bad.finetune_text_share = 1.0;
  EXPECT_THROW(train_vlm(bad), ConfigError);
}

// The vision stage (vision_steps > 0) trains the tower alone on dense patch labels: its loss
// falls on a fixed batch, the exported tower moved, no head is exported, the LM is untouched,
// the log reports the read-out accuracy, and a rerun with more steps continues the stage.
TEST(VlmTraining, VisionStageTrainsTheTowerOnPatchLabels) {
  const fs::path root = testing_util::scratch_dir();
  VlmTrainOptions o = tiny_options(root, 0);
  o.vision.steps = 12;
  o.vision.lr = 1e-2;
  o.vision.warmup = 0;
  o.fixed_batch = true;
  o.checkpoint_every = 4;
  std::vector<std::string> lines;
  o.log = [&](const std::string& s) { lines.push_back(s); };
  const VlmTrainReport r = train_vlm(o);
  ASSERT_EQ(r.stages.front().name, "vision");
  const std::vector<double>& L = r.stages.front().losses;
  ASSERT_EQ(L.size(), 12u);
  EXPECT_LT(L.back(), 0.8 * L.front()) << "the label loss falls on a fixed batch";
  int reports = 0;
  for (const std::string& l : lines) reports += l.find("[vision] patch labels read") != std::string::npos;
  EXPECT_EQ(reports, 3);

  const TensorStore enc = TensorStore::open((fs::path(o.encoder_dir) / "model.safetensors").string());
  const TensorStore out = TensorStore::open((root / "out/model.safetensors").string());
  for (const std::string& n : out.names()) EXPECT_EQ(n.find("_head"), std::string::npos) << n;
  const std::string w = "vision_model.embeddings.patch_embedding.weight";
  EXPECT_FALSE(at::allclose(read_tensor(enc, w), read_tensor(out, "vision_tower." + w), 1e-3, 1e-3));
  EXPECT_EQ(read_json_file((root / "work/vlm_run.json").string()).value("vision_batch", 0), 4) << "tiny image batch";

  // More steps later: the stage resumes where it stopped.
  o.vision.steps = 14;
  const VlmTrainReport r2 = train_vlm(o);
  EXPECT_EQ(r2.stages.front().start_step, 12);
  EXPECT_EQ(r2.stages.front().final_step, 14);
}

// --scene-labels: the vision stage also reads each scene's style and background from every
// patch (reported with the object labels); without a stage to train them they are refused.
TEST(VlmTraining, SceneLabelsJoinTheVisionStage) {
  const fs::path root = testing_util::scratch_dir();
  VlmTrainOptions o = tiny_options(root, 0);
  o.scene_labels = true;
  try {
    train_vlm(o);
    ADD_FAILURE() << "scene labels with nothing to train them: accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("scene_labels"), std::string::npos) << e.what();
  }
  o.vision.steps = 4;
  o.vision.lr = 1e-2;
  o.vision.warmup = 0;
  o.fixed_batch = true;
  o.checkpoint_every = 4;
  std::string report;
  o.log = [&](const std::string& s) {
    if (s.find("[vision] patch labels read") != std::string::npos) report = s;
  };
  const VlmTrainReport r = train_vlm(o);
  EXPECT_NE(report.find("style "), std::string::npos) << report;
  EXPECT_NE(report.find("background "), std::string::npos) << report;
  // Five cross-entropies at the start: colour (10 classes), shape (6), size (4), style (4),
  // background (4): about 2.3 + 1.8 + 1.4 + 1.4 + 1.4 nats.
  EXPECT_GT(r.stages.front().losses.front(), 7.0);
  EXPECT_EQ(read_json_file((root / "work/vlm_run.json").string()).value("scene_labels", false), true);
}

// --grid-steps: the LM learns to answer from the symbolic image (the loss falls on a fixed
// batch, the answer-token accuracy is reported, the position table is checkpointed so a rerun
// skips the stage); align then adds the projected tokens' regression onto it (a term > 0 that
// --align-grid 0 leaves out).
TEST(VlmTraining, GridStageTeachesTheLmASymbolicImageThatAlignPullsTowards) {
  const fs::path root = testing_util::scratch_dir();
  VlmTrainOptions o = tiny_options(root, 0);
  o.grid.steps = 12;
  o.grid.lr = 1e-2;
  o.grid.warmup = 0;
  o.align.steps = 2;
  o.align.warmup = 0;
  o.fixed_batch = true;
  o.checkpoint_every = 4;
  o.check = 1;  // also the teacher-forced first-turn reports, from the symbolic image and the image
  std::vector<std::string> lines;
  o.log = [&](const std::string& s) { lines.push_back(s); };
  const VlmTrainReport r = train_vlm(o);
  ASSERT_EQ(r.stages.size(), 4u);  // text (skipped), grid, align, finetune (skipped)
  int first_turn = 0;
  for (const std::string& l : lines)
    first_turn += (l.rfind("[grid] first-turn answers right", 0) == 0 && l.find("from the symbolic image: ") != std::string::npos) +
                  (l.rfind("[align] first-turn answers right", 0) == 0 && l.find("from the image: ") != std::string::npos);
  EXPECT_EQ(first_turn, 2);  // once after each stage (the grid's every 20 steps: not reached)
  ASSERT_EQ(r.stages[1].name, "grid");
  const std::vector<double>& L = r.stages[1].losses;
  ASSERT_EQ(L.size(), 12u);
  EXPECT_LT(L.back(), 0.8 * L.front()) << "the LM learns the fixed batch from its symbolic image";
  int reports = 0;
  for (const std::string& l : lines) reports += l.find("[grid] answer tokens right") != std::string::npos;
  EXPECT_EQ(reports, 3);
  const Json fp = read_json_file((root / "work/vlm_run.json").string());
  ASSERT_TRUE(fp.contains("grid"));
  EXPECT_EQ(fp["grid"].value("align_grid", 0.0), 1.0);
  const double align_with = r.stages[2].losses.front();

  // A rerun finds the grid stage done (its position table restored from the checkpoint).
  o.align.steps = 3;
  const VlmTrainReport r2 = train_vlm(o);
  EXPECT_TRUE(r2.stages[1].skipped);
  EXPECT_EQ(r2.stages[2].start_step, 2);

  // The same run without the regression: align's first loss is the answers' loss alone.
  VlmTrainOptions n = o;
  n.work_dir = (root / "work-no-regression").string();
  n.align.steps = 2;
  n.align_grid = 0;
  const VlmTrainReport r3 = train_vlm(n);
  EXPECT_GT(align_with, r3.stages[2].losses.front() + 0.5)
      << "the relative regression error starts near 1 or above";

  // --grid-own-table: the symbolic image's own label vectors train with the LM (the loss falls
  // on the fixed batch too) and the work folder records it.
  VlmTrainOptions own = o;
  own.work_dir = (root / "work-own").string();
  own.grid_own_table = true;
  own.check = 0;
  const VlmTrainReport ro = train_vlm(own);
  EXPECT_LT(ro.stages[1].losses.back(), 0.8 * ro.stages[1].losses.front());
  EXPECT_NE(ro.stages[1].losses.front(), L.front()) << "another symbolic image than the word embeddings'";
  EXPECT_EQ(read_json_file((root / "work-own/vlm_run.json").string())["grid"].value("own_table", false), true);

  // A grid stage may join a work folder where no stage from it on has started (the vision
  // stage run alone first), not one whose align has run.
  VlmTrainOptions v = tiny_options(root, 0);
  v.work_dir = (root / "work-join").string();
  v.vision.steps = 1;
  train_vlm(v);
  v.grid.steps = 1;
  EXPECT_NO_THROW(train_vlm(v));
  VlmTrainOptions late = tiny_options(root, 0);
  late.work_dir = (root / "work-late").string();
  late.align.steps = 1;
  train_vlm(late);
  late.grid.steps = 1;
  EXPECT_THROW(train_vlm(late), ConfigError);

  n.align_grid = -1;
  n.work_dir.clear();
  try {
    train_vlm(n);
    ADD_FAILURE() << "negative --align-grid accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--align-grid"), std::string::npos) << e.what();
  }
}

// --lookup: head 0 of the chosen layer learns to look at the patches an answer is read from.
// On a fixed batch its logged weight there rises; the term shows in the loss; the work folder
// records it; bad values are refused before any work.
TEST(VlmTraining, LookupLossTeachesAHeadWhereAnswersAreRead) {
  const fs::path root = testing_util::scratch_dir();
  VlmTrainOptions o = tiny_options(root, 0);
  o.grid.steps = 16;
  o.grid.lr = 1e-2;
  o.grid.warmup = 0;
  o.fixed_batch = true;
  o.checkpoint_every = 4;
  o.lookup_weight = 1.0;
  std::vector<std::string> lines;
  o.log = [&](const std::string& s) { lines.push_back(s); };
  const VlmTrainReport r = train_vlm(o);
  std::vector<int> mass;
  const std::string tag = "[grid] lookup head's weight on the answers' patches: ";
  for (const std::string& l : lines)
    if (l.rfind(tag, 0) == 0) mass.push_back(std::stoi(l.substr(tag.size())));
  ASSERT_EQ(mass.size(), 4u);
  EXPECT_GT(mass.back(), mass.front() + 20) << "from about a uniform share to most of the head's weight";
  const Json fp = read_json_file((root / "work/vlm_run.json").string());
  ASSERT_TRUE(fp.contains("lookup"));
  EXPECT_EQ(fp["lookup"].value("weight", 0.0), 1.0);

  // Without it the first loss is the answers' alone: -log of a near-uniform share is large.
  VlmTrainOptions n = o;
  n.work_dir = (root / "work-plain").string();
  n.lookup_weight = 0;
  n.grid.steps = 1;
  EXPECT_GT(r.stages[1].losses.front(), train_vlm(n).stages[1].losses.front() + 1.0);

  // Isolated turns train too (the loss falls on the fixed batch) and the folder records them.
  VlmTrainOptions iso = o;
  iso.work_dir = (root / "work-isolated").string();
  iso.isolated_turns = true;
  const VlmTrainReport ri = train_vlm(iso);
  EXPECT_LT(ri.stages[1].losses.back(), 0.8 * ri.stages[1].losses.front());
  EXPECT_NE(ri.stages[1].losses.front(), r.stages[1].losses.front()) << "other sequences than the shared-context run";
  EXPECT_EQ(read_json_file((root / "work-isolated/vlm_run.json").string()).value("isolated_turns", false), true);

  auto refused = [&](VlmTrainOptions bad, const std::string& says) {
    bad.work_dir.clear();
    try {
      train_vlm(bad);
      ADD_FAILURE() << "accepted; expected an error naming " << says;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
  };
  VlmTrainOptions bad = o;
  bad.lookup_weight = -1;
  refused(bad, "--lookup");
  bad = o;
  bad.lookup_layer = 7;  // the tiny LM has 2 layers
  refused(bad, "--lookup-layer 7");
  bad = o;
  bad.lookup_layer = -3;
  refused(bad, "--lookup-layer -3");
}

// --image-position: align and finetune train the projector's image position embedding, which
// starts as a sin-cos table at the scale of the projected image tokens; the folder declares it
// and loads back; the option may join a work folder whose projector has not trained yet.
TEST(VlmTraining, ImagePositionEmbeddingTrainsAndShips) {
  const fs::path root = testing_util::scratch_dir();
  VlmTrainOptions o = tiny_options(root, 0);
  o.sizes.image_position = true;
  o.align.steps = 2;
  o.finetune.steps = 2;
  o.align.lr = o.finetune.lr = 1e-6;  // a few steps that barely move the table from its start
  o.align.warmup = o.finetune.warmup = 0;
  std::vector<std::string> lines;
  o.log = [&](const std::string& line) { lines.push_back(line); };
  train_vlm(o);
  double start_rms = -1;
  for (const std::string& line : lines)
    if (const auto at = line.find("sin-cos at the image tokens' RMS "); at != std::string::npos)
      start_rms = std::stod(line.substr(at + 33));
  EXPECT_GT(start_rms, 0) << "the align stage logs the table's start";
  const Json cfg = read_json_file((root / "out/config.json").string());
  EXPECT_EQ(cfg.value("image_position_embedding", false), true);
  const TensorStore out = TensorStore::open((root / "out/model.safetensors").string());
  const std::string key = "multi_modal_projector.position_embedding";
  ASSERT_TRUE(out.contains(key));
  {
    torch::NoGradGuard no_grad;
    LlavaForConditionalGeneration m = load_llava((root / "out").string());
    ASSERT_TRUE(m->multi_modal_projector->position_embedding.defined());
    const at::Tensor table = m->multi_modal_projector->position_embedding.to(at::kFloat);
    const at::Tensor want = sincos_position_table(table.size(0), table.size(1), true) * start_rms;
    EXPECT_LT((table - want).abs().max().item<double>(), 0.05 * start_rms + 1e-4) << "the sin-cos start, 4 tiny steps on";
  }

  // Joining: a folder whose vision stage ran without the option takes it; one whose align ran does not.
  VlmTrainOptions v = tiny_options(root, 0);
  v.work_dir = (root / "work-join-position").string();
  v.vision.steps = 1;
  train_vlm(v);
  v.sizes.image_position = true;
  EXPECT_NO_THROW(train_vlm(v));
  VlmTrainOptions late = tiny_options(root, 0);
  late.work_dir = (root / "work-late-position").string();
  late.align.steps = 1;
  train_vlm(late);
  late.sizes.image_position = true;
  EXPECT_THROW(train_vlm(late), ConfigError);
}

// The sin-cos table: RMS 1, one row per token, a grid's rows sharing a row index share the
// row half of the channels.
TEST(VlmTraining, SinCosPositionTable) {
  const at::Tensor t = sincos_position_table(16, 8, true);
  EXPECT_NEAR(t.pow(2).mean().sqrt().item<double>(), 1.0, 1e-5);
  for (int64_t a = 0; a < 16; ++a)
    for (int64_t b = a + 1; b < 16; ++b) EXPECT_GT((t[a] - t[b]).abs().max().item<double>(), 1e-3) << a << " " << b;
  EXPECT_LT((t[0].narrow(0, 0, 4) - t[3].narrow(0, 0, 4)).abs().max().item<double>(), 1e-6);
  EXPECT_EQ(sincos_position_table(5, 8, false).size(0), 5);
  EXPECT_THROW(sincos_position_table(5, 8, true), ShapeError);
}

// --balance-existence: every scene's image sequence asks as many present-object probes as
// absent ones (make_questions alone asks 1 present and up to 3 absent); other questions stay.
TEST(VlmTraining, BalancedExistenceProbesAreHalfYes) {
  int plain_yes = 0, plain_no = 0;
  for (uint64_t i = 0; i < 40; ++i) {
    const world::Scene scene = world::sample_scene(world::sample_seed(99, i));
    world::Rng a(i), b(i);
    const std::vector<world::Question> plain = vlm_training_questions(scene, a, 0.0, false);
    const std::vector<world::Question> balanced = vlm_training_questions(scene, b, 0.0, true);
    std::multiset<std::string> plain_other, balanced_other;
    int yes = 0, no = 0;
    for (const world::Question& q : plain) {
      if (q.pope.empty()) plain_other.insert(q.question + "|" + q.answer);
      else (q.answer == "yes" ? plain_yes : plain_no)++;
    }
    for (const world::Question& q : balanced) {
      if (q.pope.empty()) balanced_other.insert(q.question + "|" + q.answer);
      else (q.answer == "yes" ? yes : no)++;
    }
    EXPECT_EQ(yes, 1) << "scene " << i;
    EXPECT_EQ(no, 1) << "scene " << i;
    EXPECT_EQ(plain_other, balanced_other) << "scene " << i;
  }
  EXPECT_EQ(plain_yes, 40);
  EXPECT_GT(plain_no, 80) << "make_questions' own mix leans to \"no\"";
}

// --init: a run starts from a trained folder. With no steps given nothing trains and the folder
// comes out as it went in; a fine-tune moves the LM and leaves the frozen tower; with
// --encoder-over-init the tower is the encoder's and the rest the folder's. A folder of other
// sizes is refused naming the config key, before the work folder records anything.
TEST(VlmTraining, InitStartsFromATrainedFolder) {
  const fs::path root = testing_util::scratch_dir();
  VlmTrainOptions a = tiny_options(root / "a", 2);
  train_vlm(a);
  const fs::path trained = root / "a" / "out" / "model.safetensors";
  auto weights = [](const fs::path& p) {
    const TensorStore st = TensorStore::open(p.string());
    std::map<std::string, at::Tensor> m;
    for (const std::string& n : st.names()) m[n] = read_tensor(st, n).to(at::kFloat);
    return m;
  };
  const auto from = weights(trained);
  const std::string lm_key = "language_model.model.layers.0.self_attn.q_proj.weight";
  const std::string tower_key = "vision_tower.vision_model.embeddings.patch_embedding.weight";
  ASSERT_TRUE(from.count(lm_key) && from.count(tower_key)) << "LLaVA names changed";

  VlmTrainOptions b = tiny_options(root / "b", -1);  // every stage at its default
  b.init_dir = (root / "a" / "out").string();
  b.finetune.steps = 0;
  const VlmTrainReport rb = train_vlm(b);
  for (const VlmStageReport& st : rb.stages) EXPECT_TRUE(st.skipped) << st.name << " ran";
  const auto same = weights(root / "b" / "out" / "model.safetensors");
  ASSERT_EQ(same.size(), from.size());
  for (const auto& [n, t] : from) EXPECT_TRUE(at::equal(t, same.at(n))) << n;

  VlmTrainOptions c = b;
  c.out_dir = (root / "c" / "out").string();
  c.work_dir = (root / "c" / "work").string();
  c.finetune.steps = 2;
  const VlmTrainReport rc = train_vlm(c);
  EXPECT_FALSE(rc.stages.back().skipped);
  const auto tuned = weights(root / "c" / "out" / "model.safetensors");
  EXPECT_FALSE(at::allclose(tuned.at(lm_key), from.at(lm_key), 1e-4, 1e-4)) << "the fine-tune did not move the LM";
  EXPECT_TRUE(at::equal(tuned.at(tower_key), from.at(tower_key))) << "the frozen tower moved";

  VlmTrainOptions d = b;
  d.encoder_dir = make_encoder(root / "other_encoder", 11);
  d.encoder_over_init = true;
  d.out_dir = (root / "d" / "out").string();
  d.work_dir = (root / "d" / "work").string();
  train_vlm(d);
  const auto swapped = weights(root / "d" / "out" / "model.safetensors");
  const auto other = weights(root / "other_encoder" / "model.safetensors");
  const std::string enc_key = "vision_model.embeddings.patch_embedding.weight";
  EXPECT_TRUE(at::equal(swapped.at(tower_key), other.at(enc_key).to(at::kHalf).to(at::kFloat)));
  EXPECT_FALSE(at::equal(swapped.at(tower_key), from.at(tower_key)));
  EXPECT_TRUE(at::equal(swapped.at(lm_key), from.at(lm_key)));

  {
    VlmTrainOptions x = b;
    x.init_dir = (root / "nowhere").string();
    EXPECT_THROW(train_vlm(x), IoError);
    EXPECT_NE(message_of(x).find("nowhere: no such LLaVA folder"), std::string::npos) << message_of(x);
  }
  {
    VlmTrainOptions x = b;
    x.sizes.intermediate = 96;
    x.work_dir = (root / "e" / "work").string();
    EXPECT_THROW(train_vlm(x), ConfigError);
    EXPECT_NE(message_of(x).find("\"text_config.intermediate_size\" is 128, this run builds 96"), std::string::npos)
        << message_of(x);
    EXPECT_FALSE(fs::exists(root / "e" / "work" / "vlm_run.json")) << "a refused --init left a run record";
  }
  {
    VlmTrainOptions x = tiny_options(root / "f", 0);
    x.encoder_over_init = true;
    EXPECT_THROW(train_vlm(x), ConfigError);
    EXPECT_NE(message_of(x).find("no --init given"), std::string::npos) << message_of(x);
  }
}
