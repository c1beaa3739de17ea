/*
 * queue_events.c - the event store and the read side: how an event is
 * recorded (once), the per-tenant indexes behind GET /v1/events and
 * GET /v1/messages, the message-status index, retention, and the pure
 * helpers those queries share (cursors, id bounds).
 *
 * Design (key names are listed in queue.h):
 *  - An event is recorded by one Lua script (event_lua), queued by
 *    q_event_append on the caller's MULTI. Its first step is SET NX on
 *    the event's own key mg:event:{id}: when the key exists the event was
 *    already recorded (a worker replayed a transaction) and the script
 *    does nothing else, so the message list, the indexes, the stats and
 *    the webhook feed each see an event exactly once.
 *  - Ids are time-ordered ("ev_" + 12 hex ms + 20 hex random; messages
 *    12 hex ms + 20 hex), so every index is a zset with all scores 0 read
 *    in lex order: newest first is ZREVRANGEBYLEX, since/until are lex
 *    bounds, and a cursor is simply the last id returned. Ties cannot
 *    happen (the random part), so paging has no duplicates and no gaps,
 *    and new events (larger ids) never shift the pages behind a cursor.
 *  - Retention is enforced where data is written, never by a sweeper:
 *    each index write trims the entries older than the retention with
 *    ZREMRANGEBYLEX and refreshes the index key's TTL (an index no longer
 *    written to expires whole); event bodies and per-message keys carry a
 *    TTL of the retention from their last event; queries also never read
 *    below the retention floor, so an entry not yet trimmed is not shown.
 *  - A query reads one index: the filter's own (type, recipient, tag,
 *    status), or when two filters are given the smaller of the two over
 *    the requested time range (ZLEXCOUNT, O(log n)), filtering the other
 *    in memory. One query examines at most Q_SCAN_MAX ids; past that it
 *    returns a short page whose cursor resumes after the last id examined.
 *
 * Limits: a page is at most 1000 items (QUEUE_LIMIT_MAX). Redis Cluster is
 * not supported (the scripts build key names from their arguments).
 * SECURITY: every index key begins with the tenant, and a message is
 * shown only when its record names the asking tenant.
 */
#include "queue/queue_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"

#define Q_SCAN_MAX 5000       /* ids one filtered query examines before it returns */
#define Q_FILTER_BATCH 500    /* ids read at a time when a filter is applied in memory */
#define Q_EMAIL_MAX 320       /* bytes of an address used in an index key */
#define Q_TAGS_MAX 100        /* tags counted per event (the API allows 100) */
#define Q_KEY_MAX 1400        /* an index key: prefix, tenant (64), a tag (256 characters,
                                 up to 1024 bytes) or an address */
#define Q_DAY_MS 86400000LL
#define Q_HOUR_MS 3600000LL

/* Set once at start-up, before any thread exists; read-only after. */
static int64_t retention_ms = 30 * Q_DAY_MS;

void queue_set_retention_ms(int64_t ms)
{
    if (ms > 0)
        retention_ms = ms;
}

int64_t queue_retention_ms(void)
{
    return retention_ms;
}

/* ---- pure helpers --------------------------------------------------- */

static const char *const event_types[] = {"queued",  "delivered", "deferred", "bounced",      "suppressed",
                                          "cancelled", "opened",  "clicked",  "unsubscribed", NULL};

static const char *const message_statuses[] = {"queued",  "scheduled",  "sending",   "delivered", "partially_delivered",
                                               "bounced", "suppressed", "cancelled", NULL};

static int in_list(const char *const *list, const char *s)
{
    for (; *list; list++)
        if (!strcmp(*list, s))
            return 1;
    return 0;
}

int queue_event_type_ok(const char *type)
{
    return type && in_list(event_types, type);
}

int queue_message_status_ok(const char *status)
{
    return status && in_list(message_statuses, status);
}

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* key_ok - 1 when s is 1..64 of [A-Za-z0-9_-] (an event or message id). */
static int key_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-')
            return 0;
    return 1;
}

int queue_cursor_encode(char kind, const char *key, char *out, size_t outlen)
{
    char raw[80];
    if (!key_ok(key) || snprintf(raw, sizeof(raw), "%c:%s", kind, key) >= (int)sizeof(raw))
        return -1;
    size_t n = strlen(raw), o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned char)raw[i] << 16;
        if (i + 1 < n)
            v |= (unsigned char)raw[i + 1] << 8;
        if (i + 2 < n)
            v |= (unsigned char)raw[i + 2];
        size_t chars = i + 2 < n ? 4 : i + 1 < n ? 3 : 2;
        if (o + chars + 1 > outlen)
            return -1;
        for (size_t k = 0; k < chars; k++)
            out[o++] = b64url[(v >> (18 - 6 * k)) & 63];
    }
    if (o + 1 > outlen)
        return -1;
    out[o] = '\0';
    return 0;
}

int queue_cursor_decode(const char *cursor, char kind, char *key, size_t keylen)
{
    char raw[80];
    size_t n = strlen(cursor), o = 0;
    if (n == 0 || n > 104 || n % 4 == 1)
        return -1;
    unsigned v = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p = memchr(b64url, cursor[i], 64);
        if (!p || !cursor[i])
            return -1;
        v = (v << 6) | (unsigned)(p - b64url);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o + 1 >= sizeof(raw))
                return -1;
            raw[o++] = (char)((v >> bits) & 0xff);
        }
    }
    /* the bits left over must be zero, so each cursor has one spelling */
    if (v & ((1u << bits) - 1))
        return -1;
    raw[o] = '\0';
    if (o < 3 || raw[0] != kind || raw[1] != ':' || memchr(raw, '\0', o) || !key_ok(raw + 2) ||
        strlen(raw + 2) + 1 > keylen)
        return -1;
    util_strlcpy(key, raw + 2, keylen);
    return 0;
}

/* lower_email - ASCII lower-case copy of s into out (truncated to fit). */
static void lower_email(const char *s, char *out, size_t outlen)
{
    size_t i = 0;
    for (; s && s[i] && i + 1 < outlen; i++)
        out[i] = (char)tolower((unsigned char)s[i]);
    out[i] = '\0';
}

/* id_ms - the creation time in an id (12 hex digits after prefix), or -1. */
static int64_t id_ms(const char *id, const char *prefix)
{
    size_t pl = strlen(prefix);
    if (!id || strncmp(id, prefix, pl) != 0)
        return -1;
    int64_t ms = 0;
    for (int i = 0; i < 12; i++) {
        char c = id[pl + i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return -1;
        ms = ms * 16 + d;
    }
    return ms;
}

/* Lex bounds of a query over an index of ids beginning with prefix:
 * [max, min] as ZREVRANGEBYLEX takes them. The floor is the later of since
 * and the retention floor; the top is the cursor (exclusive) or until
 * (exclusive), whichever is lower. */
struct q_bounds {
    char max[96], min[96];
    char lo[80], hi[80];      /* the same as plain strings ("" = open), for in-memory checks */
};

static void bounds_make(struct q_bounds *b, const char *prefix, const struct queue_query *qq, const char *after)
{
    int64_t floor_ms = util_now_ms() - retention_ms;
    int64_t since = qq->since_ms > floor_ms ? qq->since_ms : floor_ms;
    if (since < 0)
        since = 0;
    snprintf(b->lo, sizeof(b->lo), "%s%012llx", prefix, (unsigned long long)since & 0xffffffffffffULL);
    snprintf(b->min, sizeof(b->min), "[%s", b->lo);
    b->hi[0] = '\0';
    if (qq->until_ms)
        snprintf(b->hi, sizeof(b->hi), "%s%012llx", prefix,
                 (unsigned long long)(qq->until_ms > 0 ? qq->until_ms : 0) & 0xffffffffffffULL);
    if (after && after[0] && (!b->hi[0] || strcmp(after, b->hi) < 0))
        util_strlcpy(b->hi, after, sizeof(b->hi));
    if (b->hi[0])
        snprintf(b->max, sizeof(b->max), "(%s", b->hi);
    else
        util_strlcpy(b->max, "+", sizeof(b->max));
}

/* bounds_hold - 1 when id lies in [lo, hi). */
static int bounds_hold(const struct q_bounds *b, const char *id)
{
    return strcmp(id, b->lo) >= 0 && (!b->hi[0] || strcmp(id, b->hi) < 0);
}

/* ---- writing ---------------------------------------------------------- */

/* Records one event, once. ARGV: 1 tenant, 2 message id, 3 event id,
 * 4 type, 5 recipient lower-cased ("" for none), 6 event JSON,
 * 7 retention ms, 8 trim bound of the event indexes ("(ev_<hex floor>"),
 * 9 stats day (ms of 00:00 UTC), 10 hour of day "HH", 11 counter name,
 * 12 unique counter name ("" for none), 13 when the stats keys expire
 * (ms), 14.. the event's tags (distinct). Returns 1, or 0 for a replay.
 * A message whose record is gone (past its retention: an open or click
 * through a token that outlives it) gets nothing under its keys; the
 * event still goes to the tenant's log, the stats and the feed. */
static const char event_lua[] =
    "local t, m, id, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[7])\n"
    "if not redis.call('SET', 'mg:event:' .. id, ARGV[6], 'NX', 'PX', ARGV[7]) then return 0 end\n"
    "local function index(k)\n"
    "  redis.call('ZADD', k, 0, id)\n"
    "  redis.call('ZREMRANGEBYLEX', k, '-', ARGV[8])\n"
    "  redis.call('PEXPIRE', k, ARGV[7])\n"
    "end\n"
    "local function keep(k)\n"
    "  local left = redis.call('PTTL', k)\n"
    "  if left == -1 or (left >= 0 and left < ttl) then redis.call('PEXPIRE', k, ARGV[7]) end\n"
    "end\n"
    "local ix = 'mg:evi:' .. t\n"
    "index(ix)\n"
    "index(ix .. ':type:' .. ARGV[4])\n"
    "if ARGV[5] ~= '' then index(ix .. ':rcpt:' .. ARGV[5]) end\n"
    "local mk, uniq = 'mg:msg:' .. m, false\n"
    "if redis.call('EXISTS', mk) == 1 then\n"
    "  redis.call('RPUSH', mk .. ':events', ARGV[6])\n"
    "  keep(mk) keep(mk .. ':rcpt') keep(mk .. ':events')\n"
    "  if ARGV[12] ~= '' then\n"
    "    uniq = redis.call('SADD', mk .. ':uniq', ARGV[12] .. ':' .. ARGV[5]) == 1\n"
    "    keep(mk .. ':uniq')\n"
    "  end\n"
    "end\n"
    "local sk = 'mg:stats:' .. t .. ':' .. ARGV[9]\n"
    "local function count(k)\n"
    "  redis.call('HINCRBY', k, ARGV[10] .. ':' .. ARGV[11], 1)\n"
    "  if uniq then redis.call('HINCRBY', k, ARGV[10] .. ':' .. ARGV[12], 1) end\n"
    "  redis.call('PEXPIREAT', k, ARGV[13])\n"
    "end\n"
    "count(sk)\n"
    "for i = 14, #ARGV do count(sk .. ':tag:' .. ARGV[i]) end\n"
    "redis.call('XADD', 'mg:feed', '*', 't', t, 'e', ARGV[6])\n"
    "return 1\n";

void q_event_append(struct q_pipe *p, const char *tenant, const char *msg_id, json_t *ev, const char *ev_s)
{
    const char *id = json_string_value(json_object_get(ev, "id"));
    const char *type = json_string_value(json_object_get(ev, "type"));
    if (!id || !key_ok(id) || !type) {
        log_kv(LOG_ERROR, "event_not_recorded", "message_id", msg_id, "reason", "event without id or type", NULL);
        return;
    }
    int64_t ms = id_ms(id, "ev_");
    if (ms < 0)
        ms = util_now_ms();
    char rcpt[Q_EMAIL_MAX + 1], ttl[24], trim[40], day[24], hour[8], expire[24], counter[48], uniq[48];
    lower_email(json_string_value(json_object_get(ev, "recipient")), rcpt, sizeof(rcpt));
    snprintf(ttl, sizeof(ttl), "%lld", (long long)retention_ms);
    int64_t floor_ms = util_now_ms() - retention_ms;
    snprintf(trim, sizeof(trim), "(ev_%012llx", (unsigned long long)(floor_ms > 0 ? floor_ms : 0));
    int64_t day_ms = ms - ms % Q_DAY_MS;
    snprintf(day, sizeof(day), "%lld", (long long)day_ms);
    snprintf(hour, sizeof(hour), "%02d", (int)((ms - day_ms) / Q_HOUR_MS));
    snprintf(expire, sizeof(expire), "%lld", (long long)(day_ms + Q_DAY_MS + retention_ms));
    /* Opens and clicks a machine made (privacy proxies, link scanners)
     * are counted apart; a person's first open (click) of a message
     * counts once more as unique, which is what the rates use. */
    int engagement = !strcmp(type, "opened") || !strcmp(type, "clicked");
    int machine = json_is_true(json_object_get(ev, "machine"));
    snprintf(counter, sizeof(counter), "%s%s", type, engagement && machine ? "_machine" : "");
    if (engagement && !machine && rcpt[0])
        snprintf(uniq, sizeof(uniq), "%s_unique", type);
    else
        uniq[0] = '\0';

    const char *argv[16 + Q_TAGS_MAX];
    size_t lens[16 + Q_TAGS_MAX];
    int argc = 0;
#define ARG(s) (argv[argc] = (s), lens[argc] = strlen(argv[argc]), argc++)
    ARG("EVAL");
    ARG(event_lua);
    ARG("0");
    ARG(tenant);
    ARG(msg_id);
    ARG(id);
    ARG(type);
    ARG(rcpt);
    ARG(ev_s);
    ARG(ttl);
    ARG(trim);
    ARG(day);
    ARG(hour);
    ARG(counter);
    ARG(uniq);
    ARG(expire);
    int first_tag = argc;
    size_t i;
    json_t *tag;
    json_array_foreach(json_object_get(ev, "tags"), i, tag) {
        const char *s = json_string_value(tag);
        if (!s || argc - first_tag >= Q_TAGS_MAX)
            continue;
        int dup = 0;
        for (int k = first_tag; k < argc && !dup; k++)
            dup = !strcmp(argv[k], s);
        if (!dup)
            ARG(s);
    }
#undef ARG
    q_pipe_cmdv(p, argc, argv, lens);
}

/* Re-derives a message's status from its recipients and moves it between
 * the tenant's status indexes. It must agree with queue_message_status()
 * in queue_msg.c (the same rules, written twice because this one runs in
 * Redis, inside the transaction, where it sees every recipient's latest
 * status even when two senders finish jobs of one message at once).
 * ARGV: 1 tenant, 2 message id, 3 retention ms, 4 trim bound "(<hex>".
 * The status last indexed is kept in the record's field "st". */
static const char status_lua[] =
    "local mk = 'mg:msg:' .. ARGV[2]\n"
    "if redis.call('EXISTS', mk) == 0 then return 0 end\n"
    "local n, open, queued, sched, dl, bo, su, ca = 0, 0, 0, 0, 0, 0, 0, 0\n"
    "for _, v in ipairs(redis.call('HVALS', mk .. ':rcpt')) do\n"
    "  local ok, r = pcall(cjson.decode, v)\n"
    "  local s = (ok and type(r) == 'table' and type(r.status) == 'string') and r.status or 'queued'\n"
    "  n = n + 1\n"
    "  if s == 'delivered' then dl = dl + 1 elseif s == 'bounced' then bo = bo + 1\n"
    "  elseif s == 'suppressed' then su = su + 1 elseif s == 'cancelled' then ca = ca + 1\n"
    "  else open = open + 1\n"
    "    if s == 'queued' then queued = queued + 1 elseif s == 'scheduled' then sched = sched + 1 end\n"
    "  end\n"
    "end\n"
    "local st\n"
    "if open > 0 then\n"
    "  if sched == open and open + su == n then st = 'scheduled'\n"
    "  elseif queued == open and open + su == n then st = 'queued' else st = 'sending' end\n"
    "elseif n > 0 and dl == n then st = 'delivered' elseif dl > 0 then st = 'partially_delivered'\n"
    "elseif bo > 0 then st = 'bounced' elseif ca > 0 then st = 'cancelled'\n"
    "elseif n > 0 and su == n then st = 'suppressed' else st = 'queued' end\n"
    "local old = redis.call('HGET', mk, 'st')\n"
    "if old == st then return 0 end\n"
    "local ix = 'mg:msgi:' .. ARGV[1] .. ':status:'\n"
    "if old then redis.call('ZREM', ix .. old, ARGV[2]) end\n"
    "redis.call('ZADD', ix .. st, 0, ARGV[2])\n"
    "redis.call('ZREMRANGEBYLEX', ix .. st, '-', ARGV[4])\n"
    "redis.call('PEXPIRE', ix .. st, ARGV[3])\n"
    "redis.call('HSET', mk, 'st', st)\n"
    "return 1\n";

/* msg_trim_bound - "(<12 hex of the retention floor>" for message indexes. */
static void msg_trim_bound(char *out, size_t outlen)
{
    int64_t floor_ms = util_now_ms() - retention_ms;
    snprintf(out, outlen, "(%012llx", (unsigned long long)(floor_ms > 0 ? floor_ms : 0));
}

void q_msg_reindex(struct q_pipe *p, const char *tenant, const char *msg_id)
{
    char ttl[24], trim[40];
    snprintf(ttl, sizeof(ttl), "%lld", (long long)retention_ms);
    msg_trim_bound(trim, sizeof(trim));
    const char *argv[] = {"EVAL", status_lua, "0", tenant, msg_id, ttl, trim};
    size_t lens[7];
    for (int i = 0; i < 7; i++)
        lens[i] = strlen(argv[i]);
    q_pipe_cmdv(p, 7, argv, lens);
}

/* msg_index_add - queue ZADD of id to index key, with the retention trim
 * and TTL refresh every index write does. */
static void msg_index_add(struct q_pipe *p, const char *key, const char *id, const char *trim)
{
    q_pipe_cmd(p, "ZADD %s 0 %s", key, id);
    q_pipe_cmd(p, "ZREMRANGEBYLEX %s - %s", key, trim);
    q_pipe_cmd(p, "PEXPIRE %s %lld", key, (long long)retention_ms);
}

void q_msg_index(struct q_pipe *p, const struct queue_new_message *m)
{
    char trim[40], key[Q_KEY_MAX];
    msg_trim_bound(trim, sizeof(trim));
    snprintf(key, sizeof(key), "mg:tenant:%s:messages", m->tenant);
    msg_index_add(p, key, m->id, trim);
    size_t i;
    json_t *tag;
    json_array_foreach(m->tags, i, tag) {
        if (!json_is_string(tag))
            continue;
        /* the same tag twice is one ZADD that changes nothing: harmless */
        snprintf(key, sizeof(key), "mg:msgi:%s:tag:%s", m->tenant, json_string_value(tag));
        msg_index_add(p, key, m->id, trim);
    }
    for (size_t k = 0; k < m->nrcpts; k++) {
        char rcpt[Q_EMAIL_MAX + 1];
        lower_email(m->rcpts[k].email, rcpt, sizeof(rcpt));
        snprintf(key, sizeof(key), "mg:msgi:%s:rcpt:%s", m->tenant, rcpt);
        msg_index_add(p, key, m->id, trim);
    }
    /* A scheduled message must outlive its wait: keep its keys until the
     * retention after it is due (events only ever extend a TTL). */
    if (m->due_ms > 0) {
        long long at = (long long)(m->due_ms + retention_ms);
        q_pipe_cmd(p, "PEXPIREAT mg:msg:%s %lld", m->id, at);
        q_pipe_cmd(p, "PEXPIREAT mg:msg:%s:rcpt %lld", m->id, at);
        q_pipe_cmd(p, "PEXPIREAT mg:msg:%s:events %lld", m->id, at);
    }
    q_msg_reindex(p, m->tenant, m->id);
}

/* ---- reading ---------------------------------------------------------- */

/* A batch loader: items[i] (owned by the caller afterwards) is the item
 * for ids[i], or NULL when it no longer exists. 0 or -1. */
typedef int (*q_load_fn)(struct queue *q, const char *tenant, char **ids, size_t n, json_t **items);
/* A residual filter applied in memory. 1 to keep. */
typedef int (*q_keep_fn)(json_t *item, const struct queue_query *qq);

/* walk - the page of at most qq->limit items of index key, newest first,
 * within b, that keep() accepts (keep NULL: the index is the whole
 * filter). *next gets the cursor of kind after the page, or null when the
 * index holds nothing more in range. Returns 0 or -1. */
static int walk(struct queue *q, const char *tenant, const char *key, struct q_bounds *b, const struct queue_query *qq,
                char kind, q_load_fn load, q_keep_fn keep, json_t *data, json_t **next)
{
    int scanned = 0;
    char last[80] = "";
    *next = json_null();
    for (int round = 0;; round++) {
        /* Exactly what a page needs (+1 to know there is more); when a
         * filter turned ids down, read on in bigger steps. */
        int want = qq->limit - (int)json_array_size(data);
        int batch = keep && round && want < Q_FILTER_BATCH ? Q_FILTER_BATCH : want + 1;
        redisReply *r = q_cmd(q, "ZREVRANGEBYLEX %s %s %s LIMIT 0 %d", key, b->max, b->min, batch);
        if (!r)
            return -1;
        size_t n = r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
        if (n == 0) {
            freeReplyObject(r);
            return 0;
        }
        char **ids = calloc(n, sizeof(*ids));
        json_t **items = calloc(n, sizeof(*items));
        for (size_t i = 0; i < n; i++)
            ids[i] = r->element[i]->str;
        int rc = load(q, tenant, ids, n, items);
        size_t i = 0;
        for (; rc == 0 && i < n; i++) {
            if ((int)json_array_size(data) == qq->limit)
                break; /* ids[i] is in range and unseen: there is more */
            util_strlcpy(last, ids[i], sizeof(last));
            scanned++;
            if (items[i] && (!keep || keep(items[i], qq))) {
                json_array_append_new(data, items[i]);
                items[i] = NULL;
            }
        }
        int full = (int)json_array_size(data) == qq->limit;
        int more = i < n || (int)n == batch;
        for (size_t k = 0; k < n; k++)
            json_decref(items[k]);
        free(items);
        free(ids);
        freeReplyObject(r);
        if (rc < 0)
            return -1;
        if (!more)
            return 0;
        snprintf(b->max, sizeof(b->max), "(%s", last);
        if (full || scanned >= Q_SCAN_MAX) {
            char cur[QUEUE_CURSOR_MAX];
            if (queue_cursor_encode(kind, last, cur, sizeof(cur)) == 0) {
                json_decref(*next);
                *next = json_string(cur);
            }
            return 0;
        }
    }
}

/* smallest_index - of n candidate index keys, the one holding the fewest
 * ids within b (one round trip of ZLEXCOUNT). Returns its position, or -1. */
static int smallest_index(struct queue *q, char keys[][Q_KEY_MAX], int n, const struct q_bounds *b)
{
    if (n == 1)
        return 0;
    struct q_pipe p;
    q_pipe_begin(&p, q);
    for (int i = 0; i < n; i++)
        q_pipe_cmd(&p, "ZLEXCOUNT %s %s %s", keys[i], b->min, b->max);
    redisReply **r = q_pipe_end(&p);
    if (!r)
        return -1;
    int best = 0;
    for (int i = 1; i < n; i++)
        if (r[i]->type == REDIS_REPLY_INTEGER && r[best]->type == REDIS_REPLY_INTEGER &&
            r[i]->integer < r[best]->integer)
            best = i;
    q_replies_free(r, p.n);
    return best;
}

static json_t *parse_json(const redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_STRING)
        return NULL;
    return json_loadb(r->str, r->len, 0, NULL);
}

/* load_events - MGET the bodies of n event ids. */
static int load_events(struct queue *q, const char *tenant, char **ids, size_t n, json_t **items)
{
    (void)tenant;
    struct q_pipe p;
    q_pipe_begin(&p, q);
    for (size_t i = 0; i < n; i++)
        q_pipe_cmd(&p, "GET mg:event:%s", ids[i]);
    redisReply **r = q_pipe_end(&p);
    if (!r)
        return -1;
    for (size_t i = 0; i < n; i++)
        items[i] = parse_json(r[i]);
    q_replies_free(r, p.n);
    return 0;
}

/* event_keep - the filters of an events query, applied to one event. */
static int event_keep(json_t *ev, const struct queue_query *qq)
{
    if (qq->type && strcmp(qq->type, json_string_value(json_object_get(ev, "type")) ?: "") != 0)
        return 0;
    if (qq->recipient && strcasecmp(qq->recipient, json_string_value(json_object_get(ev, "recipient")) ?: "") != 0)
        return 0;
    return 1;
}

static int by_id_desc(const void *a, const void *b)
{
    const char *x = json_string_value(json_object_get(*(json_t *const *)a, "id")) ?: "";
    const char *y = json_string_value(json_object_get(*(json_t *const *)b, "id")) ?: "";
    return strcmp(y, x);
}

/* message_events - events of one message (its list), filtered and paged
 * in memory: a message has few events, and the list is all of them. */
static int message_events(struct queue *q, const char *tenant, const struct queue_query *qq, const struct q_bounds *b,
                          json_t *data, json_t **next)
{
    *next = json_null();
    struct q_pipe p;
    q_pipe_begin(&p, q);
    q_pipe_cmd(&p, "HGET mg:msg:%s tenant", qq->message_id);
    q_pipe_cmd(&p, "LRANGE mg:msg:%s:events 0 -1", qq->message_id);
    redisReply **r = q_pipe_end(&p);
    if (!r)
        return -1;
    if (r[0]->type != REDIS_REPLY_STRING || strcmp(r[0]->str, tenant) != 0 || r[1]->type != REDIS_REPLY_ARRAY) {
        q_replies_free(r, p.n);
        return 0; /* unknown, expired or another tenant's: no events */
    }
    size_t n = r[1]->elements, k = 0;
    json_t **v = calloc(n ? n : 1, sizeof(*v));
    for (size_t i = 0; i < n; i++) {
        json_t *ev = parse_json(r[1]->element[i]);
        const char *id = json_string_value(json_object_get(ev, "id"));
        if (ev && id && bounds_hold(b, id) && event_keep(ev, qq))
            v[k++] = ev;
        else
            json_decref(ev);
    }
    q_replies_free(r, p.n);
    qsort(v, k, sizeof(*v), by_id_desc);
    for (size_t i = 0; i < k; i++) {
        if ((int)json_array_size(data) == qq->limit) {
            char cur[QUEUE_CURSOR_MAX];
            const char *last = json_string_value(json_object_get(json_array_get(data, json_array_size(data) - 1), "id"));
            if (queue_cursor_encode('e', last, cur, sizeof(cur)) == 0) {
                json_decref(*next);
                *next = json_string(cur);
            }
            for (; i < k; i++)
                json_decref(v[i]);
            break;
        }
        json_array_append_new(data, v[i]);
    }
    free(v);
    return 0;
}

int queue_events_query(struct queue *q, const char *tenant, const struct queue_query *qq, json_t **out)
{
    char after[80] = "";
    if (qq->cursor && queue_cursor_decode(qq->cursor, 'e', after, sizeof(after)) < 0)
        return 1;
    struct q_bounds b;
    bounds_make(&b, "ev_", qq, after);
    json_t *data = json_array(), *next = NULL;
    int rc;
    if (qq->message_id) {
        rc = message_events(q, tenant, qq, &b, data, &next);
    } else {
        char keys[2][Q_KEY_MAX], rcpt[Q_EMAIL_MAX + 1];
        int nk = 0;
        if (qq->type)
            snprintf(keys[nk++], sizeof(keys[0]), "mg:evi:%s:type:%s", tenant, qq->type);
        if (qq->recipient) {
            lower_email(qq->recipient, rcpt, sizeof(rcpt));
            snprintf(keys[nk++], sizeof(keys[0]), "mg:evi:%s:rcpt:%s", tenant, rcpt);
        }
        if (nk == 0)
            snprintf(keys[nk++], sizeof(keys[0]), "mg:evi:%s", tenant);
        int pick = smallest_index(q, keys, nk, &b);
        rc = pick < 0 ? -1
                      : walk(q, tenant, keys[pick], &b, qq, 'e', load_events, nk > 1 ? event_keep : NULL, data, &next);
    }
    if (rc < 0) {
        json_decref(data);
        json_decref(next);
        return -1;
    }
    *out = json_pack("{s:o, s:o}", "data", data, "next_cursor", next);
    return 0;
}

/* load_messages - the records and recipients of n messages, built as the
 * API shows them (without events), in one round trip. */
static int load_messages(struct queue *q, const char *tenant, char **ids, size_t n, json_t **items)
{
    struct q_pipe p;
    q_pipe_begin(&p, q);
    for (size_t i = 0; i < n; i++) {
        q_pipe_cmd(&p, "HGETALL mg:msg:%s", ids[i]);
        q_pipe_cmd(&p, "HGETALL mg:msg:%s:rcpt", ids[i]);
    }
    redisReply **r = q_pipe_end(&p);
    if (!r)
        return -1;
    for (size_t i = 0; i < n; i++)
        items[i] = q_message_json(tenant, ids[i], r[2 * i], r[2 * i + 1], NULL);
    q_replies_free(r, p.n);
    return 0;
}

/* message_keep - the filters of a messages query, applied to one message
 * (the status is the one derived now, whatever the index said). */
static int message_keep(json_t *m, const struct queue_query *qq)
{
    if (qq->status && strcmp(qq->status, json_string_value(json_object_get(m, "status")) ?: "") != 0)
        return 0;
    size_t k;
    json_t *v;
    if (qq->tag) {
        int hit = 0;
        json_array_foreach(json_object_get(m, "tags"), k, v) hit |= !strcmp(json_string_value(v) ?: "", qq->tag);
        if (!hit)
            return 0;
    }
    if (qq->recipient) {
        int hit = 0;
        json_array_foreach(json_object_get(m, "recipients"), k, v) hit |=
            !strcasecmp(json_string_value(json_object_get(v, "email")) ?: "", qq->recipient);
        if (!hit)
            return 0;
    }
    return 1;
}

int queue_messages_query(struct queue *q, const char *tenant, const struct queue_query *qq, json_t **out)
{
    char after[80] = "";
    if (qq->cursor && queue_cursor_decode(qq->cursor, 'm', after, sizeof(after)) < 0)
        return 1;
    struct q_bounds b;
    bounds_make(&b, "", qq, after);
    char keys[3][Q_KEY_MAX], rcpt[Q_EMAIL_MAX + 1];
    int nk = 0;
    if (qq->status)
        snprintf(keys[nk++], sizeof(keys[0]), "mg:msgi:%s:status:%s", tenant, qq->status);
    if (qq->tag)
        snprintf(keys[nk++], sizeof(keys[0]), "mg:msgi:%s:tag:%s", tenant, qq->tag);
    if (qq->recipient) {
        lower_email(qq->recipient, rcpt, sizeof(rcpt));
        snprintf(keys[nk++], sizeof(keys[0]), "mg:msgi:%s:rcpt:%s", tenant, rcpt);
    }
    if (nk == 0)
        snprintf(keys[nk++], sizeof(keys[0]), "mg:tenant:%s:messages", tenant);
    int pick = smallest_index(q, keys, nk, &b);
    json_t *data = json_array(), *next = NULL;
    /* The status index changes as recipients progress; checking the
     * derived status again makes a page exact even in the instant between
     * a recipient's update and its re-index. */
    int rc = pick < 0 ? -1
                      : walk(q, tenant, keys[pick], &b, qq, 'm', load_messages,
                             (nk > 1 || qq->status) ? message_keep : NULL, data, &next);
    if (rc < 0) {
        json_decref(data);
        json_decref(next);
        return -1;
    }
    *out = json_pack("{s:o, s:o}", "data", data, "next_cursor", next);
    return 0;
}
