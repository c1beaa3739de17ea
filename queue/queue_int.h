/*
 * queue_int.h - private to queue/: the connection and reply helpers the
 * queue_*.c files share. Nothing outside queue/ includes this.
 */
#ifndef MG_QUEUE_INT_H
#define MG_QUEUE_INT_H

#include <hiredis/hiredis.h>

#include "queue/queue.h"

/* One Redis connection and what is needed to re-make it. */
struct queue {
    char *host;
    int port;
    char *path;       /* unix socket, or NULL */
    char *master;     /* Sentinel: the master's name, or NULL (host/port then name
                         the first sentinel; the others are in sentinels) */
    char *sentinels;  /* Sentinel: "host:port,host:port,..." */
    char *password;
    int db;
    redisContext *c;
    int timeout_ms;   /* current socket timeout */
    int pending_checked; /* queue_jobs_read has re-read this consumer's pending entries */
    char **tenants;      /* cached members of mg:jobtenants (groups ensured) */
    int ntenants;
    int64_t tenants_at;  /* mono ms of the last refresh */
    unsigned rr;         /* round-robin offset into tenants */
};

/* q_ctx - the live connection, (re)connecting when needed; NULL when Redis
 * is unreachable. */
redisContext *q_ctx(struct queue *q);

/* q_drop - forget a broken connection; the next q_ctx reconnects. */
void q_drop(struct queue *q);

/* q_cmd - run one command (argv form). Returns the reply (caller frees with
 * freeReplyObject) or NULL on I/O error or an error reply (logged). */
redisReply *q_cmdv(struct queue *q, int argc, const char **argv, const size_t *lens);

/* q_cmd - printf-style command; as q_cmdv. */
redisReply *q_cmd(struct queue *q, const char *fmt, ...);

/* q_pipe_* - a pipeline: append commands, then read exactly as many replies.
 * q_pipe_end returns the replies (array of n, caller frees each and the
 * array) or NULL when any read failed (connection dropped). A pipeline
 * that was begun must be ended (q_pipe_end frees what q_pipe_script
 * keeps). MULTI and EXEC are noticed as they are queued (q_pipe_cmd with
 * the bare word), so that a script command inside a transaction can be
 * repaired after a SCRIPT FLUSH (queue_redis.c, pipe_repair). */
struct q_pipe_script;
struct q_pipe {
    struct queue *q;
    int n;
    int err;
    int multi;                 /* place of the open MULTI, or -1 */
    struct q_pipe_script *scr; /* script commands queued (owned until q_pipe_end) */
    int nscr, capscr;
};
void q_pipe_begin(struct q_pipe *p, struct queue *q);
void q_pipe_cmd(struct q_pipe *p, const char *fmt, ...);
void q_pipe_cmdv(struct q_pipe *p, int argc, const char **argv, const size_t *lens);
redisReply **q_pipe_end(struct q_pipe *p);
void q_replies_free(redisReply **r, int n);

/* ---- Lua scripts (queue_redis.c) ----------------------------------------
 * A script is named by its text, a static string (the pointer identifies
 * it; its SHA1 is computed once per process), and called with EVALSHA.
 * Every new connection loads the scripts below, and any other script once
 * used, before its first command; a NOSCRIPT answer (an operator's SCRIPT
 * FLUSH) is handled where it happens (queue_redis.c). argv/fmt give what
 * follows the script: numkeys, the keys, the arguments. */
extern const char q_lua_event[], q_lua_status[], q_lua_msg_events[], q_lua_open_ids[]; /* queue_events.c */
extern const char q_lua_wh_create[], q_lua_wh_fanout[], q_lua_wh_claim[], q_lua_wh_finish[]; /* queue_webhooks.c */
extern const char q_lua_idem[], q_lua_limits[], q_lua_tmpl_put[]; /* queue_idem.c, queue_limits.c, queue_tmpl.c */

/* q_script_cmd - run script with printf-style (hiredis) arguments; as
 * q_cmd. After NOSCRIPT the scripts are loaded again and the call is
 * repeated once. */
redisReply *q_script_cmd(struct queue *q, const char *script, const char *fmt, ...);

/* q_script_cmdv - the same with an argv (lens NULL: strlen). */
redisReply *q_script_cmdv(struct queue *q, const char *script, int argc, const char **argv, const size_t *lens);

/* q_pipe_script - queue script on p (lens NULL: strlen); one reply. */
void q_pipe_script(struct q_pipe *p, const char *script, int argc, const char **argv, const size_t *lens);

/* q_exec_ok - 1 when the last of n pipelined replies is an EXEC result in
 * which no command failed; r may be NULL (then 0). */
int q_exec_ok(redisReply **r, int n);

/* q_event_append - queue, on pipeline p (usually inside MULTI), the one
 * command (a Lua script, queue_events.c) that records an event everywhere
 * it lives: its body mg:event:{id} (the one copy of the JSON), its id in
 * the tenant's indexes (all, type, recipient), in the message's event list
 * and in the webhook feed (when the tenant has a webhook), and the hourly
 * stats, with the retention applied. Idempotent per event id: an event
 * recorded before (a replayed transaction) is not recorded again. When the
 * message record no longer exists (retention) nothing is written under the
 * message's keys. ev (borrowed) must have "id" and "type"; ev_s is its
 * compact JSON, stored as is. Queues exactly one command on p. */
void q_event_append(struct q_pipe *p, const char *tenant, const char *msg_id, json_t *ev, const char *ev_s);

/* q_msg_index - queue on p the read-side indexes of a new message (all,
 * per tag, per recipient), TTLs that outlive a scheduled send, and its
 * status index (q_msg_reindex). After the recipients are written. */
void q_msg_index(struct q_pipe *p, const struct queue_new_message *m);

/* q_msg_reindex - queue on p (after the recipients' statuses are written)
 * the script that re-derives the message status and moves the message to
 * that status's index. One command. */
void q_msg_reindex(struct q_pipe *p, const char *tenant, const char *msg_id);

/* q_pipe_msg_events - queue on p the read of message msg_id's events
 * (its first max, or all when max <= 0), oldest first, as one script: the
 * reply is an array of event JSON, nil for an event whose body expired.
 * Reads lists written by an older version (JSON instead of ids) too. */
void q_pipe_msg_events(struct q_pipe *p, const char *msg_id, int max);

/* q_message_json - the message as the API shows it, built from the replies
 * of HGETALL mg:msg:{id} (rec), HGETALL mg:msg:{id}:rcpt (rcpt) and, when
 * evs is not NULL, q_pipe_msg_events (then "events" is included; nil
 * items are left out). NULL when the record is missing or names another
 * tenant. Caller owns. */
json_t *q_message_json(const char *tenant, const char *id, const redisReply *rec, const redisReply *rcpt,
                       const redisReply *evs);

/* q_block_timeout - set the socket timeout for a blocking command. */
void q_set_timeout_ms(struct queue *q, int ms);

/* ---- the key and tenant cache (queue_cache.c) --------------------------
 * Used by queue_key_check and queue_tenant_get. A lookup that misses takes
 * the generation (q_cache_gen) before it reads Redis and passes it to the
 * put, which stores the entry only when no flush or invalidation of a
 * cached name happened in between: a fill racing an invalidation is never
 * trusted. Everything is bypassed (gen 0, every get a miss) while the
 * invalidation subscriber is not connected. Thread-safe. */

/* What queue_key_check needs of mg:key:{id} (never the key itself). */
struct q_cached_key {
    char hash[65];                       /* SHA-256 hex of the key, as stored */
    char tenant[QUEUE_TENANT_MAX + 1];
    char scopes[128];
    int test;
};

/* q_cache_gen - the generation to pass to a put after the Redis read, or
 * 0 when the cache is not in use (then do not put). */
uint64_t q_cache_gen(void);

/* q_cache_key_get - the cached record of key id into *out: 0, or 1 when
 * not cached (or the cache is not in use). */
int q_cache_key_get(const char *id, struct q_cached_key *out);

/* q_cache_key_put - cache *k (copied) for id, read from Redis under gen. */
void q_cache_key_put(uint64_t gen, const char *id, const struct q_cached_key *k);

/* q_cache_tenant_get - a copy of tenant's cached settings into *out
 * (caller frees): 0, or 1 when not cached. */
int q_cache_tenant_get(const char *tenant, json_t **out);

/* q_cache_tenant_put - cache a copy of settings (borrowed) for tenant,
 * read from Redis under gen. */
void q_cache_tenant_put(uint64_t gen, const char *tenant, const json_t *settings);

/* q_supp_lower - the key of an address in mg:supp:{t}: lower-cased, cut at
 * Q_SUPP_EMAIL_MAX bytes (out holds Q_SUPP_EMAIL_MAX + 1). queue_supp.c. */
#define Q_SUPP_EMAIL_MAX 320
void q_supp_lower(const char *email, char *out, size_t len);

#endif
