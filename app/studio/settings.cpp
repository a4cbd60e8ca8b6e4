#include "app/studio/settings.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "core/error.h"
#include "core/mmap_file.h"
#include "pipelines/image_size.h"

namespace iris::studio {

namespace fs = std::filesystem;

namespace {

const char* const kSamplers[] = {"ddim", "euler", "euler_a", "dpmpp_2m", "lcm"};
const char* const kPresets[] = {"all", "style", "composition"};

template <size_t N>
bool one_of(const std::string& v, const char* const (&list)[N]) {
  for (const char* s : list)
    if (v == s) return true;
  return false;
}

std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

}  // namespace

Json StudioSettings::to_json() const {
  Json prompts = Json::array();
  for (const ImagePromptSetting& ip : image_prompts)
    prompts.push_back({{"path", ip.path}, {"scale", ip.scale}, {"preset", ip.preset}});
  return Json{{"model", model}, {"tokenizer", tokenizer}, {"device", device}, {"threads", threads},
              {"ip_adapter", ip_adapter}, {"image_encoder", image_encoder}, {"style_adapter", style_adapter},
              {"sk_adapter", sk_adapter}, {"prompt", prompt}, {"negative", negative}, {"sampler", sampler},
              {"karras", karras}, {"steps", steps}, {"cfg", cfg}, {"random_seed", random_seed}, {"seed", seed},
              {"width", width}, {"height", height}, {"batch", batch}, {"use_init", use_init},
              {"init_image", init_image}, {"strength", strength}, {"image_prompts", prompts}, {"style", style},
              {"style_strength", style_strength}, {"use_skeleton", use_skeleton}, {"skeleton", skeleton},
              {"skeleton_scale", skeleton_scale}, {"show_skeleton_overlay", show_skeleton_overlay},
              {"new_style_images", new_style_images}, {"new_style_name", new_style_name},
              {"new_style_steps", new_style_steps},
              {"output_dir", output_dir}, {"vlm", vlm}, {"question", question},
              {"max_new_tokens", max_new_tokens}, {"ask_image", ask_image}, {"ask_draft", ask_draft},
              {"ask_draft_chain", ask_draft_chain}, {"ask_visor_budget", ask_visor_budget}, {"ask_var", ask_var},
              {"ask_var_sink_dims", ask_var_sink_dims}, {"ask_var_p", ask_var_p}, {"ask_locore", ask_locore},
              {"ask_locore_beta", ask_locore_beta}, {"ask_sgrs", ask_sgrs}, {"ask_saliency", ask_saliency},
              {"window_width", window_width},
              {"window_height", window_height}};
}

StudioSettings StudioSettings::from_json(const Json& j, const std::string& what) {
  if (!j.is_object()) throw ConfigError(what + ": expected a JSON object");
  StudioSettings s;
  auto str = [&](const char* key, std::string& field) { field = json_string(j, key, field, what); };
  auto integer = [&](const char* key, int& field) { field = static_cast<int>(json_int(j, key, field, what)); };
  auto num = [&](const char* key, double& field) { field = json_number(j, key, field, what); };
  auto flag = [&](const char* key, bool& field) { field = json_bool(j, key, field, what); };
  str("model", s.model);
  str("tokenizer", s.tokenizer);
  str("device", s.device);
  integer("threads", s.threads);
  str("ip_adapter", s.ip_adapter);
  str("image_encoder", s.image_encoder);
  str("style_adapter", s.style_adapter);
  str("sk_adapter", s.sk_adapter);
  str("prompt", s.prompt);
  str("negative", s.negative);
  str("sampler", s.sampler);
  flag("karras", s.karras);
  integer("steps", s.steps);
  num("cfg", s.cfg);
  flag("random_seed", s.random_seed);
  s.seed = json_int(j, "seed", s.seed, what);
  integer("width", s.width);
  integer("height", s.height);
  integer("batch", s.batch);
  flag("use_init", s.use_init);
  str("init_image", s.init_image);
  num("strength", s.strength);
  if (j.contains("image_prompts")) {
    const Json& a = j["image_prompts"];
    if (!a.is_array()) throw ConfigError(what + ": image_prompts: expected an array");
    for (size_t i = 0; i < a.size(); ++i) {
      const std::string w = what + ": image_prompts[" + std::to_string(i) + "]";
      if (!a[i].is_object()) throw ConfigError(w + ": expected an object");
      ImagePromptSetting ip;
      ip.path = json_string(a[i], "path", "", w);
      ip.scale = json_number(a[i], "scale", ip.scale, w);
      ip.preset = json_string(a[i], "preset", ip.preset, w);
      s.image_prompts.push_back(ip);
    }
  }
  str("style", s.style);
  num("style_strength", s.style_strength);
  flag("use_skeleton", s.use_skeleton);
  str("skeleton", s.skeleton);
  num("skeleton_scale", s.skeleton_scale);
  flag("show_skeleton_overlay", s.show_skeleton_overlay);
  str("new_style_images", s.new_style_images);
  str("new_style_name", s.new_style_name);
  integer("new_style_steps", s.new_style_steps);
  str("output_dir", s.output_dir);
  str("vlm", s.vlm);
  str("question", s.question);
  integer("max_new_tokens", s.max_new_tokens);
  str("ask_image", s.ask_image);
  str("ask_draft", s.ask_draft);
  integer("ask_draft_chain", s.ask_draft_chain);
  integer("ask_visor_budget", s.ask_visor_budget);
  flag("ask_var", s.ask_var);
  str("ask_var_sink_dims", s.ask_var_sink_dims);
  num("ask_var_p", s.ask_var_p);
  flag("ask_locore", s.ask_locore);
  num("ask_locore_beta", s.ask_locore_beta);
  flag("ask_sgrs", s.ask_sgrs);
  flag("ask_saliency", s.ask_saliency);
  integer("window_width", s.window_width);
  integer("window_height", s.window_height);
  s.validate(what);
  return s;
}

void StudioSettings::validate(const std::string& what) const {
  auto bad = [&](const std::string& key, const std::string& value, const std::string& why) {
    throw ConfigError(what + ": " + key + ": " + value + " " + why);
  };
  if (!one_of(sampler, kSamplers)) bad("sampler", "\"" + sampler + "\"", "is not one of ddim, euler, euler_a, dpmpp_2m, lcm");
  if (steps < 1 || steps > 1000) bad("steps", std::to_string(steps), "is outside [1, 1000]");
  if (!(cfg >= 0 && cfg <= 100)) bad("cfg", std::to_string(cfg), "is outside [0, 100]");
  if (seed < 0) bad("seed", std::to_string(seed), "is negative");
  if ((width == 0) != (height == 0))
    bad("size", std::to_string(width) + "x" + std::to_string(height), "sets one side only (0x0: the model's size)");
  for (auto [key, v] : {std::pair<const char*, int>{"width", width}, {"height", height}})
    if (v != 0 && (v < 8 || v > 4096 || v % 8 != 0))
      bad(key, std::to_string(v), "is not a multiple of 8 in [8, 4096] (or 0: the model's size)");
  if (batch < 1 || batch > 64) bad("batch", std::to_string(batch), "is outside [1, 64]");
  if (!(strength > 0 && strength <= 1)) bad("strength", std::to_string(strength), "is outside (0, 1]");
  for (size_t i = 0; i < image_prompts.size(); ++i) {
    const std::string key = "image_prompts[" + std::to_string(i) + "]";
    if (!one_of(image_prompts[i].preset, kPresets))
      bad(key + ".preset", "\"" + image_prompts[i].preset + "\"", "is not one of all, style, composition");
    if (!(image_prompts[i].scale >= 0 && image_prompts[i].scale <= 10))
      bad(key + ".scale", std::to_string(image_prompts[i].scale), "is outside [0, 10]");
  }
  if (!(style_strength >= 0 && style_strength <= 10)) bad("style_strength", std::to_string(style_strength), "is outside [0, 10]");
  if (!(skeleton_scale >= 0 && skeleton_scale <= 10)) bad("skeleton_scale", std::to_string(skeleton_scale), "is outside [0, 10]");
  if (threads < 0 || threads > 1024) bad("threads", std::to_string(threads), "is outside [0, 1024]");
  if (max_new_tokens < 1 || max_new_tokens > 8192) bad("max_new_tokens", std::to_string(max_new_tokens), "is outside [1, 8192]");
  if (new_style_steps < 1 || new_style_steps > 100000)
    bad("new_style_steps", std::to_string(new_style_steps), "is outside [1, 100000]");
  if (ask_draft_chain < 0 || ask_draft_chain > 64) bad("ask_draft_chain", std::to_string(ask_draft_chain), "is outside [0, 64]");
  if (ask_visor_budget < -1 || ask_visor_budget > 1024)
    bad("ask_visor_budget", std::to_string(ask_visor_budget), "is outside [-1 (router), 1024]");
  if (!(ask_var_p >= 0 && ask_var_p <= 1)) bad("ask_var_p", std::to_string(ask_var_p), "is outside [0, 1]");
  if (!(ask_locore_beta >= 0 && ask_locore_beta <= 10))
    bad("ask_locore_beta", std::to_string(ask_locore_beta), "is outside [0, 10]");
  parse_sink_dims(ask_var_sink_dims, what + ": ask_var_sink_dims");
  if (window_width < 200 || window_height < 150 || window_width > 16384 || window_height > 16384)
    bad("window size", std::to_string(window_width) + "x" + std::to_string(window_height), "is not a usable window size");
}

std::vector<int64_t> parse_sink_dims(const std::string& text, const std::string& what) {
  std::vector<int64_t> dims;
  if (text.find_first_not_of(" \t") == std::string::npos) return dims;
  size_t i = 0;
  for (;;) {
    const size_t comma = text.find(',', i);
    std::string part = text.substr(i, comma == std::string::npos ? std::string::npos : comma - i);
    part.erase(0, part.find_first_not_of(" \t"));
    part.erase(part.find_last_not_of(" \t") + 1);
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(part.c_str(), &end, 10);
    if (part.empty() || *end != 0 || errno == ERANGE || v < 0)
      throw ConfigError(what + ": \"" + text + "\": expected hidden dimensions like 47,252");
    dims.push_back(v);
    if (comma == std::string::npos) break;
    i = comma + 1;
  }
  return dims;
}

void StudioSettings::set(const std::string& key, const std::string& value) {
  const std::string what = "set " + key;
  Json j = to_json();
  if (key == "size") {
    auto [w, h] = parse_image_size(value, what);  // auto: the model's size
    j["width"] = w;
    j["height"] = h;
  } else if (!j.contains(key) || key == "image_prompts") {
    throw ConfigError(what + ": unknown setting (known: size and the keys of studio.json except image_prompts)");
  } else {
    Json& field = j[key];
    const char* c = value.c_str();
    char* end = nullptr;
    errno = 0;
    if (field.is_string()) {
      field = value;
    } else if (field.is_boolean()) {
      if (value == "true" || value == "1" || value == "on" || value == "yes") field = true;
      else if (value == "false" || value == "0" || value == "off" || value == "no") field = false;
      else throw ConfigError(what + ": \"" + value + "\" is not a boolean (true/false)");
    } else if (field.is_number_integer()) {
      const long long v = std::strtoll(c, &end, 10);
      if (value.empty() || *end != 0 || errno == ERANGE) throw ConfigError(what + ": \"" + value + "\" is not an integer");
      field = v;
    } else {
      const double v = std::strtod(c, &end);
      if (value.empty() || *end != 0 || errno == ERANGE) throw ConfigError(what + ": \"" + value + "\" is not a number");
      field = v;
    }
  }
  *this = from_json(j, what);  // validates; *this is untouched when it throws
}

std::string default_settings_path() {
  const std::string explicit_path = env_or_empty("IRIS_STUDIO_CONFIG");
  if (!explicit_path.empty()) return explicit_path;
  const std::string xdg = env_or_empty("XDG_CONFIG_HOME");
  if (!xdg.empty()) return (fs::path(xdg) / "iris" / "studio.json").string();
  const std::string home = env_or_empty("HOME");
  if (!home.empty()) return (fs::path(home) / ".config" / "iris" / "studio.json").string();
  return "studio.json";
}

std::string default_output_dir() {
  const std::string home = env_or_empty("HOME");
  if (!home.empty()) return (fs::path(home) / "Pictures" / "iris").string();
  return "iris-outputs";
}

StudioSettings load_settings(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return StudioSettings{};
  return StudioSettings::from_json(read_json_file(path), path);
}

void save_settings(const std::string& path, const StudioSettings& s) {
  const fs::path parent = fs::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty()) fs::create_directories(parent, ec);
  if (ec) throw IoError(path + ": cannot create folder " + parent.string() + ": " + ec.message());
  const std::string text = s.to_json().dump(2) + "\n";
  write_file_atomic(path, text.data(), text.size());
}

GenerationParams make_generation_params(const StudioSettings& s, uint64_t seed, const world::Skeleton* skeleton) {
  GenerationParams p;
  p.prompt = s.prompt;
  p.negative_prompt = s.negative;
  p.sampler = s.sampler;
  p.karras = s.karras;
  p.steps = s.steps;
  p.cfg_scale = s.cfg;
  p.seed = seed;
  p.width = s.width;
  p.height = s.height;
  p.batch = s.batch;
  p.model_name = fs::path(s.model).filename().string();
  if (p.model_name.empty()) p.model_name = fs::path(s.model).parent_path().filename().string();
  if (s.use_init && !s.init_image.empty()) {
    p.init_image = load_image(s.init_image);
    p.init_image_name = fs::path(s.init_image).filename().string();
    p.strength = s.strength;
  }
  for (const ImagePromptSetting& ip : s.image_prompts) p.image_prompts.push_back(load_image_prompt(ip.path, ip.scale, ip.preset));
  p.style = s.style;
  p.style_strength = s.style_strength;
  if (s.use_skeleton && skeleton) {
    p.skeleton = *skeleton;
    p.skeleton_name = fs::path(s.skeleton).filename().string();
    p.skeleton_scale = s.skeleton_scale;
  }
  return p;
}

void apply_params(const GenerationParams& p, StudioSettings& s) {
  s.prompt = p.prompt;
  s.negative = p.negative_prompt;
  s.sampler = p.sampler;
  s.karras = p.karras;
  s.steps = p.steps;
  s.cfg = p.cfg_scale;
  s.random_seed = false;
  s.seed = static_cast<int64_t>(p.seed);
  s.width = p.width;
  s.height = p.height;
  s.use_init = !p.init_image_name.empty();
  if (s.use_init) s.strength = p.strength;
  s.style = p.style;
  s.style_strength = p.style_strength;
  s.use_skeleton = p.skeleton.has_value();
  if (p.skeleton) s.skeleton_scale = p.skeleton_scale;
}

}  // namespace iris::studio
