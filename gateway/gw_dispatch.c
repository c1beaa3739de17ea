/*
 * gw_dispatch.c - the webhook dispatcher (sender role): one feed thread
 * that turns every recorded event into deliveries for the tenant's
 * matching webhooks, and DISPATCH_WORKERS threads that claim due
 * deliveries and POST them, signed, with libcurl.
 *
 * Flow: mg:feed (tenant, event id) --(group "dispatchers", Lua fan-out
 * that reads the event's body mg:event:{e} by id + XACK + XDEL)-->
 * mg:whd:{w}:{e} + mg:wh:due --(Lua claim with a lease)--> POST -->
 * done | retry at now + back-off | give up 24 h after the event.
 * Every attempt sends the body bytes stored at fan-out, so an event keeps
 * its id and its exact body on every retry; only the signature's t moves.
 * Delivery is at-least-once: a process that dies mid-attempt leaves a
 * claim whose lease (DISPATCH_LEASE_MS) runs out, and another dispatcher
 * sends it again. Receivers de-duplicate by the event id.
 *
 * Each thread owns its Redis connection and its curl easy handle; the
 * only shared state is the configuration and the stop flag.
 * Limits: DISPATCH_TIMEOUT_MS per attempt (connect DISPATCH_CONNECT_MS),
 * no redirects, DISPATCH_RESPONSE_MAX bytes of a receiver's answer kept.
 * SECURITY (SSRF): unless MAILGATE_WEBHOOK_ALLOW_PRIVATE=true, every socket
 * curl opens is vetted in on_open_socket with gw_webhook_addr_public - the
 * address actually connected to, so a DNS answer that changed since the
 * webhook was created (DNS rebinding) cannot reach an internal address.
 * Proxies from the environment are ignored (they would hide the address).
 * SECURITY (secrets): the signing secret and the URL (which may carry
 * credentials) are never logged; logs name the webhook id and event id.
 */
#include "gateway/gw.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"

#define DISPATCH_WORKERS 4
#define DISPATCH_FEED_BATCH 64       /* feed entries read (and fanned out) per round trip */
#define DISPATCH_BLOCK_MS 1000       /* XREADGROUP BLOCK; bounds stop latency */
#define DISPATCH_IDLE_MS 100         /* how often a worker looks for due deliveries */
#define DISPATCH_LEASE_MS 60000      /* a claim outlives a dead process this long */
#define DISPATCH_AUTOCLAIM_EVERY_MS 30000
#define DISPATCH_AUTOCLAIM_IDLE_MS 60000 /* feed entries a dead consumer left this long */
#define DISPATCH_MAX_AGE_MS (24LL * 3600 * 1000) /* retries stop 24 h after the event */
#define DISPATCH_TIMEOUT_MS 10000    /* whole attempt */
#define DISPATCH_CONNECT_MS 5000
#define DISPATCH_RESPONSE_MAX 4096   /* bytes of a receiver's answer kept for the log */
#define DISPATCH_BACKOFF_MAX_MS 8000 /* Redis reconnect back-off cap */

static struct {
    char *redis_url;
    int64_t retry_ms[GW_RETRY_STEPS_MAX];
    int nretry;
    int allow_private;
    pthread_t feed;
    int feed_started;
    pthread_t workers[DISPATCH_WORKERS];
    int started[DISPATCH_WORKERS];
    atomic_int stop;
} dp;

/* nap - sleep ms, waking early when asked to stop. */
static void nap(int ms)
{
    util_nap(ms, &dp.stop);
}

static int backoff_next(int ms)
{
    return ms * 2 > DISPATCH_BACKOFF_MAX_MS ? DISPATCH_BACKOFF_MAX_MS : ms * 2;
}

/* consumer_name - "<host>-<pid>-<what>", unique per process and thread. */
static void consumer_name(char *out, size_t len, const char *what)
{
    char host[128] = "host";
    gethostname(host, sizeof(host) - 1);
    snprintf(out, len, "%s-%d-%s", host, (int)getpid(), what);
}

/* ---- signing -------------------------------------------------------------- */

int gw_webhook_sign(const char *secret, long long t, const char *body, size_t bodylen, char *out, size_t outlen)
{
    char prefix[32];
    int pl = snprintf(prefix, sizeof(prefix), "%lld.", t);
    unsigned char mac[32];
    /* key = the secret string exactly as the API returned it */
    int ok = util_hmac_sha256(secret, strlen(secret), prefix, (size_t)pl, body, bodylen, mac) == 0;
    if (!ok || outlen < 96)
        return -1;
    char hex[65];
    util_hex(mac, 32, hex);
    snprintf(out, outlen, "t=%lld,v1=%s", t, hex);
    return 0;
}

/* ---- one attempt ------------------------------------------------------------ */

/* What one POST found out. */
struct xfer {
    char resp[DISPATCH_RESPONSE_MAX + 1]; /* the first bytes of the answer */
    size_t resplen;
    int refused;                          /* the SSRF guard refused an address */
    char refused_ip[INET6_ADDRSTRLEN];
};

static size_t on_write(char *p, size_t size, size_t nmemb, void *ud)
{
    struct xfer *x = ud;
    size_t n = size * nmemb, room = DISPATCH_RESPONSE_MAX - x->resplen;
    size_t k = n < room ? n : room;
    memcpy(x->resp + x->resplen, p, k);
    x->resplen += k;
    x->resp[x->resplen] = '\0';
    return n; /* the rest is read and dropped: bounded memory, no error */
}

/* on_open_socket - the SSRF guard at connect time: vet the very address
 * curl is about to connect to. */
static curl_socket_t on_open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a)
{
    struct xfer *x = ud;
    if (!dp.allow_private && !gw_webhook_addr_public(&a->addr)) {
        x->refused = 1;
        const void *in = a->family == AF_INET ? (const void *)&((struct sockaddr_in *)&a->addr)->sin_addr
                                              : (const void *)&((struct sockaddr_in6 *)&a->addr)->sin6_addr;
        inet_ntop(a->family, in, x->refused_ip, sizeof(x->refused_ip));
        return CURL_SOCKET_BAD;
    }
    return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

/* on_progress - abort a transfer at once when the dispatcher stops. */
static int on_progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    return atomic_load(&dp.stop) ? 1 : 0;
}

/* The result of an attempt, as the log and the policy need it. */
struct result {
    long code;              /* HTTP status, 0 when none arrived */
    char error[300];        /* "" when 2xx */
    int64_t duration_ms;
    int aborted;            /* stopped by shutdown: not an attempt */
};

/* post - one signed POST of a's body to a's URL through handle h. */
static void post(CURL *h, const struct queue_wh_attempt *a, struct xfer *x, struct result *res)
{
    memset(res, 0, sizeof(*res));
    char sig[160], hdr[220], evh[120], whh[120], ath[48], errbuf[CURL_ERROR_SIZE] = "";
    if (gw_webhook_sign(a->secret, (long long)(util_now_ms() / 1000), a->body, a->bodylen, sig, sizeof(sig)) < 0) {
        util_strlcpy(res->error, "cannot compute the signature", sizeof(res->error));
        return;
    }
    snprintf(hdr, sizeof(hdr), "Mailgate-Signature: %s", sig);
    snprintf(evh, sizeof(evh), "Mailgate-Event-Id: %s", a->event_id);
    snprintf(whh, sizeof(whh), "Mailgate-Webhook-Id: %s", a->webhook_id);
    snprintf(ath, sizeof(ath), "Mailgate-Attempt: %d", a->attempt);
    struct curl_slist *hl = NULL;
    const char *const lines[] = {"Content-Type: application/json", "User-Agent: mailgate-webhooks", hdr, evh, whh,
                                 ath, "Expect:", NULL};
    for (int i = 0; lines[i]; i++) {
        struct curl_slist *n = curl_slist_append(hl, lines[i]);
        if (!n) {
            curl_slist_free_all(hl);
            util_strlcpy(res->error, "out of memory", sizeof(res->error));
            return;
        }
        hl = n;
    }
    curl_easy_reset(h); /* keeps the connection cache */
    curl_easy_setopt(h, CURLOPT_URL, a->url);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_PROXY, "");  /* no proxy from the environment */
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)DISPATCH_TIMEOUT_MS);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)DISPATCH_CONNECT_MS);
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, a->body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)a->bodylen);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(h, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
    curl_easy_setopt(h, CURLOPT_OPENSOCKETDATA, x);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    int64_t t0 = util_mono_ms();
    CURLcode rc = curl_easy_perform(h);
    res->duration_ms = util_mono_ms() - t0;
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
    curl_slist_free_all(hl);
    if (rc == CURLE_ABORTED_BY_CALLBACK && atomic_load(&dp.stop)) {
        res->aborted = 1;
        return;
    }
    if (rc != CURLE_OK) {
        if (x->refused)
            snprintf(res->error, sizeof(res->error),
                     "refused to connect to %s: not a public address (MAILGATE_WEBHOOK_ALLOW_PRIVATE is off)",
                     x->refused_ip);
        else
            snprintf(res->error, sizeof(res->error), "%s%s%s", curl_easy_strerror(rc), errbuf[0] ? ": " : "",
                     errbuf);
        return;
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &res->code);
    if (res->code >= 300 && res->code < 400)
        snprintf(res->error, sizeof(res->error), "HTTP %ld (redirects are not followed)", res->code);
    else if (res->code < 200 || res->code >= 300)
        snprintf(res->error, sizeof(res->error), "HTTP %ld", res->code);
}

/* retry_delay - back-off before attempt+1: the schedule's step for this
 * attempt (the last step repeats), with +-20% jitter so that a receiver
 * that comes back is not hit by every retry at one instant. */
static int64_t retry_delay(int attempt)
{
    int i = attempt - 1 < dp.nretry ? attempt - 1 : dp.nretry - 1;
    int64_t base = dp.retry_ms[i < 0 ? 0 : i];
    unsigned r = 0;
    util_random_bytes(&r, sizeof(r));
    int64_t spread = base / 5;
    return base - spread + (spread ? (int64_t)(r % (unsigned)(2 * spread + 1)) : 0);
}

/* response_text - the kept answer as a JSON string: UTF-8 as is, anything
 * else (or a cut multi-byte sequence) with its non-ASCII bytes as '?'. */
static json_t *response_text(struct xfer *x)
{
    if (util_utf8_valid(x->resp, x->resplen))
        return json_stringn(x->resp, x->resplen);
    for (size_t i = 0; i < x->resplen; i++)
        if ((unsigned char)x->resp[i] >= 0x80 || x->resp[i] == '\0')
            x->resp[i] = '?';
    return json_stringn(x->resp, x->resplen);
}

/* attempt - send one claimed delivery and record what happened. */
static void attempt(struct queue *q, CURL *h, struct queue_wh_attempt *a)
{
    struct xfer *x = calloc(1, sizeof(*x));
    if (!x)
        return; /* the lease runs out; tried again later */
    int64_t started = util_now_ms();
    struct result res;
    post(h, a, x, &res);
    if (res.aborted) {
        queue_wh_finish(q, a, QUEUE_WH_RELEASE, util_now_ms(), NULL);
        free(x);
        return;
    }
    int ok = res.code >= 200 && res.code < 300 && !res.error[0];
    gw_count(ok ? GW_C_WEBHOOK_OK : GW_C_WEBHOOK_FAILED, 1);
    int64_t now = util_now_ms(), next = 0;
    enum queue_wh_outcome how = QUEUE_WH_DONE;
    int gave_up = 0;
    if (!ok) {
        next = now + retry_delay(a->attempt);
        if (next - a->first_ms > DISPATCH_MAX_AGE_MS)
            gave_up = 1;
        else
            how = QUEUE_WH_RETRY;
    }
    char ts[40], nts[40];
    json_t *entry = json_pack("{s:s, s:s, s:i, s:o, s:s?, s:I, s:s, s:s?, s:o?}", "event_id", a->event_id,
                              "event_type", a->event_type, "attempt", a->attempt, "status_code",
                              res.code ? json_integer(res.code) : json_null(), "error",
                              res.error[0] ? res.error : NULL, "duration_ms", (json_int_t)res.duration_ms,
                              "created_at", util_rfc3339(started, ts, sizeof(ts)), "next_attempt_at",
                              how == QUEUE_WH_RETRY ? util_rfc3339(next, nts, sizeof(nts)) : NULL,
                              "response_body", response_text(x));
    if (entry && gave_up)
        json_object_set_new(entry, "gave_up", json_true());
    free(x);

    char att[16], code[16], dur[24];
    snprintf(att, sizeof(att), "%d", a->attempt);
    snprintf(code, sizeof(code), "%ld", res.code);
    snprintf(dur, sizeof(dur), "%lld", (long long)res.duration_ms);
    log_kv(ok ? LOG_INFO : LOG_WARN, "webhook_attempt", "webhook_id", a->webhook_id, "event_id", a->event_id,
           "event_type", a->event_type, "attempt", att, "status", ok ? "delivered" : gave_up ? "gave_up" : "retry",
           "code", code, "error", res.error[0] ? res.error : NULL, "duration_ms", dur, NULL);

    /* Record, retrying while Redis is away - but only while the lease
     * lasts: after that the delivery is someone else's (at-least-once). */
    int backoff = 100;
    for (;;) {
        int rc = queue_wh_finish(q, a, how, next, entry);
        if (rc > 0)
            log_kv(LOG_WARN, "webhook_claim_lost", "webhook_id", a->webhook_id, "event_id", a->event_id, NULL);
        if (rc >= 0 || atomic_load(&dp.stop) || util_now_ms() - started > DISPATCH_LEASE_MS)
            break;
        nap(backoff);
        backoff = backoff_next(backoff);
    }
    json_decref(entry);
}

/* ---- threads -------------------------------------------------------------- */

static void *worker_main(void *arg)
{
    char err[128];
    struct queue *q = queue_open(dp.redis_url, err, sizeof(err));
    CURL *h = curl_easy_init();
    int backoff = 100;
    while (q && h && !atomic_load(&dp.stop)) {
        struct queue_wh_attempt a;
        int rc = queue_wh_claim(q, util_now_ms(), DISPATCH_LEASE_MS, &a);
        if (rc < 0) {
            nap(backoff);
            backoff = backoff_next(backoff);
            continue;
        }
        backoff = 100;
        if (rc > 0) {
            nap(DISPATCH_IDLE_MS);
            continue;
        }
        attempt(q, h, &a);
        queue_wh_attempt_free(&a);
    }
    if (h)
        curl_easy_cleanup(h);
    queue_close(q);
    return NULL;
}

static void *feed_main(void *arg)
{
    char err[128], consumer[200];
    consumer_name(consumer, sizeof(consumer), "hooks");
    struct queue *q = queue_open(dp.redis_url, err, sizeof(err));
    struct queue_feed_entry *v = calloc(DISPATCH_FEED_BATCH, sizeof(*v));
    int backoff = 100;
    int64_t last_autoclaim = util_mono_ms();
    while (q && v && !atomic_load(&dp.stop)) {
        int n = 0, rc = queue_feed_read(q, consumer, DISPATCH_BLOCK_MS, v, DISPATCH_FEED_BATCH, &n);
        if (rc == 0 && n == 0 && util_mono_ms() - last_autoclaim > DISPATCH_AUTOCLAIM_EVERY_MS) {
            /* entries a dead dispatcher read but never fanned out */
            last_autoclaim = util_mono_ms();
            rc = queue_feed_autoclaim(q, consumer, DISPATCH_AUTOCLAIM_IDLE_MS, v, DISPATCH_FEED_BATCH, &n);
        }
        if (rc < 0) {
            nap(backoff);
            backoff = backoff_next(backoff);
            continue;
        }
        backoff = 100;
        int made = 0;
        /* On failure the entries stay pending and are read again: fan-out
         * is atomic per entry, so none is done twice. */
        if (n && queue_feed_fanout(q, v, n, util_now_ms(), &made) < 0)
            nap(backoff);
        queue_feed_entries_free(v, n);
    }
    free(v);
    queue_close(q);
    return NULL;
}

int gw_dispatch_start(const struct gw_config *c)
{
    memset(&dp, 0, sizeof(dp));
    dp.redis_url = strdup(c->redis_url);
    if (!dp.redis_url)
        return -1;
    dp.nretry = c->webhook_nretry > 0 ? c->webhook_nretry : 1;
    if (c->webhook_nretry > 0)
        memcpy(dp.retry_ms, c->webhook_retry_ms, sizeof(int64_t) * (size_t)dp.nretry);
    else
        dp.retry_ms[0] = 5000;
    dp.allow_private = c->webhook_allow_private;
    char err[128];
    struct queue *q = queue_open(dp.redis_url, err, sizeof(err));
    if (q) {
        queue_feed_group_ensure(q); /* also made again by the feed thread after a FLUSHALL */
        queue_close(q);
    }
    dp.feed_started = pthread_create(&dp.feed, NULL, feed_main, NULL) == 0;
    for (int i = 0; i < DISPATCH_WORKERS; i++)
        dp.started[i] = pthread_create(&dp.workers[i], NULL, worker_main, NULL) == 0;
    if (!dp.feed_started) {
        log_kv(LOG_ERROR, "dispatcher_start_failed", "reason", "cannot create threads", NULL);
        gw_dispatch_stop(1000);
        return -1;
    }
    char nw[16], sched[256] = "";
    snprintf(nw, sizeof(nw), "%d", DISPATCH_WORKERS);
    for (int i = 0; i < dp.nretry; i++) {
        size_t l = strlen(sched);
        snprintf(sched + l, sizeof(sched) - l, "%s%lldms", i ? "," : "", (long long)dp.retry_ms[i]);
    }
    log_kv(dp.allow_private ? LOG_WARN : LOG_INFO, "dispatcher_started", "workers", nw, "retry_schedule", sched,
           "allow_private", dp.allow_private ? "true (SSRF guard off)" : "false", NULL);
    return 0;
}

int gw_dispatch_stop(int deadline_ms)
{
    atomic_store(&dp.stop, 1);
    struct timespec until = util_deadline(deadline_ms);
    int late = 0;
    for (int i = 0; i < DISPATCH_WORKERS; i++)
        if (dp.started[i] && pthread_timedjoin_np(dp.workers[i], NULL, &until) != 0)
            late++;
    if (dp.feed_started && pthread_timedjoin_np(dp.feed, NULL, &until) != 0)
        late++;
    if (late) {
        /* busy threads still read the state: leave it to process exit */
        log_kv(LOG_WARN, "dispatcher_stop_deadline", "reason", "attempts still running; their claims expire", NULL);
        return -1;
    }
    free(dp.redis_url);
    dp.redis_url = NULL;
    return 0;
}
