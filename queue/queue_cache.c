/*
 * queue_cache.c - a process-wide cache of API key records (mg:key:{id})
 * and tenant settings (mg:tenant:{t}), kept correct by Redis itself.
 *
 * Every API request needs both, and each was a blocking round trip. Redis
 * 6+ client-side caching tells us when either changes: one subscriber
 * connection runs CLIENT TRACKING ON REDIRECT <its own id> BCAST PREFIX
 * mg:key: PREFIX mg:tenant: and SUBSCRIBE __redis__:invalidate; Redis then
 * publishes the name of every key under those prefixes that is modified
 * (a nil payload after FLUSHALL / FLUSHDB), and this file's thread drops
 * the named entries.
 *
 * Correctness rules, in order of importance:
 *  - The cache is used only while the subscription is live: before the
 *    SUBSCRIBE is confirmed, and from the moment the connection is lost,
 *    every get misses and nothing is stored; it is flushed on every
 *    (re)subscribe and every loss.
 *  - A fill is trusted only if no flush and no invalidation of a name we
 *    cache happened while it read Redis (the generation counter, c_gen),
 *    so a stale read racing an invalidation is never stored.
 *  - Entries also expire CACHE_TTL_MS after they were filled, which bounds
 *    staleness if invalidations were silently lost (a network partition
 *    the heartbeat has not noticed yet).
 * Only positive key lookups are cached; tenant settings are cached also
 * when empty (a tenant with no settings hash), since creating the hash is
 * an invalidation too. The prefix mg:tenant: also matches the tenant's
 * other keys (mg:tenant:{t}:messages changes on every send): such names
 * are ignored without touching the generation.
 *
 * Limits: CACHE_MAX entries (the oldest fill is evicted first).
 * SECURITY: a key entry holds the stored SHA-256 of the key, never the key;
 * the constant-time comparison still runs on every request (queue_keys.c).
 */
#include "queue/queue_int.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/util.h"

#define CACHE_MAX 10000          /* entries */
#define CACHE_BUCKETS 16384      /* hash chains (power of two) */
#define CACHE_TTL_MS 10000       /* safety TTL of an entry */
#define CACHE_POLL_MS 200        /* the subscriber's wake-up to check for stop */
#define CACHE_PING_MS 1000       /* PING after this long without a message */
#define CACHE_PONG_MS 3000       /* no answer for this long: the connection is dead */
#define CACHE_RETRY_MIN_MS 100   /* reconnect back-off, doubling */
#define CACHE_RETRY_MAX_MS 5000
#define CACHE_CHANNEL "__redis__:invalidate"
#define CACHE_KEY_PREFIX "mg:key:"
#define CACHE_TENANT_PREFIX "mg:tenant:"

enum centry_kind { CE_KEY, CE_TENANT };

struct centry {
    struct centry *next;          /* bucket chain */
    struct centry *older, *newer; /* fill order: the oldest is evicted first */
    int64_t expires_ms;           /* monotonic */
    enum centry_kind kind;
    struct q_cached_key key;      /* CE_KEY */
    json_t *settings;             /* CE_TENANT; owned, never shared */
    size_t namelen;
    char name[];                  /* the Redis key name */
};

/* All of the below under c_lock. */
static pthread_mutex_t c_lock = PTHREAD_MUTEX_INITIALIZER;
static struct centry *c_bucket[CACHE_BUCKETS];
static struct centry *c_oldest, *c_newest;
static size_t c_count;
static int c_live;          /* the subscription is confirmed: entries may be used */
static uint64_t c_gen = 1;  /* bumped by every flush and relevant invalidation */

/* The subscriber thread. */
static pthread_t c_thread;
static int c_started;
static atomic_int c_stop;
static struct queue *c_sub;  /* its connection; only the thread uses it */

static size_t c_hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return (size_t)(h & (CACHE_BUCKETS - 1));
}

static void c_free(struct centry *e)
{
    json_decref(e->settings);
    free(e);
}

/* c_unlink - take e out of its chain and the fill order and free it. */
static void c_unlink(struct centry *e)
{
    struct centry **pp = &c_bucket[c_hash(e->name, e->namelen)];
    while (*pp && *pp != e)
        pp = &(*pp)->next;
    if (*pp)
        *pp = e->next;
    if (e->older)
        e->older->newer = e->newer;
    else
        c_oldest = e->newer;
    if (e->newer)
        e->newer->older = e->older;
    else
        c_newest = e->older;
    c_count--;
    c_free(e);
}

static struct centry *c_find(const char *name, size_t n)
{
    for (struct centry *e = c_bucket[c_hash(name, n)]; e; e = e->next)
        if (e->namelen == n && !memcmp(e->name, name, n))
            return e;
    return NULL;
}

/* c_flush - drop every entry and distrust every fill in flight. */
static void c_flush(void)
{
    while (c_oldest)
        c_unlink(c_oldest);
    c_gen++;
}

/* c_lookup - the live, unexpired entry of kind named name, or NULL. */
static struct centry *c_lookup(enum centry_kind kind, const char *name)
{
    if (!c_live)
        return NULL;
    struct centry *e = c_find(name, strlen(name));
    if (!e)
        return NULL;
    if (e->kind != kind || util_mono_ms() >= e->expires_ms) {
        c_unlink(e);
        return NULL;
    }
    return e;
}

/* c_insert - a new entry for name (replacing one there), when gen still
 * holds; returns it (to be filled by the caller, under the lock) or NULL. */
static struct centry *c_insert(uint64_t gen, enum centry_kind kind, const char *name)
{
    if (!c_live || gen != c_gen)
        return NULL;
    size_t n = strlen(name);
    struct centry *old = c_find(name, n);
    if (old)
        c_unlink(old);
    if (c_count >= CACHE_MAX)
        c_unlink(c_oldest);
    struct centry *e = calloc(1, sizeof(*e) + n + 1);
    if (!e)
        return NULL;
    memcpy(e->name, name, n + 1);
    e->namelen = n;
    e->kind = kind;
    e->expires_ms = util_mono_ms() + CACHE_TTL_MS;
    size_t b = c_hash(name, n);
    e->next = c_bucket[b];
    c_bucket[b] = e;
    e->older = c_newest;
    if (c_newest)
        c_newest->newer = e;
    else
        c_oldest = e;
    c_newest = e;
    c_count++;
    return e;
}

uint64_t q_cache_gen(void)
{
    pthread_mutex_lock(&c_lock);
    uint64_t g = c_live ? c_gen : 0;
    pthread_mutex_unlock(&c_lock);
    return g;
}

int q_cache_key_get(const char *id, struct q_cached_key *out)
{
    char name[64];
    if (util_strlcpy(name, CACHE_KEY_PREFIX, sizeof(name)) + strlen(id) >= sizeof(name))
        return 1;
    strcat(name, id);
    pthread_mutex_lock(&c_lock);
    struct centry *e = c_lookup(CE_KEY, name);
    if (e)
        *out = e->key;
    pthread_mutex_unlock(&c_lock);
    return e ? 0 : 1;
}

void q_cache_key_put(uint64_t gen, const char *id, const struct q_cached_key *k)
{
    char name[64];
    if (!gen || util_strlcpy(name, CACHE_KEY_PREFIX, sizeof(name)) + strlen(id) >= sizeof(name))
        return;
    strcat(name, id);
    pthread_mutex_lock(&c_lock);
    struct centry *e = c_insert(gen, CE_KEY, name);
    if (e)
        e->key = *k;
    pthread_mutex_unlock(&c_lock);
}

int q_cache_tenant_get(const char *tenant, json_t **out)
{
    char name[sizeof(CACHE_TENANT_PREFIX) + QUEUE_TENANT_MAX + 1];
    if (util_strlcpy(name, CACHE_TENANT_PREFIX, sizeof(name)) + strlen(tenant) >= sizeof(name))
        return 1;
    strcat(name, tenant);
    pthread_mutex_lock(&c_lock);
    struct centry *e = c_lookup(CE_TENANT, name);
    /* a deep copy under the lock: jansson objects are not for sharing */
    json_t *copy = e ? json_deep_copy(e->settings) : NULL;
    pthread_mutex_unlock(&c_lock);
    if (!copy)
        return 1;
    *out = copy;
    return 0;
}

void q_cache_tenant_put(uint64_t gen, const char *tenant, const json_t *settings)
{
    char name[sizeof(CACHE_TENANT_PREFIX) + QUEUE_TENANT_MAX + 1];
    if (!gen || util_strlcpy(name, CACHE_TENANT_PREFIX, sizeof(name)) + strlen(tenant) >= sizeof(name))
        return;
    strcat(name, tenant);
    json_t *copy = json_deep_copy(settings);
    if (!copy)
        return;
    pthread_mutex_lock(&c_lock);
    struct centry *e = c_insert(gen, CE_TENANT, name);
    if (e) {
        e->settings = copy;
        copy = NULL;
    }
    pthread_mutex_unlock(&c_lock);
    json_decref(copy);
}

/* ---- the subscriber ------------------------------------------------------ */

/* c_set_live - the subscription was confirmed (live 1) or lost (0): either
 * way nothing cached before can be trusted. */
static void c_set_live(int live)
{
    pthread_mutex_lock(&c_lock);
    int was = c_live;
    c_flush();
    c_live = live;
    pthread_mutex_unlock(&c_lock);
    if (live)
        log_kv(LOG_INFO, "cache_live", NULL);
    else if (was && !atomic_load(&c_stop))
        log_kv(LOG_WARN, "cache_bypassed", "reason", "invalidation subscriber disconnected", NULL);
}

/* c_cached_name - 1 when name is one this cache holds: mg:key:{id} or
 * mg:tenant:{t} (no further ':': not mg:tenant:{t}:messages and the like). */
static int c_cached_name(const char *s, size_t n)
{
    size_t kp = strlen(CACHE_KEY_PREFIX), tp = strlen(CACHE_TENANT_PREFIX);
    if (n > kp && !memcmp(s, CACHE_KEY_PREFIX, kp))
        return !memchr(s + kp, ':', n - kp);
    if (n > tp && !memcmp(s, CACHE_TENANT_PREFIX, tp))
        return !memchr(s + tp, ':', n - tp);
    return 0;
}

/* c_invalidate - one message's payload: the names modified (an array; we
 * drop those we cache) or nil (a flush: drop everything). */
static void c_invalidate(const redisReply *payload)
{
    pthread_mutex_lock(&c_lock);
    if (payload->type != REDIS_REPLY_ARRAY) {
        c_flush();
    } else {
        for (size_t i = 0; i < payload->elements; i++) {
            const redisReply *k = payload->element[i];
            if (k->type != REDIS_REPLY_STRING || !c_cached_name(k->str, k->len))
                continue;
            struct centry *e = c_find(k->str, k->len);
            if (e)
                c_unlink(e);
            /* also when nothing was cached: a fill may be in flight */
            c_gen++;
        }
    }
    pthread_mutex_unlock(&c_lock);
}

/* c_on_reply - a push on the subscriber connection. */
static void c_on_reply(const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 || r->element[0]->type != REDIS_REPLY_STRING ||
        strcmp(r->element[0]->str, "message") != 0)
        return; /* subscribe confirmations, PING answers */
    const redisReply *ch = r->element[1];
    if (ch->type == REDIS_REPLY_STRING && !strcmp(ch->str, CACHE_CHANNEL))
        c_invalidate(r->element[2]);
}

/* c_subscribe - connect, enable tracking redirected to this very
 * connection, subscribe. 0 when the subscription is confirmed. */
static int c_subscribe(struct queue *q)
{
    if (!q_ctx(q))
        return -1;
    redisReply *r = q_cmd(q, "CLIENT ID");
    if (!r)
        return -1;
    long long id = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    if (id < 0)
        return -1;
    r = q_cmd(q, "CLIENT TRACKING ON REDIRECT %lld BCAST PREFIX " CACHE_KEY_PREFIX " PREFIX " CACHE_TENANT_PREFIX,
              id);
    if (!r)
        return -1; /* Redis before 6, or the ACL forbids it: logged by q_cmd */
    freeReplyObject(r);
    r = q_cmd(q, "SUBSCRIBE " CACHE_CHANNEL);
    int ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == 3 && r->element[0]->str &&
             !strcmp(r->element[0]->str, "subscribe");
    if (r)
        freeReplyObject(r);
    return ok ? 0 : -1;
}

/* c_listen - read invalidations until the connection fails or stop. */
static void c_listen(struct queue *q)
{
    redisContext *c = q->c;
    int64_t last_rx = util_mono_ms(), ping_at = 0;
    while (!atomic_load(&c_stop)) {
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        int n = poll(&pfd, 1, CACHE_POLL_MS);
        if (n < 0 && errno != EINTR)
            return;
        int64_t now = util_mono_ms();
        if (n > 0) {
            if (redisBufferRead(c) != REDIS_OK)
                return; /* closed or broken */
            last_rx = now;
            ping_at = 0;
            void *r = NULL;
            while (redisGetReplyFromReader(c, &r) == REDIS_OK && r) {
                c_on_reply(r);
                freeReplyObject(r);
                r = NULL;
            }
            if (c->err)
                return;
            continue;
        }
        /* Quiet: make sure the connection is still there, so that a silent
         * loss turns the cache off within seconds, not at the TTL. */
        if (ping_at && now - ping_at > CACHE_PONG_MS) {
            log_kv(LOG_WARN, "cache_subscriber_timeout", NULL);
            return;
        }
        if (!ping_at && now - last_rx > CACHE_PING_MS) {
            int done = 0;
            if (redisAppendCommand(c, "PING") != REDIS_OK)
                return;
            while (!done)
                if (redisBufferWrite(c, &done) != REDIS_OK)
                    return;
            ping_at = now;
        }
    }
}

/* c_nap - sleep ms unless asked to stop. */
static void c_nap(int ms)
{
    for (int slept = 0; slept < ms && !atomic_load(&c_stop); slept += 50) {
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static void *c_main(void *arg)
{
    (void)arg;
    int backoff = CACHE_RETRY_MIN_MS;
    while (!atomic_load(&c_stop)) {
        if (c_subscribe(c_sub) == 0) {
            c_set_live(1);
            backoff = CACHE_RETRY_MIN_MS;
            c_listen(c_sub);
            c_set_live(0);
        }
        q_drop(c_sub);
        c_nap(backoff);
        backoff = backoff * 2 > CACHE_RETRY_MAX_MS ? CACHE_RETRY_MAX_MS : backoff * 2;
    }
    return NULL;
}

int queue_cache_start(const char *url, char *err, size_t errlen)
{
    if (c_started) {
        util_strlcpy(err, "already started", errlen);
        return -1;
    }
    c_sub = queue_open(url, err, errlen);
    if (!c_sub)
        return -1;
    atomic_store(&c_stop, 0);
    if (pthread_create(&c_thread, NULL, c_main, NULL) != 0) {
        util_strlcpy(err, "cannot start the cache subscriber thread", errlen);
        queue_close(c_sub);
        c_sub = NULL;
        return -1;
    }
    c_started = 1;
    return 0;
}

void queue_cache_stop(void)
{
    if (!c_started)
        return;
    atomic_store(&c_stop, 1);
    pthread_join(c_thread, NULL);
    c_started = 0;
    pthread_mutex_lock(&c_lock);
    c_live = 0;
    c_flush();
    pthread_mutex_unlock(&c_lock);
    queue_close(c_sub);
    c_sub = NULL;
}
