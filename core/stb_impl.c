/* The one translation unit holding the stb_image / stb_image_write implementations
 * (Debian's headers from /usr/include/stb). It is our own TU rather than Debian's libstb so
 * that a clang libFuzzer build instruments the decoders, and so that we choose the options:
 *
 * - Only PNG, JPEG and BMP are decoded. The other stb formats are not needed, and TGA has
 *   no magic number: with it enabled, random bytes can "decode" as an image.
 * - No stdio: files are read by core/image.cpp (memory map), which also does the size and
 *   truncation checks stb lacks.
 * - PNG writing compresses with zlib instead of stb's own small deflate (smaller files). */
#include <stdlib.h>
#include <zlib.h>

/* Zeroed allocations: stb_image 2.27 can read parts of its decoder state that a malformed
 * file never set (core/image.cpp rejects the known cases first); zeros keep that defined. */
#define STBI_MALLOC(sz) calloc(1, (sz))
#define STBI_REALLOC(p, newsz) realloc((p), (newsz))
#define STBI_FREE(p) free(p)

#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#define STBI_NO_STDIO
#define STB_IMAGE_IMPLEMENTATION
#include "stb_image.h"

/* STBIW_ZLIB_COMPRESS hook: returns a malloc'ed zlib stream (stb frees it with free()).
 * stb passes its compression level (8 by default); zlib's default level 6 is used instead,
 * as it is much faster for nearly the same size. */
static unsigned char* iris_zlib_compress(unsigned char* data, int data_len, int* out_len, int quality) {
  (void)quality;
  uLongf cap = compressBound((uLong)data_len);
  unsigned char* out = (unsigned char*)malloc(cap);
  if (!out) return NULL;
  if (compress2(out, &cap, data, (uLong)data_len, Z_DEFAULT_COMPRESSION) != Z_OK) {
    free(out);
    return NULL;
  }
  *out_len = (int)cap;
  return out;
}

#define STBIW_ZLIB_COMPRESS iris_zlib_compress
#define STBI_WRITE_NO_STDIO
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include "stb_image_write.h"
