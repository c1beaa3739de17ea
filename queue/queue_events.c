/*
 * queue_events.c - the event store and the read side: how an event is
 * recorded (once), the per-tenant indexes behind GET /v1/events and
 * GET /v1/messages, the message-status index, retention, and the pure
 * helpers those queries share (cursors, id bounds).
 *
 * Design (key names are listed in queue.h):
 *  - An event is recorded by one Lua script (q_lua_event, called by SHA1),
 *    queued by q_event_append on the caller's MULTI. Its first step is SET
 *    NX on the event's own key mg:event:{id}: when the key exists the event
 *    was already recorded (a worker replayed a transaction) and the script
 *    does nothing else, so the message list, the indexes, the stats and
 *    the webhook feed each see an event exactly once.
 *  - The JSON is stored once, in mg:event:{id}. The message's list, the
 *    indexes and the feed hold the id; readers fetch bodies by id in Redis
 *    (q_lua_msg_events: a message with its events is one round trip; a log
 *    page is one MGET). Lists and feed entries an older version wrote hold
 *    the JSON itself, told apart by its leading '{'.
 *  - Ids are time-ordered ("ev_" + 12 hex ms + 20 hex random; messages
 *    12 hex ms + 20 hex), so every index is a zset with all scores 0 read
 *    in lex order: newest first is ZREVRANGEBYLEX, since/until are lex
 *    bounds, and a cursor is simply the last id returned. Ties cannot
 *    happen (the random part), so paging has no duplicates and no gaps,
 *    and new events (larger ids) never shift the pages behind a cursor.
 *  - Retention is enforced where data is written, never by a sweeper:
 *    index writes trim the entries older than the retention with
 *    ZREMRANGEBYLEX (a process trims one index at most about once a
 *    second: trim_due) and refresh the index key's TTL (an index no longer
 *    written to expires whole); event bodies and per-message keys carry a
 *    TTL of the retention from their last event; queries also never read
 *    below the retention floor, so an entry not yet trimmed is not shown.
 *  - A query reads one index: the filter's own (type, recipient, tag,
 *    status), or when two filters are given the smaller of the two over
 *    the requested time range (ZLEXCOUNT, O(log n)), filtering the other
 *    in memory. One query examines at most Q_SCAN_MAX ids; past that it
 *    returns a short page whose cursor resumes after the last id examined.
 *  - The transient message statuses (queued, scheduled, sending) have no
 *    index: mg:open holds exactly the messages that have a recipient not
 *    yet terminal, so such a query walks the tenant's messages (or the tag
 *    or recipient index) and loads only the ids in mg:open, passing over
 *    the others inside Redis (q_lua_open_ids).
 *
 * Limits: a page is at most 1000 items (QUEUE_LIMIT_MAX). Redis Cluster is
 * not supported (the scripts build key names from their arguments).
 * SECURITY: every index key begins with the tenant, and a message is
 * shown only when its record names the asking tenant.
 */
#include "queue/queue_int.h"

#include <ctype.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"

#define Q_SCAN_MAX 5000       /* ids one filtered query examines before it returns */
#define Q_FILTER_BATCH 500    /* ids read at a time when a filter is applied in memory */
#define Q_OPEN_BATCH 1000     /* ids one Redis call passes over for a transient status query */
#define Q_OPEN_SCAN_MAX 50000 /* ids such a query passes over before it returns */
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

/* ---- trimming ----------------------------------------------------------- */

/* An index is trimmed (ZREMRANGEBYLEX below the retention floor) by this
 * process at most about once a second per key, not on every write: the
 * floor moves a second per second, so trimming more often removes next
 * to nothing, and queries never read below the floor, so an entry a second
 * past it is never shown. A fixed table of slots, each holding a key's
 * hash and when this process last trimmed it; a key whose slot holds
 * another key's hash trims (and takes the slot), so a busy key sharing a
 * slot cannot keep a quiet one from ever being trimmed. */
#define Q_TRIM_SLOTS 4096
#define Q_TRIM_EVERY_MS 1000
static _Atomic uint64_t trim_slots[Q_TRIM_SLOTS]; /* hash << 32 | mono ms (low 32 bits) */

/* trim_due - 1 when the index named by (kind, tenant, name) is due a trim
 * (the caller then trims it: it is noted as trimmed now). */
static int trim_due(const char *kind, const char *tenant, const char *name)
{
    uint32_t h = 2166136261u; /* FNV-1a over the parts, each ended by 0xff */
    const char *parts[] = {kind, tenant, name};
    for (int i = 0; i < 3; i++) {
        for (const char *s = parts[i] ? parts[i] : ""; *s; s++)
            h = (h ^ (unsigned char)*s) * 16777619u;
        h = (h ^ 0xffu) * 16777619u;
    }
    uint32_t now = (uint32_t)util_mono_ms();
    _Atomic uint64_t *slot = &trim_slots[h % Q_TRIM_SLOTS];
    uint64_t old = atomic_load_explicit(slot, memory_order_relaxed);
    if (old && (uint32_t)(old >> 32) == h && (uint32_t)(now - (uint32_t)old) < Q_TRIM_EVERY_MS)
        return 0;
    /* of two threads at once, one trims */
    return atomic_compare_exchange_strong(slot, &old, ((uint64_t)h << 32) | now);
}

/* ---- writing ---------------------------------------------------------- */

/* Records one event, once. ARGV: 1 tenant, 2 message id, 3 event id,
 * 4 type, 5 recipient lower-cased ("" for none), 6 event JSON,
 * 7 retention ms, 8 trim bound of the event indexes ("(ev_<hex floor>"),
 * 9 which indexes to trim (3 of '0'/'1': all, type, recipient), 10 stats
 * day (ms of 00:00 UTC), 11 hour of day "HH", 12 counter name, 13 unique
 * counter name ("" for none), 14 when the stats keys expire (ms), 15.. the
 * event's tags (distinct). Returns 1, or 0 for a replay.
 * The JSON is stored once, in mg:event:{id}; the message's list and the
 * feed hold the id. The feed gets the event only when the tenant has a
 * webhook (mg:wh:{t}): it exists for the dispatcher's fan-out alone.
 * TTLs: a message key without one was made by this send's own
 * transaction (PTTL -1) and gets the retention; later events only ever
 * extend a TTL (GT: a scheduled message's is longer). A stats hash gets
 * its expiry with its first field (the expiry is the day's, fixed).
 * A message whose record is gone (past its retention: an open or click
 * through a token that outlives it) gets nothing under its keys; the
 * event still goes to the tenant's log, the stats and the feed. */
const char q_lua_event[] =
    "local t, m, id, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[7]\n"
    "if not redis.call('SET', 'mg:event:' .. id, ARGV[6], 'NX', 'PX', ttl) then return 0 end\n"
    "local function index(k, i)\n"
    "  redis.call('ZADD', k, 0, id)\n"
    "  if string.byte(ARGV[9], i) == 49 then redis.call('ZREMRANGEBYLEX', k, '-', ARGV[8]) end\n"
    "  redis.call('PEXPIRE', k, ttl)\n"
    "end\n"
    "local ix = 'mg:evi:' .. t\n"
    "index(ix, 1)\n"
    "index(ix .. ':type:' .. ARGV[4], 2)\n"
    "if ARGV[5] ~= '' then index(ix .. ':rcpt:' .. ARGV[5], 3) end\n"
    "local mk, uniq = 'mg:msg:' .. m, false\n"
    "local left = redis.call('PTTL', mk)\n"
    "if left ~= -2 then\n"
    "  local fresh = left == -1\n"
    "  local function keep(k, new)\n"
    "    if new then redis.call('PEXPIRE', k, ttl) else redis.call('PEXPIRE', k, ttl, 'GT') end\n"
    "  end\n"
    "  keep(mk, fresh)\n"
    "  keep(mk .. ':rcpt', fresh)\n"
    "  local ek = mk .. ':events'\n"
    "  if redis.call('RPUSH', ek, id) == 1 then\n"
    "    redis.call('PEXPIRE', ek, left > tonumber(ttl) and left or ttl)\n"
    "  else\n"
    "    keep(ek, fresh)\n"
    "  end\n"
    "  if ARGV[13] ~= '' then\n"
    "    local uk = mk .. ':uniq'\n"
    "    local new = redis.call('EXISTS', uk) == 0\n"
    "    uniq = redis.call('SADD', uk, ARGV[13] .. ':' .. ARGV[5]) == 1\n"
    "    keep(uk, new)\n"
    "  end\n"
    "end\n"
    "local sk = 'mg:stats:' .. t .. ':' .. ARGV[10]\n"
    "local function count(k)\n"
    "  local n = redis.call('HINCRBY', k, ARGV[11] .. ':' .. ARGV[12], 1)\n"
    "  if uniq and redis.call('HINCRBY', k, ARGV[11] .. ':' .. ARGV[13], 1) == 1 then n = 1 end\n"
    "  if n == 1 then redis.call('PEXPIREAT', k, ARGV[14]) end\n"
    "end\n"
    "count(sk)\n"
    "for i = 15, #ARGV do count(sk .. ':tag:' .. ARGV[i]) end\n"
    "if redis.call('EXISTS', 'mg:wh:' .. t) == 1 then redis.call('XADD', 'mg:feed', '*', 't', t, 'e', id) end\n"
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
    char rcpt[Q_EMAIL_MAX + 1], ttl[24], trim[40], mask[4], day[24], hour[8], expire[24], counter[48], uniq[48];
    lower_email(json_string_value(json_object_get(ev, "recipient")), rcpt, sizeof(rcpt));
    snprintf(ttl, sizeof(ttl), "%lld", (long long)retention_ms);
    int64_t floor_ms = util_now_ms() - retention_ms;
    snprintf(trim, sizeof(trim), "(ev_%012llx", (unsigned long long)(floor_ms > 0 ? floor_ms : 0));
    mask[0] = trim_due("evi", tenant, "") ? '1' : '0';
    mask[1] = trim_due("evi:type", tenant, type) ? '1' : '0';
    mask[2] = rcpt[0] && trim_due("evi:rcpt", tenant, rcpt) ? '1' : '0';
    mask[3] = '\0';
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
    int argc = 0;
    argv[argc++] = "0";
    argv[argc++] = tenant;
    argv[argc++] = msg_id;
    argv[argc++] = id;
    argv[argc++] = type;
    argv[argc++] = rcpt;
    argv[argc++] = ev_s;
    argv[argc++] = ttl;
    argv[argc++] = trim;
    argv[argc++] = mask;
    argv[argc++] = day;
    argv[argc++] = hour;
    argv[argc++] = counter;
    argv[argc++] = uniq;
    argv[argc++] = expire;
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
            argv[argc++] = s;
    }
    q_pipe_script(p, q_lua_event, argc, argv, NULL);
}

/* Statuses a message holds while a recipient is not terminal. They have
 * no index of their own: mg:open already holds exactly the messages that
 * have such a recipient, so a query for them walks the tenant's messages
 * and keeps the ones in mg:open (queue_messages_query). */
static int status_transient(const char *s)
{
    return !strcmp(s, "queued") || !strcmp(s, "scheduled") || !strcmp(s, "sending");
}

/* Re-derives a message's status from its recipients and moves it between
 * the tenant's status indexes. It must agree with queue_message_status()
 * in queue_msg.c (the same rules, written twice because this one runs in
 * Redis, inside the transaction, where it sees every recipient's latest
 * status even when two senders finish jobs of one message at once).
 * ARGV: 1 tenant, 2 message id, 3 retention ms, 4 trim bound "(<hex>" or
 * "" (then nothing is trimmed; when given, every status index of the
 * tenant is trimmed: the caller cannot know which one this call writes).
 * The status indexed is kept in the record's field "st"; the transient
 * statuses (status_transient) are not indexed and leave no "st". */
const char q_lua_status[] =
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
    "local ix = 'mg:msgi:' .. ARGV[1] .. ':status:'\n"
    "if ARGV[4] ~= '' then\n"
    "  for _, s in ipairs({'delivered', 'partially_delivered', 'bounced', 'suppressed', 'cancelled'}) do\n"
    "    redis.call('ZREMRANGEBYLEX', ix .. s, '-', ARGV[4])\n"
    "  end\n"
    "end\n"
    "local old = redis.call('HGET', mk, 'st')\n"
    "if old == st then return 0 end\n"
    "if old then redis.call('ZREM', ix .. old, ARGV[2]) end\n"
    "if st == 'queued' or st == 'scheduled' or st == 'sending' then\n"
    "  if old then redis.call('HDEL', mk, 'st') end\n"
    "  return 1\n"
    "end\n"
    "redis.call('ZADD', ix .. st, 0, ARGV[2])\n"
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
    char ttl[24], trim[40] = "";
    snprintf(ttl, sizeof(ttl), "%lld", (long long)retention_ms);
    if (trim_due("msgi:status", tenant, "*"))
        msg_trim_bound(trim, sizeof(trim));
    const char *argv[] = {"0", tenant, msg_id, ttl, trim};
    q_pipe_script(p, q_lua_status, 5, argv, NULL);
}

/* msg_index_add - queue ZADD of id to index key (named by kind, tenant and
 * name for the trim table), the retention trim when due, and the TTL. */
static void msg_index_add(struct q_pipe *p, const char *key, const char *id, const char *kind, const char *tenant,
                          const char *name)
{
    q_pipe_cmd(p, "ZADD %s 0 %s", key, id);
    if (trim_due(kind, tenant, name)) {
        char trim[40];
        msg_trim_bound(trim, sizeof(trim));
        q_pipe_cmd(p, "ZREMRANGEBYLEX %s - %s", key, trim);
    }
    q_pipe_cmd(p, "PEXPIRE %s %lld", key, (long long)retention_ms);
}

void q_msg_index(struct q_pipe *p, const struct queue_new_message *m)
{
    char key[Q_KEY_MAX];
    snprintf(key, sizeof(key), "mg:tenant:%s:messages", m->tenant);
    msg_index_add(p, key, m->id, "msgi", m->tenant, "");
    size_t i;
    json_t *tag;
    json_array_foreach(m->tags, i, tag) {
        if (!json_is_string(tag))
            continue;
        /* the same tag twice is one ZADD that changes nothing: harmless */
        snprintf(key, sizeof(key), "mg:msgi:%s:tag:%s", m->tenant, json_string_value(tag));
        msg_index_add(p, key, m->id, "msgi:tag", m->tenant, json_string_value(tag));
    }
    for (size_t k = 0; k < m->nrcpts; k++) {
        char rcpt[Q_EMAIL_MAX + 1];
        lower_email(m->rcpts[k].email, rcpt, sizeof(rcpt));
        snprintf(key, sizeof(key), "mg:msgi:%s:rcpt:%s", m->tenant, rcpt);
        msg_index_add(p, key, m->id, "msgi:rcpt", m->tenant, rcpt);
    }
    /* A scheduled message must outlive its wait: keep its keys until the
     * retention after it is due (events only ever extend a TTL). */
    if (m->due_ms > 0) {
        long long at = (long long)(m->due_ms + retention_ms);
        q_pipe_cmd(p, "PEXPIREAT mg:msg:%s %lld", m->id, at);
        q_pipe_cmd(p, "PEXPIREAT mg:msg:%s:rcpt %lld", m->id, at);
        q_pipe_cmd(p, "PEXPIREAT mg:msg:%s:events %lld", m->id, at);
    }
    /* The status index: a new message's status follows from the statuses
     * it is stored with (the rules of q_lua_status), so no script is
     * needed; a transient one has no index. */
    const char **st = calloc(m->nrcpts ? m->nrcpts : 1, sizeof(*st));
    if (!st) {
        q_msg_reindex(p, m->tenant, m->id);
        return;
    }
    for (size_t k = 0; k < m->nrcpts; k++)
        st[k] = m->rcpts[k].status;
    const char *status = queue_message_status(st, m->nrcpts);
    free(st);
    if (!status_transient(status)) {
        snprintf(key, sizeof(key), "mg:msgi:%s:status:%s", m->tenant, status);
        msg_index_add(p, key, m->id, "msgi:status", m->tenant, status);
        q_pipe_cmd(p, "HSET mg:msg:%s st %s", m->id, status);
    }
}

/* ---- reading ---------------------------------------------------------- */

/* A batch loader: items[i] (owned by the caller afterwards) is the item
 * for ids[i], or NULL when it no longer exists. 0 or -1. */
typedef int (*q_load_fn)(struct queue *q, const char *tenant, char **ids, size_t n, json_t **items);
/* A residual filter applied in memory. 1 to keep. */
typedef int (*q_keep_fn)(json_t *item, const struct queue_query *qq);

/* Lists a message's events, oldest first. ARGV: 1 message id, 2 the last
 * place in its list to read (-1: all). Each element of mg:msg:{id}:events
 * is an event id, whose body is mg:event:{id}; an element that begins
 * with '{' is the JSON itself (a list written by an older version). An
 * event whose body has expired reads as nil. MGET in slices: unpack() has
 * a limit on the values it can return. */
const char q_lua_msg_events[] =
    "local v = redis.call('LRANGE', 'mg:msg:' .. ARGV[1] .. ':events', 0, tonumber(ARGV[2]))\n"
    "local keys, at = {}, {}\n"
    "for i = 1, #v do\n"
    "  if string.byte(v[i], 1) ~= 123 then keys[#keys + 1] = 'mg:event:' .. v[i]; at[#at + 1] = i end\n"
    "end\n"
    "for s = 1, #keys, 1000 do\n"
    "  local e = math.min(s + 999, #keys)\n"
    "  local got = redis.call('MGET', unpack(keys, s, e))\n"
    "  for k = s, e do v[at[k]] = got[k - s + 1] end\n"
    "end\n"
    "return v\n";

void q_pipe_msg_events(struct q_pipe *p, const char *msg_id, int max)
{
    char last[24];
    snprintf(last, sizeof(last), "%d", max > 0 ? max - 1 : -1);
    const char *argv[] = {"0", msg_id, last};
    q_pipe_script(p, q_lua_msg_events, 3, argv, NULL);
}

/* The ids of index KEYS[1] within [ARGV[2], ARGV[1]] (ZREVRANGEBYLEX
 * bounds), newest first, at most ARGV[3] examined, that are members of
 * KEYS[2] (mg:open). Returns {examined, the last id examined or "", ids
 * kept...}: what a query for a transient status reads (status_transient). */
const char q_lua_open_ids[] =
    "local ids = redis.call('ZREVRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))\n"
    "local out = {#ids, ids[#ids] or ''}\n"
    "for _, id in ipairs(ids) do\n"
    "  if redis.call('ZSCORE', KEYS[2], id) then out[#out + 1] = id end\n"
    "end\n"
    "return out\n";

/* walk - the page of at most qq->limit items of index key, newest first,
 * within b, that keep() accepts (keep NULL: the index is the whole
 * filter). With open_only, only ids that are in mg:open are loaded (the
 * others are passed over in Redis, Q_OPEN_BATCH at a time, up to
 * Q_OPEN_SCAN_MAX per query). *next gets the cursor of kind after the
 * page, or null when the index holds nothing more in range. 0 or -1. */
static int walk(struct queue *q, const char *tenant, const char *key, struct q_bounds *b, const struct queue_query *qq,
                char kind, q_load_fn load, q_keep_fn keep, int open_only, json_t *data, json_t **next)
{
    int scanned = 0, budget = open_only ? Q_OPEN_SCAN_MAX : Q_SCAN_MAX;
    char last[80] = "";
    *next = json_null();
    for (int round = 0;; round++) {
        /* Exactly what a page needs (+1 to know there is more); when a
         * filter turned ids down, read on in bigger steps. */
        int want = qq->limit - (int)json_array_size(data);
        int batch = open_only ? Q_OPEN_BATCH : keep && round && want < Q_FILTER_BATCH ? Q_FILTER_BATCH : want + 1;
        redisReply *r;
        size_t first = 0, n = 0; /* the candidates are r->element[first .. first + n) */
        long long examined = 0;
        const char *end = NULL;  /* the last id examined */
        if (open_only) {
            char cnt[16];
            snprintf(cnt, sizeof(cnt), "%d", batch);
            const char *argv[] = {"2", key, QUEUE_OPEN, b->max, b->min, cnt};
            r = q_script_cmdv(q, q_lua_open_ids, 6, argv, NULL);
            if (!r)
                return -1;
            if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 || r->element[0]->type != REDIS_REPLY_INTEGER ||
                r->element[1]->type != REDIS_REPLY_STRING) {
                freeReplyObject(r);
                return -1;
            }
            examined = r->element[0]->integer;
            end = r->element[1]->str;
            first = 2;
            n = r->elements - 2;
        } else {
            r = q_cmd(q, "ZREVRANGEBYLEX %s %s %s LIMIT 0 %d", key, b->max, b->min, batch);
            if (!r)
                return -1;
            n = r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
            examined = (long long)n;
            end = n ? r->element[n - 1]->str : NULL;
        }
        if (examined == 0) {
            freeReplyObject(r);
            return 0;
        }
        char **ids = calloc(n ? n : 1, sizeof(*ids));
        json_t **items = calloc(n ? n : 1, sizeof(*items));
        int rc = ids && items ? 0 : -1;
        for (size_t i = 0; rc == 0 && i < n; i++)
            ids[i] = r->element[first + i]->str;
        if (rc == 0 && n)
            rc = load(q, tenant, ids, n, items);
        size_t i = 0;
        for (; rc == 0 && i < n; i++) {
            if ((int)json_array_size(data) == qq->limit)
                break; /* ids[i] is in range and unseen: there is more */
            util_strlcpy(last, ids[i], sizeof(last));
            if (items[i] && (!keep || keep(items[i], qq))) {
                json_array_append_new(data, items[i]);
                items[i] = NULL;
            }
        }
        /* every candidate taken: all that was examined is behind the page */
        if (rc == 0 && i == n && end)
            util_strlcpy(last, end, sizeof(last));
        scanned += (int)examined;
        int full = (int)json_array_size(data) == qq->limit;
        int more = i < n || examined == batch;
        for (size_t k = 0; items && k < n; k++)
            json_decref(items[k]);
        free(items);
        free(ids);
        freeReplyObject(r);
        if (rc < 0)
            return -1;
        if (!more)
            return 0;
        snprintf(b->max, sizeof(b->max), "(%s", last);
        if (full || scanned >= budget) {
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

/* load_events - the bodies of n event ids, in one MGET. */
static int load_events(struct queue *q, const char *tenant, char **ids, size_t n, json_t **items)
{
    (void)tenant;
    const char **argv = calloc(n + 1, sizeof(*argv));
    char **keys = calloc(n ? n : 1, sizeof(*keys));
    int rc = argv && keys ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < n; i++)
        if (asprintf(&keys[i], "mg:event:%s", ids[i]) < 0) {
            keys[i] = NULL;
            rc = -1;
        }
    redisReply *r = NULL;
    if (rc == 0) {
        argv[0] = "MGET";
        for (size_t i = 0; i < n; i++)
            argv[i + 1] = keys[i];
        r = q_cmdv(q, (int)n + 1, argv, NULL);
        rc = r && r->type == REDIS_REPLY_ARRAY && r->elements == n ? 0 : -1;
    }
    for (size_t i = 0; rc == 0 && i < n; i++)
        items[i] = parse_json(r->element[i]);
    if (r)
        freeReplyObject(r);
    for (size_t i = 0; keys && i < n; i++)
        free(keys[i]);
    free(keys);
    free(argv);
    return rc;
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
    q_pipe_msg_events(&p, qq->message_id, 0);
    redisReply **r = q_pipe_end(&p);
    if (!r)
        return -1;
    if (r[1]->type == REDIS_REPLY_ERROR) {
        log_kv(LOG_ERROR, "redis_error", "reply", r[1]->str, NULL);
        q_replies_free(r, p.n);
        return -1;
    }
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
                      : walk(q, tenant, keys[pick], &b, qq, 'e', load_events, nk > 1 ? event_keep : NULL, 0, data,
                             &next);
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
    /* a transient status has no index: walk the others, keeping what is
     * in mg:open, and check the status of each */
    int transient = qq->status && status_transient(qq->status);
    if (qq->status && !transient)
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
                             (nk > 1 || qq->status) ? message_keep : NULL, transient, data, &next);
    if (rc < 0) {
        json_decref(data);
        json_decref(next);
        return -1;
    }
    *out = json_pack("{s:o, s:o}", "data", data, "next_cursor", next);
    return 0;
}
