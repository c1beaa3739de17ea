/*
 * queue_redis.c - the Redis connection behind struct queue: URL parsing,
 * lazy (re)connection, AUTH and SELECT, and command/pipeline helpers.
 *
 * A broken connection is dropped at once and re-made on the next call, so
 * a Redis restart costs callers one failed request, never a stuck thread.
 * SECURITY: the password is kept only in memory and never logged.
 */
#include "queue/queue_int.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "common/log.h"
#include "common/util.h"

#define Q_CONNECT_MS 2000
#define Q_COMMAND_MS 5000


static void q_err(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        util_strlcpy(err, msg, errlen);
}

/* q_parse_url - fill q from url; strings malloc'd. */
/* q_parse_sentinel - "redis-sentinel://[:pw@]h1:p1,h2:p2/master[/db]". */
static int q_parse_sentinel(struct queue *q, const char *url, char *err, size_t errlen)
{
    const char *p = url + strlen("redis-sentinel://");
    const char *slash = strchr(p, '/');
    const char *at = memchr(p, '@', slash ? (size_t)(slash - p) : strlen(p));
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon ? colon + 1 : p;
        q->password = strndup(pw, (size_t)(at - pw));
        p = at + 1;
    }
    if (!slash || slash == p || !slash[1]) {
        q_err(err, errlen, "redis-sentinel:// needs host:port[,host:port...]/master-name[/db]");
        return -1;
    }
    q->sentinels = strndup(p, (size_t)(slash - p));
    const char *name = slash + 1, *dbs = strchr(name, '/');
    q->master = dbs ? strndup(name, (size_t)(dbs - name)) : strdup(name);
    if (dbs && dbs[1]) {
        char *end;
        long db = strtol(dbs + 1, &end, 10);
        if (*end || db < 0 || db > 1000) {
            q_err(err, errlen, "bad database number");
            return -1;
        }
        q->db = (int)db;
    }
    for (const char *s = q->sentinels; *s; s++)
        if (*s == ' ') {
            q_err(err, errlen, "bad sentinel list");
            return -1;
        }
    if (!*q->master || !strchr(q->sentinels, ':')) {
        q_err(err, errlen, "redis-sentinel:// needs host:port[,host:port...]/master-name[/db]");
        return -1;
    }
    return 0;
}

static int q_parse_url(struct queue *q, const char *url, char *err, size_t errlen)
{
    if (strncmp(url, "redis-sentinel://", 17) == 0)
        return q_parse_sentinel(q, url, err, errlen);
    if (strncmp(url, "unix://", 7) == 0) {
        if (url[7] != '/') {
            q_err(err, errlen, "unix:// URL needs an absolute path");
            return -1;
        }
        q->path = strdup(url + 7);
        return 0;
    }
    if (strncmp(url, "redis://", 8) != 0) {
        q_err(err, errlen, "must start with redis://, unix:// or redis-sentinel://");
        return -1;
    }
    const char *p = url + 8;
    const char *at = strrchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon ? colon + 1 : p;
        q->password = strndup(pw, (size_t)(at - pw));
        p = at + 1;
    }
    const char *slash = strchr(p, '/');
    size_t hl = slash ? (size_t)(slash - p) : strlen(p);
    char hostport[300];
    if (hl == 0 || hl >= sizeof(hostport)) {
        q_err(err, errlen, "missing or too long host");
        return -1;
    }
    memcpy(hostport, p, hl);
    hostport[hl] = '\0';
    q->port = 6379;
    char *c = strrchr(hostport, ':');
    if (c && !strchr(hostport, ']')) {
        *c = '\0';
        char *end;
        long port = strtol(c + 1, &end, 10);
        if (*end || port < 1 || port > 65535) {
            q_err(err, errlen, "bad port");
            return -1;
        }
        q->port = (int)port;
    }
    q->host = strdup(hostport);
    if (slash && slash[1]) {
        char *end;
        long db = strtol(slash + 1, &end, 10);
        if (*end || db < 0 || db > 1000) {
            q_err(err, errlen, "bad database number");
            return -1;
        }
        q->db = (int)db;
    }
    return 0;
}

static void q_free_fields(struct queue *q)
{
    free(q->host);
    free(q->path);
    free(q->master);
    free(q->sentinels);
    if (q->password) {
        memset(q->password, 0, strlen(q->password));
        free(q->password);
    }
}

int queue_url_check(const char *url, char *err, size_t errlen)
{
    struct queue q = {0};
    int rc = q_parse_url(&q, url, err, errlen);
    q_free_fields(&q);
    return rc;
}

struct queue *queue_open(const char *url, char *err, size_t errlen)
{
    struct queue *q = calloc(1, sizeof(*q));
    if (!q)
        return NULL;
    if (q_parse_url(q, url, err, errlen) < 0) {
        queue_close(q);
        return NULL;
    }
    return q;
}

void queue_close(struct queue *q)
{
    if (!q)
        return;
    if (q->c)
        redisFree(q->c);
    for (int i = 0; i < q->ntenants; i++)
        free(q->tenants[i]);
    free(q->tenants);
    q_free_fields(q);
    free(q);
}

void q_drop(struct queue *q)
{
    /* Jobs read before the break may be unacknowledged: read this
     * consumer's pending entries again before new ones. */
    q->pending_checked = 0;
    if (q->c) {
        redisFree(q->c);
        q->c = NULL;
    }
}

void q_set_timeout_ms(struct queue *q, int ms)
{
    if (!q->c || q->timeout_ms == ms)
        return;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    redisSetTimeout(q->c, tv);
    q->timeout_ms = ms;
}

/* q_sentinel_master - ask the sentinels, in order, where the master is
 * (SENTINEL get-master-addr-by-name) and point host/port at it. */
static int q_sentinel_master(struct queue *q)
{
    char list[1024];
    util_strlcpy(list, q->sentinels, sizeof(list));
    char *save = NULL;
    for (char *s = strtok_r(list, ",", &save); s; s = strtok_r(NULL, ",", &save)) {
        char *colon = strrchr(s, ':');
        if (!colon)
            continue;
        *colon = '\0';
        struct timeval tv = {1, 0};
        redisContext *c = redisConnectWithTimeout(s, atoi(colon + 1), tv);
        if (!c || c->err) {
            if (c)
                redisFree(c);
            continue;
        }
        redisSetTimeout(c, tv);
        redisReply *r = redisCommand(c, "SENTINEL get-master-addr-by-name %s", q->master);
        int ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->str && r->element[1]->str;
        if (ok) {
            free(q->host);
            q->host = strdup(r->element[0]->str);
            q->port = atoi(r->element[1]->str);
        }
        if (r)
            freeReplyObject(r);
        redisFree(c);
        if (ok)
            return 0;
    }
    log_kv(LOG_WARN, "redis_sentinel_no_master", "master", q->master, NULL);
    return -1;
}

redisContext *q_ctx(struct queue *q)
{
    if (q->c && q->c->err)
        q_drop(q);
    if (q->c)
        return q->c;
    struct timeval tv = {Q_CONNECT_MS / 1000, (Q_CONNECT_MS % 1000) * 1000};
    if (q->master && q_sentinel_master(q) < 0)
        return NULL;
    redisContext *c = q->path ? redisConnectUnixWithTimeout(q->path, tv)
                              : redisConnectWithTimeout(q->host, q->port, tv);
    if (!c || c->err) {
        if (c)
            redisFree(c);
        return NULL;
    }
    q->c = c;
    q->timeout_ms = 0;
    q_set_timeout_ms(q, Q_COMMAND_MS);
    redisReply *r;
    if (q->password) {
        const char *argv[] = {"AUTH", q->password};
        r = redisCommandArgv(c, 2, argv, NULL);
        int ok = r && r->type != REDIS_REPLY_ERROR;
        if (r)
            freeReplyObject(r);
        if (!ok) {
            log_kv(LOG_ERROR, "redis_auth_failed", NULL);
            q_drop(q);
            return NULL;
        }
    }
    if (q->db) {
        r = redisCommand(c, "SELECT %d", q->db);
        int ok = r && r->type != REDIS_REPLY_ERROR;
        if (r)
            freeReplyObject(r);
        if (!ok) {
            q_drop(q);
            return NULL;
        }
    }
    return q->c;
}

/* q_check - turn a raw reply into ours: NULL on I/O error (drop) or error
 * reply (logged). */
static redisReply *q_check(struct queue *q, redisReply *r)
{
    if (!r) {
        q_drop(q);
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        log_kv(LOG_ERROR, "redis_error", "reply", r->str, NULL);
        /* A demoted master after a failover: find the new one. */
        if (!strncmp(r->str, "READONLY", 8))
            q_drop(q);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

redisReply *q_cmdv(struct queue *q, int argc, const char **argv, const size_t *lens)
{
    redisContext *c = q_ctx(q);
    if (!c)
        return NULL;
    return q_check(q, redisCommandArgv(c, argc, argv, lens));
}

redisReply *q_cmd(struct queue *q, const char *fmt, ...)
{
    redisContext *c = q_ctx(q);
    if (!c)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    return q_check(q, r);
}

void q_pipe_begin(struct q_pipe *p, struct queue *q)
{
    p->q = q;
    p->n = 0;
    p->err = q_ctx(q) == NULL;
}

void q_pipe_cmd(struct q_pipe *p, const char *fmt, ...)
{
    if (p->err)
        return;
    va_list ap;
    va_start(ap, fmt);
    if (redisvAppendCommand(p->q->c, fmt, ap) != REDIS_OK)
        p->err = 1;
    va_end(ap);
    p->n++;
}

void q_pipe_cmdv(struct q_pipe *p, int argc, const char **argv, const size_t *lens)
{
    if (p->err)
        return;
    if (redisAppendCommandArgv(p->q->c, argc, argv, lens) != REDIS_OK)
        p->err = 1;
    p->n++;
}

redisReply **q_pipe_end(struct q_pipe *p)
{
    if (p->err || p->n == 0) {
        if (p->err)
            q_drop(p->q);
        return NULL;
    }
    redisReply **v = calloc((size_t)p->n, sizeof(*v));
    if (!v) {
        q_drop(p->q);
        return NULL;
    }
    for (int i = 0; i < p->n; i++) {
        void *r = NULL;
        if (redisGetReply(p->q->c, &r) != REDIS_OK) {
            q_replies_free(v, p->n);
            q_drop(p->q);
            return NULL;
        }
        v[i] = r;
    }
    for (int i = 0; i < p->n; i++) {
        /* EXEC answers an array whose items may be errors */
        redisReply *r = v[i];
        int ro = r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "READONLY", 8);
        for (size_t k = 0; !ro && r->type == REDIS_REPLY_ARRAY && k < r->elements; k++)
            ro = r->element[k] && r->element[k]->type == REDIS_REPLY_ERROR && !strncmp(r->element[k]->str, "READONLY", 8);
        if (ro) {
            /* a write went to a demoted master: fail the whole pipeline
             * so the caller retries against the new one */
            q_replies_free(v, p->n);
            q_drop(p->q);
            return NULL;
        }
    }
    return v;
}

void q_replies_free(redisReply **r, int n)
{
    if (!r)
        return;
    for (int i = 0; i < n; i++)
        if (r[i])
            freeReplyObject(r[i]);
    free(r);
}

int queue_ping(struct queue *q)
{
    redisReply *r = q_cmd(q, "PING");
    if (!r)
        return -1;
    freeReplyObject(r);
    return 0;
}

int queue_maxmemory_policy(struct queue *q, char *out, size_t outlen)
{
    redisReply *r = q_cmd(q, "CONFIG GET maxmemory-policy");
    if (!r)
        return -1;
    int rc = -1;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[1]->str) {
        util_strlcpy(out, r->element[1]->str, outlen);
        rc = 0;
    }
    freeReplyObject(r);
    return rc;
}

int q_exec_ok(redisReply **r, int n)
{
    if (!r || n < 1 || r[n - 1]->type != REDIS_REPLY_ARRAY)
        return 0;
    for (size_t i = 0; i < r[n - 1]->elements; i++)
        if (r[n - 1]->element[i]->type == REDIS_REPLY_ERROR)
            return 0;
    return 1;
}
