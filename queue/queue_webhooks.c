/*
 * queue_webhooks.c - webhook endpoints, the fan-out of the event feed into
 * webhook deliveries, and the leased claims the dispatchers take on them.
 *
 * Keys ({t} tenant, {w} webhook id "wh_...", {e} event id "ev_..."):
 *   mg:wh:{t}             hash   webhook id -> {"id","url","events","created_at","secret"}
 *   mg:wh:{t}:{w}:log     list   the webhook's last QUEUE_WH_LOG_MAX attempts, newest first
 *   mg:whd:{w}:{e}        hash   one delivery: t, w, ev, type, body (the exact event
 *                                bytes, sent unchanged on every attempt), n (attempts
 *                                made), first (ms, when it was created), claim (token)
 *   mg:wh:due             zset   delivery ids "{w}:{e}" by due time (ms)
 *   mg:feed               stream t (tenant), e (event id; the JSON is mg:event:{e}), read
 *                                through the consumer group "dispatchers"; only events of
 *                                tenants that have a webhook are added (queue_events.c)
 *
 * Invariants:
 *  - Fan-out is one Lua script per feed entry: it reads the tenant's
 *    webhooks and, when there is one, the event's body by its id, creates
 *    the deliveries and XACKs + XDELs the entry, all atomically - an entry
 *    is never acknowledged without its deliveries, and its deliveries are
 *    never made twice. A delivery id is derived from (webhook, event), so
 *    even a replayed entry cannot double one. An event whose body expired
 *    (retention) before its entry was read makes none; the entry is only
 *    acknowledged. Entries an older version wrote hold the event JSON in
 *    e (it begins with '{'): that JSON is the body.
 *  - The scripts are called by SHA1 (queue_redis.c).
 *  - A claim (Lua) moves a due delivery's score to now + lease and stamps
 *    it with a fresh token. Only the holder of the current token may record
 *    the outcome; when a process dies mid-attempt the lease runs out and
 *    another dispatcher claims the delivery again. So no attempt runs twice
 *    at once, and none is lost (delivery is at-least-once).
 *  - A delivery of a deleted webhook is dropped when it is next claimed.
 *
 * The scripts compute some key names (mg:whd:..., mg:wh:{t}) instead of
 * receiving them in KEYS: fine on one Redis server, which is what mailgate
 * supports; a Redis Cluster would need hash tags here.
 *
 * Limits: QUEUE_WH_MAX webhooks per tenant; QUEUE_WH_LOG_MAX log entries
 * per webhook (LTRIM on write).
 * SECURITY: the signing secret is stored in the webhook's record because
 * it is needed to sign; it is returned by the API once (at creation) and
 * never listed or logged. Keys are built from the authenticated tenant and
 * ids the caller checked (queue_wh_id_ok: no ':'), so a tenant cannot name
 * another tenant's key.
 */
#include "queue/queue_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"

/* KEYS[1] webhooks hash; ARGV[1] id, ARGV[2] record JSON, ARGV[3] max.
 * Returns 1 when stored, 0 when the tenant already has max webhooks. */
const char q_lua_wh_create[] =
    "if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end\n"
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
    "return 1\n";

/* KEYS[1] tenant's webhooks, KEYS[2] mg:feed, KEYS[3] mg:wh:due;
 * ARGV[1] entry id, ARGV[2] tenant, ARGV[3] event id ('' for an unusable
 * entry: only acknowledged), ARGV[4] event type ('' = read it from the
 * body), ARGV[5] event body ('' = the stored one, mg:event:{id}), ARGV[6]
 * now (ms). An entry names its event by id; its body is read only when
 * the tenant has a webhook, and an event whose body has expired (past the
 * retention) makes no delivery. Returns the deliveries made. */
const char q_lua_wh_fanout[] =
    "local n = 0\n"
    "local hooks = ARGV[3] ~= '' and redis.call('HVALS', KEYS[1]) or {}\n"
    "local body, ty = ARGV[5], ARGV[4]\n"
    "if #hooks > 0 and body == '' then body = redis.call('GET', 'mg:event:' .. ARGV[3]) end\n"
    "if body and ty == '' and #hooks > 0 then\n"
    "  local ok, ev = pcall(cjson.decode, body)\n"
    "  ty = ok and type(ev) == 'table' and type(ev.type) == 'string' and ev.type or ''\n"
    "end\n"
    "if body and ty ~= '' then\n"
    "  for _, h in ipairs(hooks) do\n"
    "    local ok, w = pcall(cjson.decode, h)\n"
    "    if ok and type(w) == 'table' and type(w.id) == 'string' and type(w.events) == 'table' then\n"
    "      local match = false\n"
    "      for _, t in ipairs(w.events) do if t == ty then match = true end end\n"
    "      if match then\n"
    "        local id = w.id .. ':' .. ARGV[3]\n"
    "        local k = 'mg:whd:' .. id\n"
    "        if redis.call('EXISTS', k) == 0 then\n"
    "          redis.call('HSET', k, 't', ARGV[2], 'w', w.id, 'ev', ARGV[3], 'type', ty,\n"
    "                     'body', body, 'n', '0', 'first', ARGV[6])\n"
    "          redis.call('ZADD', KEYS[3], ARGV[6], id)\n"
    "          n = n + 1\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "redis.call('XACK', KEYS[2], '" QUEUE_FEED_GROUP "', ARGV[1])\n"
    "redis.call('XDEL', KEYS[2], ARGV[1])\n"
    "return n\n";

/* KEYS[1] mg:wh:due; ARGV[1] now, ARGV[2] lease end, ARGV[3] token.
 * Claims at most one due delivery. Returns {} or {id, t, w, ev, type,
 * body, n, first, webhook JSON}. Deliveries whose record or webhook is
 * gone are dropped on the way. */
const char q_lua_wh_claim[] =
    "for _ = 1, 16 do\n"
    "  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)\n"
    "  if #ids == 0 then return {} end\n"
    "  local id = ids[1]\n"
    "  local k = 'mg:whd:' .. id\n"
    "  local r = redis.call('HMGET', k, 't', 'w', 'ev', 'type', 'body', 'n', 'first')\n"
    "  local hook = false\n"
    "  if r[1] and r[2] and r[5] then hook = redis.call('HGET', 'mg:wh:' .. r[1], r[2]) end\n"
    "  if hook then\n"
    "    redis.call('HSET', k, 'claim', ARGV[3])\n"
    "    redis.call('ZADD', KEYS[1], ARGV[2], id)\n"
    "    return {id, r[1], r[2], r[3] or '', r[4] or '', r[5], r[6] or '0', r[7] or '0', hook}\n"
    "  end\n"
    "  redis.call('ZREM', KEYS[1], id)\n"
    "  redis.call('DEL', k)\n"
    "end\n"
    "return {}\n";

/* KEYS[1] mg:wh:due, KEYS[2] delivery hash, KEYS[3] log list, KEYS[4]
 * tenant's webhooks; ARGV[1] token, ARGV[2] delivery id, ARGV[3] mode
 * (done|retry|release), ARGV[4] next due (ms), ARGV[5] attempts made,
 * ARGV[6] log entry JSON ('' for none), ARGV[7] webhook id, ARGV[8] log max.
 * Returns 1, or 0 when the claim was lost (nothing written). */
const char q_lua_wh_finish[] =
    "if redis.call('HGET', KEYS[2], 'claim') ~= ARGV[1] then return 0 end\n"
    "if ARGV[3] == 'done' then\n"
    "  redis.call('ZREM', KEYS[1], ARGV[2])\n"
    "  redis.call('DEL', KEYS[2])\n"
    "else\n"
    "  if ARGV[3] == 'retry' then redis.call('HSET', KEYS[2], 'n', ARGV[5]) end\n"
    "  redis.call('HDEL', KEYS[2], 'claim')\n"
    "  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])\n"
    "end\n"
    "if ARGV[6] ~= '' and redis.call('HEXISTS', KEYS[4], ARGV[7]) == 1 then\n"
    "  redis.call('LPUSH', KEYS[3], ARGV[6])\n"
    "  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[8]) - 1)\n"
    "end\n"
    "return 1\n";

int queue_wh_id_ok(const char *id)
{
    size_t n = strlen(id);
    if (n < 4 || n > 64 || strncmp(id, "wh_", 3) != 0)
        return 0;
    for (const char *p = id + 3; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return 0;
    return 1;
}

/* id_ok - 1 when an event id from the feed is 1..64 of [A-Za-z0-9_-]: it
 * becomes part of key names (mg:event:{id}, mg:whd:{w}:{id}). */
static int id_ok(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > 64)
        return 0;
    for (const char *p = id; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' ||
              *p == '-'))
            return 0;
    return 1;
}

int queue_wh_create(struct queue *q, const char *tenant, const json_t *hook, size_t max)
{
    const char *id = json_string_value(json_object_get(hook, "id"));
    if (!id || !queue_wh_id_ok(id))
        return -1;
    char *s = json_dumps(hook, JSON_COMPACT);
    if (!s)
        return -1;
    redisReply *r = q_script_cmd(q, q_lua_wh_create, "1 mg:wh:%s %s %s %d", tenant, id, s, (int)max);
    free(s);
    if (!r)
        return -1;
    int rc = r->type == REDIS_REPLY_INTEGER ? (r->integer == 1 ? 0 : 2) : -1;
    freeReplyObject(r);
    return rc;
}

static int by_id(const void *a, const void *b)
{
    const char *x = json_string_value(json_object_get(*(json_t *const *)a, "id"));
    const char *y = json_string_value(json_object_get(*(json_t *const *)b, "id"));
    return strcmp(x ? x : "", y ? y : "");
}

/* by_started_desc - attempt log entries, newest created_at first (RFC
 * 3339 UTC with ms: text order is time order), then higher attempt. */
static int by_started_desc(const void *a, const void *b)
{
    json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    const char *tx = json_string_value(json_object_get(x, "created_at"));
    const char *ty = json_string_value(json_object_get(y, "created_at"));
    int c = strcmp(ty ? ty : "", tx ? tx : "");
    if (c)
        return c;
    json_int_t ax = json_integer_value(json_object_get(x, "attempt"));
    json_int_t ay = json_integer_value(json_object_get(y, "attempt"));
    return ay > ax ? 1 : ay < ax ? -1 : 0;
}

int queue_wh_list(struct queue *q, const char *tenant, json_t **out)
{
    redisReply *r = q_cmd(q, "HVALS mg:wh:%s", tenant);
    if (!r)
        return -1;
    size_t n = r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
    json_t **v = calloc(n ? n : 1, sizeof(*v));
    if (!v) {
        freeReplyObject(r);
        return -1;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *h = r->element[i]->str ? json_loads(r->element[i]->str, 0, NULL) : NULL;
        if (!json_is_object(h)) {
            json_decref(h);
            continue;
        }
        json_object_del(h, "secret"); /* shown once, at creation */
        v[k++] = h;
    }
    freeReplyObject(r);
    /* ids are time-ordered: sorting them lists oldest first */
    qsort(v, k, sizeof(*v), by_id);
    json_t *data = json_array();
    for (size_t i = 0; i < k; i++)
        json_array_append_new(data, v[i]);
    free(v);
    *out = json_pack("{s:o}", "data", data);
    return 0;
}

int queue_wh_delete(struct queue *q, const char *tenant, const char *id)
{
    struct q_pipe p;
    q_pipe_begin(&p, q);
    q_pipe_cmd(&p, "MULTI");
    q_pipe_cmd(&p, "HDEL mg:wh:%s %s", tenant, id);
    q_pipe_cmd(&p, "DEL mg:wh:%s:%s:log", tenant, id);
    q_pipe_cmd(&p, "EXEC");
    redisReply **r = q_pipe_end(&p);
    if (!r)
        return -1;
    redisReply *ex = r[p.n - 1];
    int rc = -1;
    if (ex->type == REDIS_REPLY_ARRAY && ex->elements == 2 && ex->element[0]->type == REDIS_REPLY_INTEGER)
        rc = ex->element[0]->integer == 1 ? 0 : 1;
    q_replies_free(r, p.n);
    return rc;
}

int queue_wh_deliveries(struct queue *q, const char *tenant, const char *id, json_t **out)
{
    struct q_pipe p;
    q_pipe_begin(&p, q);
    q_pipe_cmd(&p, "HEXISTS mg:wh:%s %s", tenant, id);
    q_pipe_cmd(&p, "LRANGE mg:wh:%s:%s:log 0 %d", tenant, id, QUEUE_WH_LOG_MAX - 1);
    redisReply **r = q_pipe_end(&p);
    if (!r)
        return -1;
    if (r[0]->type != REDIS_REPLY_INTEGER || r[0]->integer != 1) {
        int rc = r[0]->type == REDIS_REPLY_INTEGER ? 1 : -1;
        q_replies_free(r, p.n);
        return rc;
    }
    size_t n = r[1]->type == REDIS_REPLY_ARRAY ? r[1]->elements : 0, k = 0;
    json_t **v = calloc(n ? n : 1, sizeof(*v));
    if (!v) {
        q_replies_free(r, p.n);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *e = r[1]->element[i]->str ? json_loads(r[1]->element[i]->str, 0, NULL) : NULL;
        if (json_is_object(e))
            v[k++] = e;
        else
            json_decref(e);
    }
    q_replies_free(r, p.n);
    /* Concurrent workers finish in any order: sort by when each attempt
     * started, newest first. */
    qsort(v, k, sizeof(*v), by_started_desc);
    json_t *data = json_array();
    for (size_t i = 0; i < k; i++)
        json_array_append_new(data, v[i]);
    free(v);
    *out = json_pack("{s:o}", "data", data);
    return 0;
}

/* ---- the feed --------------------------------------------------------- */

int queue_feed_group_ensure(struct queue *q)
{
    redisContext *c = q_ctx(q);
    if (!c)
        return -1;
    redisReply *r = redisCommand(c, "XGROUP CREATE " QUEUE_FEED " " QUEUE_FEED_GROUP " 0 MKSTREAM");
    if (!r) {
        q_drop(q);
        return -1;
    }
    int ok = r->type != REDIS_REPLY_ERROR || strstr(r->str, "BUSYGROUP") != NULL;
    freeReplyObject(r);
    return ok ? 0 : -1;
}

void queue_feed_entries_free(struct queue_feed_entry *v, int n)
{
    for (int i = 0; v && i < n; i++) {
        free(v[i].event);
        v[i].event = NULL;
    }
}

/* feed_parse - copy the entries of a stream reply (array of [id, [f, v,
 * ...]]) into v, at most max. Returns the number copied. */
static int feed_parse(redisReply *list, struct queue_feed_entry *v, int max)
{
    int n = 0;
    for (size_t i = 0; list && list->type == REDIS_REPLY_ARRAY && i < list->elements && n < max; i++) {
        redisReply *ent = list->element[i];
        if (ent->type != REDIS_REPLY_ARRAY || ent->elements < 2 || !ent->element[0]->str)
            continue;
        struct queue_feed_entry *e = &v[n++];
        memset(e, 0, sizeof(*e));
        util_strlcpy(e->entry_id, ent->element[0]->str, sizeof(e->entry_id));
        redisReply *f = ent->element[1];
        /* an entry deleted while pending reads back with nil fields */
        for (size_t k = 0; f->type == REDIS_REPLY_ARRAY && k + 1 < f->elements; k += 2) {
            redisReply *key = f->element[k], *val = f->element[k + 1];
            if (!key->str || !val->str)
                continue;
            if (!strcmp(key->str, "t"))
                util_strlcpy(e->tenant, val->str, sizeof(e->tenant));
            else if (!strcmp(key->str, "e") && !e->event) {
                e->event = malloc(val->len + 1);
                if (e->event) {
                    memcpy(e->event, val->str, val->len + 1);
                    e->eventlen = val->len;
                }
            }
        }
    }
    return n;
}

int queue_feed_read(struct queue *q, const char *consumer, int block_ms, struct queue_feed_entry *v, int max,
                    int *n)
{
    *n = 0;
    redisReply *r;
    int pending = !q->pending_checked;
    if (pending) {
        r = q_cmd(q, "XREADGROUP GROUP " QUEUE_FEED_GROUP " %s COUNT %d STREAMS " QUEUE_FEED " 0", consumer, max);
    } else {
        if (!q_ctx(q))
            return -1;
        q_set_timeout_ms(q, block_ms + 5000);
        r = q_cmd(q, "XREADGROUP GROUP " QUEUE_FEED_GROUP " %s COUNT %d BLOCK %d STREAMS " QUEUE_FEED " >",
                  consumer, max, block_ms);
        if (q->c)
            q_set_timeout_ms(q, 5000);
    }
    if (!r) {
        queue_feed_group_ensure(q); /* NOGROUP after a FLUSHALL */
        return -1;
    }
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 && r->element[0]->type == REDIS_REPLY_ARRAY &&
        r->element[0]->elements == 2)
        *n = feed_parse(r->element[0]->element[1], v, max);
    freeReplyObject(r);
    if (pending && *n == 0)
        q->pending_checked = 1;
    return 0;
}

int queue_feed_autoclaim(struct queue *q, const char *consumer, int64_t min_idle_ms, struct queue_feed_entry *v,
                         int max, int *n)
{
    *n = 0;
    redisReply *r = q_cmd(q, "XAUTOCLAIM " QUEUE_FEED " " QUEUE_FEED_GROUP " %s %lld 0-0 COUNT %d", consumer,
                          (long long)min_idle_ms, max);
    if (!r)
        return -1;
    if (r->type == REDIS_REPLY_ARRAY && r->elements >= 2)
        *n = feed_parse(r->element[1], v, max);
    freeReplyObject(r);
    return 0;
}

int queue_feed_fanout(struct queue *q, const struct queue_feed_entry *v, int n, int64_t now_ms, int *made)
{
    if (made)
        *made = 0;
    if (n <= 0)
        return 0;
    struct q_pipe p;
    q_pipe_begin(&p, q);
    char now[24];
    snprintf(now, sizeof(now), "%lld", (long long)now_ms);
    for (int i = 0; i < n; i++) {
        /* An entry names its event by id; one written by an older version
         * holds the event JSON itself (it begins with '{'), sent as is. */
        int legacy = v[i].event && v[i].eventlen && v[i].event[0] == '{';
        json_t *ev = legacy ? json_loadb(v[i].event, v[i].eventlen, 0, NULL) : NULL;
        const char *id = legacy ? json_string_value(json_object_get(ev, "id")) : v[i].event;
        const char *type = legacy ? json_string_value(json_object_get(ev, "type")) : "";
        /* A malformed entry (or one with an unusable tenant) is only
         * acknowledged: the script makes no delivery for an empty id. */
        int usable = id && type && id_ok(id) && queue_tenant_name_ok(v[i].tenant);
        if (!usable)
            log_kv(LOG_WARN, "feed_entry_malformed", "entry", v[i].entry_id, NULL);
        char hooks[QUEUE_TENANT_MAX + 16];
        snprintf(hooks, sizeof(hooks), "mg:wh:%s", usable ? v[i].tenant : "-");
        const char *argv[] = {"3", hooks, QUEUE_FEED, QUEUE_WH_DUE, v[i].entry_id,
                              usable ? v[i].tenant : "", usable ? id : "", usable ? type : "",
                              usable && legacy ? v[i].event : "", now};
        size_t lens[10];
        for (int k = 0; k < 10; k++)
            lens[k] = strlen(argv[k]);
        if (usable && legacy)
            lens[8] = v[i].eventlen; /* the exact bytes, whatever they hold */
        q_pipe_script(&p, q_lua_wh_fanout, 10, argv, lens);
        json_decref(ev);
    }
    redisReply **r = q_pipe_end(&p);
    if (!r)
        return -1;
    int rc = 0;
    for (int i = 0; i < p.n; i++) {
        if (r[i]->type == REDIS_REPLY_INTEGER) {
            if (made)
                *made += (int)r[i]->integer;
        } else {
            if (r[i]->type == REDIS_REPLY_ERROR)
                log_kv(LOG_ERROR, "redis_error", "reply", r[i]->str, NULL);
            rc = -1; /* that entry stays pending and is read again */
        }
    }
    q_replies_free(r, p.n);
    return rc;
}

/* ---- claims ------------------------------------------------------------ */

void queue_wh_attempt_free(struct queue_wh_attempt *a)
{
    free(a->body);
    free(a->url);
    if (a->secret) {
        memset(a->secret, 0, strlen(a->secret));
        free(a->secret);
    }
    memset(a, 0, sizeof(*a));
}

int queue_wh_claim(struct queue *q, int64_t now_ms, int64_t lease_ms, struct queue_wh_attempt *a)
{
    memset(a, 0, sizeof(*a));
    unsigned char rnd[12];
    if (util_random_bytes(rnd, sizeof(rnd)) < 0)
        return -1;
    util_hex(rnd, sizeof(rnd), a->token);
    redisReply *r = q_script_cmd(q, q_lua_wh_claim, "1 " QUEUE_WH_DUE " %lld %lld %s", (long long)now_ms,
                                 (long long)(now_ms + lease_ms), a->token);
    if (!r)
        return -1;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 9) {
        int rc = r->type == REDIS_REPLY_ARRAY ? 1 : -1;
        freeReplyObject(r);
        return rc;
    }
    redisReply **e = r->element;
    for (int i = 0; i < 9; i++) {
        if (e[i]->type != REDIS_REPLY_STRING) {
            freeReplyObject(r);
            return -1;
        }
    }
    util_strlcpy(a->id, e[0]->str, sizeof(a->id));
    util_strlcpy(a->tenant, e[1]->str, sizeof(a->tenant));
    util_strlcpy(a->webhook_id, e[2]->str, sizeof(a->webhook_id));
    util_strlcpy(a->event_id, e[3]->str, sizeof(a->event_id));
    util_strlcpy(a->event_type, e[4]->str, sizeof(a->event_type));
    a->body = malloc(e[5]->len + 1);
    if (a->body) {
        memcpy(a->body, e[5]->str, e[5]->len + 1);
        a->bodylen = e[5]->len;
    }
    a->attempt = atoi(e[6]->str) + 1;
    a->first_ms = atoll(e[7]->str);
    json_t *hook = json_loadb(e[8]->str, e[8]->len, 0, NULL);
    const char *url = json_string_value(json_object_get(hook, "url"));
    const char *secret = json_string_value(json_object_get(hook, "secret"));
    a->url = url ? strdup(url) : NULL;
    a->secret = secret ? strdup(secret) : NULL;
    json_decref(hook);
    freeReplyObject(r);
    if (!a->body || !a->url || !a->secret) {
        /* a broken record: let the lease run out rather than send it */
        log_kv(LOG_ERROR, "webhook_delivery_unreadable", "delivery", a->id, NULL);
        queue_wh_attempt_free(a);
        return -1;
    }
    return 0;
}

int queue_wh_finish(struct queue *q, const struct queue_wh_attempt *a, enum queue_wh_outcome how,
                    int64_t next_due_ms, const json_t *log_entry)
{
    static const char *const modes[] = {"done", "retry", "release"};
    char *entry = log_entry ? json_dumps(log_entry, JSON_COMPACT) : NULL;
    char due[24], n[16], logmax[16], dkey[160], lkey[160], hkey[96];
    snprintf(due, sizeof(due), "%lld", (long long)next_due_ms);
    snprintf(n, sizeof(n), "%d", a->attempt);
    snprintf(logmax, sizeof(logmax), "%d", QUEUE_WH_LOG_MAX);
    snprintf(dkey, sizeof(dkey), "mg:whd:%s", a->id);
    snprintf(lkey, sizeof(lkey), "mg:wh:%s:%s:log", a->tenant, a->webhook_id);
    snprintf(hkey, sizeof(hkey), "mg:wh:%s", a->tenant);
    const char *argv[] = {"4", QUEUE_WH_DUE, dkey, lkey, hkey, a->token, a->id,
                          modes[how], due, n, entry ? entry : "", a->webhook_id, logmax};
    redisReply *r = q_script_cmdv(q, q_lua_wh_finish, 13, argv, NULL);
    free(entry);
    if (!r)
        return -1;
    int rc = r->type == REDIS_REPLY_INTEGER ? (r->integer == 1 ? 0 : 1) : -1;
    freeReplyObject(r);
    return rc;
}
