/*
 * buf.h - bounded, growable byte buffers.
 *
 * Every buffer has a maximum size fixed when it is created (curl's rule:
 * nothing untrusted grows without bound). Appends past the maximum fail and
 * leave the buffer unchanged. data is always NUL-terminated for convenience;
 * len does not count the NUL. A zeroed struct buf is a valid empty buffer
 * with no limit other than BUF_HARD_MAX.
 */
#ifndef MG_BUF_H
#define MG_BUF_H

#include <stdarg.h>
#include <stddef.h>

#define BUF_HARD_MAX ((size_t)64 * 1024 * 1024) /* 64 MiB: nothing we build is larger */

struct buf {
    char *data;   /* owned; NUL-terminated; NULL until the first append */
    size_t len;   /* bytes used, not counting the NUL */
    size_t cap;   /* bytes allocated */
    size_t max;   /* largest len allowed; 0 means BUF_HARD_MAX */
};

/* buf_init - empty buffer that may hold at most max bytes (0: BUF_HARD_MAX). */
void buf_init(struct buf *b, size_t max);

/* buf_append - append n bytes. Returns 0, or -1 (buffer unchanged) when the
 * result would exceed the maximum or memory runs out. */
int buf_append(struct buf *b, const void *p, size_t n);

/* buf_puts - append a NUL-terminated string; as buf_append. */
int buf_puts(struct buf *b, const char *s);

/* buf_putc - append one byte; as buf_append. */
int buf_putc(struct buf *b, char c);

/* buf_printf - append printf-formatted text; as buf_append. */
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int buf_vprintf(struct buf *b, const char *fmt, va_list ap);

/* buf_reserve - make room for n more bytes (and the NUL) without using
 * them, so that a producer such as zlib can write at data + len; then
 * buf_extend says how many it wrote. 0, or -1 (unchanged) when the result
 * would exceed the maximum or memory runs out. */
int buf_reserve(struct buf *b, size_t n);

/* buf_extend - count n more bytes, already written at data + len, as used
 * (n at most what the last buf_reserve made room for). */
void buf_extend(struct buf *b, size_t n);

/* buf_reset - empty the buffer, keeping its memory and maximum. */
void buf_reset(struct buf *b);

/* buf_truncate - cut the buffer back to len bytes (len <= b->len), e.g.
 * to undo a partial append after an error. Memory and maximum are kept. */
void buf_truncate(struct buf *b, size_t len);

/* buf_consume - drop the first n bytes (n <= len), moving the rest down. */
void buf_consume(struct buf *b, size_t n);

/* buf_steal - hand the data (NUL-terminated, caller frees with free()) to
 * the caller and leave the buffer empty. Never returns NULL. */
char *buf_steal(struct buf *b);

/* buf_free - release the memory; safe on a zeroed or freed buffer. */
void buf_free(struct buf *b);

#endif
