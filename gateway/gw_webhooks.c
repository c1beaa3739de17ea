/*
 * gw_webhooks.c - the webhook API: POST and GET /v1/webhooks, DELETE
 * /v1/webhooks/{id}, GET /v1/webhooks/{id}/deliveries (scope "webhooks"),
 * and the SSRF guard's address rule that the dispatcher applies again to
 * every connection it opens.
 *
 * Limits: a URL is http(s), at most GW_WEBHOOK_URL_MAX bytes, printable
 * ASCII without spaces; a tenant has at most QUEUE_WH_MAX webhooks; the
 * attempt log keeps QUEUE_WH_LOG_MAX entries per webhook.
 * SECURITY (SSRF): unless MAILGATE_WEBHOOK_ALLOW_PRIVATE=true, a URL whose
 * host resolves to any loopback, private, CGNAT, link-local, unique-local,
 * unspecified, multicast or reserved address is refused with 422. The
 * answer of DNS can change afterwards, so the dispatcher vets the address
 * of every socket it connects, too (gw_dispatch.c); this check only gives
 * the user an early, clear error.
 * SECURITY (secrets): the signing secret ("whsec_" + 64 hex digits from
 * the OS CSPRNG) is returned once, in the 201 answer, and never listed or
 * logged. URLs may carry credentials, so they are not logged either.
 */
#include "gateway/gw.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "common/util.h"

/* The event types a webhook may ask for (contract "Events"). */
static const char *const wh_types[] = {"queued",    "delivered", "deferred", "bounced",      "suppressed",
                                       "cancelled", "opened",    "clicked",  "unsubscribed", NULL};

static void redis_down(struct gw_resp *resp)
{
    gw_error(resp, 503, "unavailable", NULL, "the queue store (Redis) is unavailable");
    util_strlcpy(resp->retry_after, "5", sizeof(resp->retry_after));
}

/* ---- the SSRF guard ----------------------------------------------------- */

/* v4_public - 1 when the IPv4 address a (host order) is public unicast. */
static int v4_public(uint32_t a)
{
    static const struct {
        uint32_t net;
        int bits;
    } blocked[] = {
        {0x00000000, 8},  /* 0.0.0.0/8 "this network", incl. 0.0.0.0 */
        {0x0A000000, 8},  /* 10/8 private */
        {0x64400000, 10}, /* 100.64/10 CGNAT */
        {0x7F000000, 8},  /* 127/8 loopback */
        {0xA9FE0000, 16}, /* 169.254/16 link-local (cloud metadata) */
        {0xAC100000, 12}, /* 172.16/12 private */
        {0xC0000000, 24}, /* 192.0.0/24 IETF protocol assignments */
        {0xC0A80000, 16}, /* 192.168/16 private */
        {0xC6120000, 15}, /* 198.18/15 benchmarking */
        {0xE0000000, 4},  /* 224/4 multicast */
        {0xF0000000, 4},  /* 240/4 reserved, incl. 255.255.255.255 */
    };
    for (size_t i = 0; i < sizeof(blocked) / sizeof(blocked[0]); i++) {
        uint32_t mask = 0xFFFFFFFFu << (32 - blocked[i].bits);
        if ((a & mask) == blocked[i].net)
            return 0;
    }
    return 1;
}

int gw_webhook_addr_public(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        return v4_public(ntohl(s4->sin_addr.s_addr));
    }
    if (sa->sa_family != AF_INET6)
        return 0;
    const unsigned char *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    static const unsigned char zero[12] = {0};
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
    static const unsigned char nat64[12] = {0x00, 0x64, 0xFF, 0x9B, 0, 0, 0, 0, 0, 0, 0, 0};
    uint32_t v4 = (uint32_t)b[12] << 24 | (uint32_t)b[13] << 16 | (uint32_t)b[14] << 8 | b[15];
    /* ::/96 (::, ::1 and the old IPv4-compatible form), ::ffff:0:0/96
     * (IPv4-mapped) and 64:ff9b::/96 (NAT64) reach an IPv4 address: judge
     * that one. */
    if (!memcmp(b, zero, 12))
        return v4 > 1 && v4_public(v4);
    if (!memcmp(b, mapped, 12) || !memcmp(b, nat64, 12))
        return v4_public(v4);
    if ((b[0] & 0xFE) == 0xFC)                  /* fc00::/7 unique-local */
        return 0;
    if (b[0] == 0xFE && (b[1] & 0xC0) == 0x80)  /* fe80::/10 link-local */
        return 0;
    if (b[0] == 0xFE && (b[1] & 0xC0) == 0xC0)  /* fec0::/10 old site-local */
        return 0;
    if (b[0] == 0xFF)                           /* ff00::/8 multicast */
        return 0;
    return 1;
}

int gw_webhook_url_check(const char *url, int allow_private, char *err, size_t errlen)
{
    size_t n = strlen(url);
    if (n == 0 || n > GW_WEBHOOK_URL_MAX) {
        snprintf(err, errlen, "url must be 1 to %d characters", GW_WEBHOOK_URL_MAX);
        return -1;
    }
    for (const unsigned char *p = (const unsigned char *)url; *p; p++) {
        if (*p <= 0x20 || *p >= 0x7F) {
            snprintf(err, errlen, "url must not contain spaces, CR/LF or other control or non-ASCII characters");
            return -1;
        }
    }
    if (strncasecmp(url, "http://", 7) && strncasecmp(url, "https://", 8)) {
        snprintf(err, errlen, "url must be an http:// or https:// URL");
        return -1;
    }
    const char *auth = strstr(url, "://") + 3;
    if (*auth == '/' || strchr(url, '\\')) {
        snprintf(err, errlen, "url must name a host right after the scheme, without backslashes");
        return -1;
    }
    /* libcurl's own parser, so that the host checked here is the host the
     * dispatcher will connect to. */
    CURLU *u = curl_url();
    char *host = NULL;
    int rc = -1;
    if (!u || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !host || !host[0]) {
        snprintf(err, errlen, "url is not a valid URL with a host");
        goto out;
    }
    if (allow_private) {
        rc = 0;
        goto out;
    }
    char name[512];
    size_t hl = strlen(host);
    if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') { /* IPv6 literal */
        host[hl - 1] = '\0';
        util_strlcpy(name, host + 1, sizeof(name));
    } else {
        util_strlcpy(name, host, sizeof(name));
    }
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(name, NULL, &hints, &res) != 0 || !res) {
        snprintf(err, errlen, "url: the host does not resolve");
        goto out;
    }
    rc = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if (!gw_webhook_addr_public(ai->ai_addr)) {
            char ip[INET6_ADDRSTRLEN] = "?";
            const void *a = ai->ai_family == AF_INET ? (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
                                                     : (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
            inet_ntop(ai->ai_family, a, ip, sizeof(ip));
            snprintf(err, errlen,
                     "url resolves to %s, a loopback, private, link-local or otherwise non-public address; "
                     "webhooks must reach the public internet",
                     ip);
            rc = -1;
            break;
        }
    }
    freeaddrinfo(res);
out:
    curl_free(host);
    curl_url_cleanup(u);
    return rc;
}

/* ---- handlers ------------------------------------------------------------ */

static int type_known(const char *t)
{
    for (int i = 0; wh_types[i]; i++)
        if (!strcmp(wh_types[i], t))
            return 1;
    return 0;
}

/* events_parse - v must be a non-empty array of known type names; returns
 * a new array without repeats, or NULL with the response set. */
static json_t *events_parse(json_t *v, struct gw_resp *resp)
{
    if (!json_is_array(v) || json_array_size(v) == 0) {
        gw_error(resp, 422, "validation_error", "events",
                 "events must be a non-empty array of event types (queued, delivered, deferred, bounced, "
                 "suppressed, cancelled, opened, clicked, unsubscribed)");
        return NULL;
    }
    json_t *out = json_array();
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) {
        const char *t = json_string_value(e);
        if (!t || !type_known(t)) {
            char field[32];
            snprintf(field, sizeof(field), "events[%zu]", i);
            gw_error(resp, 422, "validation_error", field, "%s is not a known event type",
                     t ? "this" : "a non-string");
            json_decref(out);
            return NULL;
        }
        int seen = 0;
        size_t k;
        json_t *o;
        json_array_foreach(out, k, o)
            seen |= !strcmp(json_string_value(o), t);
        if (!seen)
            json_array_append_new(out, json_string(t));
    }
    return out;
}

void gw_wh_create(struct gw_req *req, struct gw_resp *resp)
{
    json_error_t jerr;
    json_t *o = json_loadb(req->body, req->bodylen, 0, &jerr);
    if (!o) {
        gw_error(resp, 400, "invalid_json", NULL, "body is not valid JSON: %s", jerr.text);
        return;
    }
    json_t *events = NULL;
    if (!json_is_object(o)) {
        gw_error(resp, 422, "validation_error", NULL, "body must be a JSON object {url, events}");
        goto out;
    }
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        if (strcmp(k, "url") && strcmp(k, "events")) {
            gw_error(resp, 422, "validation_error", k, "%.100s is not a known field (url, events)", k);
            goto out;
        }
    }
    json_t *uv = json_object_get(o, "url");
    const char *url = json_string_value(uv);
    char err[300];
    if (!url) {
        gw_error(resp, 422, "validation_error", "url", "url is required: the http(s) URL to POST events to");
        goto out;
    }
    if (strlen(url) != json_string_length(uv)) {
        gw_error(resp, 422, "validation_error", "url", "url must not contain NUL");
        goto out;
    }
    if (gw_webhook_url_check(url, req->cfg->webhook_allow_private, err, sizeof(err)) < 0) {
        gw_error(resp, 422, "validation_error", "url", "%s", err);
        goto out;
    }
    events = events_parse(json_object_get(o, "events"), resp);
    if (!events)
        goto out;
    char id[33], ts[40], secret_hex[65], secret[72];
    unsigned char raw[32];
    if (util_random_bytes(raw, sizeof(raw)) < 0) {
        gw_error(resp, 500, "internal", NULL, "no randomness available");
        goto out;
    }
    util_hex(raw, sizeof(raw), secret_hex);
    snprintf(secret, sizeof(secret), "whsec_%s", secret_hex);
    util_new_id(id);
    json_t *hook = json_pack("{s:s+, s:s, s:O, s:s, s:s}", "id", "wh_", id, "url", url, "events", events,
                             "created_at", util_rfc3339(util_now_ms(), ts, sizeof(ts)), "secret", secret);
    int rc = queue_wh_create(req->q, req->key.tenant, hook, QUEUE_WH_MAX);
    if (rc < 0) {
        redis_down(resp);
        json_decref(hook);
    } else if (rc > 0) {
        gw_error(resp, 422, "limit_exceeded", "url", "this tenant already has %d webhooks; delete one first",
                 QUEUE_WH_MAX);
        json_decref(hook);
    } else {
        resp->status = 201;
        resp->body = hook; /* the only answer that carries the secret */
    }
    memset(secret, 0, sizeof(secret));
    memset(secret_hex, 0, sizeof(secret_hex));
    memset(raw, 0, sizeof(raw));
out:
    json_decref(events);
    json_decref(o);
}

void gw_wh_list(struct gw_req *req, struct gw_resp *resp)
{
    json_t *out;
    if (queue_wh_list(req->q, req->key.tenant, &out) < 0) {
        redis_down(resp);
        return;
    }
    resp->status = 200;
    resp->body = out;
}

void gw_wh_delete(struct gw_req *req, struct gw_resp *resp, const char *id)
{
    int rc = queue_wh_id_ok(id) ? queue_wh_delete(req->q, req->key.tenant, id) : 1;
    if (rc < 0)
        redis_down(resp);
    else if (rc > 0)
        gw_error(resp, 404, "not_found", NULL, "no such webhook");
    else
        resp->status = 204;
}

void gw_wh_deliveries(struct gw_req *req, struct gw_resp *resp, const char *id)
{
    json_t *out = NULL;
    int rc = queue_wh_id_ok(id) ? queue_wh_deliveries(req->q, req->key.tenant, id, &out) : 1;
    if (rc < 0) {
        redis_down(resp);
    } else if (rc > 0) {
        gw_error(resp, 404, "not_found", NULL, "no such webhook");
    } else {
        resp->status = 200;
        resp->body = out;
    }
}
