/*
 * zbody.c - DEFLATE (RFC 1951) packing of stored message bodies (see
 * zbody.h), on zlib.
 *
 * Level 1 (zlib's fastest): on mail text it already takes most of the
 * gain, at a few microseconds per kilobyte. One deflate and one inflate
 * stream per thread, made on first use and reset after each body, freed
 * when the thread ends.
 */
#include "common/zbody.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define ZBODY_LEVEL 1
#define ZBODY_WINDOW_BITS -15   /* raw DEFLATE, 32 KB window */
#define ZBODY_MEM_LEVEL 8
static const unsigned char magic[4] = {0, 'M', 'Z', '1'};

struct zstreams {
    z_stream def, inf;
    int def_ok, inf_ok;
};

static pthread_key_t zkey;
static pthread_once_t zonce = PTHREAD_ONCE_INIT;

static void zstreams_free(void *arg)
{
    struct zstreams *z = arg;
    if (z->def_ok)
        deflateEnd(&z->def);
    if (z->inf_ok)
        inflateEnd(&z->inf);
    free(z);
}

static void zkey_make(void)
{
    pthread_key_create(&zkey, zstreams_free);
}

/* zstreams - this thread's streams (made on first use), or NULL. */
static struct zstreams *zstreams(void)
{
    pthread_once(&zonce, zkey_make);
    struct zstreams *z = pthread_getspecific(zkey);
    if (!z) {
        z = calloc(1, sizeof(*z));
        if (!z || pthread_setspecific(zkey, z) != 0) {
            free(z);
            return NULL;
        }
    }
    return z;
}

int zbody_packed(const char *p, size_t n)
{
    /* the magic alone decides: a body cut short inside the header is a
     * damaged packed body, not a message that begins with NUL */
    return n >= sizeof(magic) && memcmp(p, magic, sizeof(magic)) == 0;
}

int zbody_pack(const char *in, size_t n, struct buf *out)
{
    buf_reset(out);
    if (n < ZBODY_MIN || n > UINT32_MAX)
        return 0;
    struct zstreams *z = zstreams();
    if (!z)
        return -1;
    if (!z->def_ok) {
        if (deflateInit2(&z->def, ZBODY_LEVEL, Z_DEFLATED, ZBODY_WINDOW_BITS, ZBODY_MEM_LEVEL,
                         Z_DEFAULT_STRATEGY) != Z_OK)
            return -1;
        z->def_ok = 1;
    }
    /* worth it only when at least an eighth smaller */
    size_t room = n - n / 8 - ZBODY_HEADER;
    if (buf_reserve(out, ZBODY_HEADER + room) < 0)
        return -1;
    unsigned char *o = (unsigned char *)out->data;
    memcpy(o, magic, sizeof(magic));
    o[4] = (unsigned char)(n >> 24);
    o[5] = (unsigned char)(n >> 16);
    o[6] = (unsigned char)(n >> 8);
    o[7] = (unsigned char)n;
    z->def.next_in = (Bytef *)(uintptr_t)in;
    z->def.avail_in = (uInt)n;
    z->def.next_out = o + ZBODY_HEADER;
    z->def.avail_out = (uInt)room;
    int rc = deflate(&z->def, Z_FINISH);
    size_t made = room - z->def.avail_out;
    deflateReset(&z->def);
    if (rc != Z_STREAM_END) /* Z_OK / Z_BUF_ERROR: it did not fit in room */
        return 0;
    buf_extend(out, ZBODY_HEADER + made);
    return 1;
}

int zbody_unpack(const char *p, size_t n, size_t max, struct buf *out)
{
    if (!zbody_packed(p, n))
        return 0;
    if (n <= ZBODY_HEADER)
        return -1;
    const unsigned char *u = (const unsigned char *)p;
    size_t len = (size_t)u[4] << 24 | (size_t)u[5] << 16 | (size_t)u[6] << 8 | (size_t)u[7];
    if (len == 0 || len > max) /* zbody_pack never packs an empty body */
        return -1;
    struct zstreams *z = zstreams();
    if (!z)
        return -1;
    if (!z->inf_ok) {
        if (inflateInit2(&z->inf, ZBODY_WINDOW_BITS) != Z_OK)
            return -1;
        z->inf_ok = 1;
    }
    buf_reset(out);
    if (buf_reserve(out, len) < 0)
        return -1;
    z->inf.next_in = (Bytef *)(uintptr_t)(u + ZBODY_HEADER);
    z->inf.avail_in = (uInt)(n - ZBODY_HEADER);
    z->inf.next_out = (Bytef *)out->data;
    z->inf.avail_out = (uInt)len;
    int rc = inflate(&z->inf, Z_FINISH);
    int whole = rc == Z_STREAM_END && z->inf.avail_out == 0 && z->inf.avail_in == 0;
    inflateReset(&z->inf);
    if (!whole)
        return -1;
    buf_extend(out, len);
    return 1;
}
