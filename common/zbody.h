/*
 * zbody.h - compression of stored message bodies.
 *
 * A queued message's rendered body waits in Redis, in memory, until every
 * recipient is done; text and HTML mail shrink to a third or less with
 * DEFLATE (RFC 1951), so the body is stored compressed when that pays.
 * The stored form is self-describing: a packed body begins with the four
 * bytes "\0MZ1" (an RFC 5322 message never begins with NUL), then the
 * original length as 4 bytes big-endian, then a raw DEFLATE stream.
 * Anything else is a body stored as is (small ones, ones that do not
 * shrink, and bodies written before compression existed).
 *
 * zlib streams are kept per thread and reset between uses, so packing a
 * message costs no allocation beyond the output buffer.
 */
#ifndef MG_ZBODY_H
#define MG_ZBODY_H

#include <stddef.h>

#include "common/buf.h"

#define ZBODY_MIN 512     /* bytes: smaller bodies are stored as they are */
#define ZBODY_HEADER 8    /* bytes of the packed form before the DEFLATE data */

/* zbody_pack - compress n bytes at in into out (reset first) when the
 * result is at least one eighth smaller and n >= ZBODY_MIN. Returns 1 when
 * out holds the packed form, 0 when the body should be stored as it is
 * (out is then empty), -1 when memory ran out. Thread-safe. */
int zbody_pack(const char *in, size_t n, struct buf *out);

/* zbody_packed - 1 when the n bytes at p begin as a packed body does (the
 * four magic bytes; whether the rest is sound is zbody_unpack's to say),
 * else 0. */
int zbody_packed(const char *p, size_t n);

/* zbody_unpack - the original bytes of a packed body p (n bytes) into out
 * (reset first; NUL-terminated like every buf). Returns 1 when unpacked,
 * 0 when p is not packed (use it as it is; out is untouched), -1 when the
 * data is corrupt, does not match its recorded length, or that length
 * exceeds max bytes. Thread-safe. */
int zbody_unpack(const char *p, size_t n, size_t max, struct buf *out);

#endif
