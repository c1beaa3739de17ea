/*
 * util.c - time, ids, hashing (see util.h).
 */
#include "common/util.h"

#include <ctype.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>

int64_t util_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t util_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

char *util_rfc3339(int64_t ms, char *out, size_t outlen)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
    return out;
}

static int util_digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++, (*p)++) {
        if (!isdigit((unsigned char)**p))
            return -1;
        v = v * 10 + (**p - '0');
    }
    *out = v;
    return 0;
}

int util_parse_rfc3339(const char *s, int64_t *ms)
{
    int Y, M, D, h, m, sec, frac = 0;
    const char *p = s;
    if (util_digits(&p, 4, &Y) || *p++ != '-' || util_digits(&p, 2, &M) || *p++ != '-' ||
        util_digits(&p, 2, &D) || (*p != 'T' && *p != 't' && *p != ' '))
        return -1;
    p++;
    if (util_digits(&p, 2, &h) || *p++ != ':' || util_digits(&p, 2, &m) || *p++ != ':' ||
        util_digits(&p, 2, &sec))
        return -1;
    if (*p == '.') {
        p++;
        int nd = 0;
        while (isdigit((unsigned char)*p)) {
            if (nd < 3)
                frac = frac * 10 + (*p - '0');
            nd++;
            p++;
        }
        if (nd == 0)
            return -1;
        for (; nd < 3; nd++)
            frac *= 10;
    }
    int off = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1, oh, om;
        p++;
        if (util_digits(&p, 2, &oh) || *p++ != ':' || util_digits(&p, 2, &om))
            return -1;
        off = sign * (oh * 60 + om);
    } else {
        return -1;
    }
    if (*p || M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60)
        return -1;
    struct tm tm = {.tm_year = Y - 1900, .tm_mon = M - 1, .tm_mday = D,
                    .tm_hour = h, .tm_min = m, .tm_sec = sec};
    time_t t = timegm(&tm);
    *ms = ((int64_t)t - (int64_t)off * 60) * 1000 + frac;
    return 0;
}

int util_random_bytes(void *p, size_t n)
{
    /* OpenSSL's DRBG (seeded and reseeded from the OS): fresh bytes for
     * every call, without a system call for each. Used for secrets. */
    if (n > INT_MAX || RAND_bytes(p, (int)n) != 1)
        return -1;
    return 0;
}

void util_hex(const void *p, size_t n, char *out)
{
    static const char hx[] = "0123456789abcdef";
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hx[c[i] >> 4];
        out[2 * i + 1] = hx[c[i] & 15];
    }
    out[2 * n] = '\0';
}

/* id_random - n (<= ID_POOL) random bytes for an id, from this thread's
 * pool, refilled with one call when it runs out (before: one getrandom per
 * id). Ids must be unique, not secret: keys and tokens use
 * util_random_bytes. */
#define ID_POOL 256
static void id_random(unsigned char *out, size_t n)
{
    static _Thread_local unsigned char pool[ID_POOL];
    static _Thread_local size_t left;
    if (left < n) {
        if (util_random_bytes(pool, sizeof(pool)) < 0) {
            if (getrandom(out, n, 0) < 0) /* the OS directly, as before */
                memset(out, 0, n);
            return;
        }
        left = sizeof(pool);
    }
    memcpy(out, pool + sizeof(pool) - left, n);
    left -= n;
}

void util_new_id(char out[33])
{
    unsigned char r[10];
    id_random(r, sizeof(r));
    snprintf(out, 13, "%012llx", (unsigned long long)util_now_ms() & 0xffffffffffffULL);
    util_hex(r, sizeof(r), out + 12);
}

void util_sha256_hex(const void *p, size_t n, char out[65])
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_Digest(p, n, md, &mdlen, EVP_sha256(), NULL);
    util_hex(md, 32, out);
}

int util_ct_equal(const void *a, const void *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}

int util_parse_duration(const char *s, int64_t *ms)
{
    char *end;
    if (!s || !isdigit((unsigned char)*s))
        return -1;
    long long v = strtoll(s, &end, 10);
    long long mult = 1000;
    if (*end == 's')
        end++;
    else if (*end == 'm')
        mult = 60000, end++;
    else if (*end == 'h')
        mult = 3600000, end++;
    else if (*end == 'd')
        mult = 86400000, end++;
    if (*end || v < 0 || v > 3650LL * 86400)
        return -1;
    *ms = v * mult;
    return 0;
}

int util_has_crlf(const char *s)
{
    return strpbrk(s, "\r\n") != NULL;
}

int util_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *e = p + n;
    while (p < e) {
        unsigned c = *p;
        size_t k;
        unsigned min;
        if (c == 0)
            return 0;
        if (c < 0x80) {
            p++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            k = 1, min = 0x80, c &= 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            k = 2, min = 0x800, c &= 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            k = 3, min = 0x10000, c &= 0x07;
        } else {
            return 0;
        }
        if ((size_t)(e - p) <= k)
            return 0;
        for (size_t i = 1; i <= k; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return 0;
            c = (c << 6) | (p[i] & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
            return 0;
        p += k + 1;
    }
    return 1;
}

size_t util_strlcpy(char *dst, const char *src, size_t size)
{
    size_t n = strlen(src);
    if (size) {
        size_t k = n < size - 1 ? n : size - 1;
        memcpy(dst, src, k);
        dst[k] = '\0';
    }
    return n;
}

int util_seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

void util_nap(int ms, atomic_int *stop)
{
    while (ms > 0 && !(stop && atomic_load(stop))) {
        int step = ms < 100 ? ms : 100;
        struct timespec ts = {0, (long)step * 1000000L};
        nanosleep(&ts, NULL);
        ms -= step;
    }
}

int util_hmac_sha256(const void *key, size_t keylen, const void *a, size_t alen, const void *b, size_t blen,
                     unsigned char mac[32])
{
    size_t maclen = 0;
    int ok = 0;
    EVP_MAC *m = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = m ? EVP_MAC_CTX_new(m) : NULL;
    if (ctx) {
        char digest[] = "SHA256";
        OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                               OSSL_PARAM_construct_end()};
        ok = EVP_MAC_init(ctx, key, keylen, params) == 1 && EVP_MAC_update(ctx, a, alen) == 1 &&
             (blen == 0 || EVP_MAC_update(ctx, b, blen) == 1) && EVP_MAC_final(ctx, mac, &maclen, 32) == 1 &&
             maclen == 32;
    }
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(m);
    return ok ? 0 : -1;
}

struct timespec util_deadline(int ms)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}
