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

#define Q_SCAN_MAX 5000 /* events examined for one filtered log query */

json_t *queue_event_new(const char *type, const char *msg_id, const char *rcpt, json_t *tags,
                        json_t *metadata)
{
    char id[33], ts[40];
    util_new_id(id);
    json_t *e = json_object();
    json_object_set_new(e, "id", json_sprintf("ev_%s", id));
    json_object_set_new(e, "type", json_string(type));
    json_object_set_new(e, "created_at", json_string(util_rfc3339(util_now_ms(), ts, sizeof(ts))));
    json_object_set_new(e, "message_id", json_string(msg_id));
    json_object_set_new(e, "recipient", rcpt ? json_string(rcpt) : json_null());
    json_object_set_new(e, "tags", tags ? json_deep_copy(tags) : json_array());
    json_object_set_new(e, "metadata", metadata ? json_deep_copy(metadata) : json_object());
    return e;
}

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

int queue_message_enqueue(struct queue *q, const struct queue_new_message *m)
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

    struct q_pipe p;
    q_pipe_begin(&p, q);
    q_pipe_cmd(&p, "MULTI");
    q_pipe_cmd(&p, "HSET mg:msg:%s tenant %s created_at %s from %s subject %s tags %s metadata %s "
                   "mail_from %s rcpts %s",
               m->id, m->tenant, created, m->from, m->subject ? m->subject : "", tags_s, meta_s,
               m->mail_from, rcpts_s);
    for (size_t i = 0; i < m->nrcpts; i++) {
        json_t *st = json_pack("{s:s, s:i, s:n}", "status", m->rcpts[i].status, "attempts", 0,
                               "last_reply");
        char *st_s = json_dumps(st, JSON_COMPACT);
        q_pipe_cmd(&p, "HSET mg:msg:%s:rcpt %s %s", m->id, m->rcpts[i].email, st_s);
        free(st_s);
        json_decref(st);
        json_t *ev = queue_event_new(strcmp(m->rcpts[i].status, "suppressed") ? "queued" : "suppressed",
                                     m->id, m->rcpts[i].email, m->tags, m->metadata);
        if (!strcmp(m->rcpts[i].status, "suppressed"))
            json_object_set_new(ev, "reason", json_string("suppressed"));
        char *ev_s = json_dumps(ev, JSON_COMPACT);
        q_event_append(&p, m->tenant, m->id, ev, ev_s);
        free(ev_s);
        json_decref(ev);
    }
    snprintf(key, sizeof(key), "mg:msg:%s:body", m->id);
    const char *argv[] = {"SET", key, m->body};
    size_t lens[] = {3, strlen(key), m->bodylen};
    q_pipe_cmdv(&p, 3, argv, lens);
    q_pipe_cmd(&p, "ZADD mg:tenant:%s:messages 0 %s", m->tenant, m->id);
    if (json_array_size(job_rcpts))
        q_pipe_cmd(&p, "ZADD " QUEUE_OPEN " %lld %s", (long long)m->created_ms, m->id);
    if (json_array_size(job_rcpts)) {
        if (m->due_ms > 0) {
            json_t *job = json_pack("{s:s, s:s, s:O, s:i}", "t", m->tenant, "m", m->id, "r", job_rcpts, "a", 1);
            char *job_s = json_dumps(job, JSON_COMPACT);
            q_pipe_cmd(&p, "ZADD " QUEUE_DELAYED " %lld %s", (long long)m->due_ms, job_s);
            /* kept so that DELETE /v1/messages/{id} can find and remove it */
            q_pipe_cmd(&p, "HSET mg:msg:%s sched %s", m->id, job_s);
            free(job_s);
            json_decref(job);
        } else {
            q_pipe_cmd(&p, "XADD " QUEUE_STREAM_PREFIX "%s * m %s r %s a 1", m->tenant, m->id, job_r);
            q_pipe_cmd(&p, "SADD " QUEUE_TENANTS " %s", m->tenant);
        }
    }
    q_pipe_cmd(&p, "EXEC");
    redisReply **r = q_pipe_end(&p);
    int ok = r && r[p.n - 1]->type == REDIS_REPLY_ARRAY;
    if (ok)
        for (size_t i = 0; i < r[p.n - 1]->elements; i++)
            if (r[p.n - 1]->element[i]->type == REDIS_REPLY_ERROR)
                ok = 0;
    q_replies_free(r, p.n);
    free(rcpts_s);
    free(tags_s);
    free(meta_s);
    free(job_r);
    json_decref(rcpts);
    json_decref(job_rcpts);
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

int queue_message_get(struct queue *q, const char *tenant, const char *id, json_t **out)
{
    struct q_pipe p;
    q_pipe_begin(&p, q);
    q_pipe_cmd(&p, "HGETALL mg:msg:%s", id);
    q_pipe_cmd(&p, "HGETALL mg:msg:%s:rcpt", id);
    q_pipe_cmd(&p, "LRANGE mg:msg:%s:events 0 -1", id);
    redisReply **r = q_pipe_end(&p);
    if (!r)
        return -1;
    const char *owner = hash_get(r[0], "tenant");
    if (!owner || strcmp(owner, tenant) != 0) {
        q_replies_free(r, p.n);
        return 1;
    }
    json_t *m = json_object();
    char ts[40];
    const char *created = hash_get(r[0], "created_at");
    json_object_set_new(m, "id", json_string(id));
    json_t *order = json_or(hash_get(r[0], "rcpts"), json_array());
    json_t *recipients = json_array();
    size_t n = json_array_size(order);
    const char **st = calloc(n ? n : 1, sizeof(*st));
    size_t i;
    json_t *e;
    json_array_foreach(order, i, e) {
        const char *email = json_string_value(e);
        json_t *s = json_or(hash_get(r[1], email), json_object());
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
    json_object_set_new(m, "from", json_string(hash_get(r[0], "from") ? hash_get(r[0], "from") : ""));
    json_object_set_new(m, "subject", json_string(hash_get(r[0], "subject") ? hash_get(r[0], "subject") : ""));
    json_object_set_new(m, "tags", json_or(hash_get(r[0], "tags"), json_array()));
    json_object_set_new(m, "metadata", json_or(hash_get(r[0], "metadata"), json_object()));
    json_object_set_new(m, "recipients", recipients);
    json_t *events = json_array();
    for (i = 0; r[2]->type == REDIS_REPLY_ARRAY && i < r[2]->elements; i++) {
        json_t *ev = json_loads(r[2]->element[i]->str, 0, NULL);
        if (ev)
            json_array_append_new(events, ev);
    }
    json_object_set_new(m, "events", events);
    json_decref(order);
    q_replies_free(r, p.n);
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

/* event_matches - apply the query's filters to one event. */
static int event_matches(json_t *ev, const struct queue_query *qq)
{
    if (qq->type && strcmp(qq->type, json_string_value(json_object_get(ev, "type")) ?: "") != 0)
        return 0;
    if (qq->recipient &&
        strcasecmp(qq->recipient, json_string_value(json_object_get(ev, "recipient")) ?: "") != 0)
        return 0;
    if (qq->message_id &&
        strcmp(qq->message_id, json_string_value(json_object_get(ev, "message_id")) ?: "") != 0)
        return 0;
    int64_t t = 0;
    util_parse_rfc3339(json_string_value(json_object_get(ev, "created_at")) ?: "", &t);
    if (qq->since_ms && t < qq->since_ms)
        return 0;
    if (qq->until_ms && t >= qq->until_ms)
        return 0;
    return 1;
}

/* A cursor is the opaque position after which the next page starts:
 * "e<stream id>" for the tenant log, "m<index>" for a message's events. */
int queue_events_query(struct queue *q, const char *tenant, const struct queue_query *qq, json_t **out)
{
    json_t *data = json_array();
    json_t *next = json_null();
    if (qq->message_id) {
        json_t *events;
        int rc = queue_message_events(q, tenant, qq->message_id, &events);
        if (rc < 0) {
            json_decref(data);
            return -1;
        }
        long start = (long)(rc == 0 ? json_array_size(events) : 0) - 1;
        if (qq->cursor) {
            char *end;
            if (qq->cursor[0] != 'm' || (start = strtol(qq->cursor + 1, &end, 10), *end) || start < -1) {
                if (rc == 0)
                    json_decref(events);
                json_decref(data);
                return 1;
            }
        }
        for (long i = start; rc == 0 && i >= 0; i--) {
            json_t *ev = json_array_get(events, (size_t)i);
            if (!ev || !event_matches(ev, qq))
                continue;
            if ((int)json_array_size(data) == qq->limit) {
                json_decref(next);
                next = json_sprintf("m%ld", i);
                break;
            }
            json_array_append(data, ev);
        }
        if (rc == 0)
            json_decref(events);
    } else {
        char from[64];
        if (qq->cursor) {
            if (qq->cursor[0] != 'e' || strlen(qq->cursor) > 40 || !strchr(qq->cursor, '-')) {
                json_decref(data);
                return 1;
            }
            snprintf(from, sizeof(from), "(%s", qq->cursor + 1);
        } else {
            util_strlcpy(from, "+", sizeof(from));
        }
        int scanned = 0;
        while ((int)json_array_size(data) < qq->limit + 1 && scanned < Q_SCAN_MAX) {
            redisReply *r = q_cmd(q, "XREVRANGE mg:events:%s %s - COUNT %d", tenant, from, 200);
            if (!r) {
                json_decref(data);
                json_decref(next);
                return -1;
            }
            if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
                freeReplyObject(r);
                break;
            }
            for (size_t i = 0; i < r->elements; i++) {
                redisReply *ent = r->element[i];
                scanned++;
                snprintf(from, sizeof(from), "(%s", ent->element[0]->str);
                redisReply *f = ent->element[1];
                json_t *ev = f->elements >= 2 ? json_loads(f->element[1]->str, 0, NULL) : NULL;
                if (!ev)
                    continue;
                if (!event_matches(ev, qq)) {
                    json_decref(ev);
                    continue;
                }
                if ((int)json_array_size(data) == qq->limit) {
                    json_decref(ev);
                    json_decref(next);
                    /* resume after the last event returned */
                    next = json_sprintf("e%s", json_string_value(json_object_get(
                                                   json_array_get(data, json_array_size(data) - 1), "_sid")));
                    break;
                }
                json_object_set_new(ev, "_sid", json_string(ent->element[0]->str));
                json_array_append_new(data, ev);
            }
            freeReplyObject(r);
            if (!json_is_null(next))
                break;
        }
        size_t i;
        json_t *ev;
        json_array_foreach(data, i, ev) json_object_del(ev, "_sid");
    }
    *out = json_pack("{s:o, s:o}", "data", data, "next_cursor", next);
    return 0;
}

int queue_messages_query(struct queue *q, const char *tenant, const struct queue_query *qq, json_t **out)
{
    /* Ids begin with 12 hex digits of their creation time, so the lex
     * order of the index is time order and since/until become lex bounds. */
    char max[64], min[64];
    if (qq->cursor) {
        if (strlen(qq->cursor) > 40) return 1;
        snprintf(max, sizeof(max), "(%s", qq->cursor);
    } else if (qq->until_ms) {
        snprintf(max, sizeof(max), "(%012llx", (unsigned long long)qq->until_ms);
    } else {
        util_strlcpy(max, "+", sizeof(max));
    }
    if (qq->since_ms)
        snprintf(min, sizeof(min), "[%012llx", (unsigned long long)qq->since_ms);
    else
        util_strlcpy(min, "-", sizeof(min));
    json_t *data = json_array();
    json_t *next = json_null();
    int scanned = 0;
    while ((int)json_array_size(data) < qq->limit && scanned < Q_SCAN_MAX) {
        redisReply *r = q_cmd(q, "ZREVRANGEBYLEX mg:tenant:%s:messages %s %s LIMIT 0 100", tenant, max, min);
        if (!r) {
            json_decref(data);
            return -1;
        }
        if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
            freeReplyObject(r);
            break;
        }
        for (size_t i = 0; i < r->elements && (int)json_array_size(data) < qq->limit; i++) {
            const char *id = r->element[i]->str;
            snprintf(max, sizeof(max), "(%s", id);
            scanned++;
            json_t *m;
            if (queue_message_get(q, tenant, id, &m) != 0)
                continue;
            json_object_del(m, "events");
            int keep = 1;
            if (qq->status && strcmp(qq->status, json_string_value(json_object_get(m, "status"))))
                keep = 0;
            if (keep && qq->tag) {
                keep = 0;
                size_t k;
                json_t *t;
                json_array_foreach(json_object_get(m, "tags"), k, t) if (!strcmp(json_string_value(t) ?: "", qq->tag)) keep = 1;
            }
            if (keep && qq->recipient) {
                keep = 0;
                size_t k;
                json_t *rc;
                json_array_foreach(json_object_get(m, "recipients"), k, rc) if (!strcasecmp(
                    json_string_value(json_object_get(rc, "email")) ?: "", qq->recipient)) keep = 1;
            }
            if (keep)
                json_array_append(data, m);
            json_decref(m);
            if ((int)json_array_size(data) == qq->limit) {
                json_decref(next);
                next = json_string(id);
            }
        }
        freeReplyObject(r);
    }
    *out = json_pack("{s:o, s:o}", "data", data, "next_cursor", next);
    return 0;
}

/* Cancels a scheduled message: only while its delayed job is still in
 * mg:delayed (ZREM says so atomically), then every recipient of the job
 * becomes "cancelled" with its event. ARGV: job, id, tenant, then pairs of
 * (email, event JSON). */
int queue_message_cancel(struct queue *q, const char *tenant, const char *id)
{
    redisReply *r = q_cmd(q, "HMGET mg:msg:%s tenant sched tags metadata", id);
    if (!r)
        return -1;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 4 || !r->element[0]->str ||
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
    freeReplyObject(r);
    /* Take the delayed job first: ZREM is the atomic decision against the
     * scheduler. Whoever removes it owns the message's fate. */
    redisReply *z = q_cmd(q, "ZREM " QUEUE_DELAYED " %s", sched);
    int rc = !z ? -1 : (z->type == REDIS_REPLY_INTEGER && z->integer == 1) ? 0 : 2;
    if (z)
        freeReplyObject(z);
    if (rc == 0) {
        json_t *job = json_loads(sched, 0, NULL);
        json_t *rcpts = json_object_get(job, "r");
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
        q_pipe_cmd(&p, "ZREM " QUEUE_OPEN " %s", id);
        q_pipe_cmd(&p, "DEL mg:msg:%s:body", id);
        q_pipe_cmd(&p, "EXEC");
        redisReply **v = q_pipe_end(&p);
        /* The job is gone either way; if this write failed the recipients
         * stay "scheduled" forever, so say so loudly. */
        if (!v || v[p.n - 1]->type != REDIS_REPLY_ARRAY) {
            log_kv(LOG_ERROR, "cancel_not_recorded", "message_id", id, NULL);
            rc = -1;
        }
        q_replies_free(v, p.n);
        json_decref(job);
    }
    json_decref(tags);
    json_decref(meta);
    free(sched);
    return rc;
}

void q_event_append(struct q_pipe *p, const char *tenant, const char *msg_id, json_t *ev, const char *ev_s)
{
    (void)ev;
    q_pipe_cmd(p, "RPUSH mg:msg:%s:events %s", msg_id, ev_s);
    q_pipe_cmd(p, "XADD mg:events:%s * e %s", tenant, ev_s);
    q_pipe_cmd(p, "XADD " QUEUE_FEED " * t %s e %s", tenant, ev_s);
}
