/*
 * smtp_deliver.h - the delivery agent (the "sender" role): worker threads
 * that drain the job stream through persistent SMTP sessions, and the
 * scheduler that brings delayed retries back when they fall due.
 */
#ifndef MG_SMTP_DELIVER_H
#define MG_SMTP_DELIVER_H

#include <stddef.h>
#include <stdint.h>

/* Settings, copied by smtp_deliver_start. */
struct smtp_deliver_config {
    const char *redis_url;
    const char *relays;          /* MAILGATE_RELAYS */
    const char *helo;            /* EHLO name */
    const int64_t *retry_ms;     /* back-off steps in ms; the last repeats */
    int nretry;
    int64_t max_age_ms;          /* retry no longer than this after acceptance */
    int64_t claim_timeout_ms;    /* MAILGATE_CLAIM_TIMEOUT: an entry idle this long
                                    belonged to a dead sender and is taken over */
    const char *timeouts;        /* MAILGATE_SMTP_TIMEOUTS ("greeting=5m,dot=10m,...") or NULL */
};

/* smtp_deliver_start - start one worker per pool connection of the first
 * relay (each a consumer in group "senders") and the retry scheduler.
 * Returns 0, or -1 when the relays cannot be parsed (logged). */
int smtp_deliver_start(const struct smtp_deliver_config *c);

/* smtp_deliver_stop - ask the workers to stop after their current
 * transaction, wait up to deadline_ms for them, send QUIT on every
 * session. Returns 0, or -1 when some worker was still busy at the
 * deadline: its job stays pending in Redis and is delivered by another
 * sender (or this one after a restart); nothing is lost. */
int smtp_deliver_stop(int deadline_ms);

/* Process-wide delivery counters, for /metrics. */
struct smtp_deliver_counters {
    unsigned long long delivered, deferred, bounced, attempts;
    unsigned long long connections, connect_failures;
};

/* smtp_deliver_counters_get - a snapshot of the counters (all zero when
 * the sender role is not running). */
void smtp_deliver_counters_get(struct smtp_deliver_counters *out);

struct hist; /* common/hist.h */

/* smtp_deliver_hists - this process's latency histograms (static, never
 * freed; the caller only reads them): *txn, seconds per smtp_session_send
 * (one SMTP transaction, connection set-up excluded); *accepted_delivered,
 * seconds from a message's acceptance (created_at) to each recipient's
 * "delivered" outcome. */
void smtp_deliver_hists(const struct hist **txn, const struct hist **accepted_delivered);

#define SMTP_DELIVER_POOL_NAME_MAX 64 /* bytes of a relay name kept for /metrics */

/* One relay's connection pool, as /metrics shows it. */
struct smtp_deliver_pool {
    char relay[SMTP_DELIVER_POOL_NAME_MAX]; /* the relay's name= (possibly cut) */
    int size;                               /* pool=: connections allowed */
    int open;                               /* sessions connected now */
    int busy;                               /* of those, in a transaction now */
};

/* smtp_deliver_pools - the pools of the running sender, in relay order,
 * into out[0..max). Returns how many were written (0 when the sender role
 * is not running). Lock-free: each worker publishes its sessions' states
 * in atomics, so the numbers are a moment's view, not a transaction's. */
size_t smtp_deliver_pools(struct smtp_deliver_pool *out, size_t max);

#endif
