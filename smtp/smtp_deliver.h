/*
 * smtp_deliver.h - the delivery agent (the "sender" role): worker threads
 * that drain the job stream through persistent SMTP sessions, and the
 * scheduler that brings delayed retries back when they fall due.
 */
#ifndef MG_SMTP_DELIVER_H
#define MG_SMTP_DELIVER_H

#include <stdint.h>

/* Settings, copied by smtp_deliver_start. */
struct smtp_deliver_config {
    const char *redis_url;
    const char *relays;          /* MAILGATE_RELAYS */
    const char *helo;            /* EHLO name */
    const int64_t *retry_ms;     /* back-off steps in ms; the last repeats */
    int nretry;
    int64_t max_age_ms;          /* retry no longer than this after acceptance */
};

/* smtp_deliver_start - start one worker per pool connection of the first
 * relay (each a consumer in group "senders") and the retry scheduler.
 * Returns 0, or -1 when the relays cannot be parsed (logged). */
int smtp_deliver_start(const struct smtp_deliver_config *c);

/* smtp_deliver_stop - ask the workers to stop after their current
 * transaction, wait for them, send QUIT on every session. */
void smtp_deliver_stop(void);

#endif
