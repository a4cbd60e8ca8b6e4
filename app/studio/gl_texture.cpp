#include "app/studio/gl_texture.h"

#include <algorithm>
#include <utility>

#define GL_SILENCE_DEPRECATION
#include <GL/gl.h>

namespace iris::studio {

GlTexture::~GlTexture() {
  if (id_) glDeleteTextures(1, &id_);
}

GlTexture::GlTexture(GlTexture&& o) noexcept : id_(std::exchange(o.id_, 0)), w_(o.w_), h_(o.h_) {}

GlTexture& GlTexture::operator=(GlTexture&& o) noexcept {
  if (this != &o) {
    if (id_) glDeleteTextures(1, &id_);
    id_ = std::exchange(o.id_, 0);
    w_ = o.w_;
    h_ = o.h_;
  }
  return *this;
}

void GlTexture::upload(const Image& img, bool smooth) {
  if (img.empty()) return;
  Image rgba(img.width, img.height, 4);  // RGBA: every channel count uploads the same way
  for (size_t i = 0, n = static_cast<size_t>(img.width) * img.height; i < n; ++i) {
    const uint8_t* s = &img.pixels[i * img.channels];
    uint8_t* d = &rgba.pixels[i * 4];
    if (img.channels >= 3) {
      d[0] = s[0], d[1] = s[1], d[2] = s[2];
    } else {
      d[0] = d[1] = d[2] = s[0];
    }
    d[3] = img.channels == 4 ? s[3] : img.channels == 2 ? s[1] : 255;
  }
  if (!id_) glGenTextures(1, &id_);
  glBindTexture(GL_TEXTURE_2D, id_);
  const GLint filter = smooth ? GL_LINEAR : GL_NEAREST;
  glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_MIN_FILTER, filter);
  glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_MAG_FILTER, filter);
  glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_WRAP_S, GL_CLAMP_TO_EDGE);
  glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_WRAP_T, GL_CLAMP_TO_EDGE);
  glPixelStorei(GL_UNPACK_ALIGNMENT, 1);
  glTexImage2D(GL_TEXTURE_2D, 0, GL_RGBA, img.width, img.height, 0, GL_RGBA, GL_UNSIGNED_BYTE, rgba.pixels.data());
  w_ = img.width;
  h_ = img.height;
}

Image read_framebuffer(int width, int height) {
  Image img(width, height, 3);
  std::vector<uint8_t> rows(img.pixels.size());
  glPixelStorei(GL_PACK_ALIGNMENT, 1);
  glReadBuffer(GL_BACK);
  glReadPixels(0, 0, width, height, GL_RGB, GL_UNSIGNED_BYTE, rows.data());
  for (int y = 0; y < height; ++y)  // GL rows go bottom to top
    std::copy_n(rows.data() + static_cast<size_t>(height - 1 - y) * img.row_bytes(), img.row_bytes(), img.row(y));
  return img;
}

}  // namespace iris::studio
