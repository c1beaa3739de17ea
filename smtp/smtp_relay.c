/*
 * smtp_relay.c - parse MAILGATE_RELAYS: a comma-separated list of
 *   smtp://[user:pass@]host[:port][?params]     (port 25, STARTTLS)
 *   smtps://[user:pass@]host[:port][?params]    (port 465, implicit TLS)
 * with params tls=none|opportunistic|required (smtp:// only; default
 * opportunistic), verify=true|false (default true), ca=PATH, pool=N
 * (1..64, default 4) and name=NAME (default "host:port"), joined by '&'.
 *
 * User, password and parameter values are percent-decoded. An IPv6 literal
 * goes in brackets ("smtp://[::1]:2525"). Unknown or repeated parameters,
 * a path, an empty list item and out-of-range values are errors: this runs
 * once at start-up and a typo should stop it, not be ignored.
 *
 * SECURITY: error texts name the relay by its position and the part that
 * is wrong, never the URL itself, so the password cannot leak into a log.
 * Decoded credentials may not contain NUL, CR or LF (they go into AUTH
 * lines). Passwords are wiped before their memory is freed.
 */
#include "smtp/smtp.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define RELAYS_MAX 32     /* relays in one list */
#define RELAY_URL_MAX 4096 /* bytes in one relay URL */
#define RELAY_NAME_MAX 64  /* bytes in name= */
#define RELAY_POOL_MAX 64

/* relay_err - format "relay N: ..." into err. Always returns -1. */
static int relay_err(char *err, size_t errlen, size_t idx, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int relay_err(char *err, size_t errlen, size_t idx, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return -1;
    int n = snprintf(err, errlen, "relay %zu: ", idx + 1);
    if (n < 0 || (size_t)n >= errlen)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* pct_decode - malloc'd, percent-decoded copy of p[0..n). Returns NULL on a
 * bad escape, a decoded NUL, CR or LF, or ENOMEM. */
static char *pct_decode(const char *p, size_t n)
{
    char *out = malloc(n + 1);
    size_t o = 0;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '%') {
            if (i + 2 >= n)
                goto bad;
            int hi = hexval(p[i + 1]), lo = hexval(p[i + 2]);
            if (hi < 0 || lo < 0)
                goto bad;
            c = (unsigned char)(hi * 16 + lo);
            i += 2;
        }
        if (c == '\0' || c == '\r' || c == '\n')
            goto bad;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return out;
bad:
    memset(out, 0, n + 1);
    free(out);
    return NULL;
}

/* host_ok - 1 for a plausible DNS name or IPv4 literal: letters, digits,
 * '-', '.', '_' only. */
static int host_ok(const char *h)
{
    if (!*h || strlen(h) > 253)
        return 0;
    for (; *h; h++)
        if (!((*h >= 'a' && *h <= 'z') || (*h >= 'A' && *h <= 'Z') || (*h >= '0' && *h <= '9') ||
              *h == '-' || *h == '.' || *h == '_'))
            return 0;
    return 1;
}

/* parse_int - decimal p[0..n) within [lo, hi]. Returns 0 or -1. */
static int parse_int(const char *p, size_t n, int lo, int hi, int *out)
{
    long v = 0;
    if (n == 0 || n > 6)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    if (v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

static void relay_clear(struct smtp_relay *r)
{
    free(r->name);
    free(r->host);
    free(r->ca);
    free(r->user);
    if (r->pass) {
        memset(r->pass, 0, strlen(r->pass));
        free(r->pass);
    }
    memset(r, 0, sizeof(*r));
}

/* param_set - apply one "key=value" parameter. seen is a bit set of the
 * keys already given. Returns 0 or -1 with err set. */
static int param_set(struct smtp_relay *r, int smtps, const char *p, size_t n, unsigned *seen,
                     size_t idx, char *err, size_t errlen)
{
    static const char *const keys[] = {"tls", "verify", "ca", "pool", "name"};
    const char *eq = memchr(p, '=', n);
    if (!eq)
        return relay_err(err, errlen, idx, "parameter without '='");
    size_t kn = (size_t)(eq - p);
    size_t k;
    for (k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
        if (strlen(keys[k]) == kn && strncasecmp(keys[k], p, kn) == 0)
            break;
    if (k == sizeof(keys) / sizeof(keys[0]))
        return relay_err(err, errlen, idx, "unknown parameter (known: tls, verify, ca, pool, name)");
    if (*seen & (1u << k))
        return relay_err(err, errlen, idx, "parameter %s given twice", keys[k]);
    *seen |= 1u << k;

    char *v = pct_decode(eq + 1, n - kn - 1);
    if (!v)
        return relay_err(err, errlen, idx, "bad %%-escape in parameter %s", keys[k]);
    int rc = 0;
    switch (k) {
    case 0: /* tls */
        if (smtps)
            rc = relay_err(err, errlen, idx, "tls= is for smtp:// only (smtps:// is always TLS)");
        else if (strcmp(v, "none") == 0)
            r->tls = SMTP_TLS_NONE;
        else if (strcmp(v, "opportunistic") == 0)
            r->tls = SMTP_TLS_OPPORTUNISTIC;
        else if (strcmp(v, "required") == 0)
            r->tls = SMTP_TLS_REQUIRED;
        else
            rc = relay_err(err, errlen, idx, "tls must be none, opportunistic or required");
        break;
    case 1: /* verify */
        if (strcmp(v, "true") == 0)
            r->verify = 1;
        else if (strcmp(v, "false") == 0)
            r->verify = 0;
        else
            rc = relay_err(err, errlen, idx, "verify must be true or false");
        break;
    case 2: /* ca */
        if (!*v) {
            rc = relay_err(err, errlen, idx, "ca must not be empty");
            break;
        }
        r->ca = v;
        v = NULL;
        break;
    case 3: /* pool */
        if (parse_int(v, strlen(v), 1, RELAY_POOL_MAX, &r->pool) < 0)
            rc = relay_err(err, errlen, idx, "pool must be 1..%d", RELAY_POOL_MAX);
        break;
    case 4: /* name */
        if (!*v || strlen(v) > RELAY_NAME_MAX) {
            rc = relay_err(err, errlen, idx, "name must be 1..%d bytes", RELAY_NAME_MAX);
            break;
        }
        for (const char *c = v; *c; c++)
            if ((unsigned char)*c < 0x20 || *c == 0x7f) {
                rc = relay_err(err, errlen, idx, "name has control characters");
                break;
            }
        if (rc == 0) {
            r->name = v;
            v = NULL;
        }
        break;
    }
    free(v);
    return rc;
}

/* relay_parse - parse one URL u[0..n) into r (zeroed by the caller).
 * Returns 0 or -1 with err set; r may be partly filled either way. */
static int relay_parse(const char *u, size_t n, struct smtp_relay *r, size_t idx, char *err,
                       size_t errlen)
{
    int smtps;
    const char *end = u + n;

    if (n > RELAY_URL_MAX)
        return relay_err(err, errlen, idx, "URL longer than %d bytes", RELAY_URL_MAX);
    if (n >= 7 && strncasecmp(u, "smtp://", 7) == 0) {
        smtps = 0;
        u += 7;
    } else if (n >= 8 && strncasecmp(u, "smtps://", 8) == 0) {
        smtps = 1;
        u += 8;
    } else {
        return relay_err(err, errlen, idx, "URL must start with smtp:// or smtps://");
    }
    r->port = smtps ? 465 : 25;
    r->tls = smtps ? SMTP_TLS_IMPLICIT : SMTP_TLS_OPPORTUNISTIC;
    r->verify = 1;
    r->pool = 4;

    const char *q = memchr(u, '?', (size_t)(end - u));
    const char *auth_end = q ? q : end;
    /* a lone trailing "/" is tolerated; any other path is a mistake */
    if (auth_end > u && auth_end[-1] == '/')
        auth_end--;

    /* userinfo: up to the last '@' before the host, so an unescaped '@' in
     * a password still works */
    const char *at = NULL;
    for (const char *c = u; c < auth_end; c++)
        if (*c == '@')
            at = c;
    if (at) {
        const char *colon = memchr(u, ':', (size_t)(at - u));
        if (!colon)
            return relay_err(err, errlen, idx, "user given without a password (user:pass@host)");
        r->user = pct_decode(u, (size_t)(colon - u));
        r->pass = pct_decode(colon + 1, (size_t)(at - colon - 1));
        if (!r->user || !r->pass)
            return relay_err(err, errlen, idx, "bad %%-escape or control character in user or password");
        if (!*r->user)
            return relay_err(err, errlen, idx, "empty user name");
        u = at + 1;
    }

    const char *hs = u, *he, *portp = NULL;
    if (u < auth_end && *u == '[') {
        const char *rb = memchr(u, ']', (size_t)(auth_end - u));
        if (!rb)
            return relay_err(err, errlen, idx, "missing ']' after IPv6 address");
        hs = u + 1;
        he = rb;
        if (rb + 1 < auth_end) {
            if (rb[1] != ':')
                return relay_err(err, errlen, idx, "unexpected text after ']'");
            portp = rb + 2;
        }
    } else {
        he = u;
        while (he < auth_end && *he != ':')
            he++;
        if (he < auth_end)
            portp = he + 1;
    }
    r->host = strndup(hs, (size_t)(he - hs));
    if (!r->host)
        return relay_err(err, errlen, idx, "out of memory");
    if (hs != u) {
        struct in6_addr a6;
        if (inet_pton(AF_INET6, r->host, &a6) != 1)
            return relay_err(err, errlen, idx, "bad IPv6 address in brackets");
    } else if (!host_ok(r->host)) {
        return relay_err(err, errlen, idx, "missing or bad host name");
    }
    if (portp && parse_int(portp, (size_t)(auth_end - portp), 1, 65535, &r->port) < 0)
        return relay_err(err, errlen, idx, "port must be 1..65535");
    if (memchr(hs, '/', (size_t)(auth_end - hs)))
        return relay_err(err, errlen, idx, "URL must not have a path");

    if (q) {
        unsigned seen = 0;
        const char *p = q + 1;
        while (p < end) {
            const char *amp = memchr(p, '&', (size_t)(end - p));
            const char *pe = amp ? amp : end;
            if (pe == p)
                return relay_err(err, errlen, idx, "empty parameter");
            if (param_set(r, smtps, p, (size_t)(pe - p), &seen, idx, err, errlen) < 0)
                return -1;
            p = amp ? amp + 1 : end;
            if (amp && p == end)
                return relay_err(err, errlen, idx, "empty parameter");
        }
    }
    if (!r->name) {
        size_t nl = strlen(r->host) + 16;
        r->name = malloc(nl);
        if (!r->name)
            return relay_err(err, errlen, idx, "out of memory");
        snprintf(r->name, nl, hs != u ? "[%s]:%d" : "%s:%d", r->host, r->port);
    }
    return 0;
}

int smtp_relays_parse(const char *spec, struct smtp_relay **out, size_t *n, char *err, size_t errlen)
{
    struct smtp_relay *v = NULL;
    size_t cnt = 0;

    *out = NULL;
    *n = 0;
    if (!spec)
        spec = "";
    const char *p = spec;
    for (;;) {
        const char *comma = strchr(p, ',');
        const char *e = comma ? comma : p + strlen(p);
        const char *s = p;
        while (s < e && (*s == ' ' || *s == '\t'))
            s++;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if (s == e) {
            if (!comma && cnt == 0 && !*spec)
                relay_err(err, errlen, 0, "no relay given");
            else
                relay_err(err, errlen, cnt, "empty item in the list");
            goto fail;
        }
        if (cnt == RELAYS_MAX) {
            relay_err(err, errlen, cnt, "more than %d relays", RELAYS_MAX);
            goto fail;
        }
        struct smtp_relay *nv = realloc(v, (cnt + 1) * sizeof(*v));
        if (!nv) {
            relay_err(err, errlen, cnt, "out of memory");
            goto fail;
        }
        v = nv;
        memset(&v[cnt], 0, sizeof(v[cnt]));
        cnt++;
        if (relay_parse(s, (size_t)(e - s), &v[cnt - 1], cnt - 1, err, errlen) < 0)
            goto fail;
        if (!comma)
            break;
        p = comma + 1;
    }
    *out = v;
    *n = cnt;
    return 0;
fail:
    smtp_relays_free(v, cnt);
    return -1;
}

void smtp_relays_free(struct smtp_relay *v, size_t n)
{
    if (!v)
        return;
    for (size_t i = 0; i < n; i++)
        relay_clear(&v[i]);
    free(v);
}
