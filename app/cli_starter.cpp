// `iris train tokenizer|vae|clip|unet`: the starter pack's image half (pipelines/starter_pack.h),
// and `iris world export`, which writes the Tinyworld dataset folders they read.
#include <cstdio>
#include <filesystem>
#include <memory>

#include "app/cli.h"
#include "core/error.h"
#include "core/runtime.h"
#include "pipelines/starter_pack.h"
#include "world/dataset.h"

namespace iris::cli {

namespace {

struct StarterCliOptions {
  StarterTrainOptions t;
  int threads = 0;
  bool f32 = false;
  int max_merges = 2000;
};

using TrainFn = TrainReport (*)(const StarterTrainOptions&);

void add_component(CLI::App* train, const std::string& name, const std::string& help, TrainFn fn) {
  auto* cmd = train->add_subcommand(name, help);
  auto o = std::make_shared<StarterCliOptions>();
  cmd->add_option("--data", o->t.data_dir, "Tinyworld dataset folder (`iris world export`)")->required();
  cmd->add_option("--out", o->t.out_dir, "Pipeline folder being assembled (written: " + name + " part)")->required();
  cmd->add_option("--work", o->t.work_dir, "Checkpoint folder; rerunning resumes from it (default: none)");
  cmd->add_option("--seed", o->t.seed, "Seed (initialisation, batches, noise)")->capture_default_str();
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)");
  cmd->add_option("--max-images", o->t.max_images, "Use only the first N images (0: all)")->capture_default_str();
  cmd->add_flag("--tiny", o->t.tiny, "Test-sized models");
  cmd->add_option("--device", o->t.device, "cpu | cuda | cuda:N | auto")->capture_default_str();
  if (name == "tokenizer") {
    cmd->add_option("--max-merges", o->max_merges, "BPE merges at most")->capture_default_str();
  } else {
    cmd->add_option("--steps", o->t.steps, "Optimizer steps (0: the component's default)")->capture_default_str();
    cmd->add_option("--batch", o->t.batch, "Batch size (0: default)")->capture_default_str();
    cmd->add_option("--lr", o->t.lr, "Peak learning rate (0: default)")->capture_default_str();
    cmd->add_option("--warmup", o->t.warmup_steps, "Warm-up steps (-1: default)")->capture_default_str();
    cmd->add_option("--log-every", o->t.log_every, "Progress line every N steps")->capture_default_str();
    cmd->add_option("--checkpoint-every", o->t.checkpoint_every, "Checkpoint every N steps")->capture_default_str();
    cmd->add_option("--stop-at", o->t.stop_at,
                    "End this run at step N (checkpoint saved, nothing exported); the schedule still spans --steps")
        ->capture_default_str();
    cmd->add_flag("--f32", o->f32, "Store the weights as F32 (default F16)");
  }
  if (name == "vae") {
    cmd->add_flag("--finetune", o->t.vae_from_pack,
                  "Start from OUT/vae (fresh optimizer; use another --work than the first run's); the scaling "
                  "factor is measured again, so models trained on the old latents need more training");
    cmd->add_flag("--decoder-only", o->t.vae_decoder_only,
                  "Start from OUT/vae and train only its decoder: the latent space, and the UNet and adapters "
                  "trained on it, stay valid (use another --work than the full VAE's)");
    cmd->add_option("--detail-weight", o->t.vae_detail_weight,
                    "Extra L1 weight on pixels on or near edges (0: plain L1)")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--gradient-weight", o->t.vae_gradient_weight,
                    "Weight of an L1 loss on neighbouring-pixel differences, which keeps edges sharp (0: off)")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--latent-noise", o->t.vae_latent_noise,
                    "Decode latents with Gaussian noise of this many latent standard deviations added (0: off)")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--denoised", o->t.vae_denoised,
                    "Decoder only: share of each batch that decodes latents the pack's UNet denoised (img2img of "
                    "the image at strength 0.1-0.5) against the original image (0: off)")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 1.0));
    cmd->add_option("--denoised-images", o->t.vae_denoised_images, "How many such latents are made up front")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
  }
  if (name == "unet") {
    cmd->add_flag("--finetune", o->t.unet_from_pack,
                  "Start from OUT/unet (fresh optimizer and schedule; use another --work than the first run's)");
    cmd->add_flag("--train-text-encoder", o->t.unet_train_text,
                  "Train the text encoder with the UNet on the denoising loss and write OUT/text_encoder too "
                  "(adapters trained on the old one need retraining)");
  }
  cmd->callback([o, fn, name] {
    set_threads(o->threads);
    StarterTrainOptions t = o->t;
    t.f16 = !o->f32;
    t.progress.should_cancel = cancel_on_interrupt();
    const TrainReport r = name == "tokenizer" ? train_starter_tokenizer(t, o->max_merges) : fn(t);
    if (!r.output.empty() && t.stop_at > 0 && r.output.find("stopped by") != std::string::npos)
      std::printf("[%s] %s\n", name.c_str(), r.output.c_str());
    if (name != "tokenizer" && !r.losses.empty())
      std::printf("[%s] %lld steps this run, %.3f s/step, final loss %.5f\n", name.c_str(),
                  static_cast<long long>(r.losses.size()), r.seconds_per_step, r.losses.back());
  });
}

}  // namespace

void add_starter_commands(CLI::App& app) {
  CLI::App* train = train_command(app);
  add_component(train, "tokenizer", "Train the starter pack's CLIP BPE tokenizer on Tinyworld captions", nullptr);
  add_component(train, "vae", "Train the starter pack's AutoencoderKL (64x64 -> 4x16x16)", train_starter_vae);
  add_component(train, "clip", "Train the starter pack's CLIP text + image encoders (contrastive)", train_starter_clip);
  add_component(train, "unet", "Train the starter pack's UNet on VAE latents (needs tokenizer, clip, vae)",
                train_starter_unet);

  auto* world_cmd = app.add_subcommand("world", "Tinyworld: the procedural world the starter pack learns");
  world_cmd->require_subcommand(1);
  auto* exp = world_cmd->add_subcommand("export", "Write a dataset folder (images, captions, skeletons, questions)");
  struct ExportOpts {
    std::string out, split = "train";
    world::DatasetOptions d;
  };
  auto e = std::make_shared<ExportOpts>();
  exp->add_option("--out", e->out, "Dataset folder")->required();
  exp->add_option("--count", e->d.count, "Images")->capture_default_str();
  exp->add_option("--seed", e->d.base_seed, "Base seed")->capture_default_str();
  exp->add_option("--split", e->split, "train | heldout")->capture_default_str();
  exp->add_option("--resolution", e->d.sampler.resolution, "Image side in pixels")->capture_default_str();
  exp->add_option("--questions", e->d.questions_per_image, "Questions per image (0: none)")->capture_default_str();
  exp->callback([e] {
    world::DatasetOptions d = e->d;
    d.split = world::parse_split(e->split, "--split");
    if (d.count < 1) throw ConfigError("--count must be at least 1");
    Progress p;
    int last = -1;
    p.on_step = [&last](int s, int t, const std::string&) {
      const int decile = 10 * s / std::max(1, t);
      if (decile != last) std::printf("[world] %d/%d images\n", s, t), std::fflush(stdout);
      last = decile;
    };
    world::export_dataset(e->out, d, p);
    std::printf("[world] wrote %s (%d %s images)\n", e->out.c_str(), d.count, world::name(d.split));
  });
}

}  // namespace iris::cli
