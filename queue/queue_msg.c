/*
 * queue_msg.c - message records, recipient state and events in Redis.
 *
 * A send is stored in one MULTI/EXEC so that a request either queues
 * everything (record, body, recipients, events, job) or nothing. Message
 * status is never stored: it is derived from the recipients' statuses
 * whenever it is read, so it cannot disagree with them.
 */
#include "queue/queue_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "common/zbody.h"

json_t *queue_event_new(const char *type, const char *msg_id, const char *rcpt, json_t *tags,
                        json_t *metadata)
{
    char id[33], ts[40];
    util_new_id(id);
    /* created_at is the time inside the id, so that ordering by id (the
     * log's order) and by created_at never disagree */
    char ms_hex[13];
    memcpy(ms_hex, id, 12);
    ms_hex[12] = '\0';
    int64_t ms = (int64_t)strtoll(ms_hex, NULL, 16);
    json_t *e = json_object();
    json_object_set_new(e, "id", json_sprintf("ev_%s", id));
    json_object_set_new(e, "type", json_string(type));
    json_object_set_new(e, "created_at", json_string(util_rfc3339(ms, ts, sizeof(ts))));
    json_object_set_new(e, "message_id", json_string(msg_id));
    json_object_set_new(e, "recipient", rcpt ? json_string(rcpt) : json_null());
    json_object_set_new(e, "tags", tags ? json_deep_copy(tags) : json_array());
    json_object_set_new(e, "metadata", metadata ? json_deep_copy(metadata) : json_object());
    return e;
}

/* The same rules run in Redis to index the status (status_lua in
 * queue_events.c): change both together. */
const char *queue_message_status(const char *const *st, size_t n)
{
    size_t queued = 0, scheduled = 0, open = 0, delivered = 0, bounced = 0, suppressed = 0,
           cancelled = 0;
    for (size_t i = 0; i < n; i++) {
        const char *s = st[i];
        if (!strcmp(s, "delivered"))
            delivered++;
        else if (!strcmp(s, "bounced"))
            bounced++;
        else if (!strcmp(s, "suppressed"))
            suppressed++;
        else if (!strcmp(s, "cancelled"))
            cancelled++;
        else {
            open++;
            if (!strcmp(s, "queued"))
                queued++;
            else if (!strcmp(s, "scheduled"))
                scheduled++;
        }
    }
    if (open) {
        if (scheduled == open && open + suppressed == n)
            return "scheduled";
        if (queued == open && open + suppressed == n)
            return "queued";
        return "sending";
    }
    if (n && delivered == n)
        return "delivered";
    if (delivered)
        return "partially_delivered";
    if (bounced)
        return "bounced";
    if (cancelled)
        return "cancelled";
    if (n && suppressed == n)
        return "suppressed";
    return "queued";
}

/* set_body - queue on p the SET of a body under key, compressed when that
 * pays (common/zbody.h: every reader unpacks, and takes an unpacked body
 * as it is). Packing cannot fail the send: out of memory stores it as is. */
static void set_body(struct q_pipe *p, const char *key, const char *body, size_t len)
{
    struct buf z;
    buf_init(&z, 0);
    int packed = zbody_pack(body, len, &z) == 1;
    const char *argv[] = {"SET", key, packed ? z.data : body};
    size_t lens[] = {3, strlen(key), packed ? z.len : len};
    q_pipe_cmdv(p, 3, argv, lens); /* hiredis copies the arguments */
    buf_free(&z);
}

/* personal_copies - queue on p (inside the MULTI) the SET of each
 * recipient's own copy, mg:msg:{id}:body:{i+1} (suppressed recipients have
 * none), and the number of copies in the record. */
static void personal_copies(struct q_pipe *p, const struct queue_new_message *m)
{
    char key[160];
    for (size_t i = 0; i < m->nrcpts; i++) {
        if (!m->rcpts[i].body)
            continue;
        snprintf(key, sizeof(key), "mg:msg:%s:body:%zu", m->id, i + 1);
        set_body(p, key, m->rcpts[i].body, m->rcpts[i].bodylen);
    }
    q_pipe_cmd(p, "HSET mg:msg:%s copies %lld", m->id, (long long)m->nrcpts); /* hiredis: no %zu */
}

/* personal_jobs - one job per recipient that is not suppressed, naming its
 * copy (b); for a scheduled send, one delayed job each, all of them kept
 * in the record's "sched" as a JSON array of the exact mg:delayed members
 * so that a cancel can take them back. */
static void personal_jobs(struct q_pipe *p, const struct queue_new_message *m)
{
    json_t *sched = json_array();
    for (size_t i = 0; i < m->nrcpts; i++) {
        if (!strcmp(m->rcpts[i].status, "suppressed"))
            continue;
        json_t *r1 = json_pack("[s]", m->rcpts[i].email);
        if (m->due_ms > 0) {
            json_t *job = json_pack("{s:s, s:s, s:O, s:i, s:I}", "t", m->tenant, "m", m->id, "r", r1, "a", 1,
                                    "b", (json_int_t)(i + 1));
            char *job_s = json_dumps(job, JSON_COMPACT);
            q_pipe_cmd(p, "ZADD " QUEUE_DELAYED " %lld %s", (long long)m->due_ms, job_s);
            json_array_append_new(sched, json_string(job_s));
            free(job_s);
            json_decref(job);
        } else {
            char *r_s = json_dumps(r1, JSON_COMPACT);
            q_pipe_cmd(p, "XADD " QUEUE_STREAM_PREFIX "%s * m %s r %s a 1 b %lld", m->tenant, m->id, r_s,
                       (long long)(i + 1));
            free(r_s);
        }
        json_decref(r1);
    }
    if (m->due_ms > 0) {
        char *sched_s = json_dumps(sched, JSON_COMPACT);
        q_pipe_cmd(p, "HSET mg:msg:%s sched %s", m->id, sched_s);
        free(sched_s);
    } else {
        q_pipe_cmd(p, "SADD " QUEUE_TENANTS " %s", m->tenant);
    }
    json_decref(sched);
}

/* enqueue_cmds - queue on p the MULTI ... EXEC that stores m (see
 * queue_message_enqueue). */
static void enqueue_cmds(struct q_pipe *p, const struct queue_new_message *m)
{
    char created[24], key[128];
    snprintf(created, sizeof(created), "%lld", (long long)m->created_ms);
    json_t *rcpts = json_array();
    json_t *job_rcpts = json_array();
    for (size_t i = 0; i < m->nrcpts; i++) {
        json_array_append_new(rcpts, json_string(m->rcpts[i].email));
        if (strcmp(m->rcpts[i].status, "suppressed") != 0)
            json_array_append_new(job_rcpts, json_string(m->rcpts[i].email));
    }
    char *rcpts_s = json_dumps(rcpts, JSON_COMPACT);
    char *tags_s = m->tags ? json_dumps(m->tags, JSON_COMPACT) : strdup("[]");
    char *meta_s = m->metadata ? json_dumps(m->metadata, JSON_COMPACT) : strdup("{}");
    char *job_r = json_dumps(job_rcpts, JSON_COMPACT);

    q_pipe_cmd(p, "MULTI");
    q_pipe_cmd(p, "HSET mg:msg:%s tenant %s created_at %s from %s subject %s tags %s metadata %s "
                   "mail_from %s rcpts %s",
               m->id, m->tenant, created, m->from, m->subject ? m->subject : "", tags_s, meta_s,
               m->mail_from, rcpts_s);
    for (size_t i = 0; i < m->nrcpts; i++) {
        json_t *st = json_pack("{s:s, s:i, s:n}", "status", m->rcpts[i].status, "attempts", 0,
                               "last_reply");
        char *st_s = json_dumps(st, JSON_COMPACT);
        q_pipe_cmd(p, "HSET mg:msg:%s:rcpt %s %s", m->id, m->rcpts[i].email, st_s);
        free(st_s);
        json_decref(st);
        json_t *ev = queue_event_new(strcmp(m->rcpts[i].status, "suppressed") ? "queued" : "suppressed",
                                     m->id, m->rcpts[i].email, m->tags, m->metadata);
        if (!strcmp(m->rcpts[i].status, "suppressed"))
            json_object_set_new(ev, "reason", json_string("suppressed"));
        char *ev_s = json_dumps(ev, JSON_COMPACT);
        q_event_append(p, m->tenant, m->id, ev, ev_s);
        free(ev_s);
        json_decref(ev);
    }
    if (m->personal) {
        personal_copies(p, m);
    } else {
        snprintf(key, sizeof(key), "mg:msg:%s:body", m->id);
        set_body(p, key, m->body, m->bodylen);
    }
    q_msg_index(p, m); /* the read-side indexes and the status index */
    if (json_array_size(job_rcpts))
        q_pipe_cmd(p, "ZADD " QUEUE_OPEN " %lld %s", (long long)m->created_ms, m->id);
    if (json_array_size(job_rcpts)) {
        if (m->personal) {
            personal_jobs(p, m);
        } else if (m->due_ms > 0) {
            json_t *job = json_pack("{s:s, s:s, s:O, s:i}", "t", m->tenant, "m", m->id, "r", job_rcpts, "a", 1);
            char *job_s = json_dumps(job, JSON_COMPACT);
            q_pipe_cmd(p, "ZADD " QUEUE_DELAYED " %lld %s", (long long)m->due_ms, job_s);
            /* kept so that DELETE /v1/messages/{id} can find and remove it */
            q_pipe_cmd(p, "HSET mg:msg:%s sched %s", m->id, job_s);
            free(job_s);
            json_decref(job);
        } else {
            q_pipe_cmd(p, "XADD " QUEUE_STREAM_PREFIX "%s * m %s r %s a 1", m->tenant, m->id, job_r);
            q_pipe_cmd(p, "SADD " QUEUE_TENANTS " %s", m->tenant);
        }
    }
    q_pipe_cmd(p, "EXEC");
    free(rcpts_s);
    free(tags_s);
    free(meta_s);
    free(job_r);
    json_decref(rcpts);
    json_decref(job_rcpts);
}

/* The suppression guard, run between WATCH and MULTI. KEYS[1] mg:supp:{t},
 * KEYS[2] mg:guard:{id}, KEYS[3] the sender's mg:key:{id} ("" for none);
 * ARGV[1] the guard's TTL (ms), ARGV[2..] the lower-cased addresses.
 * Returns -1 when the key is gone (revoked), else the 0-based places (in
 * ARGV[2..]) of the suppressed ones; in both cases it touches the guard,
 * which the caller WATCHes, so that the EXEC that follows writes nothing.
 * HMGET in slices: unpack() has a limit on the values it can return. */
static const char guard_lua[] =
    "if KEYS[3] ~= '' and redis.call('EXISTS', KEYS[3]) == 0 then\n"
    "  redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])\n"
    "  return -1\n"
    "end\n"
    "local hits = {}\n"
    "for s = 2, #ARGV, 1000 do\n"
    "  local v = redis.call('HMGET', KEYS[1], unpack(ARGV, s, math.min(s + 999, #ARGV)))\n"
    "  for i = 1, #v do if v[i] then hits[#hits + 1] = s + i - 3 end end\n"
    "end\n"
    "if #hits > 0 then redis.call('SET', KEYS[2], '1', 'PX', ARGV[1]) end\n"
    "return hits\n";

#define GUARD_TTL_MS "10000" /* outlives any one pipeline by far */
#define GUARD_TRIES 3        /* aborted by a concurrent suppression change, no hit */

/* guarded_once - one WATCH / guard / MULTI ... EXEC pipeline. 0 stored,
 * 1 hits (in hit), 2 aborted without a hit (mg:supp changed meanwhile:
 * try again), QUEUE_KEY_REVOKED, -1 error. */
static int guarded_once(struct queue *q, const struct queue_new_message *m, int *hit)
{
    char supp[128], guard[128], key[128] = "";
    snprintf(supp, sizeof(supp), "mg:supp:%s", m->tenant);
    snprintf(guard, sizeof(guard), "mg:guard:%s", m->id);
    if (m->key_id && *m->key_id)
        snprintf(key, sizeof(key), "mg:key:%s", m->key_id);
    size_t n = 0;
    for (size_t i = 0; i < m->nrcpts; i++)
        n += strcmp(m->rcpts[i].status, "suppressed") != 0;
    const char **argv = calloc(n + 7, sizeof(*argv));
    size_t *at = calloc(n + 1, sizeof(*at));         /* checked place -> recipient */
    char (*keys)[Q_SUPP_EMAIL_MAX + 1] = calloc(n + 1, sizeof(*keys));
    if (!argv || !at || !keys) {
        free(argv);
        free(at);
        free(keys);
        return -1;
    }
    int argc = 0;
    argv[argc++] = "EVAL";
    argv[argc++] = guard_lua;
    argv[argc++] = "3";
    argv[argc++] = supp;
    argv[argc++] = guard;
    argv[argc++] = key;
    argv[argc++] = GUARD_TTL_MS;
    for (size_t i = 0, k = 0; i < m->nrcpts; i++) {
        if (!strcmp(m->rcpts[i].status, "suppressed"))
            continue;
        q_supp_lower(m->rcpts[i].email, keys[k], sizeof(keys[k]));
        argv[argc++] = keys[k];
        at[k++] = i;
    }
    struct q_pipe p;
    q_pipe_begin(&p, q);
    q_pipe_cmd(&p, "WATCH %s %s", guard, supp);
    q_pipe_cmdv(&p, argc, argv, NULL);
    enqueue_cmds(&p, m);
    redisReply **r = q_pipe_end(&p);
    free(argv);
    free(keys);
    int rc = -1;
    if (r) {
        redisReply *g = r[1], *x = r[p.n - 1];
        size_t nhit = 0;
        if (g->type == REDIS_REPLY_ARRAY) {
            for (size_t j = 0; j < g->elements; j++) {
                long long k = g->element[j]->type == REDIS_REPLY_INTEGER ? g->element[j]->integer : -1;
                if (k >= 0 && (size_t)k < n) {
                    hit[at[k]] = 1;
                    nhit++;
                }
            }
        }
        if (q_exec_ok(r, p.n)) {
            rc = 0;
            /* cannot happen (the guard aborts the EXEC), but if the check
             * itself failed the message went in unchecked: say so */
            if (g->type != REDIS_REPLY_ARRAY || nhit)
                log_kv(LOG_ERROR, "suppression_guard_failed", "message_id", m->id, "reply",
                       g->type == REDIS_REPLY_ERROR ? g->str : "hits after commit", NULL);
        } else if (x->type == REDIS_REPLY_NIL && g->type == REDIS_REPLY_INTEGER && g->integer == -1) {
            rc = QUEUE_KEY_REVOKED;
        } else if (x->type == REDIS_REPLY_NIL && g->type == REDIS_REPLY_ARRAY) {
            rc = nhit ? 1 : 2;
        } else if (g->type == REDIS_REPLY_ERROR) {
            log_kv(LOG_ERROR, "redis_error", "reply", g->str, NULL);
        }
    }
    q_replies_free(r, p.n);
    free(at);
    return rc;
}

int queue_message_enqueue(struct queue *q, const struct queue_new_message *m, int *hit)
{
    memset(hit, 0, m->nrcpts * sizeof(*hit));
    /* with every recipient suppressed the guard still checks the key */
    for (int tries = 0; tries < GUARD_TRIES; tries++) {
        int rc = guarded_once(q, m, hit);
        if (rc != 2)
            return rc;
    }
    log_kv(LOG_WARN, "suppression_guard_busy", "message_id", m->id, NULL);
    return -1;
}

/* ---- tracking events ------------------------------------------------- */

void queue_track_info_free(struct queue_track_info *t)
{
    json_decref(t->tags);
    json_decref(t->metadata);
    memset(t, 0, sizeof(*t));
}

int queue_track_load(struct queue *q, const char *tenant, const char *id, const char *rcpt,
                     struct queue_track_info *out)
{
    memset(out, 0, sizeof(*out));
    struct q_pipe p;
    q_pipe_begin(&p, q);
    q_pipe_cmd(&p, "HMGET mg:msg:%s tenant tags metadata", id);
    /* "delivered" follows the recipient's "queued" (and any "deferred")
     * near the head of the list; opens and clicks pile up behind it. */
    q_pipe_msg_events(&p, id, QUEUE_TRACK_SCAN_MAX);
    redisReply **r = q_pipe_end(&p);
    if (!r)
        return -1;
    if (r[1]->type == REDIS_REPLY_ERROR) {
        log_kv(LOG_ERROR, "redis_error", "reply", r[1]->str, NULL);
        q_replies_free(r, p.n);
        return -1;
    }
    redisReply *h = r[0];
    if (h->type == REDIS_REPLY_ARRAY && h->elements == 3 && h->element[0]->str &&
        !strcmp(h->element[0]->str, tenant)) {
        out->exists = 1;
        out->tags = h->element[1]->str ? json_loads(h->element[1]->str, 0, NULL) : NULL;
        out->metadata = h->element[2]->str ? json_loads(h->element[2]->str, 0, NULL) : NULL;
        for (size_t i = 0; r[1]->type == REDIS_REPLY_ARRAY && i < r[1]->elements; i++) {
            const char *e = r[1]->element[i]->str;
            /* cheap filter before parsing: most events are not it */
            if (!e || !strstr(e, "\"delivered\""))
                continue;
            json_t *ev = json_loads(e, 0, NULL);
            const char *type = json_string_value(json_object_get(ev, "type"));
            const char *who = json_string_value(json_object_get(ev, "recipient"));
            int64_t ms = 0;
            if (type && !strcmp(type, "delivered") && who && !strcasecmp(who, rcpt) &&
                util_parse_rfc3339(json_string_value(json_object_get(ev, "created_at")) ?: "", &ms) == 0) {
                out->delivered_ms = ms;
                json_decref(ev);
                break;
            }
            json_decref(ev);
        }
    }
    if (!json_is_array(out->tags)) {
        json_decref(out->tags);
        out->tags = json_array();
    }
    if (!json_is_object(out->metadata)) {
        json_decref(out->metadata);
        out->metadata = json_object();
    }
    q_replies_free(r, p.n);
    return 0;
}

int queue_track_event(struct queue *q, const char *tenant, const char *id, int exists, json_t *ev)
{
    /* q_event_append writes the message's event list too. When the record
     * is gone that list is unseen (a message is shown only with its
     * record) and expires with the retention TTL q_event_append gives it,
     * so the event is kept where it can still be read: the tenant's log. */
    (void)exists;
    char *ev_s = json_dumps(ev, JSON_COMPACT);
    if (!ev_s)
        return -1;
    struct q_pipe p;
    q_pipe_begin(&p, q);
    q_pipe_cmd(&p, "MULTI");
    q_event_append(&p, tenant, id, ev, ev_s);
    q_pipe_cmd(&p, "EXEC");
    redisReply **r = q_pipe_end(&p);
    int ok = q_exec_ok(r, p.n);
    q_replies_free(r, p.n);
    free(ev_s);
    return ok ? 0 : -1;
}

/* hash_get - value of field in an HGETALL reply, or NULL. */
static const char *hash_get(const redisReply *h, const char *field)
{
    if (!h || h->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < h->elements; i += 2)
        if (!strcmp(h->element[i]->str, field))
            return h->element[i + 1]->str;
    return NULL;
}

static json_t *json_or(const char *s, json_t *dflt)
{
    json_t *v = s ? json_loads(s, JSON_DECODE_ANY, NULL) : NULL;
    if (!v)
        return dflt;
    json_decref(dflt);
    return v;
}

json_t *q_message_json(const char *tenant, const char *id, const redisReply *rec, const redisReply *rcpt,
                       const redisReply *evs)
{
    const char *owner = hash_get(rec, "tenant");
    if (!owner || strcmp(owner, tenant) != 0)
        return NULL;
    json_t *m = json_object();
    char ts[40];
    const char *created = hash_get(rec, "created_at");
    json_object_set_new(m, "id", json_string(id));
    json_t *order = json_or(hash_get(rec, "rcpts"), json_array());
    json_t *recipients = json_array();
    size_t n = json_array_size(order);
    const char **st = calloc(n ? n : 1, sizeof(*st));
    size_t i;
    json_t *e;
    json_array_foreach(order, i, e) {
        const char *email = json_string_value(e);
        json_t *s = json_or(hash_get(rcpt, email), json_object());
        json_t *rc = json_object();
        json_t *v;
        json_object_set_new(rc, "email", json_string(email));
        v = json_object_get(s, "status");
        json_object_set_new(rc, "status", json_is_string(v) ? json_incref(v) : json_string("queued"));
        v = json_object_get(s, "attempts");
        json_object_set_new(rc, "attempts", json_is_integer(v) ? json_incref(v) : json_integer(0));
        v = json_object_get(s, "last_reply");
        json_object_set_new(rc, "last_reply", v ? json_incref(v) : json_null());
        json_array_append_new(recipients, rc);
        st[i] = json_string_value(json_object_get(rc, "status"));
        json_decref(s);
    }
    json_object_set_new(m, "status", json_string(queue_message_status(st, n)));
    free(st);
    json_object_set_new(m, "created_at",
                        json_string(util_rfc3339(created ? atoll(created) : 0, ts, sizeof(ts))));
    json_object_set_new(m, "from", json_string(hash_get(rec, "from") ? hash_get(rec, "from") : ""));
    json_object_set_new(m, "subject", json_string(hash_get(rec, "subject") ? hash_get(rec, "subject") : ""));
    json_object_set_new(m, "tags", json_or(hash_get(rec, "tags"), json_array()));
    json_object_set_new(m, "metadata", json_or(hash_get(rec, "metadata"), json_object()));
    json_object_set_new(m, "recipients", recipients);
    if (evs) {
        json_t *events = json_array();
        for (i = 0; evs->type == REDIS_REPLY_ARRAY && i < evs->elements; i++) {
            const redisReply *x = evs->element[i];
            json_t *ev = x->type == REDIS_REPLY_STRING ? json_loadb(x->str, x->len, 0, NULL) : NULL;
            if (ev) /* an event past its retention is gone */
                json_array_append_new(events, ev);
        }
        json_object_set_new(m, "events", events);
    }
    json_decref(order);
    return m;
}

int queue_message_get(struct queue *q, const char *tenant, const char *id, json_t **out)
{
    struct q_pipe p;
    q_pipe_begin(&p, q);
    q_pipe_cmd(&p, "HGETALL mg:msg:%s", id);
    q_pipe_cmd(&p, "HGETALL mg:msg:%s:rcpt", id);
    q_pipe_msg_events(&p, id, 0); /* one round trip: the bodies are read in Redis */
    redisReply **r = q_pipe_end(&p);
    if (!r)
        return -1;
    if (r[2]->type == REDIS_REPLY_ERROR) {
        log_kv(LOG_ERROR, "redis_error", "reply", r[2]->str, NULL);
        q_replies_free(r, p.n);
        return -1;
    }
    json_t *m = q_message_json(tenant, id, r[0], r[1], r[2]);
    q_replies_free(r, p.n);
    if (!m)
        return 1;
    *out = m;
    return 0;
}

int queue_message_events(struct queue *q, const char *tenant, const char *id, json_t **out)
{
    json_t *m;
    int rc = queue_message_get(q, tenant, id, &m);
    if (rc)
        return rc;
    *out = json_incref(json_object_get(m, "events"));
    json_decref(m);
    return 0;
}

/* Cancels a scheduled message: only while its delayed job is still in
 * mg:delayed (ZREM says so atomically), then every recipient of the job
 * becomes "cancelled" with its event. ARGV: job, id, tenant, then pairs of
 * (email, event JSON). */
int queue_message_cancel(struct queue *q, const char *tenant, const char *id)
{
    redisReply *r = q_cmd(q, "HMGET mg:msg:%s tenant sched tags metadata copies", id);
    if (!r)
        return -1;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 5 || !r->element[0]->str ||
        strcmp(r->element[0]->str, tenant) != 0) {
        freeReplyObject(r);
        return 1;
    }
    if (!r->element[1]->str) {
        freeReplyObject(r);
        return 2;
    }
    char *sched = strdup(r->element[1]->str);
    json_t *tags = r->element[2]->str ? json_loads(r->element[2]->str, 0, NULL) : NULL;
    json_t *meta = r->element[3]->str ? json_loads(r->element[3]->str, 0, NULL) : NULL;
    long copies = r->element[4]->str ? atol(r->element[4]->str) : 0;
    freeReplyObject(r);
    /* Take the delayed job first: ZREM is the atomic decision against the
     * scheduler. Whoever removes it owns the message's fate. A message with
     * personal copies has one delayed job per recipient ("sched" is then a
     * JSON array of them): each ZREM decides for its own recipient, and the
     * recipients of the jobs the scheduler already moved go on sending. */
    json_t *jobs = json_array();
    json_t *sv = json_loads(sched, 0, NULL);
    if (json_is_array(sv)) {
        size_t k;
        json_t *js;
        json_array_foreach(sv, k, js) if (json_is_string(js)) json_array_append(jobs, js);
    } else {
        json_array_append_new(jobs, json_string(sched));
    }
    json_decref(sv);
    int rc = 2;
    size_t removed = 0;
    json_t *rcpts = json_array(), *copy_ns = json_array();
    struct q_pipe zp;
    q_pipe_begin(&zp, q);
    for (size_t k = 0; k < json_array_size(jobs); k++)
        q_pipe_cmd(&zp, "ZREM " QUEUE_DELAYED " %s", json_string_value(json_array_get(jobs, k)));
    redisReply **z = q_pipe_end(&zp);
    if (!z)
        rc = -1;
    for (size_t k = 0; z && k < json_array_size(jobs); k++) {
        if (z[k]->type != REDIS_REPLY_INTEGER || z[k]->integer != 1)
            continue;
        rc = 0;
        removed++;
        json_t *job = json_loads(json_string_value(json_array_get(jobs, k)), 0, NULL);
        json_array_extend(rcpts, json_object_get(job, "r"));
        if (json_is_integer(json_object_get(job, "b")))
            json_array_append(copy_ns, json_object_get(job, "b"));
        json_decref(job);
    }
    q_replies_free(z, zp.n);
    if (rc == 0) {
        struct q_pipe p;
        q_pipe_begin(&p, q);
        q_pipe_cmd(&p, "MULTI");
        size_t i;
        json_t *e;
        json_array_foreach(rcpts, i, e) {
            const char *email = json_string_value(e);
            if (!email)
                continue;
            q_pipe_cmd(&p, "HSET mg:msg:%s:rcpt %s %s", id, email, "{\"status\":\"cancelled\",\"attempts\":0,\"last_reply\":null}");
            json_t *ev = queue_event_new("cancelled", id, email, tags, meta);
            json_object_set_new(ev, "reason", json_string("cancelled"));
            char *ev_s = json_dumps(ev, JSON_COMPACT);
            q_event_append(&p, tenant, id, ev, ev_s);
            free(ev_s);
            json_decref(ev);
        }
        q_pipe_cmd(&p, "HDEL mg:msg:%s sched", id);
        q_msg_reindex(&p, tenant, id);
        if (removed == json_array_size(jobs)) {
            q_pipe_cmd(&p, "ZREM " QUEUE_OPEN " %s", id);
            q_pipe_cmd(&p, "DEL mg:msg:%s:body", id);
        }
        /* only the cancelled recipients' copies: a moved job needs its own */
        for (size_t k = 0; k < json_array_size(copy_ns) && copies; k++)
            q_pipe_cmd(&p, "DEL mg:msg:%s:body:%lld", id, (long long)json_integer_value(json_array_get(copy_ns, k)));
        q_pipe_cmd(&p, "EXEC");
        redisReply **v = q_pipe_end(&p);
        /* The job is gone either way; if this write failed the recipients
         * stay "scheduled" forever, so say so loudly. */
        if (!v || v[p.n - 1]->type != REDIS_REPLY_ARRAY) {
            log_kv(LOG_ERROR, "cancel_not_recorded", "message_id", id, NULL);
            rc = -1;
        }
        q_replies_free(v, p.n);
    }
    json_decref(rcpts);
    json_decref(copy_ns);
    json_decref(jobs);
    json_decref(tags);
    json_decref(meta);
    free(sched);
    return rc;
}

int queue_message_exists(struct queue *q, const char *id)
{
    redisReply *r = q_cmd(q, "EXISTS mg:msg:%s", id);
    if (!r)
        return -1;
    int rc = r->type == REDIS_REPLY_INTEGER && r->integer > 0;
    freeReplyObject(r);
    return rc;
}
