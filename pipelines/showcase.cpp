#include "pipelines/showcase.h"

#include <algorithm>
#include <chrono>
#include <filesystem>

#include "core/error.h"
#include "core/text_draw.h"
#include "pipelines/sd_model.h"
#include "pipelines/stable_diffusion.h"
#include "world/render.h"
#include "world/scene.h"
#include "world/skeleton.h"

namespace fs = std::filesystem;

namespace iris {
namespace {

std::string pack_file(const std::string& explicit_path, const std::string& model_dir, const std::string& name) {
  if (!explicit_path.empty()) return explicit_path;
  const fs::path p = fs::path(model_dir) / "adapters" / name;
  return fs::exists(p) ? p.string() : std::string();
}

Image magnify(const Image& src, int k) {
  Image out(src.width * k, src.height * k, 3);
  for (int y = 0; y < out.height; ++y)
    for (int x = 0; x < out.width; ++x)
      for (int c = 0; c < 3; ++c) out.at(x, y, c) = src.at(x / k, y / k, std::min(c, src.channels - 1));
  return out;
}

// A Tinyworld scene made to order for the image-prompt row (fixed, readable references).
world::Scene reference_scene(int resolution, world::Color c1, world::Shape s1, int cell1, world::Color c2,
                             world::Shape s2, int cell2, world::Style style) {
  world::Scene s;
  s.seed = 7;
  s.resolution = resolution;
  s.style = style;
  world::Object a;
  a.color = c1, a.shape = s1, a.size = world::Size::Large, a.cell = cell1;
  world::Object b;
  b.color = c2, b.shape = s2, b.size = world::Size::Medium, b.cell = cell2;
  s.objects = {a, b};
  return s;
}

}  // namespace

std::vector<ShowcaseRow> render_showcase(const std::string& model_dir, const ShowcaseOptions& o) {
  auto log = [&](const std::string& s) {
    if (o.log) o.log(s);
  };
  SdLoadOptions lo;
  lo.device = o.device;
  lo.ip_adapter = pack_file(o.ip_adapter, model_dir, "ip-adapter.safetensors");
  lo.style_adapter = pack_file(o.style_adapter, model_dir, "style-adapter.safetensors");
  lo.sk_adapter = pack_file(o.sk_adapter, model_dir, "sk-adapter.safetensors");
  lo.log = o.log;
  if (lo.ip_adapter.empty()) log("showcase: no IP-Adapter (adapters/ip-adapter.safetensors): image-prompt row left out");
  if (lo.style_adapter.empty()) log("showcase: no style adapter (adapters/style-adapter.safetensors): style row left out");
  if (lo.sk_adapter.empty()) log("showcase: no SK-Adapter (adapters/sk-adapter.safetensors): skeleton row left out");
  SdModel model = SdModel::load(model_dir, lo);

  GenerationParams base;
  base.sampler = o.sampler;
  base.steps = o.steps;
  base.cfg_scale = o.cfg_scale;
  base.width = base.height = o.size;
  base.model_name = fs::path(model_dir).filename().string();

  // Everything to render, counted first so progress has a total.
  struct Job {
    size_t row;
    GenerationParams params;
    std::string label;
  };
  std::vector<ShowcaseRow> rows;
  std::vector<Job> jobs;
  auto add_job = [&](GenerationParams p, const std::string& label) {
    p.seed = o.seed + jobs.size();
    jobs.push_back({rows.size() - 1, std::move(p), label});
    rows.back().cells.push_back({});  // filled when rendered
  };

  rows.push_back({"text to image", {}});
  for (const char* prompt : {"a large red circle at the top left", "a small blue square in the center",
                             "a yellow triangle at the bottom right and a green circle at the top left",
                             "a white diamond on the left and a purple square on the right"}) {
    GenerationParams p = base;
    p.prompt = prompt;
    add_job(p, prompt);
  }

  if (model.ip_adapter) {
    rows.push_back({"image prompt (IP-Adapter): reference, then the result", {}});
    const world::Scene refs[2] = {
        reference_scene(o.size, world::Color::Orange, world::Shape::Square, 0, world::Color::Blue,
                        world::Shape::Circle, 8, world::Style::Flat),
        reference_scene(o.size, world::Color::Green, world::Shape::Triangle, 2, world::Color::Red,
                        world::Shape::Diamond, 6, world::Style::Flat)};
    const char* texts[2] = {"", "a blue square at the top left"};
    for (int i = 0; i < 2; ++i) {
      ShowcaseCell ref;
      ref.image = world::render_scene(refs[i]);
      ref.label = "reference";
      ref.reference = true;
      rows.back().cells.push_back(ref);
      GenerationParams p = base;
      p.prompt = texts[i];
      ImagePrompt ip;
      ip.image = ref.image;
      ip.name = "reference";
      p.image_prompts.push_back(ip);
      add_job(p, *texts[i] ? std::string("image + \"") + texts[i] + "\"" : std::string("image prompt only"));
    }
  }

  if (model.style_adapter) {
    rows.push_back({"style (PokeFusion): one prompt, every style", {}});
    for (world::Style st : world::all_styles()) {
      GenerationParams p = base;
      p.prompt = "a large red circle in the center";
      p.style = world::name(st);
      add_job(p, std::string("style: ") + world::name(st));
    }
  }

  if (model.sk_adapter) {
    rows.push_back({"skeleton (SK-Adapter): pose, then the result", {}});
    struct PoseCase {
      world::ArmPose arms;
      world::LegPose legs;
      double x;
      const char* prompt;
    };
    const PoseCase poses[2] = {
        {world::ArmPose::LeftUp, world::LegPose::Apart, 0.35, "a green stick figure"},
        {world::ArmPose::BothUp, world::LegPose::Together, 0.65, "an orange stick figure"}};
    for (const PoseCase& pc : poses) {
      world::PoseParams pp;
      pp.arms = pc.arms;
      pp.legs = pc.legs;
      pp.center_x = pc.x;
      world::Skeleton sk = world::make_pose(pp);
      ShowcaseCell pose;
      pose.image = world::render_skeleton_map(sk, o.size);
      pose.label = std::string("pose: ") + world::name(pc.arms) + ", legs " + world::name(pc.legs);
      pose.reference = true;
      rows.back().cells.push_back(pose);
      GenerationParams p = base;
      p.prompt = pc.prompt;
      p.skeleton = sk;
      p.skeleton_name = "pose";
      add_job(p, pc.prompt);
    }
  }

  // Render; cells were reserved in order, so the k-th empty generated cell of a row is its k-th job.
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t j = 0; j < jobs.size(); ++j) {
    o.progress.check_cancel();
    Job& job = jobs[j];
    GenerationCallbacks cb;
    cb.progress.should_cancel = o.progress.should_cancel;
    std::vector<GeneratedImage> out = generate(model, job.params, cb);
    ShowcaseRow& row = rows[job.row];
    for (ShowcaseCell& c : row.cells)
      if (c.image.empty() && !c.reference) {
        c.image = out.at(0).image;
        c.label = job.label;
        break;
      }
    o.progress.report(static_cast<int>(j + 1), static_cast<int>(jobs.size()), "showcase");
    log("showcase: " + row.title + ": " + job.label);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  log("showcase: " + std::to_string(jobs.size()) + " pictures in " + std::to_string(static_cast<int>(secs)) + " s");
  return rows;
}

Image showcase_grid(const std::vector<ShowcaseRow>& rows, int cell_scale) {
  cell_scale = std::max(1, cell_scale);
  int cell = 0;  // picture side in the grid
  size_t columns = 1;
  for (const ShowcaseRow& r : rows) {
    columns = std::max(columns, r.cells.size());
    for (const ShowcaseCell& c : r.cells) cell = std::max(cell, std::max(c.image.width, c.image.height) * cell_scale);
  }
  if (cell == 0) throw ConfigError("showcase: nothing to draw");
  const int pad = 8, label_lines = 3, title_h = kTextLineHeight + 6;
  const int label_h = label_lines * kTextLineHeight + 4;
  const int col_w = cell + pad;
  const int row_h = title_h + cell + 4 + label_h;
  Image grid(static_cast<int>(columns) * col_w + pad, static_cast<int>(rows.size()) * row_h + pad, 3);
  std::fill(grid.pixels.begin(), grid.pixels.end(), uint8_t(24));
  for (size_t r = 0; r < rows.size(); ++r) {
    const int y0 = pad + static_cast<int>(r) * row_h;
    draw_text(grid, pad, y0 + 2, rows[r].title, Rgb{230, 200, 120});
    for (size_t c = 0; c < rows[r].cells.size(); ++c) {
      const ShowcaseCell& sc = rows[r].cells[c];
      const int x0 = pad + static_cast<int>(c) * col_w, yp = y0 + title_h;
      // Frame: grey around inputs, white around results.
      const uint8_t frame = sc.reference ? 110 : 235;
      for (int y = yp - 2; y < yp + cell + 2; ++y)
        for (int x = x0 - 2; x < x0 + cell + 2; ++x)
          if (x >= 0 && y >= 0 && x < grid.width && y < grid.height)
            for (int ch = 0; ch < 3; ++ch) grid.at(x, y, ch) = frame;
      if (!sc.image.empty()) {
        const Image big = magnify(sc.image, std::max(1, cell / std::max(sc.image.width, sc.image.height)));
        for (int y = 0; y < std::min(cell, big.height); ++y)
          for (int x = 0; x < std::min(cell, big.width); ++x)
            for (int ch = 0; ch < 3; ++ch) grid.at(x0 + x, yp + y, ch) = big.at(x, y, ch);
      }
      int ly = yp + cell + 4;
      std::vector<std::string> lines = wrap_text(sc.label, cell);
      if (lines.size() > static_cast<size_t>(label_lines)) {
        lines.resize(label_lines);
        lines.back() += "...";
      }
      for (const std::string& line : lines) ly = draw_text(grid, x0, ly, line, Rgb{220, 220, 220});
    }
  }
  return grid;
}

}  // namespace iris
