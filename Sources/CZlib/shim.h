#ifndef CZLIB_SHIM_H
#define CZLIB_SHIM_H
#include <zlib.h>

/* inflateInit2 is a macro that passes ZLIB_VERSION and sizeof(z_stream); Swift cannot call
   function-like macros, so this wraps it. windowBits 15 + 32 detects gzip or zlib headers. */
static inline int czlib_inflate_init_auto(z_stream *strm) {
    return inflateInit2(strm, 15 + 32);
}
/* deflateInit2 for gzip output (windowBits 15 + 16), used by tests and the generator. */
static inline int czlib_deflate_init_gzip(z_stream *strm, int level) {
    return deflateInit2(strm, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
}
#endif
