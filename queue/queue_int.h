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
 * array) or NULL when any read failed (connection dropped). */
struct q_pipe {
    struct queue *q;
    int n;
    int err;
};
void q_pipe_begin(struct q_pipe *p, struct queue *q);
void q_pipe_cmd(struct q_pipe *p, const char *fmt, ...);
void q_pipe_cmdv(struct q_pipe *p, int argc, const char **argv, const size_t *lens);
redisReply **q_pipe_end(struct q_pipe *p);
void q_replies_free(redisReply **r, int n);

/* q_exec_ok - 1 when the last of n pipelined replies is an EXEC result in
 * which no command failed; r may be NULL (then 0). */
int q_exec_ok(redisReply **r, int n);

/* q_event_append - queue, on pipeline p (usually inside MULTI), the one
 * command (a Lua script, queue_events.c) that records an event everywhere
 * it lives: its body mg:event:{id}, the tenant's indexes (all, type,
 * recipient), the message's event list, the hourly stats and the webhook
 * feed, with the retention applied. Idempotent per event id: an event
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

/* q_message_json - the message as the API shows it, built from the replies
 * of HGETALL mg:msg:{id} (rec), HGETALL mg:msg:{id}:rcpt (rcpt) and, when
 * evs is not NULL, LRANGE mg:msg:{id}:events (then "events" is included).
 * NULL when the record is missing or names another tenant. Caller owns. */
json_t *q_message_json(const char *tenant, const char *id, const redisReply *rec, const redisReply *rcpt,
                       const redisReply *evs);

/* q_block_timeout - set the socket timeout for a blocking command. */
void q_set_timeout_ms(struct queue *q, int ms);

#endif
