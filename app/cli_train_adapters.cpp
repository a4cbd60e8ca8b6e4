// iris train ip-adapter | style | sk-adapter: adapter training with the backbone frozen.
#include <algorithm>
#include <cstdio>
#include <memory>

#include "app/cli.h"
#include "core/runtime.h"
#include "pipelines/adapter_training.h"
#include "pipelines/style_training.h"

namespace iris::cli {

namespace {

void add_adapter_trainer(CLI::App* train, const std::string& name, const std::string& help, AdapterKind kind) {
  auto* cmd = train->add_subcommand(name, help);
  if (kind == AdapterKind::Skeleton) cmd->alias("skeleton");
  auto o = std::make_shared<AdapterTrainOptions>();
  auto threads = std::make_shared<int>(0);
  o->kind = kind;
  cmd->add_option("--model", o->model, "Stable Diffusion folder (the frozen backbone)")->required();
  cmd->add_option("--data", o->data, "Tinyworld dataset folder (captions.jsonl, images/, skeletons/)")->required();
  cmd->add_option("--out", o->out, "Output folder: the adapter file(s) and checkpoint/")->required();
  cmd->add_option("--steps", o->steps, "Total optimizer steps")->capture_default_str();
  cmd->add_option("--batch", o->batch, "Images per step")->capture_default_str();
  cmd->add_option("--lr", o->lr, "AdamW learning rate (constant)")->capture_default_str();
  cmd->add_option("--weight-decay", o->weight_decay, "AdamW weight decay")->capture_default_str();
  cmd->add_option("--grad-clip", o->grad_clip, "Gradient-norm clip (<= 0: off)")->capture_default_str();
  cmd->add_option("--seed", o->seed, "Seed of the batches, timesteps, noise and dropout")->capture_default_str();
  cmd->add_option("--resolution", o->resolution, "Resize images to this square size (0: as stored)");
  cmd->add_option("--max-images", o->max_images, "Use at most this many images (0: all)");
  cmd->add_option("--drop-text", o->drop_text, "Probability of dropping the caption only")->capture_default_str();
  cmd->add_option("--drop-cond", o->drop_cond, "Probability of dropping the condition only")->capture_default_str();
  cmd->add_option("--drop-both", o->drop_both, "Probability of dropping both")->capture_default_str();
  if (kind == AdapterKind::IpAdapter) {
    cmd->add_flag("--f16", o->f16, "Write the adapter (and a trained image encoder) in F16");
    cmd->add_option("--image-encoder", o->image_encoder,
                    "Image encoder instead of the model's image_encoder/: a CLIP vision folder or a LLaVA folder "
                    "(its vision tower; --plus only)");
    cmd->add_flag("--plus", o->ip_plus,
                  "IP-Adapter Plus: a resampler over the image encoder's patch features (16 tokens)");
    cmd->add_flag("--train-image-encoder", o->train_image_encoder,
                  "Train the CLIP image encoder with the adapter (written to OUT/image_encoder/, which the "
                  "loader then uses with the adapter file beside it)");
    cmd->add_option("--text-teacher", o->text_teacher,
                    "Image-only samples: share of the target taken from the frozen UNet's prediction given a "
                    "caption stating every attribute (0: off)")
        ->capture_default_str();
    cmd->add_option("--caption-regression", o->caption_regression,
                    "With --plus: weight of an MSE pulling the image tokens onto the text encoder's states of "
                    "the scene's complete caption (one token per text position; 0: off)")
        ->capture_default_str();
    cmd->add_option("--regression-space", o->regression_space,
                    "Where caption regression measures the error: text (plain MSE on the text states) or kv "
                    "(weighted by what the UNet's attn2 keys and values read of it)")
        ->capture_default_str();
    cmd->add_option("--denoising-weight", o->denoising_weight,
                    "Weight of the denoising loss (0 with --caption-regression: train the image projection alone; "
                    "to_k_ip / to_v_ip stay copies of to_k / to_v)")
        ->capture_default_str();
    cmd->add_option("--patch-labels", o->patch_labels,
                    "With --plus --train-image-encoder: weight of linear read-outs of each patch's colour, shape "
                    "and size and the scene's style and background from the encoder's patch features (0: off)")
        ->capture_default_str();
  }
  if (kind == AdapterKind::Skeleton)
    cmd->add_option("--limb-weight", o->limb_weight,
                    "Extra loss weight on latent cells under the figure's limbs (0: plain MSE)")
        ->capture_default_str();
  if (kind != AdapterKind::Skeleton)
    cmd->add_option("--object-weight", o->object_weight,
                    "Extra loss weight on latent cells covering the scene's objects and figure (0: plain MSE)")
        ->capture_default_str();
  cmd->add_option("--checkpoint-every", o->checkpoint_every, "Steps between checkpoints (0: at the end)")
      ->capture_default_str();
  cmd->add_option("--log-every", o->log_every, "Steps between progress lines")->capture_default_str();
  cmd->add_flag("--resume", o->resume, "Continue from OUT/checkpoint (same settings)");
  cmd->add_option("--device", o->device, "cpu | cuda | cuda:N | auto")->capture_default_str();
  cmd->add_option("--threads", *threads, "CPU threads (0: all cores)");
  cmd->callback([o, threads] {
    set_threads(*threads);
    AdapterTrainCallbacks cb;
    cb.log = [](const std::string& line) {
      std::printf("%s\n", line.c_str());
      std::fflush(stdout);
    };
    cb.progress.should_cancel = cancel_on_interrupt();
    const AdapterTrainResult r = train_adapter(*o, cb);
    std::printf("%s: %s after %d steps; loss on fixed samples %.5f -> %.5f\n", r.adapter_path.c_str(),
                r.cancelled ? "stopped (checkpoint saved; --resume continues)" : "trained", r.steps_done,
                r.eval_loss_before, r.eval_loss_after);
  });
}

// iris train new-style: one new style for an existing style adapter, from a folder of images.
void add_new_style_trainer(CLI::App* train) {
  auto* cmd = train->add_subcommand(
      "new-style", "Learn a new style from a folder of images for an existing style adapter (only its embedding trains)");
  struct Opts {
    NewStyleOptions o;
    int threads = 0;
  };
  auto opts = std::make_shared<Opts>();
  NewStyleOptions& o = opts->o;
  cmd->add_option("--model", o.model, "Stable Diffusion folder (the frozen backbone)")->required();
  cmd->add_option("--adapter", o.adapter, "The style adapter (style-adapter.safetensors) the style is for")->required();
  cmd->add_option("--images", o.images, "Folder of images in the style (NAME.txt beside an image: its caption)")->required();
  cmd->add_option("--name", o.name, "The style's name")->required();
  cmd->add_option("--out", o.out, "Output file (default: styles/NAME.safetensors next to the adapter)");
  cmd->add_option("--caption", o.caption, "Caption of images without a .txt (what the style should NOT absorb)");
  cmd->add_option("--description", o.description, "Stored in the style file");
  cmd->add_option("--steps", o.steps, "Optimizer steps")->capture_default_str();
  cmd->add_option("--batch", o.batch, "Images per step")->capture_default_str();
  cmd->add_option("--lr", o.lr, "Learning rate (Adam, constant)")->capture_default_str();
  cmd->add_option("--drop-text", o.drop_text, "Probability of dropping the caption")->capture_default_str();
  cmd->add_option("--seed", o.seed, "Seed of the batches, timesteps and noise")->capture_default_str();
  cmd->add_option("--resolution", o.resolution, "Square training size (0: the model's)")->capture_default_str();
  cmd->add_option("--max-images", o.max_images, "Use at most this many images (0: all)")->capture_default_str();
  cmd->add_option("--device", o.device, "cpu | cuda | cuda:N | auto")->capture_default_str();
  cmd->add_option("--threads", opts->threads, "CPU threads (0: all cores)");
  cmd->callback([opts] {
    opts->o.validate();
    set_threads(opts->threads);
    NewStyleCallbacks cb;
    cb.should_cancel = cancel_on_interrupt();
    const int every = std::max(1, opts->o.steps / 20);
    cb.on_step = [every](int step, int total, double loss) {
      if (step % every == 0 || step == total) std::printf("[new-style] step %d/%d  loss %.5f\n", step, total, loss);
      std::fflush(stdout);
    };
    const NewStyleResult r = train_new_style(opts->o, cb);
    if (r.cancelled) throw Cancelled("new style: interrupted; the style so far is in " + r.path);
  });
}

}  // namespace

void add_train_adapters_command(CLI::App& app) {
  CLI::App* train = train_command(app);
  add_adapter_trainer(train, "ip-adapter", "Train an IP-Adapter (image projection + per-layer K/V)",
                      AdapterKind::IpAdapter);
  add_adapter_trainer(train, "style", "Train PokeFusion style attention (style bank + projection + decoder K/V)",
                      AdapterKind::Style);
  add_adapter_trainer(train, "sk-adapter", "Train an SK-Adapter (skeleton encoder + per-layer K/V)",
                      AdapterKind::Skeleton);
  add_new_style_trainer(train);
}

}  // namespace iris::cli
