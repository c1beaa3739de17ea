/*
 * smtp_relay.c - parse MAILGATE_RELAYS: a comma-separated list of
 *   smtp://[user:pass@]host[:port][?params]     (port 25, STARTTLS)
 *   smtps://[user:pass@]host[:port][?params]    (port 465, implicit TLS)
 * with params tls=none|opportunistic|required (smtp:// only; default
 * opportunistic), verify=true|false (default true), ca=PATH, pool=N
 * (1..64, default 4), name=NAME (default "host:port"), max_msgs=N
 * (0..RELAY_MAX_MSGS_MAX, default 100, 0 = no limit), rate=N/s or rate=N
 * (messages per second, 0..RELAY_RATE_MAX, default 0 = no limit) and
 * idle=N (seconds, 0..RELAY_IDLE_MAX, default 30, 0 = no limit), joined
 * by '&'.
 *
 * Also here, as the other piece of SMTP configuration: smtp_timeouts_parse
 * for MAILGATE_SMTP_TIMEOUTS ("connect=30s,dot=10m,..."), driven by a table
 * of key, field and bounds.
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

#include "common/util.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define RELAYS_MAX 32     /* relays in one list */
#define RELAY_URL_MAX 4096 /* bytes in one relay URL */
#define RELAY_NAME_MAX 64  /* bytes in name= */
#define RELAY_POOL_MAX 64
#define RELAY_MAX_MSGS_DEFAULT 100 /* transactions per connection */
#define RELAY_MAX_MSGS_MAX 100000
#define RELAY_RATE_MAX 100000      /* messages per second */
#define RELAY_IDLE_DEFAULT 30      /* seconds */
#define RELAY_IDLE_MAX 86400

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
    static const char *const keys[] = {"tls", "verify", "ca", "pool", "name", "max_msgs", "rate", "idle"};
    const char *eq = memchr(p, '=', n);
    if (!eq)
        return relay_err(err, errlen, idx, "parameter without '='");
    size_t kn = (size_t)(eq - p);
    size_t k;
    for (k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
        if (strlen(keys[k]) == kn && strncasecmp(keys[k], p, kn) == 0)
            break;
    if (k == sizeof(keys) / sizeof(keys[0]))
        return relay_err(err, errlen, idx, "unknown parameter (known: tls, verify, ca, pool, name, max_msgs, rate, idle)");
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
    case 5: /* max_msgs */
        if (parse_int(v, strlen(v), 0, RELAY_MAX_MSGS_MAX, &r->max_msgs) < 0)
            rc = relay_err(err, errlen, idx, "max_msgs must be 0..%d", RELAY_MAX_MSGS_MAX);
        break;
    case 6: { /* rate: "N/s" or "N" */
        size_t vl = strlen(v);
        if (vl > 2 && strcmp(v + vl - 2, "/s") == 0)
            vl -= 2;
        if (parse_int(v, vl, 0, RELAY_RATE_MAX, &r->rate) < 0)
            rc = relay_err(err, errlen, idx, "rate must be N/s or N with N 0..%d", RELAY_RATE_MAX);
        break;
    }
    case 7: /* idle */
        if (parse_int(v, strlen(v), 0, RELAY_IDLE_MAX, &r->idle_s) < 0)
            rc = relay_err(err, errlen, idx, "idle must be 0..%d seconds", RELAY_IDLE_MAX);
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
    r->max_msgs = RELAY_MAX_MSGS_DEFAULT;
    r->rate = 0;
    r->idle_s = RELAY_IDLE_DEFAULT;

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

/* ---- MAILGATE_SMTP_TIMEOUTS ------------------------------------------------ */

#define TIMEOUTS_SPEC_MAX 1024 /* bytes in the whole string */

static const struct timeout_key {
    const char *name;
    size_t off; /* int field of struct smtp_timeouts, in ms */
} timeout_keys[] = {
    {"connect", offsetof(struct smtp_timeouts, connect_ms)},
    {"greeting", offsetof(struct smtp_timeouts, greeting_ms)},
    {"ehlo", offsetof(struct smtp_timeouts, ehlo_ms)},
    {"mail", offsetof(struct smtp_timeouts, mail_ms)},
    {"rcpt", offsetof(struct smtp_timeouts, rcpt_ms)},
    {"data", offsetof(struct smtp_timeouts, data_ms)},
    {"block", offsetof(struct smtp_timeouts, block_ms)},
    {"dot", offsetof(struct smtp_timeouts, dot_ms)},
};
#define NTIMEOUT_KEYS (sizeof(timeout_keys) / sizeof(timeout_keys[0]))

/* tmo_err - format the reason into err. Always returns -1. */
static int tmo_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int tmo_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* tmo_value - "250ms", "30s", "5m", "1h" or bare seconds to ms. 0 or -1. */
static int tmo_value(const char *v, int64_t *ms)
{
    size_t n = strlen(v);
    if (n > 2 && strcmp(v + n - 2, "ms") == 0) {
        /* util_parse_duration knows no "ms": take the digits ourselves */
        int64_t x = 0;
        for (size_t i = 0; i < n - 2; i++) {
            if (v[i] < '0' || v[i] > '9' || x > SMTP_TIMEOUT_MAX_MS)
                return -1;
            x = x * 10 + (v[i] - '0');
        }
        *ms = x;
        return 0;
    }
    if (n > 0 && v[n - 1] == 'd') /* days make no sense for one SMTP wait */
        return -1;
    return util_parse_duration(v, ms);
}

int smtp_timeouts_parse(const char *spec, struct smtp_timeouts *t, char *err, size_t errlen)
{
    struct smtp_timeouts nt = *t;
    unsigned seen = 0;
    if (!spec)
        return 0;
    if (strlen(spec) > TIMEOUTS_SPEC_MAX)
        return tmo_err(err, errlen, "timeouts: longer than %d bytes", TIMEOUTS_SPEC_MAX);
    const char *p = spec;
    while (*p) {
        const char *comma = strchr(p, ',');
        const char *e = comma ? comma : p + strlen(p);
        const char *s = p;
        while (s < e && (*s == ' ' || *s == '\t'))
            s++;
        const char *ie = e;
        while (ie > s && (ie[-1] == ' ' || ie[-1] == '\t'))
            ie--;
        if (s == ie) {
            if (!comma && s == spec + strspn(spec, " \t") && !*s)
                break; /* only blanks */
            return tmo_err(err, errlen, "timeouts: empty item");
        }
        const char *eq = memchr(s, '=', (size_t)(ie - s));
        if (!eq)
            return tmo_err(err, errlen, "timeouts: item without '=' (want key=duration)");
        size_t kn = (size_t)(eq - s);
        while (kn > 0 && (s[kn - 1] == ' ' || s[kn - 1] == '\t'))
            kn--;
        size_t k;
        for (k = 0; k < NTIMEOUT_KEYS; k++)
            if (strlen(timeout_keys[k].name) == kn && strncasecmp(timeout_keys[k].name, s, kn) == 0)
                break;
        if (k == NTIMEOUT_KEYS)
            return tmo_err(err, errlen,
                           "timeouts: unknown key (known: connect, greeting, ehlo, mail, rcpt, data, block, dot)");
        if (seen & (1u << k))
            return tmo_err(err, errlen, "timeouts: %s given twice", timeout_keys[k].name);
        seen |= 1u << k;
        const char *v = eq + 1;
        while (v < ie && (*v == ' ' || *v == '\t'))
            v++;
        char val[32];
        int64_t ms = -1;
        size_t vn = (size_t)(ie - v);
        if (vn == 0 || vn >= sizeof(val))
            return tmo_err(err, errlen, "timeouts: bad duration for %s", timeout_keys[k].name);
        memcpy(val, v, vn);
        val[vn] = '\0';
        if (tmo_value(val, &ms) < 0 || ms < 1 || ms > SMTP_TIMEOUT_MAX_MS)
            return tmo_err(err, errlen, "timeouts: %s must be 1ms..24h (e.g. 250ms, 30s, 5m, 1h)",
                           timeout_keys[k].name);
        *(int *)(void *)((char *)&nt + timeout_keys[k].off) = (int)ms;
        if (!comma)
            break;
        p = comma + 1;
        if (!*p)
            return tmo_err(err, errlen, "timeouts: empty item");
    }
    *t = nt;
    return 0;
}
