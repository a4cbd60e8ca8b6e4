#pragma once
// OpenGL textures for images shown with ImGui::Image, and reading the framebuffer back for
// screenshots. Needs a current GL context (the GUI thread).
#include <cstdint>

#include "core/image.h"

namespace iris::studio {

class GlTexture {
 public:
  GlTexture() = default;
  ~GlTexture();
  GlTexture(const GlTexture&) = delete;
  GlTexture& operator=(const GlTexture&) = delete;
  GlTexture(GlTexture&& o) noexcept;
  GlTexture& operator=(GlTexture&& o) noexcept;

  // Uploads an 8-bit image (1, 3 or 4 channels); `smooth`: linear filtering, else nearest
  // (tiny previews stay crisp when scaled up).
  void upload(const Image& img, bool smooth);
  bool valid() const { return id_ != 0; }
  void* imgui_id() const { return reinterpret_cast<void*>(static_cast<intptr_t>(id_)); }
  int width() const { return w_; }
  int height() const { return h_; }

 private:
  unsigned id_ = 0;
  int w_ = 0, h_ = 0;
};

// The current framebuffer's w x h pixels as RGB, rows top to bottom.
Image read_framebuffer(int width, int height);

}  // namespace iris::studio
