/*
 * gw_track.c - open and click tracking and one-click unsubscribe: the
 * signed tokens, the public routes /t/o/{token} (pixel), /t/c/{token}
 * (redirect) and /t/u/{token} (unsubscribe), and the heuristics that tell
 * a person's open or click from a machine's.
 *
 * Token (see gw.h): base64url(payload) "." base64url(mac), where payload
 * is "1" kind LF tenant LF message-id LF recipient [LF url] and mac the
 * first GW_TRACK_MAC_BYTES of HMAC-SHA256(key, "mailgate-track-v1" NUL
 * payload). The version digit lets the format change; the context string
 * keeps these MACs apart from anything else the key might one day sign.
 * A token carries all it needs, so it outlives the message's retention:
 * the event then goes to the tenant's log without the message record.
 *
 * Machine heuristics (documented in README "Tracking and unsubscribe"):
 *  - opens: Apple Mail Privacy Protection fetches every image through
 *    Apple's proxy when the mail arrives, whether or not it is read; that
 *    proxy sends a User-Agent of exactly "Mozilla/5.0" and nothing else,
 *    which no real mail client or browser does. Gmail's image proxy
 *    ("GoogleImageProxy") fetches when a person opens the mail: human.
 *    Known scanners (and requests without a User-Agent) are machines.
 *  - clicks: security gateways (Safe Links, Mimecast, Proofpoint, ...)
 *    follow every link as soon as the mail arrives. A click less than
 *    GW_CLICK_SCANNER_WINDOW_MS after the recipient's "delivered" event,
 *    or from a known scanner User-Agent (or none), is a machine's.
 * Both are heuristics: events are recorded either way, flagged.
 *
 * SECURITY:
 *  - Tokens are verified in constant time (CRYPTO_memcmp) before any field
 *    is used; a forged, altered, truncated or malformed token is a 404 that
 *    looks like any unknown route (no oracle), never a redirect. Base64url
 *    must be canonical, so no two spellings of one token exist.
 *  - The redirect target comes only from a verified token: never an open
 *    redirect. URLs with control characters are never signed, so the
 *    Location header cannot be split.
 *  - GET /t/u only shows a page; only POST unsubscribes (mail scanners
 *    follow GET links).
 *  - The key (MAILGATE_SECRET or mg:secret) is never logged; tokens are not
 *    logged either (they name recipients).
 *  - The client IP is the TCP peer: X-Forwarded-For is not trusted.
 */
#include "gateway/gw.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <microhttpd.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/log.h"
#include "common/util.h"

#define TRACK_CONTEXT "mailgate-track-v1" /* MAC domain separation (with its NUL) */
#define TRACK_VERSION '1'
#define TRACK_UA_MAX 512                  /* bytes of a User-Agent kept in an event */

/* ---- base64url (RFC 4648 §5, no padding) ------------------------------ */

static const char b64u[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* b64u_encode - append n bytes as unpadded base64url. 0 or -1 (full). */
static int b64u_encode(const unsigned char *p, size_t n, struct buf *out)
{
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16;
        if (i + 1 < n)
            v |= (unsigned)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        size_t chars = i + 2 < n ? 4 : i + 1 < n ? 3 : 2;
        for (size_t k = 0; k < chars; k++)
            if (buf_putc(out, b64u[(v >> (18 - 6 * k)) & 63]) < 0)
                return -1;
    }
    return 0;
}

/* b64u_decode - strict: only the alphabet, no padding, and the bits left
 * over at the end must be zero (one spelling per byte string). out must
 * hold 3 * n / 4 bytes. Returns the decoded length, or -1. */
static long b64u_decode(const char *s, size_t n, unsigned char *out)
{
    if (n % 4 == 1)
        return -1;
    unsigned v = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p = s[i] ? memchr(b64u, s[i], 64) : NULL;
        if (!p)
            return -1;
        v = ((v << 6) | (unsigned)(p - b64u)) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)((v >> bits) & 0xff);
        }
    }
    if (v & ((1u << bits) - 1))
        return -1;
    return (long)o;
}

/* ---- tokens ------------------------------------------------------------- */

/* token_mac - HMAC-SHA256(key, context NUL payload) into mac[32]. 0 / -1. */
static int token_mac(const unsigned char *key, size_t keylen, const unsigned char *payload, size_t n,
                     unsigned char mac[32])
{
    return util_hmac_sha256(key, keylen, TRACK_CONTEXT, sizeof(TRACK_CONTEXT), payload, n, mac);
}

/* field_ok - 1 when s is a non-empty token field shorter than max with no
 * control character (LF separates fields; CR would reach a header). */
static int field_ok(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n >= max)
        return 0;
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return 0;
    return 1;
}

int gw_token_sign(const unsigned char *key, size_t keylen, const struct gw_token *t, struct buf *out)
{
    if (!key || keylen == 0 || (t->kind != 'o' && t->kind != 'c' && t->kind != 'u') ||
        !field_ok(t->tenant, sizeof(t->tenant)) || !field_ok(t->msg_id, sizeof(t->msg_id)) ||
        !field_ok(t->rcpt, sizeof(t->rcpt)) || (t->kind == 'c' && !field_ok(t->url, sizeof(t->url))))
        return -1;
    struct buf p;
    buf_init(&p, GW_TRACK_TOKEN_MAX);
    int rc = buf_printf(&p, "%c%c\n%s\n%s\n%s", TRACK_VERSION, t->kind, t->tenant, t->msg_id, t->rcpt);
    if (rc == 0 && t->kind == 'c')
        rc = buf_printf(&p, "\n%s", t->url);
    unsigned char mac[32];
    size_t before = out->len;
    if (rc == 0)
        rc = token_mac(key, keylen, (const unsigned char *)p.data, p.len, mac);
    if (rc == 0)
        rc = b64u_encode((const unsigned char *)p.data, p.len, out) < 0 || buf_putc(out, '.') < 0 ||
                     b64u_encode(mac, GW_TRACK_MAC_BYTES, out) < 0
                 ? -1
                 : 0;
    if (rc == 0 && out->len - before > GW_TRACK_TOKEN_MAX)
        rc = -1;
    if (rc < 0 && out->data) { /* leave out as it was */
        out->len = before;
        out->data[before] = '\0';
    }
    buf_free(&p);
    return rc;
}

/* take_field - copy the bytes up to the next LF (or the end when last) of
 * [*p, end) into dst (size dstlen) and step past them. 0 or -1. */
static int take_field(const char **p, const char *end, int last, char *dst, size_t dstlen)
{
    const char *nl = last ? end : memchr(*p, '\n', (size_t)(end - *p));
    if (!nl)
        return -1;
    size_t n = (size_t)(nl - *p);
    if (n == 0 || n >= dstlen || memchr(*p, '\0', n))
        return -1;
    memcpy(dst, *p, n);
    dst[n] = '\0';
    *p = nl + (last ? 0 : 1);
    return field_ok(dst, dstlen) ? 0 : -1;
}

int gw_token_verify(const unsigned char *key, size_t keylen, const char *token, size_t len, struct gw_token *t)
{
    memset(t, 0, sizeof(*t));
    if (!key || keylen == 0 || !token || len == 0 || len > GW_TRACK_TOKEN_MAX)
        return -1;
    const char *dot = memchr(token, '.', len);
    if (!dot)
        return -1;
    size_t plen = (size_t)(dot - token), mlen = len - plen - 1;
    unsigned char given[GW_TRACK_MAC_BYTES + 3], mac[32];
    if (mlen != (GW_TRACK_MAC_BYTES * 4 + 2) / 3 || b64u_decode(dot + 1, mlen, given) != GW_TRACK_MAC_BYTES)
        return -1;
    unsigned char *payload = malloc(plen * 3 / 4 + 3);
    if (!payload)
        return -1;
    long n = b64u_decode(token, plen, payload);
    int rc = n >= 6 && token_mac(key, keylen, payload, (size_t)n, mac) == 0 &&
                     CRYPTO_memcmp(mac, given, GW_TRACK_MAC_BYTES) == 0
                 ? 0
                 : -1;
    /* authentic from here on: parse what we signed ourselves */
    if (rc == 0) {
        const char *p = (const char *)payload, *end = p + n;
        t->kind = p[1];
        if (p[0] != TRACK_VERSION || (t->kind != 'o' && t->kind != 'c' && t->kind != 'u') || p[2] != '\n')
            rc = -1;
        p += 3;
        if (rc == 0)
            rc = take_field(&p, end, 0, t->tenant, sizeof(t->tenant)) < 0 ||
                         take_field(&p, end, 0, t->msg_id, sizeof(t->msg_id)) < 0 ||
                         take_field(&p, end, t->kind != 'c', t->rcpt, sizeof(t->rcpt)) < 0 ||
                         (t->kind == 'c' && take_field(&p, end, 1, t->url, sizeof(t->url)) < 0)
                     ? -1
                     : 0;
    }
    OPENSSL_cleanse(mac, sizeof(mac));
    free(payload);
    if (rc < 0)
        memset(t, 0, sizeof(*t));
    return rc;
}

/* ---- the signing key ---------------------------------------------------- */

static pthread_mutex_t key_mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned char key_cache[GW_TRACK_KEY_MAX];
static size_t key_cache_len;

int gw_track_key(const struct gw_config *c, struct queue *q, unsigned char *key, size_t *keylen)
{
    if (c->secret_len) {
        memcpy(key, c->secret, c->secret_len);
        *keylen = c->secret_len;
        return 0;
    }
    int rc = 0;
    pthread_mutex_lock(&key_mu);
    if (!key_cache_len) {
        size_t n = 0;
        if (!q || queue_secret_get(q, GW_SECRET_GEN_BYTES, key_cache, sizeof(key_cache), &n) < 0)
            rc = -1;
        else
            key_cache_len = n;
    }
    if (rc == 0) {
        memcpy(key, key_cache, key_cache_len);
        *keylen = key_cache_len;
    }
    pthread_mutex_unlock(&key_mu);
    return rc;
}

/* ---- machine heuristics ------------------------------------------------- */

/* User-Agent fragments of link scanners, security gateways, link
 * previewers and HTTP libraries (ASCII case-insensitive). */
static const char *const scanner_agents[] = {
    "bot/", "bot;", "bot ", "+http", "crawler", "spider", "barracuda", "mimecast", "proofpoint",
    "urldefense", "safelinks", "symantec", "messagelabs", "forcepoint", "trendmicro", "zscaler",
    "fortiguard", "sophos", "ironport", "headlesschrome", "phantomjs", "bingpreview", "facebookexternalhit",
    "skypeuripreview", "curl/", "wget/", "python-requests", "python-urllib", "go-http-client", "java/",
    "libwww-perl", "okhttp", "apache-httpclient", NULL};

static int contains_ci(const char *s, const char *w)
{
    size_t n = strlen(w);
    for (; *s; s++)
        if (!strncasecmp(s, w, n))
            return 1;
    return 0;
}

static int scanner_agent(const char *ua)
{
    if (!ua || !*ua)
        return 1;
    for (const char *const *a = scanner_agents; *a; a++)
        if (contains_ci(ua, *a))
            return 1;
    return 0;
}

int gw_track_open_machine(const char *user_agent)
{
    if (user_agent && contains_ci(user_agent, "GoogleImageProxy"))
        return 0; /* fetched when a person opens the mail in Gmail */
    if (user_agent && !strcmp(user_agent, "Mozilla/5.0"))
        return 1; /* Apple Mail Privacy Protection's prefetch */
    return scanner_agent(user_agent);
}

int gw_track_click_machine(const char *user_agent, int64_t delivered_ms, int64_t now_ms)
{
    if (scanner_agent(user_agent))
        return 1;
    /* a scanner follows links as the mail arrives; a person takes longer
     * (a clock a little behind another process counts as "just now") */
    return delivered_ms > 0 && now_ms - delivered_ms < GW_CLICK_SCANNER_WINDOW_MS;
}

/* ---- the routes ---------------------------------------------------------- */

/* A 1x1 transparent GIF89a (43 bytes). */
static const unsigned char pixel_gif[] = {
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b};

/* not_found - the answer to a bad token: the same as an unknown route. */
static void not_found(struct gw_resp *resp)
{
    gw_error(resp, 404, "not_found", NULL, "no such route");
}

/* token_for - verify token as kind into *t. 0; or -1 with resp set (404,
 * or 503 when the key is in Redis and Redis is away). */
static int token_for(struct gw_req *req, struct gw_resp *resp, const char *token, char kind, struct gw_token *t)
{
    unsigned char key[GW_TRACK_KEY_MAX];
    size_t keylen = 0;
    if (gw_track_key(req->cfg, req->q, key, &keylen) < 0) {
        gw_error(resp, 503, "unavailable", NULL, "the queue store (Redis) is unavailable; retry shortly");
        util_strlcpy(resp->retry_after, "5", sizeof(resp->retry_after));
        return -1;
    }
    int rc = gw_token_verify(key, keylen, token, strlen(token), t);
    OPENSSL_cleanse(key, sizeof(key));
    if (rc < 0 || t->kind != kind) {
        not_found(resp);
        return -1;
    }
    return 0;
}

/* client_ip - the TCP peer's address as text into out (>= 64 bytes). */
static void client_ip(struct gw_req *req, char *out, size_t outlen)
{
    util_strlcpy(out, "", outlen);
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr)
        return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out, (socklen_t)outlen);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out, (socklen_t)outlen);
}

/* user_agent - the request's User-Agent, capped and valid UTF-8, into out;
 * returns out, or NULL when there is none. */
static const char *user_agent(struct gw_req *req, char *out, size_t outlen)
{
    const char *ua = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "User-Agent");
    if (!ua)
        return NULL;
    size_t n = util_strlcpy(out, ua, outlen);
    if (n >= outlen)
        n = outlen - 1;
    while (n > 0 && !util_utf8_valid(out, n)) /* cut at a whole character */
        out[--n] = '\0';
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)out[i] < 0x20)
            out[i] = ' ';
    return out;
}

/* record - record an event of type for the token's recipient; extra's
 * members (stolen) are added to it. *machine (may be NULL) gets the
 * verdict the caller's judge gave, with the delivery time known. Returns
 * 0 or -1 (logged). */
static int record(struct gw_req *req, const struct gw_token *t, const char *type, json_t *extra,
                  int (*judge)(const char *ua, int64_t delivered_ms), const char *ua)
{
    struct queue_track_info info;
    if (!req->q || queue_track_load(req->q, t->tenant, t->msg_id, t->rcpt, &info) < 0) {
        json_decref(extra);
        log_kv(LOG_WARN, "track_not_recorded", "type", type, "message_id", t->msg_id, "reason", "redis unavailable",
               NULL);
        return -1;
    }
    json_t *ev = queue_event_new(type, t->msg_id, t->rcpt, info.tags, info.metadata);
    json_object_update(ev, extra);
    json_decref(extra);
    if (judge)
        json_object_set_new(ev, "machine", json_boolean(judge(ua, info.delivered_ms)));
    int rc = queue_track_event(req->q, t->tenant, t->msg_id, info.exists, ev);
    if (rc < 0)
        log_kv(LOG_WARN, "track_not_recorded", "type", type, "message_id", t->msg_id, "reason", "redis error", NULL);
    else if (!strcmp(type, "opened") || !strcmp(type, "clicked"))
        gw_count(type[0] == 'o' ? GW_C_OPENED : GW_C_CLICKED, 1);
    if (rc >= 0)
        log_kv(LOG_DEBUG, "tracked", "type", type, "message_id", t->msg_id, "tenant", t->tenant,
               "machine", json_is_true(json_object_get(ev, "machine")) ? "1" : "0", NULL);
    json_decref(ev);
    queue_track_info_free(&info);
    return rc;
}

static int judge_open(const char *ua, int64_t delivered_ms)
{
    (void)delivered_ms;
    return gw_track_open_machine(ua);
}

static int judge_click(const char *ua, int64_t delivered_ms)
{
    return gw_track_click_machine(ua, delivered_ms, util_now_ms());
}

/* client_fields - {user_agent, ip} of the request. */
static json_t *client_fields(struct gw_req *req, const char *ua)
{
    char ip[64];
    client_ip(req, ip, sizeof(ip));
    return json_pack("{s:s?, s:s?}", "user_agent", ua, "ip", ip[0] ? ip : NULL);
}

void gw_track_open(struct gw_req *req, struct gw_resp *resp, const char *token)
{
    struct gw_token *t = malloc(sizeof(*t));
    if (!t) {
        gw_error(resp, 500, "internal", NULL, "out of memory");
        return;
    }
    if (token_for(req, resp, token, 'o', t) == 0) {
        char uab[TRACK_UA_MAX];
        const char *ua = user_agent(req, uab, sizeof(uab));
        /* HEAD fetches nothing a person sees: answered, not counted. A
         * failure to record still shows the pixel. */
        if (strcmp(req->method, "HEAD") != 0)
            record(req, t, "opened", client_fields(req, ua), judge_open, ua);
        resp->status = 200;
        resp->text = malloc(sizeof(pixel_gif));
        if (resp->text) {
            memcpy(resp->text, pixel_gif, sizeof(pixel_gif));
            resp->text_len = sizeof(pixel_gif);
        }
        resp->text_type = "image/gif";
        resp->no_store = 1;
    }
    free(t);
}

void gw_track_click(struct gw_req *req, struct gw_resp *resp, const char *token)
{
    struct gw_token *t = malloc(sizeof(*t));
    if (!t) {
        gw_error(resp, 500, "internal", NULL, "out of memory");
        return;
    }
    if (token_for(req, resp, token, 'c', t) == 0) {
        char uab[TRACK_UA_MAX];
        const char *ua = user_agent(req, uab, sizeof(uab));
        if (strcmp(req->method, "HEAD") != 0) {
            json_t *extra = client_fields(req, ua);
            json_object_set_new(extra, "url", json_string(t->url));
            record(req, t, "clicked", extra, judge_click, ua);
        }
        /* the signed URL, exactly; only a space (which a browser would
         * send as %20 anyway) is escaped for the header */
        struct buf loc;
        buf_init(&loc, 3 * MIME_TRACK_URL_MAX + 1);
        for (const char *p = t->url; *p; p++)
            if (*p == ' ' ? buf_puts(&loc, "%20") < 0 : buf_putc(&loc, *p) < 0)
                break;
        resp->status = 302;
        resp->location = buf_steal(&loc);
        resp->no_store = 1;
    }
    free(t);
}

/* html_escape - s escaped for HTML text into out. */
static void html_escape(const char *s, struct buf *out)
{
    mime_html_attr_escape(s, strlen(s), out);
}

void gw_track_unsubscribe(struct gw_req *req, struct gw_resp *resp, const char *token)
{
    struct gw_token *t = malloc(sizeof(*t));
    if (!t) {
        gw_error(resp, 500, "internal", NULL, "out of memory");
        return;
    }
    if (token_for(req, resp, token, 'u', t) < 0) {
        free(t);
        return;
    }
    struct buf page;
    buf_init(&page, 16384);
    buf_puts(&page, "<!doctype html>\n<html><head><meta charset=\"utf-8\">"
                    "<meta name=\"viewport\" content=\"width=device-width\">"
                    "<meta name=\"robots\" content=\"noindex\"><title>Unsubscribe</title></head>\n"
                    "<body style=\"font-family:sans-serif;max-width:32em;margin:3em auto;padding:0 1em\">\n");
    if (!strcmp(req->method, "POST")) {
        /* RFC 8058 one-click (body "List-Unsubscribe=One-Click") or the
         * button below: either way the person asked, so it is done. */
        if (!req->q || queue_supp_add(req->q, t->tenant, t->rcpt, "unsubscribed", NULL) < 0 ||
            record(req, t, "unsubscribed", json_object(), NULL, NULL) < 0) {
            gw_error(resp, 503, "unavailable", NULL, "the queue store (Redis) is unavailable; retry shortly");
            util_strlcpy(resp->retry_after, "5", sizeof(resp->retry_after));
            buf_free(&page);
            free(t);
            return;
        }
        log_kv(LOG_INFO, "unsubscribed", "tenant", t->tenant, "message_id", t->msg_id, NULL);
        buf_puts(&page, "<h1>You are unsubscribed</h1>\n<p><b>");
        html_escape(t->rcpt, &page);
        buf_puts(&page, "</b> will get no more of these emails.</p>\n");
    } else {
        /* GET only asks: link scanners follow GET links. */
        buf_puts(&page, "<h1>Unsubscribe</h1>\n<p>Stop sending these emails to <b>");
        html_escape(t->rcpt, &page);
        buf_puts(&page, "</b>?</p>\n<form method=\"post\">"
                        "<input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">"
                        "<button type=\"submit\">Unsubscribe</button></form>\n");
    }
    buf_puts(&page, "</body></html>\n");
    resp->status = 200;
    resp->text = buf_steal(&page);
    resp->text_type = "text/html; charset=utf-8";
    resp->no_store = 1;
    free(t);
}
