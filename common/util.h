/*
 * util.h - small helpers that know nothing of mail: time, ids, hashing.
 */
#ifndef MG_UTIL_H
#define MG_UTIL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* util_now_ms - wall-clock time in ms since the Unix epoch. */
int64_t util_now_ms(void);

/* util_mono_ms - monotonic clock in ms, for timeouts. */
int64_t util_mono_ms(void);

/* util_rfc3339 - format ms since the epoch as "2026-11-30T09:00:00.123Z"
 * into out (at least 32 bytes). Returns out. */
char *util_rfc3339(int64_t ms, char *out, size_t outlen);

/* util_parse_rfc3339 - parse an RFC 3339 time (any offset) to ms since the
 * epoch. Returns 0, or -1 when s is not a valid RFC 3339 date-time. */
int util_parse_rfc3339(const char *s, int64_t *ms);

/* util_random_bytes - fill p with n fresh bytes from OpenSSL's CSPRNG
 * (RAND_bytes; seeded from the OS). For secrets. Returns 0/-1. */
int util_random_bytes(void *p, size_t n);

/* util_hex - lower-case hex of n bytes into out (2n+1 bytes). */
void util_hex(const void *p, size_t n, char *out);

/* util_new_id - a time-ordered unique id: 12 hex digits of ms time then
 * 20 random hex digits (32 chars + NUL into out[33]). Sorting ids as
 * strings sorts them by creation time. */
void util_new_id(char out[33]);

/* util_sha256_hex - SHA-256 of p as 64 hex digits + NUL into out[65]. */
void util_sha256_hex(const void *p, size_t n, char out[65]);

/* util_hmac_sha256 - HMAC-SHA256 (OpenSSL EVP_MAC) over the two parts a
 * then b (b may be empty), keyed with key; mac gets 32 bytes. 0 or -1. */
int util_hmac_sha256(const void *key, size_t keylen, const void *a, size_t alen, const void *b, size_t blen,
                     unsigned char mac[32]);

/* util_ct_equal - compare two n-byte strings in constant time. 1 if equal. */
int util_ct_equal(const void *a, const void *b, size_t n);

/* util_parse_duration - "90s", "5m", "2h", "5d" (or bare seconds) to ms.
 * Returns 0, or -1 on a bad value. */
int util_parse_duration(const char *s, int64_t *ms);

/* util_has_crlf - 1 when s contains CR or LF. */
int util_has_crlf(const char *s);

/* util_utf8_valid - 1 when the n bytes at s are well-formed UTF-8 with no
 * NUL byte. */
int util_utf8_valid(const char *s, size_t n);

/* util_seterr - format a reason into err (when err and errlen are set)
 * and return -1, so error paths read "return util_seterr(err, len, ...)". */
int util_seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* util_deadline - the CLOCK_REALTIME instant ms from now, as the struct
 * timespec pthread_timedjoin_np and friends take. */
struct timespec util_deadline(int ms);

/* util_nap - sleep about ms milliseconds in steps of at most 100 ms,
 * returning early once *stop becomes non-zero (stop may be NULL). */
void util_nap(int ms, atomic_int *stop);

/* util_strlcpy - BSD strlcpy: copy with truncation, always NUL-terminated
 * when size > 0. Returns strlen(src). */
size_t util_strlcpy(char *dst, const char *src, size_t size);

#endif
