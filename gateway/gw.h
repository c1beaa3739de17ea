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

#define GW_BODY_MAX ((size_t)35 * 1024 * 1024)  /* request body, bytes */
#define GW_MESSAGE_MAX ((size_t)25 * 1024 * 1024) /* rendered message, bytes */
#define GW_RCPTS_MAX 50          /* to + cc + bcc, unless the tenant says otherwise */
#define GW_BATCH_MAX 500         /* messages per batch */
#define GW_HEADER_VALUE_MAX 1000 /* characters in the subject or one header value */
#define GW_HEADERS_MAX 100       /* custom headers */
#define GW_JSON_DEPTH_MAX 32     /* JSON nesting */
#define GW_TAGS_MAX 100
#define GW_METADATA_MAX 100
#define GW_RETRY_STEPS_MAX 16

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
    int64_t retry_ms[GW_RETRY_STEPS_MAX]; /* MAILGATE_RETRY_SCHEDULE */
    int nretry;
};

/* gw_config_load - read and validate every variable. Returns 0, or -1
 * after printing one line naming the bad variable to stderr. */
int gw_config_load(struct gw_config *c);

/* gw_config_log - log the effective configuration, secrets masked. */
void gw_config_log(const struct gw_config *c);

/* gw_http_start - start the HTTP API on c->listen with a pool of threads
 * (role "api" or "all"). Returns 0 or -1 (logged). */
int gw_http_start(const struct gw_config *c);

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
};

/* gw_error - set an error response {"error": {type, message, field?}}. */
void gw_error(struct gw_resp *r, int status, const char *type, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* gw_query - a query-string argument of the request, or NULL. */
const char *gw_query(const struct gw_req *req, const char *name);

/* Route handlers. */
void gw_send_message(struct gw_req *req, struct gw_resp *resp);
void gw_get_message(struct gw_req *req, struct gw_resp *resp, const char *id);
void gw_list_messages(struct gw_req *req, struct gw_resp *resp);
void gw_list_events(struct gw_req *req, struct gw_resp *resp);
void gw_supp_list(struct gw_req *req, struct gw_resp *resp);
void gw_supp_add(struct gw_req *req, struct gw_resp *resp);
void gw_supp_delete(struct gw_req *req, struct gw_resp *resp, const char *email);

#endif
