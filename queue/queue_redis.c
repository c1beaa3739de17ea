/*
 * queue_redis.c - the Redis connection behind struct queue: URL parsing,
 * lazy (re)connection, AUTH and SELECT, and command/pipeline helpers.
 *
 * A broken connection is dropped at once and re-made on the next call, so
 * a Redis restart costs callers one failed request, never a stuck thread.
 *
 * Lua scripts are called by SHA1 (EVALSHA), never by sending their text on
 * every call. Each new connection loads every script the process knows
 * (SCRIPT LOAD, one round trip) before any other command, so a restarted or
 * failed-over server has them. After an operator's SCRIPT FLUSH a call
 * answers NOSCRIPT: q_script_cmd loads the scripts again and repeats the
 * call; in a pipeline, the script commands of a MULTI whose EXEC ran (and
 * those that end a pipeline) are run again the same way in q_pipe_end (see
 * pipe_repair for why that is sound), and any other NOSCRIPT reply is left
 * to the caller as the failed command it is, with the scripts loaded again
 * for its retry.
 * SECURITY: the password is kept only in memory and never logged.
 */
#include "queue/queue_int.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#include "common/log.h"
#include "common/util.h"

#define Q_CONNECT_MS 2000
#define Q_COMMAND_MS 5000
#define Q_SCRIPTS_MAX 64     /* distinct scripts one process may use */


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

/* ---- scripts ------------------------------------------------------------ */

/* A script this process uses: its text (the pointer names it) and SHA1.
 * Entries are only ever appended, and each is complete before the count
 * that publishes it is raised, so readers need no lock. */
struct q_script_ent {
    const char *text;
    char sha[41];
};
static struct q_script_ent scripts[Q_SCRIPTS_MAX];
static atomic_int nscripts;
static pthread_mutex_t scripts_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t scripts_once = PTHREAD_ONCE_INIT;

static const struct q_script_ent *script_find(const char *text)
{
    int n = atomic_load_explicit(&nscripts, memory_order_acquire);
    for (int i = 0; i < n; i++)
        if (scripts[i].text == text)
            return &scripts[i];
    return NULL;
}

/* script_get - the entry of text, registered (SHA1 computed) on first use.
 * NULL only when the table is full or SHA1 failed (logged; the caller then
 * sends the text with EVAL). */
static const struct q_script_ent *script_get(const char *text)
{
    const struct q_script_ent *s = script_find(text);
    if (s)
        return s;
    pthread_mutex_lock(&scripts_lock);
    s = script_find(text);
    int n = atomic_load_explicit(&nscripts, memory_order_relaxed);
    if (!s && n < Q_SCRIPTS_MAX) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int mdlen = 0;
        if (EVP_Digest(text, strlen(text), md, &mdlen, EVP_sha1(), NULL) == 1 && mdlen == 20) {
            scripts[n].text = text;
            util_hex(md, 20, scripts[n].sha);
            atomic_store_explicit(&nscripts, n + 1, memory_order_release);
            s = &scripts[n];
        }
    }
    pthread_mutex_unlock(&scripts_lock);
    if (!s)
        log_kv(LOG_ERROR, "redis_script_unregistered", "reason", "script table full or SHA1 failed", NULL);
    return s;
}

/* The scripts of queue/ known from the start; scripts used elsewhere join
 * on first use, and every later connection loads them too. */
static void scripts_init(void)
{
    static const char *const known[] = {
        q_lua_event,     q_lua_status,    q_lua_msg_events, q_lua_open_ids, q_lua_wh_create, q_lua_wh_fanout,
        q_lua_wh_claim,  q_lua_wh_finish, q_lua_idem,       q_lua_limits,   q_lua_tmpl_put,
    };
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        script_get(known[i]);
}

/* scripts_load - SCRIPT LOAD every registered script on c, pipelined: one
 * round trip. -1 on I/O error only: a script Redis refuses is logged and
 * its calls fail on their own. */
static int scripts_load(redisContext *c)
{
    pthread_once(&scripts_once, scripts_init);
    int n = atomic_load_explicit(&nscripts, memory_order_acquire);
    for (int i = 0; i < n; i++)
        if (redisAppendCommand(c, "SCRIPT LOAD %s", scripts[i].text) != REDIS_OK)
            return -1;
    for (int i = 0; i < n; i++) {
        void *v = NULL;
        if (redisGetReply(c, &v) != REDIS_OK)
            return -1;
        redisReply *r = v;
        if (r->type != REDIS_REPLY_STRING || strcmp(r->str, scripts[i].sha) != 0)
            log_kv(LOG_ERROR, "redis_script_load_failed", "sha", scripts[i].sha, "reply",
                   r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply", NULL);
        freeReplyObject(r);
    }
    return 0;
}

static int is_noscript(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "NOSCRIPT", 8);
}

/* script_wrap - turn the formatted command args (numkeys, keys, args; as
 * hiredis formats a command) into EVALSHA <sha> args, or EVAL <text> args
 * for a script that has no entry. *out is malloc'd. Length, or -1. */
static int script_wrap(const char *text, const char *args, int argslen, char **out)
{
    const struct q_script_ent *s = script_get(text);
    const char *name = s ? "EVALSHA" : "EVAL", *body = s ? s->sha : text;
    char *end;
    long argc = args[0] == '*' ? strtol(args + 1, &end, 10) : -1;
    if (argc < 0 || end[0] != '\r' || end[1] != '\n')
        return -1;
    const char *rest = end + 2;
    size_t restlen = (size_t)argslen - (size_t)(rest - args), blen = strlen(body);
    char head[96];
    int hl = snprintf(head, sizeof(head), "*%ld\r\n$%zu\r\n%s\r\n$%zu\r\n", argc + 2, strlen(name), name, blen);
    size_t len = (size_t)hl + blen + 2 + restlen;
    char *cmd = malloc(len + 1);
    if (!cmd)
        return -1;
    memcpy(cmd, head, (size_t)hl);
    memcpy(cmd + hl, body, blen);
    memcpy(cmd + hl + blen, "\r\n", 2);
    memcpy(cmd + hl + blen + 2, rest, restlen);
    cmd[len] = '\0';
    *out = cmd;
    return (int)len;
}

/* script_formatv - the whole EVALSHA command for script and argv into *out
 * (malloc'd). Length, or -1. */
static int script_formatv(const char *script, int argc, const char **argv, const size_t *lens, char **out)
{
    char *args = NULL;
    int al = redisFormatCommandArgv(&args, argc, argv, lens);
    if (al < 0)
        return -1;
    int len = script_wrap(script, args, al, out);
    redisFreeCommand(args);
    return len;
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
    /* before anything else on this connection: a MULTI must never meet a
     * script the server lacks (see pipe_repair) */
    if (scripts_load(c) < 0) {
        q_drop(q);
        return NULL;
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
        /* A demoted master after a failover: find the new one. A script
         * missing outside q_script_cmd's care: reconnecting loads them. */
        if (!strncmp(r->str, "READONLY", 8) || is_noscript(r))
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

/* script_send - send a formatted script command and read its reply; on
 * NOSCRIPT load the scripts and send it once more (nothing else ran in
 * between on this connection, so a repeat is the same call). Frees cmd. */
static redisReply *script_send(struct queue *q, char *cmd, int len)
{
    redisContext *c = len < 0 ? NULL : q_ctx(q);
    redisReply *r = NULL;
    for (int tries = 0; c && tries < 2; tries++) {
        void *v = NULL;
        if (redisAppendFormattedCommand(c, cmd, (size_t)len) != REDIS_OK || redisGetReply(c, &v) != REDIS_OK)
            break;
        r = v;
        if (!is_noscript(r) || tries)
            break;
        log_kv(LOG_WARN, "redis_noscript", "action", "scripts loaded again, call repeated", NULL);
        freeReplyObject(r);
        r = NULL;
        if (scripts_load(c) < 0)
            break;
    }
    free(cmd);
    return c ? q_check(q, r) : NULL;
}

redisReply *q_script_cmd(struct queue *q, const char *script, const char *fmt, ...)
{
    char *args = NULL, *cmd = NULL;
    va_list ap;
    va_start(ap, fmt);
    int al = redisvFormatCommand(&args, fmt, ap);
    va_end(ap);
    int len = al < 0 ? -1 : script_wrap(script, args, al, &cmd);
    if (al >= 0)
        redisFreeCommand(args);
    return script_send(q, cmd, len);
}

redisReply *q_script_cmdv(struct queue *q, const char *script, int argc, const char **argv, const size_t *lens)
{
    char *cmd = NULL;
    int len = script_formatv(script, argc, argv, lens, &cmd);
    return script_send(q, cmd, len);
}

/* One script command of a pipeline, kept until q_pipe_end for pipe_repair. */
struct q_pipe_script {
    int at;     /* its place in the pipeline */
    int multi;  /* place of the MULTI it is queued in, or -1 */
    int exec;   /* place of that MULTI's EXEC, -1 while not sent */
    char *cmd;  /* the formatted command */
    int len;
};

void q_pipe_begin(struct q_pipe *p, struct queue *q)
{
    p->q = q;
    p->n = 0;
    p->multi = -1;
    p->scr = NULL;
    p->nscr = p->capscr = 0;
    p->err = q_ctx(q) == NULL;
}

/* pipe_mark - note MULTI and EXEC/DISCARD as they are queued: a script
 * command's reply inside a transaction is found in its EXEC's array. */
static void pipe_mark(struct q_pipe *p, const char *name)
{
    if (!strcasecmp(name, "MULTI")) {
        p->multi = p->n;
    } else if (!strcasecmp(name, "EXEC") || !strcasecmp(name, "DISCARD")) {
        for (int i = 0; i < p->nscr; i++)
            if (p->scr[i].multi == p->multi && p->scr[i].exec < 0)
                p->scr[i].exec = strcasecmp(name, "EXEC") ? -2 : p->n; /* -2: discarded */
        p->multi = -1;
    }
}

void q_pipe_cmd(struct q_pipe *p, const char *fmt, ...)
{
    if (p->err)
        return;
    pipe_mark(p, fmt);
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
    if (argc == 1)
        pipe_mark(p, argv[0]);
    if (redisAppendCommandArgv(p->q->c, argc, argv, lens) != REDIS_OK)
        p->err = 1;
    p->n++;
}

void q_pipe_script(struct q_pipe *p, const char *script, int argc, const char **argv, const size_t *lens)
{
    if (p->err)
        return;
    if (p->nscr == p->capscr) {
        int cap = p->capscr ? 2 * p->capscr : 8;
        struct q_pipe_script *v = realloc(p->scr, (size_t)cap * sizeof(*v));
        if (!v) {
            p->err = 1;
            return;
        }
        p->scr = v;
        p->capscr = cap;
    }
    struct q_pipe_script *s = &p->scr[p->nscr];
    s->len = script_formatv(script, argc, argv, lens, &s->cmd);
    if (s->len < 0 || redisAppendFormattedCommand(p->q->c, s->cmd, (size_t)s->len) != REDIS_OK) {
        if (s->len >= 0)
            free(s->cmd);
        p->err = 1;
        return;
    }
    s->at = p->n++;
    s->multi = p->multi;
    s->exec = -1;
    p->nscr++;
}

static void pipe_scripts_free(struct q_pipe *p)
{
    for (int i = 0; i < p->nscr; i++)
        free(p->scr[i].cmd);
    free(p->scr);
    p->scr = NULL;
    p->nscr = p->capscr = 0;
}

/* pipe_repair - after an operator's SCRIPT FLUSH, the script commands of a
 * MULTI answer NOSCRIPT inside its EXEC while the transaction's other
 * commands run and commit. Left alone that is a half-written transaction
 * (a message with its job but without its events), and a retry of the
 * whole transaction is not always possible (a send's XADD is not
 * idempotent). So load the scripts and run the failed script commands
 * again, in order, in one MULTI of their own, putting their replies where
 * the errors were. Sound because every script queued in a MULTI is
 * idempotent and derives what it writes from the state it reads (an
 * event is recorded once per event id - SET NX -, the status index is
 * derived from the recipients' current statuses), so running it a moment
 * later, after the rest of its transaction, ends where running it in its
 * place would have. Script commands outside a transaction are run again
 * the same way only when nothing but such commands follows them (a read
 * script at the end of a pipeline, a batch of fan-outs): nothing ran that
 * they should have preceded. Any other NOSCRIPT reply is a failed command
 * left to the caller, whose retry finds the scripts loaded.
 * Returns 0, or -1 (then the caller drops the connection and fails). */
static int pipe_repair(struct q_pipe *p, redisReply **v)
{
    size_t cap = (size_t)(p->nscr ? p->nscr : 1);
    redisReply ***slot = calloc(cap, sizeof(*slot));
    int *which = calloc(cap, sizeof(*which));
    int nfail = 0, loose = 0, rc = 0;
    /* the trailing standalone script commands that failed */
    int tail = p->nscr, next = p->n - 1;
    while (tail > 0 && p->scr[tail - 1].at == next && p->scr[tail - 1].multi < 0 && is_noscript(v[next])) {
        tail--;
        next--;
    }
    for (int i = 0; slot && which && i < p->nscr; i++) {
        struct q_pipe_script *s = &p->scr[i];
        redisReply *x = s->exec >= 0 ? v[s->exec] : NULL;
        size_t k = (size_t)(s->at - s->multi - 1);
        if (s->multi < 0 && i >= tail) {
            slot[nfail] = &v[s->at];
            which[nfail++] = i;
        } else if (s->multi < 0 || s->exec < 0 || is_noscript(v[s->at])) {
            /* alone, discarded, or refused when queued (the EXEC was
             * aborted: nothing of the transaction ran) */
            loose |= is_noscript(v[s->at]);
        } else if (x->type == REDIS_REPLY_ARRAY && k < x->elements && is_noscript(x->element[k])) {
            slot[nfail] = &x->element[k];
            which[nfail++] = i;
        }
    }
    if (!slot || !which) {
        rc = -1;
    } else if (nfail || loose) {
        log_kv(LOG_WARN, "redis_noscript", "action",
               nfail ? "scripts loaded again, the failed script commands run again" : "scripts loaded again", NULL);
        redisContext *c = p->q->c;
        rc = scripts_load(c);
        if (rc == 0 && nfail) {
            redisAppendCommand(c, "MULTI");
            for (int j = 0; j < nfail; j++)
                redisAppendFormattedCommand(c, p->scr[which[j]].cmd, (size_t)p->scr[which[j]].len);
            redisAppendCommand(c, "EXEC");
            redisReply *last = NULL;
            for (int j = 0; j < nfail + 2; j++) {
                void *r = NULL;
                if (redisGetReply(c, &r) != REDIS_OK) {
                    rc = -1;
                    break;
                }
                if (j < nfail + 1)
                    freeReplyObject(r);
                else
                    last = r;
            }
            if (rc == 0 && (!last || last->type != REDIS_REPLY_ARRAY || last->elements != (size_t)nfail))
                rc = -1;
            for (int j = 0; rc == 0 && j < nfail; j++)
                if (is_noscript(last->element[j]))
                    rc = -1;
            for (int j = 0; rc == 0 && j < nfail; j++) {
                freeReplyObject(*slot[j]);
                *slot[j] = last->element[j];
                last->element[j] = NULL;
            }
            freeReplyObject(last);
        }
    }
    free(slot);
    free(which);
    return rc;
}

redisReply **q_pipe_end(struct q_pipe *p)
{
    if (p->err || p->n == 0) {
        if (p->err)
            q_drop(p->q);
        pipe_scripts_free(p);
        return NULL;
    }
    redisReply **v = calloc((size_t)p->n, sizeof(*v));
    if (!v) {
        q_drop(p->q);
        pipe_scripts_free(p);
        return NULL;
    }
    for (int i = 0; i < p->n; i++) {
        void *r = NULL;
        if (redisGetReply(p->q->c, &r) != REDIS_OK) {
            q_replies_free(v, p->n);
            q_drop(p->q);
            pipe_scripts_free(p);
            return NULL;
        }
        v[i] = r;
    }
    int bad = p->nscr && pipe_repair(p, v) < 0;
    pipe_scripts_free(p);
    for (int i = 0; i < p->n && !bad; i++) {
        /* EXEC answers an array whose items may be errors */
        redisReply *r = v[i];
        int ro = r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "READONLY", 8);
        for (size_t k = 0; !ro && r->type == REDIS_REPLY_ARRAY && k < r->elements; k++)
            ro = r->element[k] && r->element[k]->type == REDIS_REPLY_ERROR && !strncmp(r->element[k]->str, "READONLY", 8);
        /* a write went to a demoted master: fail the whole pipeline so
         * the caller retries against the new one */
        bad = ro;
    }
    if (bad) {
        q_replies_free(v, p->n);
        q_drop(p->q);
        return NULL;
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

int queue_redis_version(struct queue *q, int *major, int *minor)
{
    redisReply *r = q_cmd(q, "INFO server");
    if (!r)
        return -1;
    int rc = -1;
    const char *v = r->type == REDIS_REPLY_STRING ? strstr(r->str, "redis_version:") : NULL;
    if (v && sscanf(v + strlen("redis_version:"), "%d.%d", major, minor) == 2)
        rc = 0;
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
