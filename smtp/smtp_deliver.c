/*
 * smtp_deliver.c - the delivery agent: worker threads that read jobs from
 * the stream (consumer group "senders"), send each message in one SMTP
 * transaction through a persistent session, and record one outcome per
 * recipient; plus the scheduler that moves due retries back to the stream.
 *
 * A worker works in batches: the jobs of one read (up to DELIVER_BATCH_MAX,
 * as many as take about DELIVER_BATCH_TARGET_MS at the relay's recent
 * pace) are loaded in one Redis round trip and sent one after another;
 * each job's outcome is written to Redis (its own MULTI/EXEC) as soon as
 * it is decided, without waiting for the reply, and the replies are read
 * in one wait at the end of the batch, with the next read (XREADGROUP ...
 * BLOCK) queued after them: two waits on Redis per batch instead of three
 * per message, never one per SMTP command. An outcome is never held
 * back: Redis records it while the next message is sent. A job is
 * acknowledged only in the same Redis transaction that records its
 * outcome; if that cannot be written, the worker keeps retrying it, with
 * the same events, before it loads anything else (and a restart re-reads
 * the pending entry), so an accepted message is never lost: delivery is
 * at-least-once, and a sender killed mid-batch leaves only the message
 * in transfer delivered but unrecorded (its jobs not yet sent are simply
 * pending).
 *
 * Relays are tried in the order given: when a session to one cannot be
 * opened, the next is tried for the same job.
 * Observability: one "delivery" log line per recipient and attempt (message
 * id, recipient, relay, code, enhanced_code, reply, duration_ms); counters,
 * two latency histograms and per-relay pool gauges for /metrics, all
 * atomics in static storage, so measuring costs no lock and no allocation.
 * SECURITY: logs carry addresses and reply texts, never bodies or secrets.
 */
#include "smtp/smtp_deliver.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/hist.h"
#include "common/log.h"
#include "common/util.h"
#include "queue/queue.h"
#include "smtp/smtp.h"

#define DELIVER_WORKERS_MAX 256
#define DELIVER_BLOCK_MS 1000       /* XREADGROUP BLOCK; bounds stop latency */
#define DELIVER_SCHEDULE_MS 250     /* how often due retries are looked for */
#define DELIVER_BACKOFF_MAX_MS 8000 /* Redis reconnect back-off cap */
#define DELIVER_BATCH_MAX 16        /* jobs one worker reads at once */
#define DELIVER_BATCH_TARGET_MS 50  /* a batch takes about this long (batch_size) */
#define DELIVER_INFLIGHT_MAX (2 * DELIVER_BATCH_MAX) /* a batch being recorded + the next */
#define DELIVER_RECLAIM_MAX 64      /* taken-over jobs waiting for a worker */
#define RELAY_FAULT_HOLD_MS 60000   /* a misconfigured relay (auth, TLS) sits out this long */
#define RELAY_DOWN_MIN_MS 1000      /* first reconnect back-off after a failed connect */
#define RELAY_DOWN_MAX_MS 60000     /* reconnect back-off cap */

/* Rotation state of one relay, shared by every worker. */
struct relay_state {
    pthread_mutex_t mu;
    int64_t hold_until;   /* out of rotation until then (mono ms) */
    int failures;         /* consecutive failed connects (back-off exponent) */
    double tokens;        /* rate limiter: messages that may start now */
    int64_t refilled;     /* mono ms of the last refill */
};

struct worker {
    pthread_t thread;
    int index;
    struct smtp_session **sessions; /* one per relay, opened on demand */
    int64_t *last_used;             /* per relay: mono ms of the last transaction */
    pthread_mutex_t mu;             /* guards inflight */
    struct queue_inflight inflight[DELIVER_INFLIGHT_MAX];
    int ninflight;
    int64_t job_us;                 /* moving average of one job's time (batch_size) */
};

static struct {
    char *redis_url, *helo;
    int64_t retry_ms[16];
    int nretry;
    int64_t max_age_ms;
    struct smtp_relay *relays;
    struct relay_state *rs;
    size_t nrelays;
    struct smtp_timeouts timeouts;
    struct worker *workers;
    int nworkers;
    pthread_t scheduler, keeper;
    int scheduler_started, keeper_started;
    int64_t claim_timeout_ms;
    char keeper_consumer[128];
    pthread_mutex_t rmu;            /* guards reclaimed */
    struct queue_job reclaimed[DELIVER_RECLAIM_MAX];
    int nreclaimed;
    atomic_int stop;
} dv;

static atomic_ullong c_delivered, c_deferred, c_bounced, c_attempts, c_connections, c_connect_failures;

void smtp_deliver_counters_get(struct smtp_deliver_counters *out)
{
    out->delivered = atomic_load(&c_delivered);
    out->deferred = atomic_load(&c_deferred);
    out->bounced = atomic_load(&c_bounced);
    out->attempts = atomic_load(&c_attempts);
    out->connections = atomic_load(&c_connections);
    out->connect_failures = atomic_load(&c_connect_failures);
}

/* Latency histograms (seconds in /metrics, microseconds here). A relay
 * transaction takes milliseconds to minutes; acceptance to delivery spans
 * a pipelined relay's few milliseconds up to MAILGATE_MAX_AGE of retries. */
static const uint64_t txn_bounds_us[] = {1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000,
                                         500000, 1000000, 2500000, 5000000, 10000000, 30000000,
                                         60000000, 300000000};
static const uint64_t accept_bounds_us[] = {5000, 10000, 25000, 50000, 100000, 250000, 500000,
                                            1000000, 2500000, 5000000, 10000000, 30000000,
                                            60000000, 300000000, 900000000, 3600000000, 14400000000,
                                            86400000000};
static struct hist h_txn = HIST_INIT(txn_bounds_us);
static struct hist h_accept = HIST_INIT(accept_bounds_us);

void smtp_deliver_hists(const struct hist **txn, const struct hist **accepted_delivered)
{
    *txn = &h_txn;
    *accepted_delivered = &h_accept;
}

/* Pool gauges. Worker k owns connection k of every relay (see usable), so
 * each worker publishes the state of its own sessions in pools.state[k]
 * and a scrape sums a column: no lock on the delivery path. The table is
 * static and never freed, so a scrape racing smtp_deliver_stop reads
 * stale numbers at worst, never freed memory. */
#define POOL_RELAYS_MAX 32 /* relays shown (smtp_relay.c accepts as many) */
enum { POOL_CLOSED, POOL_OPEN, POOL_BUSY };
static struct {
    atomic_size_t nrelays; /* relays published; 0 while the sender is stopped */
    char names[POOL_RELAYS_MAX][SMTP_DELIVER_POOL_NAME_MAX];
    int size[POOL_RELAYS_MAX];
    atomic_uchar state[DELIVER_WORKERS_MAX][POOL_RELAYS_MAX];
} pools;

size_t smtp_deliver_pools(struct smtp_deliver_pool *out, size_t max)
{
    size_t n = atomic_load(&pools.nrelays);
    if (n > max)
        n = max;
    for (size_t i = 0; i < n; i++) {
        util_strlcpy(out[i].relay, pools.names[i], sizeof(out[i].relay));
        out[i].size = pools.size[i];
        out[i].open = out[i].busy = 0;
        for (int k = 0; k < DELIVER_WORKERS_MAX; k++) {
            unsigned char st = atomic_load_explicit(&pools.state[k][i], memory_order_relaxed);
            out[i].open += st != POOL_CLOSED;
            out[i].busy += st == POOL_BUSY;
        }
    }
    return n;
}

/* nap - sleep ms, waking early when asked to stop. */
static void nap(int ms)
{
    util_nap(ms, &dv.stop);
}

/* retry_delay - back-off for the given attempt, with +-10% jitter so that
 * many deferred recipients do not come due at the same instant. */
static int64_t retry_delay(int attempt)
{
    int i = attempt - 1 < dv.nretry ? attempt - 1 : dv.nretry - 1;
    int64_t base = dv.retry_ms[i < 0 ? 0 : i];
    unsigned r = 0;
    util_random_bytes(&r, sizeof(r));
    int64_t spread = base / 10;
    return base - spread + (spread ? (int64_t)(r % (unsigned)(2 * spread + 1)) : 0);
}

static void fmt_reply(const struct smtp_rcpt *r, char *out, size_t len)
{
    if (r->reply.code)
        snprintf(out, len, "%d%s%s%s%s", r->reply.code, r->reply.enhanced[0] ? " " : "",
                 r->reply.enhanced, r->reply.text[0] ? " " : "", r->reply.text);
    else
        util_strlcpy(out, smtp_local_reason(r->local), len);
}

/* outcome_event - the event for one recipient's result: the SMTP reply
 * that decided it, or the local reason; the TLS in use when there was one. */
static json_t *outcome_event(const char *type, const struct queue_job *job, const struct queue_delivery *d,
                             const struct smtp_rcpt *r, const char *relay, struct smtp_session *used,
                             int tls_required)
{
    json_t *ev = queue_event_new(type, job->msg_id, r->addr, d->tags, d->metadata);
    if (r->reply.code) {
        json_object_set_new(ev, "smtp", json_pack("{s:i, s:s?, s:s, s:s}", "code", r->reply.code,
                                                  "enhanced_code", r->reply.enhanced[0] ? r->reply.enhanced : NULL,
                                                  "reply", r->reply.text, "relay", relay));
    } else {
        json_object_set_new(ev, "reason", json_string(r->local == SMTP_LOCAL_TLS && tls_required
                                                          ? "tls_required" : smtp_local_reason(r->local)));
        if (r->reply.enhanced[0])
            json_object_set_new(ev, "enhanced_code", json_string(r->reply.enhanced));
        json_object_set_new(ev, "relay", json_string(relay));
    }
    const char *tv = used ? smtp_session_tls_version(used) : NULL;
    if (tv)
        json_object_set_new(ev, "tls", json_pack("{s:s, s:s?}", "version", tv, "cipher", smtp_session_tls_cipher(used)));
    json_object_set_new(ev, "attempt", json_integer(job->attempt));
    return ev;
}

/* relay_held - 1 while relay i is out of rotation. */
static int relay_held(size_t i)
{
    pthread_mutex_lock(&dv.rs[i].mu);
    int held = dv.rs[i].hold_until > util_mono_ms();
    pthread_mutex_unlock(&dv.rs[i].mu);
    return held;
}

/* relay_failed - a connect to relay i failed: back off exponentially, or
 * for a configuration fault (auth, TLS) sit out RELAY_FAULT_HOLD_MS. */
static void relay_failed(size_t i, int config_fault, const char *why)
{
    pthread_mutex_lock(&dv.rs[i].mu);
    int64_t hold = RELAY_FAULT_HOLD_MS;
    if (!config_fault) {
        int f = dv.rs[i].failures < 6 ? dv.rs[i].failures : 6;
        hold = (int64_t)RELAY_DOWN_MIN_MS << f;
        if (hold > RELAY_DOWN_MAX_MS)
            hold = RELAY_DOWN_MAX_MS;
    }
    dv.rs[i].failures++;
    dv.rs[i].hold_until = util_mono_ms() + hold;
    pthread_mutex_unlock(&dv.rs[i].mu);
    char h[24];
    snprintf(h, sizeof(h), "%lld", (long long)hold);
    log_kv(config_fault ? LOG_ERROR : LOG_WARN, "relay_out_of_rotation", "relay", dv.relays[i].name,
           "reason", why, "hold_ms", h, NULL);
}

static void relay_ok(size_t i)
{
    pthread_mutex_lock(&dv.rs[i].mu);
    if (dv.rs[i].failures)
        log_kv(LOG_INFO, "relay_back_in_rotation", "relay", dv.relays[i].name, NULL);
    dv.rs[i].failures = 0;
    dv.rs[i].hold_until = 0;
    pthread_mutex_unlock(&dv.rs[i].mu);
}

/* relay_rate_wait - block until relay i's rate (messages/s) lets one more
 * message start (token bucket, burst of one second's worth). */
static void relay_rate_wait(size_t i)
{
    int rate = dv.relays[i].rate;
    if (rate <= 0)
        return;
    for (;;) {
        pthread_mutex_lock(&dv.rs[i].mu);
        int64_t now = util_mono_ms();
        dv.rs[i].tokens += (double)(now - dv.rs[i].refilled) * rate / 1000.0;
        if (dv.rs[i].tokens > rate)
            dv.rs[i].tokens = rate;
        dv.rs[i].refilled = now;
        int go = dv.rs[i].tokens >= 1.0;
        if (go)
            dv.rs[i].tokens -= 1.0;
        int wait_ms = go ? 0 : (int)((1.0 - dv.rs[i].tokens) * 1000.0 / rate) + 1;
        pthread_mutex_unlock(&dv.rs[i].mu);
        if (go || atomic_load(&dv.stop))
            return;
        nap(wait_ms);
    }
}

/* usable - worker w may use relay i: its pool has room for w (worker k
 * holds connection k of every relay whose pool is larger than k). */
static int usable(const struct worker *w, size_t i)
{
    return w->index < dv.relays[i].pool;
}

/* close_session - QUIT and close w's session to relay i, if open. */
static void close_session(struct worker *w, size_t i, const char *why)
{
    if (w->sessions[i] && smtp_session_is_open(w->sessions[i])) {
        log_kv(LOG_DEBUG, "smtp_close", "relay", dv.relays[i].name, "reason", why, NULL);
        smtp_session_quit(w->sessions[i]);
    }
}

/* pool_sync - publish whether each of w's sessions is connected. */
static void pool_sync(const struct worker *w)
{
    for (size_t i = 0; i < dv.nrelays && i < POOL_RELAYS_MAX; i++)
        atomic_store_explicit(&pools.state[w->index][i],
                              smtp_session_is_open(w->sessions[i]) ? POOL_OPEN : POOL_CLOSED,
                              memory_order_relaxed);
}

/* pool_busy - publish that w's session to relay i is in a transaction. */
static void pool_busy(const struct worker *w, size_t i)
{
    if (i < POOL_RELAYS_MAX)
        atomic_store_explicit(&pools.state[w->index][i], POOL_BUSY, memory_order_relaxed);
}

/* worker_idle - QUIT sessions unused for longer than their relay's idle=,
 * and sessions to a lower-priority relay once a preferred one is back in
 * rotation, so that traffic returns to it. */
static void worker_idle(struct worker *w)
{
    int64_t now = util_mono_ms();
    int preferred_up = 0;
    for (size_t i = 0; i < dv.nrelays; i++) {
        if (!w->sessions[i] || !smtp_session_is_open(w->sessions[i])) {
            if (usable(w, i) && !relay_held(i))
                preferred_up = 1;
            continue;
        }
        if (preferred_up)
            close_session(w, i, "a preferred relay is back in rotation");
        else if (dv.relays[i].idle_s > 0 && now - w->last_used[i] > (int64_t)dv.relays[i].idle_s * 1000)
            close_session(w, i, "idle");
        else
            preferred_up = 1; /* this open session is the one in use */
    }
    pool_sync(w);
}

/* worker_can_send - 1 when some relay could take a message from w now. */
static int worker_can_send(const struct worker *w)
{
    for (size_t i = 0; i < dv.nrelays; i++)
        if (usable(w, i) && !relay_held(i))
            return 1;
    return dv.nrelays == 0;
}

/* try_relays - a usable open session, in relay order (opening one when
 * needed); the index used, or -1 with the last failure in *fail. */
static int try_relays(struct worker *w, struct smtp_rcpt *fail, int *tried)
{
    fail->local = SMTP_LOCAL_CONNECT;
    *tried = -1;
    for (size_t i = 0; i < dv.nrelays; i++) {
        if (!usable(w, i))
            continue;
        if (!w->sessions[i])
            w->sessions[i] = smtp_session_new(&dv.relays[i], dv.helo, &dv.timeouts);
        if (!w->sessions[i])
            continue;
        if (smtp_session_is_open(w->sessions[i]))
            return (int)i;
        if (relay_held(i))
            continue;
        struct smtp_reply why = {0};
        enum smtp_local local = SMTP_LOCAL_NONE;
        *tried = (int)i;
        if (smtp_session_open(w->sessions[i], &why, &local) == 0) {
            atomic_fetch_add(&c_connections, 1);
            relay_ok(i);
            return (int)i;
        }
        atomic_fetch_add(&c_connect_failures, 1);
        fail->reply = why;
        fail->local = local ? local : (why.code ? SMTP_LOCAL_NONE : SMTP_LOCAL_CONNECT);
        fail->stage = SMTP_STAGE_CONNECT;
        relay_failed(i, smtp_session_relay_fault(w->sessions[i]),
                     why.code ? why.text : smtp_local_reason(fail->local));
    }
    return -1;
}

/* inflight_put - publish the entries this worker holds, for the keeper:
 * jobs[0..n) owned by consumer, replacing (add 0) or after (add 1) those
 * published before. */
static void inflight_put(struct worker *w, const struct queue_job *jobs, int n, const char *consumer, int add)
{
    pthread_mutex_lock(&w->mu);
    if (!add)
        w->ninflight = 0;
    for (int i = 0; i < n && w->ninflight < DELIVER_INFLIGHT_MAX; i++) {
        struct queue_inflight *f = &w->inflight[w->ninflight++];
        util_strlcpy(f->tenant, jobs[i].tenant, sizeof(f->tenant));
        util_strlcpy(f->entry_id, jobs[i].entry_id, sizeof(f->entry_id));
        util_strlcpy(f->consumer, consumer, sizeof(f->consumer));
    }
    pthread_mutex_unlock(&w->mu);
}

/* record - write the outcomes f[0..n) not yet recorded, retrying while
 * Redis is away: an outcome exists only in memory until this succeeds. A
 * retry re-sends only the jobs not yet recorded, with the same events. */
static void record(struct queue *q, struct queue_finish *f, int n)
{
    int backoff = 100;
    while (queue_jobs_finish(q, f, n, NULL) < 0) {
        if (atomic_load(&dv.stop)) {
            for (int k = 0; k < n; k++) {
                if (f[k].done)
                    continue;
                log_kv(LOG_ERROR, "outcome_not_recorded", "message_id", f[k].job->msg_id,
                       "reason", "redis unavailable at shutdown; the job stays pending", NULL);
                for (size_t i = 0; i < f[k].n; i++) {
                    json_decref(f[k].o[i].event);
                    f[k].o[i].event = NULL;
                }
            }
            return;
        }
        nap(backoff);
        backoff = backoff * 2 > DELIVER_BACKOFF_MAX_MS ? DELIVER_BACKOFF_MAX_MS : backoff * 2;
    }
}

/* What one job of a batch holds from its attempt until its outcomes are
 * recorded (the outcomes point into these and into the job). */
struct job_work {
    struct smtp_rcpt *rc_v;
    struct queue_outcome *o;
    char (*replies)[SMTP_REPLY_TEXT_MAX + 32];
};

static void job_work_free(struct job_work *jw)
{
    free(jw->replies);
    free(jw->o);
    free(jw->rc_v);
    memset(jw, 0, sizeof(*jw));
}

/* attempt - one loaded job: send, decide per recipient, and fill f with
 * the outcomes to record (memory in jw). gone: the message no longer
 * exists (retention): the job is only dropped. */
static void attempt(struct worker *w, struct queue_job *job, struct queue_delivery *d, int gone,
                    struct job_work *jw, struct queue_finish *f)
{
    *f = (struct queue_finish){.job = job, .d = d};
    if (gone)
        return;
    size_t n = json_array_size(job->rcpts);
    struct smtp_rcpt *rc_v = jw->rc_v = calloc(n ? n : 1, sizeof(*rc_v));
    struct queue_outcome *o = jw->o = calloc(n ? n : 1, sizeof(*o));
    char (*replies)[SMTP_REPLY_TEXT_MAX + 32] = jw->replies = calloc(n ? n : 1, sizeof(*replies));
    size_t nt = 0;
    for (size_t i = 0; i < n; i++) {
        const char *addr = json_string_value(json_array_get(job->rcpts, i));
        json_t *st = json_object_get(d->rcpt_state, addr ? addr : "");
        const char *s = json_string_value(json_object_get(st, "status"));
        /* A recipient whose outcome is already recorded is never sent again. */
        if (!addr || (s && (!strcmp(s, "delivered") || !strcmp(s, "bounced") ||
                            !strcmp(s, "suppressed") || !strcmp(s, "cancelled"))))
            continue;
        rc_v[nt++].addr = addr;
    }

    const char *relay_name = "none";
    int tls_required = 0; /* a TLS failure is reported as the contract's "tls_required" */
    struct smtp_session *used = NULL;
    uint64_t started_us = hist_clock_us(); /* the attempt's duration_ms counts connecting too */
    /* Like Postfix's maximal_queue_lifetime, a recipient past its age still
     * gets the attempt that was due; it expires when that one defers too. */
    if (nt && d->body) {
        struct smtp_rcpt fail = {0};
        int tried = -1;
        int ri = dv.nrelays ? try_relays(w, &fail, &tried) : -1;
        pool_sync(w);
        if (ri < 0) {
            if (!dv.nrelays)
                fail.local = SMTP_LOCAL_CONNECT;
            if (tried >= 0) {
                /* name the relay that failed last, not "none" */
                relay_name = dv.relays[tried].name;
                if (dv.relays[tried].tls == SMTP_TLS_REQUIRED && fail.local == SMTP_LOCAL_TLS)
                    tls_required = 1;
            }
            for (size_t i = 0; i < nt; i++) {
                const char *a = rc_v[i].addr;
                rc_v[i] = fail;
                rc_v[i].addr = a;
            }
        } else {
            relay_name = dv.relays[ri].name;
            tls_required = dv.relays[ri].tls == SMTP_TLS_REQUIRED;
            struct smtp_txn t = {.mail_from = d->mail_from, .rcpts = rc_v, .nrcpts = nt,
                                 .data = d->body, .datalen = d->bodylen};
            relay_rate_wait((size_t)ri);
            pool_busy(w, (size_t)ri);
            uint64_t txn_us = hist_clock_us();
            smtp_session_send(w->sessions[ri], &t);
            hist_observe_since(&h_txn, txn_us);
            pool_sync(w);
            w->last_used[ri] = util_mono_ms();
            used = w->sessions[ri];
            if (smtp_session_relay_fault(used))
                relay_failed((size_t)ri, 1, "configuration fault during the transaction");
        }
    }

    int deferred = 0;
    char att[16], dur[24];
    snprintf(att, sizeof(att), "%d", job->attempt);
    snprintf(dur, sizeof(dur), "%llu", (unsigned long long)((hist_clock_us() - started_us) / 1000));
    int64_t finished_ms = util_now_ms();
    for (size_t i = 0; i < nt; i++) {
        struct smtp_rcpt *r = &rc_v[i];
        enum smtp_verdict v = smtp_verdict_of(r);
        const char *type, *status;
        o[i].email = r->addr;
        fmt_reply(r, replies[i], sizeof(replies[i]));
        if (!d->body) {
            /* the body is gone while a recipient is open: cannot happen
             * unless someone deleted keys; never retry forever. */
            o[i].event = queue_event_new("bounced", job->msg_id, r->addr, d->tags, d->metadata);
            json_object_set_new(o[i].event, "bounce_type", json_string("soft"));
            json_object_set_new(o[i].event, "reason", json_string("internal_error"));
            o[i].status = "bounced";
            util_strlcpy(replies[i], "internal_error", sizeof(replies[i]));
        } else if (v == SMTP_DEFER && util_now_ms() - d->created_ms >= dv.max_age_ms) {
            o[i].event = outcome_event("bounced", job, d, r, relay_name, used, tls_required);
            json_object_set_new(o[i].event, "bounce_type", json_string("soft"));
            json_object_set_new(o[i].event, "reason", json_string("expired"));
            o[i].status = "bounced";
        } else {
            type = v == SMTP_DELIVERED ? "delivered" : v == SMTP_BOUNCE ? "bounced" : "deferred";
            status = type;
            o[i].event = outcome_event(type, job, d, r, relay_name, used, tls_required);
            if (v == SMTP_BOUNCE) {
                json_object_set_new(o[i].event, "bounce_type", json_string("hard"));
                /* A bad mailbox (5.1.x) is suppressed; a policy block (5.7.x)
                 * says nothing about the address and is not. */
                o[i].suppress = !strncmp(r->reply.enhanced, "5.1.", 4);
            }
            if (v == SMTP_DEFER)
                deferred = 1;
            o[i].status = status;
        }
        o[i].last_reply = replies[i];
        int delivered = !strcmp(o[i].status, "delivered");
        atomic_fetch_add(delivered ? &c_delivered : !strcmp(o[i].status, "bounced") ? &c_bounced : &c_deferred, 1);
        if (delivered && d->created_ms > 0)
            hist_observe_us(&h_accept,
                            finished_ms > d->created_ms ? (uint64_t)(finished_ms - d->created_ms) * 1000 : 0);
        char code[8];
        snprintf(code, sizeof(code), "%d", r->reply.code);
        /* the per-attempt line: fixed keys; "code" 0 means decided locally
         * (no reply), and then "reply" holds the local reason */
        log_kv(LOG_INFO, "delivery", "message_id", job->msg_id, "recipient", r->addr, "relay",
               relay_name, "status", o[i].status, "code", code, "enhanced_code",
               r->reply.enhanced[0] ? r->reply.enhanced : NULL, "reply", replies[i], "attempt", att,
               "duration_ms", dur, "reused", used ? (smtp_session_reused(used) ? "1" : "0") : NULL,
               "tls", used ? smtp_session_tls_version(used) : NULL, NULL);
    }
    if (nt)
        atomic_fetch_add(&c_attempts, 1);
    int64_t due = 0;
    if (deferred) {
        /* the last retry falls exactly at MAILGATE_MAX_AGE, never after it,
         * and a recipient expires only once that age is reached */
        due = util_now_ms() + retry_delay(job->attempt);
        if (d->created_ms && due > d->created_ms + dv.max_age_ms)
            due = d->created_ms + dv.max_age_ms;
    }
    f->o = o;
    f->n = nt;
    f->retry_due_ms = due;
}

/* take_reclaimed - a job the keeper took over from a dead sender, if any. */
static int take_reclaimed(struct queue_job *job)
{
    pthread_mutex_lock(&dv.rmu);
    int got = dv.nreclaimed > 0;
    if (got)
        *job = dv.reclaimed[--dv.nreclaimed];
    pthread_mutex_unlock(&dv.rmu);
    return got;
}

/* reclaimed_waiting - 1 when the keeper has taken-over jobs for a worker. */
static int reclaimed_waiting(void)
{
    pthread_mutex_lock(&dv.rmu);
    int n = dv.nreclaimed;
    pthread_mutex_unlock(&dv.rmu);
    return n > 0;
}

/* poison - a job taken over too often kills senders or never finishes:
 * bounce its open recipients (soft, internal_error; run_batch has
 * dead-lettered it); the outcomes go into f (memory in jw) like an
 * attempt's. */
static void poison(struct queue_job *job, struct queue_delivery *d, struct job_work *jw, struct queue_finish *f)
{
    size_t n = json_array_size(job->rcpts);
    struct queue_outcome *o = jw->o = calloc(n ? n : 1, sizeof(*o));
    for (size_t i = 0; i < n; i++) {
        o[i].email = json_string_value(json_array_get(job->rcpts, i));
        o[i].status = "bounced";
        o[i].last_reply = "internal_error";
        o[i].event = queue_event_new("bounced", job->msg_id, o[i].email, d->tags, d->metadata);
        json_object_set_new(o[i].event, "bounce_type", json_string("soft"));
        json_object_set_new(o[i].event, "reason", json_string("internal_error"));
    }
    log_kv(LOG_ERROR, "job_dead_lettered", "tenant", job->tenant, "message_id", job->msg_id, "entry", job->entry_id, NULL);
    *f = (struct queue_finish){.job = job, .d = d, .o = o, .n = n};
}

/* batch_learn - fold one job's time (us) into w's moving average. */
static void batch_learn(struct worker *w, uint64_t us)
{
    w->job_us = (3 * w->job_us + (int64_t)us) / 4;
}

/* batch_size - jobs w reads at once: as many as fit DELIVER_BATCH_TARGET_MS
 * at its recent pace, so a slow relay reads one at a time (another
 * tenant's message never waits behind a long batch), a fast one up to
 * DELIVER_BATCH_MAX (fewer round trips per message). */
static int batch_size(const struct worker *w)
{
    int64_t per = w->job_us > 0 ? w->job_us : 1;
    int64_t k = (int64_t)DELIVER_BATCH_TARGET_MS * 1000 / per;
    return k < 1 ? 1 : k > DELIVER_BATCH_MAX ? DELIVER_BATCH_MAX : (int)k;
}

/* merge_outcomes - a later job of the same message in this batch was
 * loaded before f was recorded: show it f's outcomes, as if loaded after
 * (a recorded recipient is never sent again; the bodies go with the last
 * recipient). */
static void merge_outcomes(const struct queue_finish *f, struct queue_job *jobs, struct queue_delivery *d,
                           int from, int n)
{
    for (int k = from; k < n; k++) {
        if (strcmp(jobs[k].msg_id, f->job->msg_id) != 0 || !d[k].rcpt_state)
            continue;
        for (size_t i = 0; i < f->n; i++)
            json_object_set_new(d[k].rcpt_state, f->o[i].email, json_pack("{s:s}", "status", f->o[i].status));
    }
}

/* run_batch - the jobs of one read: load them all in one round trip, then
 * send each and write its outcomes to Redis at once (a MULTI/EXEC per
 * job, written ahead: not waited for), so that a sender that dies leaves
 * at most the message in transfer delivered but unrecorded, as without
 * batches. The replies are read in one wait at the end, with the next
 * read queued after them when the worker goes on reading. Outcomes not
 * recorded are retried (record) before anything else is loaded. Frees
 * jobs[0..n); returns the number of jobs read into next. */
static int run_batch(struct worker *w, struct queue *q, struct queue_job *jobs, int n, const char *consumer,
                     struct queue_job *next)
{
    struct queue_delivery d[DELIVER_BATCH_MAX];
    struct queue_finish f[DELIVER_BATCH_MAX];
    struct job_work jw[DELIVER_BATCH_MAX];
    int gone[DELIVER_BATCH_MAX];
    memset(jw, 0, sizeof(jw));
    memset(f, 0, sizeof(f));
    if (queue_delivery_load_many(q, jobs, n, d, gone) < 0) {
        for (int i = 0; i < n; i++)
            queue_job_free(&jobs[i]);
        return 0; /* they stay pending; read again after reconnect */
    }
    /* before the recorder owns the connection */
    for (int i = 0; i < n; i++)
        if (jobs[i].reclaims > QUEUE_MAX_CLAIMS)
            queue_job_dead_letter(q, &jobs[i], "reclaimed too often");
    struct queue_read rd = {.consumer = consumer, .block_ms = DELIVER_BLOCK_MS, .out = next,
                            .max = batch_size(w), .n = -1};
    struct queue_rec *rec = queue_jobs_rec_begin(q, &rd);
    for (int i = 0; i < n; i++) {
        uint64_t t0 = hist_clock_us();
        if (jobs[i].reclaims > QUEUE_MAX_CLAIMS)
            poison(&jobs[i], &d[i], &jw[i], &f[i]);
        else
            attempt(w, &jobs[i], &d[i], gone[i], &jw[i], &f[i]);
        batch_learn(w, hist_clock_us() - t0);
        merge_outcomes(&f[i], jobs, d, i + 1, n);
        queue_jobs_rec_add(rec, &f[i]);
    }
    /* Read on in the same round trip unless the loop would not read next. */
    int again = !atomic_load(&dv.stop) && worker_can_send(w) && !reclaimed_waiting();
    queue_jobs_rec_end(rec, again);
    if (rd.n > 0)
        inflight_put(w, next, rd.n, consumer, 1);
    record(q, f, n);
    for (int i = 0; i < n; i++) {
        job_work_free(&jw[i]);
        queue_delivery_free(&d[i]);
        queue_job_free(&jobs[i]);
    }
    return rd.n > 0 ? rd.n : 0;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    char err[128], consumer[128], host[64] = "host";
    gethostname(host, sizeof(host) - 1);
    snprintf(consumer, sizeof(consumer), "%s-%d-%d", host, (int)getpid(), w->index);
    char tname[16]; /* "top -H", /proc/PID/task/TID/comm */
    snprintf(tname, sizeof(tname), "mg-send-%d", w->index);
    pthread_setname_np(pthread_self(), tname);
    struct queue *q = queue_open(dv.redis_url, err, sizeof(err));
    struct queue_job buf[2][DELIVER_BATCH_MAX];
    struct queue_job *jobs = buf[0], *next = buf[1];
    int n = 0, backoff = 100;
    w->job_us = DELIVER_BATCH_TARGET_MS * 1000 / 4; /* start with batches of 4 */
    /* Jobs already read are always sent, also after stop (as one read's
     * jobs always were): stop then only ends the reading. */
    while (q && (n > 0 || !atomic_load(&dv.stop))) {
        if (n == 0) {
            worker_idle(w);
            if (!worker_can_send(w)) {
                /* every relay this worker may use sits out: leave the jobs
                 * to workers that can send, or in the stream until one
                 * returns */
                nap(250);
                continue;
            }
            const char *owner = consumer;
            if (take_reclaimed(&jobs[0])) {
                n = 1;
                owner = dv.keeper_consumer;
            } else {
                n = queue_jobs_read(q, consumer, DELIVER_BLOCK_MS, jobs, batch_size(w));
            }
            if (n < 0) {
                n = 0;
                nap(backoff);
                backoff = backoff * 2 > DELIVER_BACKOFF_MAX_MS ? DELIVER_BACKOFF_MAX_MS : backoff * 2;
                continue;
            }
            backoff = 100;
            inflight_put(w, jobs, n, owner, 0);
            if (n == 0)
                continue;
        }
        int got = run_batch(w, q, jobs, n, consumer, next);
        struct queue_job *t = jobs;
        jobs = next;
        next = t;
        n = got;
        inflight_put(w, jobs, n, consumer, 0);
        if (n > 0)
            worker_idle(w); /* between batches read back to back */
    }
    for (size_t i = 0; i < dv.nrelays; i++) {
        if (w->sessions[i])
            smtp_session_quit(w->sessions[i]);
        smtp_session_free(w->sessions[i]);
        w->sessions[i] = NULL;
    }
    pool_sync(w);
    queue_close(q);
    return NULL;
}

/* keeper_main - keeps this process's in-flight entries fresh (so they are
 * never taken over while a transaction is merely slow), and takes over the
 * entries of senders that died (idle longer than the claim timeout). */
static void *keeper_main(void *arg)
{
    char err[128];
    pthread_setname_np(pthread_self(), "mg-keeper");
    struct queue *q = queue_open(dv.redis_url, err, sizeof(err));
    struct queue_inflight *v = calloc((size_t)dv.nworkers * DELIVER_INFLIGHT_MAX + 1, sizeof(*v));
    int period = (int)(dv.claim_timeout_ms / 6);
    if (period < 100)
        period = 100;
    while (q && v && !atomic_load(&dv.stop)) {
        int n = 0;
        for (int i = 0; i < dv.nworkers; i++) {
            struct worker *w = &dv.workers[i];
            pthread_mutex_lock(&w->mu);
            for (int k = 0; k < w->ninflight; k++)
                v[n++] = w->inflight[k];
            pthread_mutex_unlock(&w->mu);
        }
        queue_jobs_touch(q, v, n);
        pthread_mutex_lock(&dv.rmu);
        int room = DELIVER_RECLAIM_MAX - dv.nreclaimed;
        pthread_mutex_unlock(&dv.rmu);
        if (room > 0) {
            struct queue_job got[DELIVER_RECLAIM_MAX];
            int k = queue_jobs_reclaim(q, dv.keeper_consumer, dv.claim_timeout_ms, got, room);
            pthread_mutex_lock(&dv.rmu);
            for (int i = 0; i < k; i++)
                dv.reclaimed[dv.nreclaimed++] = got[i];
            pthread_mutex_unlock(&dv.rmu);
        }
        nap(period);
    }
    free(v);
    queue_close(q);
    return NULL;
}

static void *scheduler_main(void *arg)
{
    char err[128];
    pthread_setname_np(pthread_self(), "mg-schedule");
    struct queue *q = queue_open(dv.redis_url, err, sizeof(err));
    int backoff = 100;
    while (q && !atomic_load(&dv.stop)) {
        int moved = queue_schedule_due(q, util_now_ms(), 100);
        if (moved < 0) {
            nap(backoff);
            backoff = backoff * 2 > DELIVER_BACKOFF_MAX_MS ? DELIVER_BACKOFF_MAX_MS : backoff * 2;
            continue;
        }
        backoff = 100;
        if (moved < 100)
            nap(DELIVER_SCHEDULE_MS);
    }
    queue_close(q);
    return NULL;
}

int smtp_deliver_start(const struct smtp_deliver_config *c)
{
    char err[256];
    memset(&dv, 0, sizeof(dv));
    dv.redis_url = strdup(c->redis_url);
    dv.helo = strdup(c->helo);
    dv.nretry = c->nretry < 16 ? c->nretry : 16;
    memcpy(dv.retry_ms, c->retry_ms, sizeof(int64_t) * (size_t)dv.nretry);
    dv.max_age_ms = c->max_age_ms;
    smtp_timeouts_default(&dv.timeouts);
    if (c->timeouts && *c->timeouts && smtp_timeouts_parse(c->timeouts, &dv.timeouts, err, sizeof(err)) < 0) {
        log_kv(LOG_ERROR, "timeouts_invalid", "reason", err, NULL);
        return -1;
    }
    if (c->relays && *c->relays && smtp_relays_parse(c->relays, &dv.relays, &dv.nrelays, err, sizeof(err)) < 0) {
        log_kv(LOG_ERROR, "relays_invalid", "reason", err, NULL);
        return -1;
    }
    dv.rs = calloc(dv.nrelays ? dv.nrelays : 1, sizeof(*dv.rs));
    for (size_t i = 0; i < dv.nrelays; i++) {
        pthread_mutex_init(&dv.rs[i].mu, NULL);
        dv.rs[i].tokens = dv.relays[i].rate;
        dv.rs[i].refilled = util_mono_ms();
    }
    /* publish the pools for /metrics before any worker runs */
    size_t np = dv.nrelays < POOL_RELAYS_MAX ? dv.nrelays : POOL_RELAYS_MAX;
    for (size_t i = 0; i < np; i++) {
        util_strlcpy(pools.names[i], dv.relays[i].name, sizeof(pools.names[i]));
        pools.size[i] = dv.relays[i].pool < DELIVER_WORKERS_MAX ? dv.relays[i].pool : DELIVER_WORKERS_MAX;
    }
    atomic_store(&pools.nrelays, np);
    if (!dv.nrelays)
        log_kv(LOG_WARN, "no_relays", "reason", "MAILGATE_RELAYS is empty: messages will be deferred", NULL);
    /* Sessions write to sockets the relay may close: never die of SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    dv.claim_timeout_ms = c->claim_timeout_ms > 0 ? c->claim_timeout_ms : 30000;
    pthread_mutex_init(&dv.rmu, NULL);
    char host[64] = "host";
    gethostname(host, sizeof(host) - 1);
    snprintf(dv.keeper_consumer, sizeof(dv.keeper_consumer), "%s-%d-keeper", host, (int)getpid());
    dv.nworkers = dv.nrelays ? dv.relays[0].pool : 1;
    for (size_t i = 1; i < dv.nrelays; i++)
        if (dv.relays[i].pool > dv.nworkers)
            dv.nworkers = dv.relays[i].pool;
    if (dv.nworkers > DELIVER_WORKERS_MAX)
        dv.nworkers = DELIVER_WORKERS_MAX;
    dv.workers = calloc((size_t)dv.nworkers, sizeof(*dv.workers));
    for (int i = 0; i < dv.nworkers; i++) {
        dv.workers[i].index = i;
        dv.workers[i].sessions = calloc(dv.nrelays ? dv.nrelays : 1, sizeof(struct smtp_session *));
        dv.workers[i].last_used = calloc(dv.nrelays ? dv.nrelays : 1, sizeof(int64_t));
        pthread_mutex_init(&dv.workers[i].mu, NULL);
        pthread_create(&dv.workers[i].thread, NULL, worker_main, &dv.workers[i]);
    }
    dv.scheduler_started = pthread_create(&dv.scheduler, NULL, scheduler_main, NULL) == 0;
    dv.keeper_started = pthread_create(&dv.keeper, NULL, keeper_main, NULL) == 0;
    char nw[16];
    snprintf(nw, sizeof(nw), "%d", dv.nworkers);
    log_kv(LOG_INFO, "sender_started", "workers", nw, NULL);
    return 0;
}

int smtp_deliver_stop(int deadline_ms)
{
    atomic_store(&dv.stop, 1);
    atomic_store(&pools.nrelays, 0);
    struct timespec until = util_deadline(deadline_ms);
    int late = 0;
    for (int i = 0; i < dv.nworkers; i++) {
        if (pthread_timedjoin_np(dv.workers[i].thread, NULL, &until) != 0) {
            late++;
            continue;
        }
        free(dv.workers[i].sessions);
        free(dv.workers[i].last_used);
    }
    if (dv.scheduler_started && pthread_timedjoin_np(dv.scheduler, NULL, &until) != 0)
        late++;
    if (dv.keeper_started && pthread_timedjoin_np(dv.keeper, NULL, &until) != 0)
        late++;
    if (late) {
        /* Busy threads still use the state: leave it to process exit. */
        log_kv(LOG_WARN, "sender_stop_deadline", "reason",
               "transactions still running at the deadline; their jobs stay pending in Redis", NULL);
        return -1;
    }
    for (int i = 0; i < dv.nworkers; i++)
        pthread_mutex_destroy(&dv.workers[i].mu);
    free(dv.workers);
    for (int i = 0; i < dv.nreclaimed; i++)
        queue_job_free(&dv.reclaimed[i]); /* still pending: another sender takes them over */
    pthread_mutex_destroy(&dv.rmu);
    for (size_t i = 0; i < dv.nrelays; i++)
        pthread_mutex_destroy(&dv.rs[i].mu);
    free(dv.rs);
    smtp_relays_free(dv.relays, dv.nrelays);
    free(dv.redis_url);
    free(dv.helo);
    memset(&dv, 0, sizeof(dv));
    return 0;
}
