/*
 * gw.h - the gateway: configuration, the HTTP API and the command line.
 * Private to gateway/ (nothing else includes it: nothing uses the gateway).
 */
#ifndef MG_GW_H
#define MG_GW_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "queue/queue.h"
#include "templates/mime.h"

#define GW_BODY_MAX ((size_t)35 * 1024 * 1024)  /* request body, bytes */
#define GW_MESSAGE_MAX ((size_t)25 * 1024 * 1024) /* rendered message, bytes: MAILGATE_MAX_MESSAGE_SIZE default */
#define GW_MESSAGE_MAX_LIMIT ((size_t)48 * 1024 * 1024) /* largest MAILGATE_MAX_MESSAGE_SIZE allowed */
#define GW_RCPTS_MAX 50          /* to + cc + bcc, unless the tenant says otherwise */
#define GW_BATCH_MAX 500         /* messages per batch */
#define GW_HEADER_VALUE_MAX 1000 /* characters in the subject or one header value */
#define GW_HEADERS_MAX 100       /* custom headers */
#define GW_JSON_DEPTH_MAX 32     /* JSON nesting */
#define GW_TAGS_MAX 100
#define GW_METADATA_MAX 100
#define GW_RETRY_STEPS_MAX 16
#define GW_TEMPLATES_MAX 1000    /* stored templates per tenant */

/* The configuration, read once at start-up from the environment. */
struct gw_config {
    char listen[256];          /* MAILGATE_LISTEN host:port */
    char admin_listen[256];    /* MAILGATE_ADMIN_LISTEN or "" */
    char redis_url[1024];      /* MAILGATE_REDIS_URL */
    char relays[4096];         /* MAILGATE_RELAYS or "" */
    char helo[256];            /* MAILGATE_HELO_NAME */
    char return_path_domain[256];
    char public_url[512];
    char log_level[16];
    int64_t max_age_ms;        /* MAILGATE_MAX_AGE */
    int retention_days;        /* MAILGATE_RETENTION_DAYS */
    size_t max_message;        /* MAILGATE_MAX_MESSAGE_SIZE: rendered message, bytes */
    struct mime_dkim_keys *dkim; /* MAILGATE_DKIM_KEYS; owned, lives as long as the process */
    int64_t retry_ms[GW_RETRY_STEPS_MAX]; /* MAILGATE_RETRY_SCHEDULE */
    char smtp_timeouts[512];   /* MAILGATE_SMTP_TIMEOUTS */
    int64_t shutdown_ms;
    int64_t claim_timeout_ms;  /* MAILGATE_CLAIM_TIMEOUT */
    int64_t send_at_horizon_ms; /* MAILGATE_SEND_AT_HORIZON: how far ahead send_at may be */       /* MAILGATE_SHUTDOWN_TIMEOUT: in-flight grace on SIGTERM */
    int nretry;
    int webhook_allow_private; /* MAILGATE_WEBHOOK_ALLOW_PRIVATE: lift the SSRF guard (tests, labs) */
    int64_t webhook_retry_ms[GW_RETRY_STEPS_MAX]; /* MAILGATE_WEBHOOK_RETRY_SCHEDULE */
    int webhook_nretry;
};

/* gw_config_load - read and validate every variable. Returns 0, or -1
 * after printing one line naming the bad variable to stderr. */
int gw_config_load(struct gw_config *c);

/* gw_config_log - log the effective configuration, secrets masked. */
void gw_config_log(const struct gw_config *c);

/* gw_http_start - start the HTTP API on c->listen with a pool of threads
 * (role "api" or "all"). Returns 0 or -1 (logged). */
int gw_http_start(const struct gw_config *c);

/* gw_http_drain - from now on refuse new sends with 503 (shutdown). */
void gw_http_drain(void);

/* gw_http_stop - stop the listener and wait for its threads. */
void gw_http_stop(void);

/* gw_cli_key / gw_cli_tenant - the `key` and `tenant` subcommands; return
 * the process exit code. */
int gw_cli_key(const struct gw_config *c, int argc, char **argv);
int gw_cli_tenant(const struct gw_config *c, int argc, char **argv);

/* ---- request handling (gw_http.c provides, route files use) ----------- */

struct gw_req {
    const char *method;
    const char *path;          /* without the query string */
    const char *body;
    size_t bodylen;
    const char *content_type;
    struct queue *q;           /* this thread's Redis connection */
    struct queue_key_info key; /* the authenticated key */
    const struct gw_config *cfg;
    void *conn;                /* struct MHD_Connection * */
};

struct gw_resp {
    int status;
    json_t *body;              /* owned; NULL for no body (204) */
    char retry_after[16];      /* Retry-After value or "" */
    int replayed;              /* answer replayed for an Idempotency-Key */
    char *text;                /* owned plain-text body (used when body is NULL) */
    const char *text_type;     /* its Content-Type */
};

/* gw_error - set an error response {"error": {type, message, field?}}. */
void gw_error(struct gw_resp *r, int status, const char *type, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* gw_query - a query-string argument of the request, or NULL. */
const char *gw_query(const struct gw_req *req, const char *name);

/* gw_metrics - GET /metrics: Prometheus text exposition. */
void gw_metrics(struct gw_req *req, struct gw_resp *resp);

/* gw_count_http - count one answered request by status (for /metrics). */
void gw_count_http(int status);

/* gw_openapi - GET /v1/openapi.yaml: the OpenAPI document built into the
 * binary (gateway/openapi.yaml), as application/yaml. */
void gw_openapi(struct gw_req *req, struct gw_resp *resp);

/* Route handlers. */
void gw_send_message(struct gw_req *req, struct gw_resp *resp);
void gw_send_batch(struct gw_req *req, struct gw_resp *resp);
void gw_cancel_message(struct gw_req *req, struct gw_resp *resp, const char *id);

/* gw_send_object - validate one message object (contract "Send"), render
 * it and queue it; resp gets 202 {id, status, recipients} or the error.
 * o is borrowed. Used by POST /v1/messages, the batch and the compatible
 * surfaces (which translate their formats into this one). */
void gw_send_object(struct gw_req *req, json_t *o, struct gw_resp *resp);
void gw_get_message(struct gw_req *req, struct gw_resp *resp, const char *id);
void gw_list_messages(struct gw_req *req, struct gw_resp *resp);
void gw_list_events(struct gw_req *req, struct gw_resp *resp);
void gw_supp_list(struct gw_req *req, struct gw_resp *resp);
void gw_supp_add(struct gw_req *req, struct gw_resp *resp);
void gw_supp_delete(struct gw_req *req, struct gw_resp *resp, const char *email);

/* Stored templates (gw_templates.c): PUT, GET, DELETE /v1/templates/{name},
 * GET /v1/templates and POST /v1/templates/{name}/render. */
void gw_tmpl_put(struct gw_req *req, struct gw_resp *resp, const char *name);
void gw_tmpl_get(struct gw_req *req, struct gw_resp *resp, const char *name);
void gw_tmpl_delete(struct gw_req *req, struct gw_resp *resp, const char *name);
void gw_tmpl_list(struct gw_req *req, struct gw_resp *resp);
void gw_tmpl_render(struct gw_req *req, struct gw_resp *resp, const char *name);

/* gw_tmpl_apply - the template/data/strict part of a send request o (an
 * object, borrowed): with "template", replace o's subject, text and html
 * by the stored template rendered with "data"; without it but with "data",
 * render o's own subject/text/html (string members only) with data. The
 * results replace the members in o, so the send checks that follow (CR/LF
 * and length of the subject) apply to what is sent. Nothing to do without
 * template and data. Returns 0, or -1 with resp set (422 naming the field,
 * 413 when the output is too large, 503 when Redis failed). */
int gw_tmpl_apply(struct gw_req *req, struct gw_resp *resp, json_t *o);

/* ---- webhooks ----------------------------------------------------------
 * API (gw_webhooks.c): POST, GET /v1/webhooks, DELETE /v1/webhooks/{id},
 * GET /v1/webhooks/{id}/deliveries. Dispatcher (gw_dispatch.c): drains the
 * event feed into deliveries and POSTs them, signed, with libcurl. */

#define GW_WEBHOOK_URL_MAX 2048  /* bytes of a webhook URL */

void gw_wh_create(struct gw_req *req, struct gw_resp *resp);
void gw_wh_list(struct gw_req *req, struct gw_resp *resp);
void gw_wh_delete(struct gw_req *req, struct gw_resp *resp, const char *id);
void gw_wh_deliveries(struct gw_req *req, struct gw_resp *resp, const char *id);

struct sockaddr;

/* gw_webhook_addr_public - 1 when sa (AF_INET or AF_INET6) is a public
 * unicast address; 0 for loopback, private, CGNAT, link-local,
 * unique-local, unspecified, multicast, reserved (IPv4-mapped IPv6 is
 * judged by its IPv4 address). The SSRF guard's one rule. */
int gw_webhook_addr_public(const struct sockaddr *sa);

/* gw_webhook_url_check - url is http(s), at most GW_WEBHOOK_URL_MAX bytes,
 * without CR/LF or spaces, and (unless allow_private) every address its
 * host resolves to is public. Returns 0, or -1 with a reason in err. */
int gw_webhook_url_check(const char *url, int allow_private, char *err, size_t errlen);

/* gw_webhook_sign - the Mailgate-Signature value "t=<t>,v1=<hex>" for body
 * under secret into out (>= 96 bytes). Returns 0 or -1. */
int gw_webhook_sign(const char *secret, long long t, const char *body, size_t bodylen, char *out, size_t outlen);

/* gw_dispatch_start - start the webhook dispatcher threads (sender role).
 * curl_global_init must have run. Returns 0 or -1 (logged). */
int gw_dispatch_start(const struct gw_config *c);

/* gw_dispatch_stop - stop them, waiting up to deadline_ms for attempts in
 * flight (which are aborted and released, not counted). 0, or -1 when a
 * thread did not stop in time. */
int gw_dispatch_stop(int deadline_ms);

#endif
