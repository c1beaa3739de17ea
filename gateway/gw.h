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
    int admin_only;            /* this HTTP server is the sender's admin listener:
                                  /healthz, /readyz, /metrics and nothing else */
    char redis_url[1024];      /* MAILGATE_REDIS_URL */
    char relays[4096];         /* MAILGATE_RELAYS or "" */
    char helo[256];            /* MAILGATE_HELO_NAME */
    char return_path_domain[256];
    char public_url[512];
    char secret[256];          /* MAILGATE_SECRET; "" when unset: the key kept in Redis
                                  (mg:secret) is used. Never logged */
    size_t secret_len;
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
    size_t text_len;           /* bytes of text when it may hold NUL (0: strlen) */
    char *location;            /* owned Location header value (redirects), or NULL */
    int no_store;              /* Cache-Control: no-store (tracking answers) */
    char message_id[72];       /* X-Message-Id value or "" (SendGrid surface) */
    int rl_set;                /* send the X-RateLimit-* headers below */
    long rl_limit, rl_remaining;
    int64_t rl_reset_s;        /* seconds until the window resets */
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

/* Process-local event counters shown by /metrics (mailgate_<name>_total). */
enum gw_counter {
    GW_C_ACCEPTED,        /* messages answered 202 (any surface, batch items too) */
    GW_C_SUPPRESSED,      /* recipients suppressed at acceptance */
    GW_C_OPENED,          /* opens recorded (machine opens included) */
    GW_C_CLICKED,         /* clicks recorded (machine clicks included) */
    GW_C_WEBHOOK_OK,      /* webhook attempts answered 2xx */
    GW_C_WEBHOOK_FAILED,  /* webhook attempts that failed (non-2xx, timeout, refused) */
    GW_C_COUNT
};

/* gw_count - add n to counter c. Lock-free (one atomic add). */
void gw_count(enum gw_counter c, unsigned long n);

/* gw_observe_api - count one API request that took us microseconds from
 * its first byte to its answer (histogram mailgate_api_request_seconds). */
void gw_observe_api(uint64_t us);

/* gw_openapi - GET /v1/openapi.yaml: the OpenAPI document built into the
 * binary (docs/openapi.yaml), as application/yaml. */
void gw_openapi(struct gw_req *req, struct gw_resp *resp);

/* Route handlers. */
void gw_send_message(struct gw_req *req, struct gw_resp *resp);
void gw_send_batch(struct gw_req *req, struct gw_resp *resp);
void gw_cancel_message(struct gw_req *req, struct gw_resp *resp, const char *id);

/* gw_json_too_deep - 1 when the raw JSON text nests arrays/objects deeper
 * than max; field gets the top-level member the deepest run is in ("" when
 * none). Scans bytes only (strings and escapes respected), so it runs
 * before, and bounds, the parser. */
int gw_json_too_deep(const char *p, size_t n, int max, char *field, size_t fieldlen);

/* gw_send_object - validate one message object (contract "Send"), render
 * it and queue it; resp gets 202 {id, status, recipients} or the error.
 * o is borrowed. Used by POST /v1/messages, the batch and the compatible
 * surfaces (which translate their formats into this one). */
void gw_send_object(struct gw_req *req, json_t *o, struct gw_resp *resp);
void gw_get_message(struct gw_req *req, struct gw_resp *resp, const char *id);
void gw_list_messages(struct gw_req *req, struct gw_resp *resp);
void gw_list_events(struct gw_req *req, struct gw_resp *resp);
void gw_stats(struct gw_req *req, struct gw_resp *resp);
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

/* ---- compatible surfaces -----------------------------------------------
 * Postmark (gw_compat_postmark.c), SendGrid v3 (gw_compat_sendgrid.c),
 * Resend (gw_compat_resend.c) and Mailgun (gw_compat_mailgun.c) requests,
 * translated into mailgate message objects and sent with gw_send_object;
 * answers and errors translated back into each provider's shape. Shared
 * helpers in gw_compat.c. */

/* Where a route reads its API key (gw_http.c authenticate). */
enum gw_auth {
    GW_AUTH_BEARER = 0,        /* Authorization: Bearer <key> (/v1, SendGrid, Resend) */
    GW_AUTH_POSTMARK,          /* X-Postmark-Server-Token: <key> */
    GW_AUTH_BASIC_API,         /* Authorization: Basic base64("api:<key>") (Mailgun) */
};

#define GW_FORM_FIELDS_MAX 1000  /* fields in one multipart/urlencoded body */
#define GW_FORM_NAME_MAX 256     /* bytes of a field name */

/* One field of a form body. data holds len bytes plus a NUL (so a text
 * field is a C string); filename and content_type are NULL for plain
 * fields. All owned by the struct gw_form. */
struct gw_form_field {
    char *name;
    char *filename;
    char *content_type;
    char *data;
    size_t len;
};

struct gw_form {
    struct gw_form_field *v;
    size_t n, cap;
    int failed;                /* a limit was hit while parsing */
};

/* gw_form_parse - parse the buffered request body (multipart/form-data or
 * application/x-www-form-urlencoded, per its Content-Type) with
 * libmicrohttpd's post processor into f (zeroed by the caller). Returns 0,
 * or -1 with a reason in err; f is then to be freed all the same. */
int gw_form_parse(struct gw_req *req, struct gw_form *f, char *err, size_t errlen);

/* gw_form_free - release f's fields; safe on a zeroed struct. */
void gw_form_free(struct gw_form *f);

/* gw_compat_base64 - n bytes at p as one base64 line; a new json string
 * (NULL when out of memory). */
json_t *gw_compat_base64(const void *p, size_t n);

/* gw_compat_error - the type, message and field (each "" when absent) of
 * a mailgate error answer {"error": {...}}. Returns 1 when resp holds one,
 * else 0. */
int gw_compat_error(const struct gw_resp *resp, const char **type, const char **message, const char **field);

/* gw_compat_precheck - the checks a compatible surface makes on a whole
 * request before queueing any of its messages (several messages, or a
 * sandbox/test mode that queues nothing): from is one address; to, cc, bcc
 * and reply_to parse; there is a recipient; there is a subject and a body,
 * or a template; attachments decode. o is borrowed. Returns 0, or -1 with
 * resp set to a 422 as gw_send_object would set it. */
int gw_compat_precheck(json_t *o, struct gw_resp *resp);

/* gw_compat_parse - the request body as JSON (any value; duplicate keys
 * refused; nesting at most GW_JSON_DEPTH_MAX). Returns a new reference, or
 * NULL with a mailgate error in resp (400 invalid_json, 422). */
json_t *gw_compat_parse(struct gw_req *req, struct gw_resp *resp);

/* gw_compat_unix_time - an integer Unix time in seconds as an RFC 3339
 * json string (NULL when out of range). */
json_t *gw_compat_unix_time(json_t *v);

/* Route handlers of the surfaces; the *_shape functions turn a mailgate
 * error answer (from authentication, limits or the send) into the
 * provider's error shape and leave any other answer alone. */
void gw_pm_email(struct gw_req *req, struct gw_resp *resp);
void gw_pm_batch(struct gw_req *req, struct gw_resp *resp);
void gw_pm_template(struct gw_req *req, struct gw_resp *resp);
void gw_pm_batch_template(struct gw_req *req, struct gw_resp *resp);
void gw_pm_shape(struct gw_req *req, struct gw_resp *resp);
void gw_sg_send(struct gw_req *req, struct gw_resp *resp);
void gw_sg_shape(struct gw_req *req, struct gw_resp *resp);
void gw_rs_send(struct gw_req *req, struct gw_resp *resp);
void gw_rs_batch(struct gw_req *req, struct gw_resp *resp);
void gw_rs_get(struct gw_req *req, struct gw_resp *resp, const char *id);
void gw_rs_shape(struct gw_req *req, struct gw_resp *resp);
void gw_mg_send(struct gw_req *req, struct gw_resp *resp, const char *domain);
void gw_mg_shape(struct gw_req *req, struct gw_resp *resp);

/* ---- tracking and unsubscribe (gw_track.c) ------------------------------
 * Tokens: base64url(payload) "." base64url(first 16 bytes of HMAC-SHA256
 * (key, "mailgate-track-v1" NUL payload)); payload = "1" kind "\n" tenant
 * "\n" message id "\n" recipient ["\n" url]. Self-contained: they keep
 * working after the message's retention. */

#define GW_TRACK_TOKEN_MAX 12288      /* characters of a token we accept */
#define GW_TRACK_MAC_BYTES 16         /* HMAC-SHA256 truncated to 128 bits */
#define GW_TRACK_KEY_MAX 256          /* bytes of a signing key */
#define GW_SECRET_MIN 16              /* bytes MAILGATE_SECRET needs at least */
#define GW_SECRET_GEN_BYTES 32        /* random bytes of a generated key (mg:secret) */
#define GW_CLICK_SCANNER_WINDOW_MS 5000 /* a click this soon after delivery is a link scanner */
#define GW_COPIES_BYTES_MAX ((size_t)256 * 1024 * 1024) /* all personal copies of one send */

/* What a token names. url is set for clicks only (else ""). */
struct gw_token {
    char kind;                             /* 'o' open, 'c' click, 'u' unsubscribe */
    char tenant[QUEUE_TENANT_MAX + 1];
    char msg_id[64];
    char rcpt[MIME_ADDR_MAX + 1];
    char url[MIME_TRACK_URL_MAX + 1];
};

/* gw_token_sign - append the token for t (url used for kind 'c') signed
 * with key to out. Returns 0, or -1 when a field does not fit its bound or
 * holds a newline (tenant, id, recipient), or out is full. */
int gw_token_sign(const unsigned char *key, size_t keylen, const struct gw_token *t, struct buf *out);

/* gw_token_verify - check token (len bytes) under key, in constant time,
 * and fill *t. Returns 0, or -1 for anything forged, altered, truncated or
 * malformed (one answer for all: no oracle). */
int gw_token_verify(const unsigned char *key, size_t keylen, const char *token, size_t len, struct gw_token *t);

/* gw_track_key - the signing key: MAILGATE_SECRET, or the shared key kept
 * in Redis (fetched once per process, made by the first process with SET
 * NX). Copies up to GW_TRACK_KEY_MAX bytes into key. 0, or -1 when Redis
 * is unavailable (nothing is cached then). */
int gw_track_key(const struct gw_config *c, struct queue *q, unsigned char *key, size_t *keylen);

/* gw_track_open_machine - 1 when an open with this User-Agent was not a
 * person's: Apple Mail Privacy Protection's prefetch (exactly "Mozilla/5.0")
 * or a known scanner; Gmail's image proxy counts as a person. */
int gw_track_open_machine(const char *user_agent);

/* gw_track_click_machine - 1 when a click was a link scanner's: a known
 * scanner User-Agent (or none), or within GW_CLICK_SCANNER_WINDOW_MS
 * after the recipient's delivery (delivered_ms, 0 unknown) at now_ms. */
int gw_track_click_machine(const char *user_agent, int64_t delivered_ms, int64_t now_ms);

/* Route handlers: GET /t/o/{token}, GET /t/c/{token}, GET|POST /t/u/{token}. */
void gw_track_open(struct gw_req *req, struct gw_resp *resp, const char *token);
void gw_track_click(struct gw_req *req, struct gw_resp *resp, const char *token);
void gw_track_unsubscribe(struct gw_req *req, struct gw_resp *resp, const char *token);

#endif
