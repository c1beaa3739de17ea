/*
 * queue_jobs.c - the delivery job stream, read through the consumer group
 * "senders", and the delayed-job set.
 *
 * Invariants:
 *  - A job is acknowledged (XACK) and removed (XDEL) only inside the
 *    MULTI/EXEC that records its outcome, so an outcome is never lost and
 *    a job is never dropped unrecorded. Nothing trims the stream by MAXLEN
 *    (Redis 7.0's XAUTOCLAIM silently drops trimmed pending entries).
 *  - A recipient's retry is a new job in mg:delayed, written in that same
 *    MULTI. A Lua script moves due jobs to the stream, atomically, so
 *    several schedulers never fire one job twice.
 *  - A sender waits on Redis once to load all the jobs of a read and once
 *    for the replies of all their outcomes (a MULTI/EXEC per job, so one
 *    job's failure never touches another's, each written as soon as it is
 *    decided: queue_jobs_rec_*) together with its next read, whatever the
 *    number of recipients.
 */
#include "queue/queue_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/util.h"
#include "common/zbody.h"

/* Moves due jobs to their tenant's stream. Job JSON: {t, m, r, a, b?}
 * (b: the personal copy of a job's one recipient, when there is one). The
 * stream names are built here from t, so the script touches keys it was
 * not given: fine on a single Redis (Cluster is not supported). */
static const char *schedule_lua =
    "local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))\n"
    "for _, j in ipairs(due) do\n"
    "  local ok, job = pcall(cjson.decode, j)\n"
    "  if ok and type(job) == 'table' and job.t and job.m and job.r then\n"
    "    if job.b then\n"
    "      redis.call('XADD', ARGV[3] .. job.t, '*', 'm', job.m, 'r', cjson.encode(job.r), 'a', tostring(job.a or 1),\n"
    "                 'b', tostring(job.b))\n"
    "    else\n"
    "      redis.call('XADD', ARGV[3] .. job.t, '*', 'm', job.m, 'r', cjson.encode(job.r), 'a', tostring(job.a or 1))\n"
    "    end\n"
    "    redis.call('SADD', KEYS[2], job.t)\n"
    "  end\n"
    "  redis.call('ZREM', KEYS[1], j)\n"
    "end\n"
    "return #due\n";

#define TENANTS_REFRESH_MS 1000

/* group_ensure - create the consumer group on a tenant's stream. */
static int group_ensure(struct queue *q, const char *tenant)
{
    redisContext *c = q_ctx(q);
    if (!c)
        return -1;
    redisReply *r = redisCommand(c, "XGROUP CREATE " QUEUE_STREAM_PREFIX "%s " QUEUE_GROUP " 0 MKSTREAM", tenant);
    if (!r) {
        q_drop(q);
        return -1;
    }
    int ok = r->type != REDIS_REPLY_ERROR || strstr(r->str, "BUSYGROUP") != NULL;
    freeReplyObject(r);
    return ok ? 0 : -1;
}

/* tenants_refresh - re-read mg:jobtenants (at most once a second) and make
 * sure each stream has its group. */
static int tenants_refresh(struct queue *q, int force)
{
    int64_t now = util_mono_ms();
    if (!force && q->tenants && now - q->tenants_at < TENANTS_REFRESH_MS)
        return 0;
    redisReply *r = q_cmd(q, "SMEMBERS " QUEUE_TENANTS);
    if (!r)
        return -1;
    char **v = calloc(r->elements ? r->elements : 1, sizeof(*v));
    int n = 0;
    for (size_t i = 0; i < r->elements; i++) {
        const char *t = r->element[i]->str;
        int known = 0;
        for (int k = 0; k < q->ntenants && !known; k++)
            known = !strcmp(q->tenants[k], t);
        if (!known && group_ensure(q, t) < 0)
            continue;
        v[n++] = strdup(t);
    }
    freeReplyObject(r);
    for (int k = 0; k < q->ntenants; k++)
        free(q->tenants[k]);
    free(q->tenants);
    q->tenants = v;
    q->ntenants = n;
    q->tenants_at = now;
    return 0;
}

void queue_job_free(struct queue_job *job)
{
    json_decref(job->rcpts);
    job->rcpts = NULL;
}

/* job_parse - fill job from one stream entry [id, [f, v, ...]] of tenant's
 * stream. Returns 0, or -1 when the entry is empty or malformed. */
static int job_parse(redisReply *ent, const char *tenant, struct queue_job *job)
{
    memset(job, 0, sizeof(*job));
    util_strlcpy(job->tenant, tenant, sizeof(job->tenant));
    if (ent->type != REDIS_REPLY_ARRAY || ent->elements < 2 || !ent->element[0]->str)
        return -1;
    util_strlcpy(job->entry_id, ent->element[0]->str, sizeof(job->entry_id));
    redisReply *f = ent->element[1];
    if (f->type != REDIS_REPLY_ARRAY)
        return -1;
    job->attempt = 1;
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        const char *k = f->element[i]->str, *v = f->element[i + 1]->str;
        if (!strcmp(k, "m"))
            util_strlcpy(job->msg_id, v, sizeof(job->msg_id));
        else if (!strcmp(k, "r"))
            job->rcpts = json_loads(v, 0, NULL);
        else if (!strcmp(k, "a"))
            job->attempt = atoi(v) > 0 ? atoi(v) : 1;
        else if (!strcmp(k, "b"))
            job->copy = atoi(v) > 0 ? atoi(v) : 0;
    }
    if (!job->msg_id[0] || !json_is_array(job->rcpts))
        return -1;
    return 0;
}

/* job_ack - acknowledge and delete an entry we cannot use. */
static void job_ack(struct queue *q, const char *tenant, const char *entry_id)
{
    struct q_pipe p;
    q_pipe_begin(&p, q);
    q_pipe_cmd(&p, "XACK " QUEUE_STREAM_PREFIX "%s " QUEUE_GROUP " %s", tenant, entry_id);
    q_pipe_cmd(&p, "XDEL " QUEUE_STREAM_PREFIX "%s %s", tenant, entry_id);
    q_replies_free(q_pipe_end(&p), p.n);
}

/* collect - turn an XREADGROUP reply [[stream, [entries]], ...] into jobs,
 * interleaved across the streams (first entry of each, then second ...),
 * so that with several tenants in one read none waits behind another's. */
static int collect(struct queue *q, redisReply *r, struct queue_job *out, int max)
{
    int n = 0;
    size_t plen = strlen(QUEUE_STREAM_PREFIX), most = 0;
    for (size_t s = 0; r->type == REDIS_REPLY_ARRAY && s < r->elements; s++) {
        redisReply *st = r->element[s];
        if (st->type == REDIS_REPLY_ARRAY && st->elements == 2 && st->element[1]->type == REDIS_REPLY_ARRAY &&
            st->element[1]->elements > most)
            most = st->element[1]->elements;
    }
    for (size_t e = 0; e < most; e++) {
        for (size_t s = 0; s < r->elements; s++) {
            redisReply *st = r->element[s];
            if (st->type != REDIS_REPLY_ARRAY || st->elements != 2 || !st->element[0]->str ||
                strncmp(st->element[0]->str, QUEUE_STREAM_PREFIX, plen) != 0 ||
                st->element[1]->type != REDIS_REPLY_ARRAY || e >= st->element[1]->elements)
                continue;
            const char *tenant = st->element[0]->str + plen;
            struct queue_job job;
            if (job_parse(st->element[1]->element[e], tenant, &job) < 0) {
                log_kv(LOG_WARN, "job_malformed", "tenant", tenant, "entry", job.entry_id, NULL);
                if (job.entry_id[0])
                    job_ack(q, tenant, job.entry_id);
                queue_job_free(&job);
                continue;
            }
            if (n < max)
                out[n++] = job;
            else
                queue_job_free(&job); /* cannot happen: COUNT bounds it */
        }
    }
    return n;
}

/* The XREADGROUP command of one read, built before any pipeline starts
 * (building it may itself talk to Redis: the tenant list). */
struct read_cmd {
    int argc;
    const char **argv;
    char **names;
    int ns;
    int pending; /* re-reading this consumer's pending entries ("0", no BLOCK) */
    char cnt[16], blk[16];
};

static void read_cmd_free(struct read_cmd *rc)
{
    for (int i = 0; rc->names && i < rc->ns; i++)
        free(rc->names[i]);
    free(rc->names);
    free(rc->argv);
    memset(rc, 0, sizeof(*rc));
}

/* read_cmd_build - the read for consumer: 0 with rc filled, 1 when there
 * is no tenant stream to read yet, -1 when Redis is away. */
static int read_cmd_build(struct queue *q, const char *consumer, int block_ms, int max, struct read_cmd *rc)
{
    memset(rc, 0, sizeof(*rc));
    if (tenants_refresh(q, 0) < 0)
        return -1;
    if (q->ntenants == 0)
        return 1;
    int ns = q->ntenants < QUEUE_READ_STREAMS_MAX ? q->ntenants : QUEUE_READ_STREAMS_MAX;
    if (ns > max)
        ns = max;
    /* Every stream named gets the same COUNT, so each tenant has the same
     * share of a read: one tenant alone may hand over the whole batch. */
    int count = max / ns;
    rc->ns = ns;
    rc->pending = !q->pending_checked;
    rc->argv = calloc((size_t)(10 + 2 * ns), sizeof(*rc->argv));
    rc->names = calloc((size_t)ns, sizeof(*rc->names));
    if (!rc->argv || !rc->names) {
        read_cmd_free(rc);
        return -1;
    }
    snprintf(rc->cnt, sizeof(rc->cnt), "%d", count);
    snprintf(rc->blk, sizeof(rc->blk), "%d", block_ms);
    const char **argv = rc->argv;
    int argc = 0;
    argv[argc++] = "XREADGROUP";
    argv[argc++] = "GROUP";
    argv[argc++] = QUEUE_GROUP;
    argv[argc++] = consumer;
    argv[argc++] = "COUNT";
    argv[argc++] = rc->cnt;
    if (!rc->pending) {
        argv[argc++] = "BLOCK";
        argv[argc++] = rc->blk;
    }
    argv[argc++] = "STREAMS";
    unsigned start = q->rr++;
    for (int i = 0; i < ns; i++) {
        const char *t = q->tenants[(start + (unsigned)i) % (unsigned)q->ntenants];
        rc->names[i] = malloc(strlen(QUEUE_STREAM_PREFIX) + strlen(t) + 1);
        if (!rc->names[i]) {
            read_cmd_free(rc);
            return -1;
        }
        strcpy(rc->names[i], QUEUE_STREAM_PREFIX);
        strcat(rc->names[i], t);
        argv[argc++] = rc->names[i];
    }
    for (int i = 0; i < ns; i++)
        argv[argc++] = rc->pending ? "0" : ">";
    rc->argc = argc;
    /* A sender's connection keeps the longer timeout for everything: it
     * costs nothing, where switching it around each read cost 4 syscalls. */
    if (q_ctx(q))
        q_set_timeout_ms(q, block_ms + 5000);
    return 0;
}

/* read_done - the jobs in the reply r to rc (NULL: the read failed);
 * takes r. Returns the number of jobs, or -1. */
static int read_done(struct queue *q, const struct read_cmd *rc, redisReply *r, struct queue_job *out, int max)
{
    if (r && r->type == REDIS_REPLY_ERROR) {
        log_kv(LOG_ERROR, "redis_error", "reply", r->str, NULL);
        freeReplyObject(r);
        r = NULL;
    }
    if (!r) {
        /* NOGROUP after a FLUSHALL, say: forget what we knew. */
        tenants_refresh(q, 1);
        return -1;
    }
    int n = collect(q, r, out, max);
    freeReplyObject(r);
    if (rc->pending && n == 0)
        q->pending_checked = 1;
    return n;
}

int queue_jobs_read(struct queue *q, const char *consumer, int block_ms, struct queue_job *out, int max)
{
    struct read_cmd rc;
    int b = read_cmd_build(q, consumer, block_ms, max, &rc);
    if (b < 0)
        return -1;
    if (b > 0) {
        /* nothing to block on yet: wait a little, like an empty BLOCK */
        struct timespec ts = {0, 200 * 1000000L};
        nanosleep(&ts, NULL);
        return 0;
    }
    redisReply *r = q_cmdv(q, rc.argc, rc.argv, NULL);
    int n = read_done(q, &rc, r, out, max);
    read_cmd_free(&rc);
    return n;
}

int queue_jobs_touch(struct queue *q, const struct queue_inflight *v, int n)
{
    if (n <= 0)
        return 0;
    struct q_pipe p;
    q_pipe_begin(&p, q);
    for (int i = 0; i < n; i++)
        q_pipe_cmd(&p, "XCLAIM " QUEUE_STREAM_PREFIX "%s " QUEUE_GROUP " %s 0 %s JUSTID", v[i].tenant,
                   v[i].consumer, v[i].entry_id);
    redisReply **r = q_pipe_end(&p);
    if (!r)
        return -1;
    q_replies_free(r, p.n);
    return 0;
}

int queue_jobs_reclaim(struct queue *q, const char *consumer, int64_t min_idle_ms, struct queue_job *out, int max)
{
    if (tenants_refresh(q, 0) < 0)
        return -1;
    int n = 0;
    for (int i = 0; i < q->ntenants && n < max; i++) {
        const char *t = q->tenants[i];
        redisReply *r = q_cmd(q, "XAUTOCLAIM " QUEUE_STREAM_PREFIX "%s " QUEUE_GROUP " %s %lld 0-0 COUNT %d",
                              t, consumer, (long long)min_idle_ms, max - n);
        if (!r)
            return n ? n : -1;
        if (r->type == REDIS_REPLY_ARRAY && r->elements >= 2 && r->element[1]->type == REDIS_REPLY_ARRAY) {
            redisReply *ents = r->element[1];
            for (size_t e = 0; e < ents->elements && n < max; e++) {
                struct queue_job job;
                if (job_parse(ents->element[e], t, &job) < 0) {
                    if (job.entry_id[0])
                        job_ack(q, t, job.entry_id);
                    queue_job_free(&job);
                    continue;
                }
                char field[160];
                snprintf(field, sizeof(field), "%s %s", t, job.entry_id);
                redisReply *c = q_cmd(q, "HINCRBY " QUEUE_CLAIMS " %s 1", field);
                job.reclaims = c && c->type == REDIS_REPLY_INTEGER ? (int)c->integer : 1;
                if (c)
                    freeReplyObject(c);
                log_kv(LOG_WARN, "job_reclaimed", "tenant", t, "message_id", job.msg_id, "entry", job.entry_id, NULL);
                out[n++] = job;
            }
        }
        freeReplyObject(r);
    }
    return n;
}

int queue_job_dead_letter(struct queue *q, const struct queue_job *job, const char *reason)
{
    char *rs = json_dumps(job->rcpts, JSON_COMPACT);
    redisReply *r = q_cmd(q, "XADD " QUEUE_DEAD " * t %s m %s r %s a %d b %d reason %s", job->tenant, job->msg_id,
                          rs ? rs : "[]", job->attempt, job->copy, reason);
    free(rs);
    if (!r)
        return -1;
    freeReplyObject(r);
    return 0;
}

/* load_cmds - queue on p the three reads of one job's delivery. */
static void load_cmds(struct q_pipe *p, const struct queue_job *job)
{
    if (job->copy > 0)
        q_pipe_cmd(p, "GET mg:msg:%s:body:%d", job->msg_id, job->copy);
    else
        q_pipe_cmd(p, "GET mg:msg:%s:body", job->msg_id);
    q_pipe_cmd(p, "HMGET mg:msg:%s tenant mail_from tags metadata rcpts created_at copies", job->msg_id);
    q_pipe_cmd(p, "HGETALL mg:msg:%s:rcpt", job->msg_id);
}

/* load_parse - fill d from the replies r[0..2] of load_cmds. Returns 0, or
 * 1 when the message no longer exists (d left zeroed). */
static int load_parse(redisReply **r, struct queue_delivery *d)
{
    memset(d, 0, sizeof(*d));
    redisReply *h = r[1];
    if (h->type != REDIS_REPLY_ARRAY || h->elements != 7 || !h->element[0]->str)
        return 1;
    if (r[0]->type == REDIS_REPLY_STRING) {
        /* stored compressed when that paid (queue_msg.c set_body) */
        struct buf z;
        buf_init(&z, 0);
        int u = zbody_unpack(r[0]->str, r[0]->len, BUF_HARD_MAX, &z);
        if (u == 1) {
            d->bodylen = z.len;
            d->body = buf_steal(&z);
        } else if (u == 0) {
            d->body = malloc(r[0]->len + 1);
            memcpy(d->body, r[0]->str, r[0]->len + 1);
            d->bodylen = r[0]->len;
        } else {
            /* left NULL: the recipients bounce (internal_error), never a
             * retry loop over a body that cannot be read */
            log_kv(LOG_ERROR, "body_unreadable", "reason", "corrupt compressed body", NULL);
        }
        buf_free(&z);
    }
    d->tenant = strdup(h->element[0]->str);
    d->mail_from = strdup(h->element[1]->str ? h->element[1]->str : "");
    d->created_ms = h->element[5]->str ? atoll(h->element[5]->str) : 0;
    d->copies = h->element[6]->str ? atoi(h->element[6]->str) : 0;
    d->tags = h->element[2]->str ? json_loads(h->element[2]->str, 0, NULL) : NULL;
    d->metadata = h->element[3]->str ? json_loads(h->element[3]->str, 0, NULL) : NULL;
    d->all_rcpts = h->element[4]->str ? json_loads(h->element[4]->str, 0, NULL) : NULL;
    if (!d->tags)
        d->tags = json_array();
    if (!d->metadata)
        d->metadata = json_object();
    if (!d->all_rcpts)
        d->all_rcpts = json_array();
    d->rcpt_state = json_object();
    for (size_t i = 0; r[2]->type == REDIS_REPLY_ARRAY && i + 1 < r[2]->elements; i += 2) {
        json_t *s = json_loads(r[2]->element[i + 1]->str, 0, NULL);
        if (s)
            json_object_set_new(d->rcpt_state, r[2]->element[i]->str, s);
    }
    return 0;
}

int queue_delivery_load_many(struct queue *q, const struct queue_job *jobs, int n, struct queue_delivery *d,
                             int *gone)
{
    for (int i = 0; i < n; i++) {
        memset(&d[i], 0, sizeof(d[i]));
        gone[i] = 0;
    }
    if (n <= 0)
        return 0;
    struct q_pipe p;
    q_pipe_begin(&p, q);
    for (int i = 0; i < n; i++)
        load_cmds(&p, &jobs[i]);
    redisReply **r = q_pipe_end(&p);
    if (!r)
        return -1;
    for (int i = 0; i < n; i++)
        gone[i] = load_parse(r + 3 * i, &d[i]);
    q_replies_free(r, p.n);
    return 0;
}

int queue_delivery_load(struct queue *q, const struct queue_job *job, struct queue_delivery *d)
{
    int gone;
    if (queue_delivery_load_many(q, job, 1, d, &gone) < 0)
        return -1;
    return gone;
}

void queue_delivery_free(struct queue_delivery *d)
{
    free(d->body);
    free(d->tenant);
    free(d->mail_from);
    json_decref(d->tags);
    json_decref(d->metadata);
    json_decref(d->rcpt_state);
    json_decref(d->all_rcpts);
    memset(d, 0, sizeof(*d));
}

static int status_terminal(const char *s)
{
    return s && (!strcmp(s, "delivered") || !strcmp(s, "bounced") || !strcmp(s, "suppressed") ||
                 !strcmp(s, "cancelled"));
}

/* finish_all_terminal - 1 when, with f's outcomes applied to the states
 * loaded with it, every recipient of the message is terminal. */
static int finish_all_terminal(const struct queue_finish *f)
{
    size_t i;
    json_t *e;
    json_array_foreach(f->d->all_rcpts, i, e) {
        const char *addr = json_string_value(e), *s = NULL;
        for (size_t k = 0; addr && k < f->n && !s; k++)
            if (f->o[k].email && !strcmp(f->o[k].email, addr))
                s = f->o[k].status;
        if (!s)
            s = json_string_value(json_object_get(json_object_get(f->d->rcpt_state, addr ? addr : ""), "status"));
        if (!status_terminal(s))
            return 0;
    }
    return 1;
}

/* finish_cmds - queue on p the MULTI ... EXEC that records f (see
 * queue_job_finish); all_terminal from finish_all_terminal. */
static void finish_cmds(struct q_pipe *p, const struct queue_finish *f, int all_terminal)
{
    const struct queue_job *job = f->job;
    const struct queue_delivery *d = f->d;
    struct queue_outcome *o = f->o;
    json_t *deferred = json_array();
    q_pipe_cmd(p, "MULTI");
    for (size_t i = 0; i < f->n; i++) {
        const char *status = o[i].status;
        json_t *st = json_pack("{s:s, s:i, s:s?}", "status", status, "attempts", job->attempt,
                               "last_reply", o[i].last_reply);
        char *st_s = json_dumps(st, JSON_COMPACT);
        q_pipe_cmd(p, "HSET mg:msg:%s:rcpt %s %s", job->msg_id, o[i].email, st_s);
        json_decref(st);
        free(st_s);
        if (o[i].event) {
            char *ev_s = json_dumps(o[i].event, JSON_COMPACT);
            q_event_append(p, d->tenant, job->msg_id, o[i].event, ev_s);
            free(ev_s);
        }
        if (!strcmp(status, "deferred"))
            json_array_append_new(deferred, json_string(o[i].email));
        if (o[i].suppress) {
            char key[330], ts[40];
            size_t k = 0;
            for (; o[i].email[k] && k + 1 < sizeof(key); k++)
                key[k] = (char)tolower((unsigned char)o[i].email[k]);
            key[k] = '\0';
            json_t *rec = json_pack("{s:s, s:s, s:s}", "email", o[i].email, "reason", "hard_bounce",
                                    "created_at", util_rfc3339(util_now_ms(), ts, sizeof(ts)));
            char *rec_s = json_dumps(rec, JSON_COMPACT);
            q_pipe_cmd(p, "HSET mg:supp:%s %s %s", d->tenant, key, rec_s);
            free(rec_s);
            json_decref(rec);
        }
    }
    if (json_array_size(deferred)) {
        json_t *nj = json_pack("{s:s, s:s, s:O, s:i, s:s}", "t", job->tenant, "m", job->msg_id, "r", deferred,
                               "a", job->attempt + 1, "from", job->entry_id);
        if (job->copy > 0) /* the retry sends the same personal copy */
            json_object_set_new(nj, "b", json_integer(job->copy));
        char *nj_s = json_dumps(nj, JSON_COMPACT);
        q_pipe_cmd(p, "ZADD " QUEUE_DELAYED " %lld %s", (long long)f->retry_due_ms, nj_s);
        free(nj_s);
        json_decref(nj);
    }
    if (all_terminal) {
        q_pipe_cmd(p, "DEL mg:msg:%s:body", job->msg_id);
        q_pipe_cmd(p, "ZREM " QUEUE_OPEN " %s", job->msg_id);
        for (int c = 1; c <= d->copies && c <= QUEUE_COPIES_MAX; c++)
            q_pipe_cmd(p, "DEL mg:msg:%s:body:%d", job->msg_id, c);
    } else if (job->copy > 0 && f->n == 1 && status_terminal(o[0].status)) {
        /* this recipient is done: its copy is not needed any more */
        q_pipe_cmd(p, "DEL mg:msg:%s:body:%d", job->msg_id, job->copy);
    }
    /* the status index follows the recipients (derived in Redis, so two
     * jobs of one message finishing at once still agree) */
    q_msg_reindex(p, job->tenant, job->msg_id);
    q_pipe_cmd(p, "XACK " QUEUE_STREAM_PREFIX "%s " QUEUE_GROUP " %s", job->tenant, job->entry_id);
    q_pipe_cmd(p, "XDEL " QUEUE_STREAM_PREFIX "%s %s", job->tenant, job->entry_id);
    char claim_field[160];
    snprintf(claim_field, sizeof(claim_field), "%s %s", job->tenant, job->entry_id);
    if (job->reclaims)
        q_pipe_cmd(p, "HDEL " QUEUE_CLAIMS " %s", claim_field);
    q_pipe_cmd(p, "EXEC");
    json_decref(deferred);
}

/* Outcomes written ahead (queue_jobs_rec_*): one pipeline that lives for a
 * batch. Each job's MULTI/EXEC is written when it is added, without
 * waiting for its reply; the replies are read together at the end. */
struct queue_rec {
    struct queue *q;
    struct q_pipe p;
    int open;                   /* p begun and not yet ended */
    struct queue_finish **f;    /* written, reply not read yet */
    int *exec_at;               /* the place of each one's EXEC in p */
    int nf, cap;
    int broken;                 /* a reply or the connection failed: write no more */
    struct queue_read *rd;
    struct read_cmd rc;
    int have_read;              /* rc is built */
};

struct queue_rec *queue_jobs_rec_begin(struct queue *q, struct queue_read *rd)
{
    if (rd)
        rd->n = -1;
    struct queue_rec *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->q = q;
    r->rd = rd;
    if (rd) {
        /* now: building it may talk to Redis, impossible once replies
         * are owed on the connection */
        r->have_read = read_cmd_build(q, rd->consumer, rd->block_ms, rd->max, &r->rc) == 0;
    }
    return r;
}

/* rec_collect - read the replies of everything written (read_at: the
 * place of the read in p, or -1), mark each job recorded or not, and end
 * the pipeline. */
static void rec_collect(struct queue_rec *r, int read_at)
{
    redisReply **rep = q_pipe_end(&r->p); /* NULL too when nothing was queued */
    r->open = 0;
    if (!rep && (r->p.n > 0 || r->p.err))
        r->broken = 1;
    for (int k = 0; k < r->nf; k++) {
        redisReply *x = rep ? rep[r->exec_at[k]] : NULL;
        /* as before batching: EXEC answered with an array = ran */
        if (x && x->type == REDIS_REPLY_ARRAY) {
            struct queue_finish *f = r->f[k];
            f->done = 1;
            for (size_t e = 0; e < f->n; e++) {
                json_decref(f->o[e].event);
                f->o[e].event = NULL;
            }
            continue;
        }
        /* The events stay with the caller, who retries with the same
         * ones: the transaction may have run before its reply was lost,
         * and recording an event is idempotent per event id, so the retry
         * neither loses nor doubles them. */
        if (x && x->type == REDIS_REPLY_ERROR)
            log_kv(LOG_ERROR, "redis_error", "reply", x->str, NULL);
        r->broken = 1;
    }
    r->nf = 0;
    if (read_at >= 0) {
        redisReply *x = NULL;
        if (rep) {
            x = rep[read_at];
            rep[read_at] = NULL;
        }
        r->rd->n = read_done(r->q, &r->rc, x, r->rd->out, r->rd->max);
    }
    q_replies_free(rep, r->p.n);
}

void queue_jobs_rec_add(struct queue_rec *r, struct queue_finish *f)
{
    if (!r || r->broken || f->done)
        return;
    int all = finish_all_terminal(f);
    /* This job deletes the message's bodies only thanks to an earlier job
     * of the same message whose reply is not in yet (the caller merged
     * its outcomes into f->d->rcpt_state): if that one failed while this
     * one ran, a body its retry needs would be gone. Wait for it. */
    for (int j = 0; all && j < r->nf; j++)
        if (!strcmp(r->f[j]->job->msg_id, f->job->msg_id)) {
            rec_collect(r, -1);
            break;
        }
    if (r->broken)
        return;
    if (r->nf == r->cap) {
        int cap = r->cap ? 2 * r->cap : 16;
        struct queue_finish **nf = realloc(r->f, (size_t)cap * sizeof(*nf));
        int *ne = nf ? realloc(r->exec_at, (size_t)cap * sizeof(*ne)) : NULL;
        if (nf)
            r->f = nf;
        if (!ne) {
            r->broken = 1;
            return;
        }
        r->exec_at = ne;
        r->cap = cap;
    }
    if (!r->open) {
        q_pipe_begin(&r->p, r->q);
        r->open = 1;
    }
    finish_cmds(&r->p, f, all);
    r->f[r->nf] = f;
    r->exec_at[r->nf++] = r->p.n - 1;
    /* write it now: Redis records it while the caller sends the next
     * message; only the reply waits */
    int done = 0;
    while (!r->p.err && !done)
        if (redisBufferWrite(r->q->c, &done) != REDIS_OK)
            r->p.err = 1;
}

int queue_jobs_rec_end(struct queue_rec *r, int read)
{
    if (!r)
        return -1;
    int read_at = -1;
    if (read && r->have_read && !r->broken) {
        if (!r->open) {
            q_pipe_begin(&r->p, r->q);
            r->open = 1;
        }
        /* last: it may block, and what came before is recorded by then */
        q_pipe_cmdv(&r->p, r->rc.argc, r->rc.argv, NULL);
        read_at = r->p.n - 1;
    }
    if (r->open)
        rec_collect(r, read_at);
    int rc = r->broken ? -1 : 0;
    read_cmd_free(&r->rc);
    free(r->f);
    free(r->exec_at);
    free(r);
    return rc;
}

int queue_jobs_finish(struct queue *q, struct queue_finish *f, int n, struct queue_read *rd)
{
    struct queue_rec *r = queue_jobs_rec_begin(q, rd);
    for (int i = 0; i < n; i++)
        queue_jobs_rec_add(r, &f[i]);
    queue_jobs_rec_end(r, rd != NULL);
    for (int i = 0; i < n; i++)
        if (!f[i].done)
            return -1;
    return 0;
}

int queue_job_finish(struct queue *q, const struct queue_job *job, const struct queue_delivery *d,
                     struct queue_outcome *o, size_t n, int64_t retry_due_ms)
{
    struct queue_finish f = {.job = job, .d = d, .o = o, .n = n, .retry_due_ms = retry_due_ms};
    return queue_jobs_finish(q, &f, 1, NULL);
}

int queue_schedule_due(struct queue *q, int64_t now_ms, int max)
{
    redisReply *r = q_script_cmd(q, schedule_lua, "2 " QUEUE_DELAYED " " QUEUE_TENANTS " %lld %d " QUEUE_STREAM_PREFIX,
                                 (long long)now_ms, max);
    if (!r)
        return -1;
    int n = r->type == REDIS_REPLY_INTEGER ? (int)r->integer : 0;
    freeReplyObject(r);
    return n;
}
