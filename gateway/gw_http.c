/*
 * gw_http.c - the HTTP API on libmicrohttpd: listener, request bodies,
 * authentication, routing and JSON responses.
 *
 * Threads: a pool of MHD threads; each keeps its own Redis connection
 * (thread-local), so a request never waits for another's Redis reply.
 * Limits: bodies over GW_BODY_MAX are answered 413, before they are read
 * in full when Content-Length says so.
 * SECURITY: the API key is hashed and compared in constant time (queue
 * layer) and never logged; every response carries X-Request-Id so a user
 * can quote it instead of sending us their data.
 */
#include "gateway/gw.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/buf.h"
#include "common/hist.h"
#include "common/log.h"
#include "common/util.h"

#define GW_THREADS 8                                     /* MHD pool: requests block on Redis, so more than cores */
#define GW_CONN_MAX 1024                                 /* connections at once */
#define GW_CONN_PER_IP_MAX 128                           /* from one client address */
#define GW_CONN_TIMEOUT_S 30                             /* idle or slow client (slow-loris) */
#define GW_BODY_INFLIGHT_MAX ((size_t)512 * 1024 * 1024) /* body bytes held across all connections */

struct gw_conn {
    struct buf body;
    int too_large;
    int busy;            /* refused: too many body bytes held server-wide */
    size_t held;         /* bytes of this body counted in gw_body_inflight */
    char request_id[40];
    uint64_t started_us; /* hist_clock_us at the first byte: API latency */
};

static atomic_size_t gw_body_inflight;

static struct MHD_Daemon *gw_daemon;
static const struct gw_config *gw_cfg;
static atomic_int gw_draining;
static pthread_key_t gw_queue_key;
static pthread_once_t gw_queue_once = PTHREAD_ONCE_INIT;

void gw_error(struct gw_resp *r, int status, const char *type, const char *field, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_decref(r->body);
    json_t *e = json_pack("{s:s, s:s}", "type", type, "message", msg);
    if (field)
        json_object_set_new(e, "field", json_string(field));
    r->body = json_pack("{s:o}", "error", e);
    r->status = status;
}

const char *gw_query(const struct gw_req *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
}

static void queue_key_destroy(void *q)
{
    queue_close(q);
}

static void queue_key_init(void)
{
    pthread_key_create(&gw_queue_key, queue_key_destroy);
}

/* thread_queue - this thread's Redis connection, made on first use and
 * closed when the thread exits. */
static struct queue *thread_queue(void)
{
    pthread_once(&gw_queue_once, queue_key_init);
    struct queue *q = pthread_getspecific(gw_queue_key);
    if (!q) {
        char err[128];
        q = queue_open(gw_cfg->redis_url, err, sizeof(err));
        pthread_setspecific(gw_queue_key, q);
    }
    return q;
}

static void unavailable(struct gw_resp *r)
{
    gw_error(r, 503, "unavailable", NULL, "the queue store (Redis) is unavailable; retry shortly");
    util_strlcpy(r->retry_after, "5", sizeof(r->retry_after));
}

/* basic_api_key - the key in "Authorization: Basic base64(api:<key>)"
 * (Mailgun's form) into key (QUEUE_KEY_MAX + 1 bytes). 0 or -1. */
static int basic_api_key(const char *h, char *key)
{
    if (!h || strncasecmp(h, "Basic ", 6) != 0)
        return -1;
    h += 6;
    while (*h == ' ')
        h++;
    size_t n = strlen(h);
    if (n == 0 || n > (QUEUE_KEY_MAX + 4) * 4 / 3 + 4)
        return -1;
    unsigned char *raw = NULL;
    size_t rawlen = 0;
    char err[128];
    if (mime_base64_decode(h, n, &raw, &rawlen, err, sizeof(err)) < 0)
        return -1;
    int rc = -1;
    if (rawlen > 4 && rawlen - 4 <= QUEUE_KEY_MAX && !memcmp(raw, "api:", 4) && !memchr(raw, '\0', rawlen)) {
        memcpy(key, raw + 4, rawlen - 4);
        key[rawlen - 4] = '\0';
        rc = 0;
    }
    free(raw);
    return rc;
}

/* authenticate - find the key where the route's auth kind says (enum
 * gw_auth: "Authorization: Bearer <key>" by default) and check it and
 * the route's scope. 0 when the request may go on; else the response is
 * set (401, 403, 503 in mailgate's shape; a compatible route reshapes). */
static int authenticate(struct gw_req *req, struct gw_resp *resp, const char *scope, int auth)
{
    char basic[QUEUE_KEY_MAX + 1];
    const char *key;
    if (auth == GW_AUTH_POSTMARK) {
        key = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "X-Postmark-Server-Token");
        if (!key || !*key || strlen(key) > QUEUE_KEY_MAX) {
            gw_error(resp, 401, "unauthorized", NULL, "missing or malformed X-Postmark-Server-Token: <api key>");
            return -1;
        }
    } else if (auth == GW_AUTH_BASIC_API) {
        if (basic_api_key(MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Authorization"), basic) < 0) {
            gw_error(resp, 401, "unauthorized", NULL, "missing or malformed Authorization: Basic api:<api key>");
            return -1;
        }
        key = basic;
    } else {
        const char *h = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Authorization");
        if (!h || strncasecmp(h, "Bearer ", 7) != 0 || strlen(h + 7) > QUEUE_KEY_MAX) {
            gw_error(resp, 401, "unauthorized", NULL, "missing or malformed Authorization: Bearer <api key>");
            return -1;
        }
        key = h + 7;
    }
    while (*key == ' ')
        key++;
    int rc = queue_key_check(req->q, key, &req->key);
    if (rc < 0) {
        unavailable(resp);
        return -1;
    }
    if (rc > 0) {
        gw_error(resp, 401, "unauthorized", NULL, "unknown or revoked API key");
        return -1;
    }
    /* scopes is a comma list; match whole words */
    char scopes[140];
    snprintf(scopes, sizeof(scopes), ",%s,", req->key.scopes);
    char want[40];
    snprintf(want, sizeof(want), ",%s,", scope);
    if (!strstr(scopes, want)) {
        gw_error(resp, 403, "forbidden", NULL, "this API key lacks the '%s' scope", scope);
        return -1;
    }
    return 0;
}

static int is_json_type(const char *ct)
{
    if (!ct)
        return 1; /* lenient: a client that sends no type still means JSON */
    while (*ct == ' ')
        ct++;
    return strncasecmp(ct, "application/json", 16) == 0 &&
           (ct[16] == '\0' || ct[16] == ';' || ct[16] == ' ');
}

/*
 * The route table. A pattern is matched segment by segment; "*" matches
 * one non-empty segment, which is passed to the handler as arg (the first
 * "*" only). scope NULL means no authentication (public routes).
 * Add a route by adding a row; keep more specific patterns first.
 */
typedef void (*gw_handler)(struct gw_req *req, struct gw_resp *resp, const char *arg);

struct gw_route {
    const char *method;
    const char *pattern;
    const char *scope;
    gw_handler handler;
    int idempotent;            /* honours the Idempotency-Key header */
};

/*
 * How a compatible surface's route differs from a /v1 route, found by its
 * handler (compat_of); a route without a row here is a plain /v1 route:
 * Bearer key, JSON bodies only, mailgate's error shape.
 */
struct gw_route_compat {
    gw_handler handler;
    int auth;                  /* enum gw_auth: where the key is read */
    int any_body;              /* POST bodies need not be JSON (the handler parses them) */
    void (*shape)(struct gw_req *req, struct gw_resp *resp); /* mailgate errors -> the provider's shape */
};

static void h_healthz(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    resp->status = 200;
    resp->body = json_pack("{s:s}", "status", "ok");
}

static void h_readyz(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    struct queue_stats st;
    if (!req->q || queue_stats_get(req->q, &st) < 0) {
        unavailable(resp);
        return;
    }
    char ts[40];
    resp->status = 200;
    resp->body = json_pack("{s:s, s:I, s:I, s:I}", "status", "ready", "queue_jobs", (json_int_t)st.stream_len,
                           "queue_delayed", (json_int_t)st.delayed, "oldest_open_age_seconds",
                           (json_int_t)(st.oldest_open_ms ? (util_now_ms() - st.oldest_open_ms) / 1000 : 0));
    if (st.oldest_open_ms)
        json_object_set_new(resp->body, "oldest_open_created_at",
                            json_string(util_rfc3339(st.oldest_open_ms, ts, sizeof(ts))));
}

static void h_send(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_send_message(req, resp);
}

static void h_cancel(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_cancel_message(req, resp, arg);
}

static void h_send_batch(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_send_batch(req, resp);
}

static void h_get_message(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_get_message(req, resp, arg);
}

static void h_list_messages(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_list_messages(req, resp);
}

static void h_list_events(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_list_events(req, resp);
}

static void h_stats(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_stats(req, resp);
}

static void h_supp_list(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_supp_list(req, resp);
}

static void h_supp_add(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_supp_add(req, resp);
}

static void h_supp_delete(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_supp_delete(req, resp, arg);
}

static void h_metrics(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_metrics(req, resp);
}

static void h_tmpl_list(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_tmpl_list(req, resp);
}

static void h_tmpl_get(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_tmpl_get(req, resp, arg);
}

static void h_tmpl_put(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_tmpl_put(req, resp, arg);
}

static void h_tmpl_delete(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_tmpl_delete(req, resp, arg);
}

static void h_tmpl_render(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_tmpl_render(req, resp, arg);
}

static void h_wh_create(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_wh_create(req, resp);
}

static void h_wh_list(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_wh_list(req, resp);
}

static void h_wh_delete(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_wh_delete(req, resp, arg);
}

static void h_wh_deliveries(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_wh_deliveries(req, resp, arg);
}

static void h_openapi(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_openapi(req, resp);
}

static void h_track_open(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_track_open(req, resp, arg);
}

static void h_track_click(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_track_click(req, resp, arg);
}

static void h_track_unsubscribe(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_track_unsubscribe(req, resp, arg);
}

static void h_pm_email(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_pm_email(req, resp);
}

static void h_pm_batch(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_pm_batch(req, resp);
}

static void h_pm_template(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_pm_template(req, resp);
}

static void h_pm_batch_template(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_pm_batch_template(req, resp);
}

static void h_sg_send(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_sg_send(req, resp);
}

static void h_rs_send(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_rs_send(req, resp);
}

static void h_rs_batch(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_rs_batch(req, resp);
}

static void h_rs_get(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_rs_get(req, resp, arg);
}

static void h_mg_send(struct gw_req *req, struct gw_resp *resp, const char *arg)
{
    gw_mg_send(req, resp, arg);
}

static const struct gw_route routes[] = {
    {"GET", "/healthz", NULL, h_healthz, 0},
    {"GET", "/readyz", NULL, h_readyz, 0},
    {"GET", "/metrics", NULL, h_metrics, 0},
    {"GET", "/v1/openapi.yaml", NULL, h_openapi, 0},
    /* tracking and unsubscribe (gw_track.c): public, the token is the proof */
    {"GET", "/t/o/*", NULL, h_track_open, 0},
    {"GET", "/t/c/*", NULL, h_track_click, 0},
    {"GET", "/t/u/*", NULL, h_track_unsubscribe, 0},
    {"POST", "/t/u/*", NULL, h_track_unsubscribe, 0},
    {"POST", "/v1/messages", "send", h_send, 1},
    {"POST", "/v1/messages/batch", "send", h_send_batch, 1},
    {"GET", "/v1/messages", "read", h_list_messages, 0},
    {"GET", "/v1/messages/*", "read", h_get_message, 0},
    {"DELETE", "/v1/messages/*", "send", h_cancel, 0},
    {"GET", "/v1/events", "read", h_list_events, 0},
    {"GET", "/v1/stats", "read", h_stats, 0},
    {"GET", "/v1/suppressions", "suppressions", h_supp_list, 0},
    {"POST", "/v1/suppressions", "suppressions", h_supp_add, 0},
    {"DELETE", "/v1/suppressions/*", "suppressions", h_supp_delete, 0},
    {"GET", "/v1/templates", "templates", h_tmpl_list, 0},
    {"POST", "/v1/templates/*/render", "templates", h_tmpl_render, 0},
    {"GET", "/v1/templates/*", "templates", h_tmpl_get, 0},
    {"PUT", "/v1/templates/*", "templates", h_tmpl_put, 0},
    {"DELETE", "/v1/templates/*", "templates", h_tmpl_delete, 0},
    {"POST", "/v1/webhooks", "webhooks", h_wh_create, 0},
    {"GET", "/v1/webhooks", "webhooks", h_wh_list, 0},
    {"GET", "/v1/webhooks/*/deliveries", "webhooks", h_wh_deliveries, 0},
    {"DELETE", "/v1/webhooks/*", "webhooks", h_wh_delete, 0},
    /* compatible surfaces (gw_compat_*.c; see compat_routes) */
    {"POST", "/email", "send", h_pm_email, 0},
    {"POST", "/email/batch", "send", h_pm_batch, 0},
    {"POST", "/email/withTemplate", "send", h_pm_template, 0},
    {"POST", "/email/batchWithTemplates", "send", h_pm_batch_template, 0},
    {"POST", "/v3/mail/send", "send", h_sg_send, 0},
    {"POST", "/emails", "send", h_rs_send, 1},
    {"POST", "/emails/batch", "send", h_rs_batch, 1},
    {"GET", "/emails/*", "read", h_rs_get, 0},
    {"POST", "/v3/*/messages", "send", h_mg_send, 0},
    {NULL, NULL, NULL, NULL, 0},
};

static const struct gw_route_compat compat_routes[] = {
    {h_pm_email, GW_AUTH_POSTMARK, 0, gw_pm_shape},
    {h_pm_batch, GW_AUTH_POSTMARK, 0, gw_pm_shape},
    {h_pm_template, GW_AUTH_POSTMARK, 0, gw_pm_shape},
    {h_pm_batch_template, GW_AUTH_POSTMARK, 0, gw_pm_shape},
    {h_sg_send, GW_AUTH_BEARER, 0, gw_sg_shape},
    {h_rs_send, GW_AUTH_BEARER, 0, gw_rs_shape},
    {h_rs_batch, GW_AUTH_BEARER, 0, gw_rs_shape},
    {h_rs_get, GW_AUTH_BEARER, 0, gw_rs_shape},
    {h_mg_send, GW_AUTH_BASIC_API, 1, gw_mg_shape},
    {NULL, 0, 0, NULL},
};

/* compat_of - the compatible-surface settings of route r; a /v1 route
 * gets the defaults (all zero). */
static const struct gw_route_compat *compat_of(const struct gw_route *r)
{
    static const struct gw_route_compat plain = {NULL, GW_AUTH_BEARER, 0, NULL};
    for (const struct gw_route_compat *c = compat_routes; r && c->handler; c++)
        if (c->handler == r->handler)
            return c;
    return &plain;
}

/* route_match - 1 when path matches pattern; the first "*" segment is
 * copied into arg (arglen bytes). */
static int route_match(const char *pattern, const char *path, char *arg, size_t arglen)
{
    int got_arg = 0;
    arg[0] = '\0';
    while (*pattern && *path) {
        if (*pattern != '/' || *path != '/')
            return 0;
        pattern++, path++;
        size_t pl = strcspn(pattern, "/"), sl = strcspn(path, "/");
        if (pl == 1 && *pattern == '*') {
            if (sl == 0)
                return 0;
            if (!got_arg) {
                if (sl >= arglen)
                    return 0;
                memcpy(arg, path, sl);
                arg[sl] = '\0';
                got_arg = 1;
            }
        } else if (pl != sl || strncmp(pattern, path, pl) != 0) {
            return 0;
        }
        pattern += pl, path += sl;
    }
    return *pattern == '\0' && *path == '\0';
}

/* idempotent_call - run a handler under an Idempotency-Key (contract
 * "Header Idempotency-Key"): a repeat with the same body bytes replays the
 * first 2xx answer; other bytes, or a repeat while the first runs, is 409. */
static void idempotent_call(const struct gw_route *r, struct gw_req *req, struct gw_resp *resp,
                            const char *arg, const char *ikey)
{
    size_t klen = strlen(ikey);
    if (klen == 0 || klen > 256 || util_has_crlf(ikey)) {
        gw_error(resp, 422, "validation_error", "Idempotency-Key", "Idempotency-Key must have 1 to 256 characters");
        return;
    }
    char route_id[128], hash[65];
    snprintf(route_id, sizeof(route_id), "%s %s", r->method, r->pattern);
    util_sha256_hex(req->body, req->bodylen, hash);
    int status = 0;
    char *body = NULL;
    int rc = queue_idem_begin(req->q, req->key.tenant, route_id, ikey, hash, &status, &body);
    switch (rc) {
    case QUEUE_IDEM_NEW:
        break;
    case QUEUE_IDEM_REPLAY:
        resp->status = status;
        resp->body = json_loads(body, JSON_DECODE_ANY, NULL);
        resp->replayed = 1;
        free(body);
        return;
    case QUEUE_IDEM_CONFLICT:
        gw_error(resp, 409, "idempotency_conflict", "Idempotency-Key",
                 "this Idempotency-Key was used with a different request body");
        return;
    case QUEUE_IDEM_IN_PROGRESS:
        gw_error(resp, 409, "idempotency_in_progress", "Idempotency-Key",
                 "a request with this Idempotency-Key is still being processed");
        util_strlcpy(resp->retry_after, "1", sizeof(resp->retry_after));
        return;
    default:
        unavailable(resp);
        return;
    }
    r->handler(req, resp, arg);
    char *text = resp->body ? json_dumps(resp->body, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    /* If this fails the claim simply expires; the answer stands. */
    queue_idem_finish(req->q, req->key.tenant, route_id, ikey, resp->status, text);
    free(text);
}

/* route - dispatch one complete request through the table. */
/* admin_path - 1 for the paths the sender's admin listener serves. */
static int admin_path(const char *path)
{
    return !strcmp(path, "/healthz") || !strcmp(path, "/readyz") || !strcmp(path, "/metrics");
}

static void route(struct gw_req *req, struct gw_resp *resp)
{
    const char *m = !strcmp(req->method, "HEAD") ? "GET" : req->method;
    /* The sender role's MAILGATE_ADMIN_LISTEN is for probes and scrapes:
     * it must never become a second, unadvertised door to the API. */
    if (gw_cfg->admin_only && !admin_path(req->path)) {
        gw_error(resp, 404, "not_found", NULL, "this is a sender's admin listener: it serves only /healthz, "
                                               "/readyz and /metrics");
        return;
    }
    char arg[GW_TRACK_TOKEN_MAX + 1]; /* a click token is the longest segment */
    const struct gw_route *path_known = NULL;
    for (const struct gw_route *r = routes; r->method; r++) {
        if (!route_match(r->pattern, req->path, arg, sizeof(arg)))
            continue;
        if (!path_known)
            path_known = r;
        if (strcmp(r->method, m) != 0)
            continue;
        if (!strcmp(m, "POST") && atomic_load(&gw_draining)) {
            gw_error(resp, 503, "shutting_down", NULL, "this instance is shutting down; retry shortly");
            util_strlcpy(resp->retry_after, "2", sizeof(resp->retry_after));
            goto shaped;
        }
        if (r->scope) {
            if (!req->q) {
                unavailable(resp);
                goto shaped;
            }
            if (authenticate(req, resp, r->scope, compat_of(r)->auth) < 0)
                goto shaped;
        }
        const char *ikey = r->idempotent ? MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Idempotency-Key") : NULL;
        if (ikey)
            idempotent_call(r, req, resp, arg, ikey);
        else
            r->handler(req, resp, arg);
    shaped:
        /* A compatible surface answers every error in its provider's
         * shape (its own handler's answers pass through unchanged). */
        if (compat_of(r)->shape)
            compat_of(r)->shape(req, resp);
        return;
    }
    if (path_known) {
        gw_error(resp, 405, "method_not_allowed", NULL, "method %s not allowed here", req->method);
        if (compat_of(path_known)->shape)
            compat_of(path_known)->shape(req, resp);
    } else
        gw_error(resp, 404, "not_found", NULL, "no such route");
}

/* route_for - the first route whose pattern matches path and whose method
 * is method (HEAD as GET), or NULL. */
static const struct gw_route *route_for(const char *method, const char *path)
{
    const char *m = !strcmp(method, "HEAD") ? "GET" : method;
    char arg[GW_TRACK_TOKEN_MAX + 1]; /* as in route() */
    for (const struct gw_route *r = routes; r->method; r++)
        if (!strcmp(r->method, m) && route_match(r->pattern, path, arg, sizeof(arg)))
            return r;
    return NULL;
}

static enum MHD_Result send_resp(struct MHD_Connection *conn, struct gw_conn *gc, struct gw_resp *r)
{
    char *text = NULL;
    size_t len = 0;
    gw_count_http(r->status);
    gw_observe_api(hist_clock_us() - gc->started_us);
    if (r->body) {
        text = json_dumps(r->body, JSON_COMPACT | JSON_ENCODE_ANY);
        len = text ? strlen(text) : 0;
    } else if (r->text) {
        text = r->text;
        r->text = NULL;
        len = r->text_len ? r->text_len : strlen(text);
    }
    struct MHD_Response *mr =
        MHD_create_response_from_buffer(len, text ? text : (void *)"", text ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (r->body)
        MHD_add_response_header(mr, "Content-Type", "application/json");
    else if (len && r->text_type)
        MHD_add_response_header(mr, "Content-Type", r->text_type);
    MHD_add_response_header(mr, "X-Request-Id", gc->request_id);
    if (r->retry_after[0])
        MHD_add_response_header(mr, "Retry-After", r->retry_after);
    if (r->replayed)
        MHD_add_response_header(mr, "Idempotent-Replayed", "true");
    if (r->rl_set) {
        char v[32];
        snprintf(v, sizeof(v), "%ld", r->rl_limit);
        MHD_add_response_header(mr, "X-RateLimit-Limit", v);
        snprintf(v, sizeof(v), "%ld", r->rl_remaining);
        MHD_add_response_header(mr, "X-RateLimit-Remaining", v);
        snprintf(v, sizeof(v), "%lld", (long long)r->rl_reset_s);
        MHD_add_response_header(mr, "X-RateLimit-Reset", v);
    }
    if (r->location) {
        MHD_add_response_header(mr, "Location", r->location);
        free(r->location);
        r->location = NULL;
    }
    if (r->no_store) {
        MHD_add_response_header(mr, "Cache-Control", "no-store, no-cache, must-revalidate, max-age=0");
        MHD_add_response_header(mr, "Pragma", "no-cache");
        MHD_add_response_header(mr, "Expires", "0");
    }
    if (r->message_id[0])
        MHD_add_response_header(mr, "X-Message-Id", r->message_id);
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)r->status, mr);
    MHD_destroy_response(mr);
    json_decref(r->body);
    r->body = NULL;
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    struct gw_conn *gc = *con_cls;
    if (!gc) {
        gc = calloc(1, sizeof(*gc));
        if (!gc)
            return MHD_NO;
        gc->started_us = hist_clock_us();
        buf_init(&gc->body, GW_BODY_MAX);
        char id[33];
        util_new_id(id);
        snprintf(gc->request_id, sizeof(gc->request_id), "req_%s", id);
        *con_cls = gc;
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > GW_BODY_MAX) {
            struct gw_resp r = {0};
            gw_error(&r, 413, "payload_too_large", NULL, "request body exceeds %zu bytes", GW_BODY_MAX);
            return send_resp(conn, gc, &r);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        if (!gc->too_large && !gc->busy) {
            /* Cap what all bodies together hold, so many large uploads at
             * once cannot exhaust memory; the excess is answered 503. */
            if (atomic_fetch_add(&gw_body_inflight, n) + n > GW_BODY_INFLIGHT_MAX) {
                atomic_fetch_sub(&gw_body_inflight, n);
                gc->busy = 1;
                buf_free(&gc->body);
            } else {
                gc->held += n;
                if (buf_append(&gc->body, upload, n) < 0) {
                    gc->too_large = 1;
                    buf_free(&gc->body);
                }
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    struct gw_resp r = {0};
    if (gc->busy) {
        gw_error(&r, 503, "busy", NULL, "the server holds too many request bodies right now; retry shortly");
        util_strlcpy(r.retry_after, "2", sizeof(r.retry_after));
        return send_resp(conn, gc, &r);
    }
    if (gc->too_large) {
        gw_error(&r, 413, "payload_too_large", NULL, "request body exceeds %zu bytes", GW_BODY_MAX);
        return send_resp(conn, gc, &r);
    }
    /* the request's lines (message_queued, …, http) go out in one write */
    log_hold();
    struct gw_req req = {
        .method = method,
        .path = url,
        .body = gc->body.data ? gc->body.data : "",
        .bodylen = gc->body.len,
        .content_type = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type"),
        .q = thread_queue(),
        .cfg = gw_cfg,
        .conn = conn,
    };
    int has_body = !strcmp(method, "POST") || !strcmp(method, "PUT") || !strcmp(method, "PATCH");
    const struct gw_route *rt = has_body ? route_for(method, url) : NULL;
    /* /t/ routes are public pages and one-click unsubscribe POSTs
     * (RFC 8058: a form body), never JSON */
    if (has_body && !is_json_type(req.content_type) && !compat_of(rt)->any_body &&
        strncmp(url, "/t/", 3) != 0) {
        gw_error(&r, 415, "unsupported_media_type", NULL, "send the body as application/json");
        if (compat_of(rt)->shape)
            compat_of(rt)->shape(&req, &r);
    } else {
        route(&req, &r);
    }
    if (!r.status)
        gw_error(&r, 500, "internal", NULL, "no response");
    char status[8];
    snprintf(status, sizeof(status), "%d", r.status);
    /* a tracking token names a recipient and unsubscribes it: not logged */
    char shown[16];
    if (!strncmp(url, "/t/", 3) && strlen(url) > 5)
        snprintf(shown, sizeof(shown), "%.5s...", url);
    char dur[24];
    snprintf(dur, sizeof(dur), "%llu", (unsigned long long)((hist_clock_us() - gc->started_us) / 1000));
    /* every API request is logged with its id at info; health probes and
     * scrapes only at debug, so they do not drown the log */
    int probe = !strcmp(url, "/healthz") || !strcmp(url, "/readyz") || !strcmp(url, "/metrics");
    log_kv(r.status >= 500 ? LOG_WARN : probe ? LOG_DEBUG : LOG_INFO, "http", "request_id", gc->request_id, "method",
           method, "path", !strncmp(url, "/t/", 3) && strlen(url) > 5 ? shown : url, "status", status, "tenant",
           req.key.tenant[0] ? req.key.tenant : NULL, "duration_ms", dur, NULL);
    log_release();
    return send_resp(conn, gc, &r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct gw_conn *gc = *con_cls;
    if (gc) {
        atomic_fetch_sub(&gw_body_inflight, gc->held);
        buf_free(&gc->body);
        free(gc);
        *con_cls = NULL;
    }
}

/* parse_listen - "host:port" / "[v6]:port" into a sockaddr. */
static int parse_listen(const char *s, struct sockaddr_storage *ss)
{
    char host[256];
    const char *c = strrchr(s, ':');
    if (!c)
        return -1;
    size_t hl = (size_t)(c - s);
    if (hl >= sizeof(host))
        return -1;
    memcpy(host, s, hl);
    host[hl] = '\0';
    int port = atoi(c + 1);
    memset(ss, 0, sizeof(*ss));
    if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
        host[hl - 1] = '\0';
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        return inet_pton(AF_INET6, host + 1, &a->sin6_addr) == 1 ? 0 : -1;
    }
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    if (!strcmp(host, "localhost"))
        strcpy(host, "127.0.0.1");
    return inet_pton(AF_INET, host, &a->sin_addr) == 1 ? 0 : -1;
}

int gw_http_start(const struct gw_config *c)
{
    gw_cfg = c;
    struct sockaddr_storage ss;
    if (parse_listen(c->listen, &ss) < 0) {
        log_kv(LOG_ERROR, "listen_failed", "listen", c->listen, "reason", "bad address", NULL);
        return -1;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    gw_daemon = MHD_start_daemon(flags, 0, NULL, NULL, on_request, NULL,
                                 MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                                 MHD_OPTION_THREAD_POOL_SIZE, (unsigned)GW_THREADS,
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)GW_CONN_TIMEOUT_S,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)GW_CONN_MAX,
                                 MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)GW_CONN_PER_IP_MAX,
                                 MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)256 * 1024,
                                 MHD_OPTION_END);
    if (!gw_daemon) {
        log_kv(LOG_ERROR, "listen_failed", "listen", c->listen, "reason", "cannot bind", NULL);
        return -1;
    }
    log_kv(LOG_INFO, "listening", "listen", c->listen, NULL);
    return 0;
}

void gw_http_drain(void)
{
    atomic_store(&gw_draining, 1);
}

void gw_http_stop(void)
{
    if (gw_daemon) {
        MHD_stop_daemon(gw_daemon);
        gw_daemon = NULL;
    }
}
