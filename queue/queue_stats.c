/*
 * queue_stats.c - queue depth and age, for /metrics and /readyz. One
 * pipelined round trip; every number is O(1) or O(log n) in Redis.
 */
#include "queue/queue_int.h"

#include <stdlib.h>
#include <string.h>

int queue_stats_get(struct queue *q, struct queue_stats *st)
{
    memset(st, 0, sizeof(*st));
    struct q_pipe p;
    q_pipe_begin(&p, q);
    q_pipe_cmd(&p, "XLEN " QUEUE_STREAM);
    q_pipe_cmd(&p, "XPENDING " QUEUE_STREAM " " QUEUE_GROUP);
    q_pipe_cmd(&p, "ZCARD " QUEUE_DELAYED);
    q_pipe_cmd(&p, "ZCARD " QUEUE_OPEN);
    q_pipe_cmd(&p, "ZRANGE " QUEUE_OPEN " 0 0 WITHSCORES");
    redisReply **r = q_pipe_end(&p);
    if (!r)
        return -1;
    st->stream_len = r[0]->type == REDIS_REPLY_INTEGER ? r[0]->integer : 0;
    /* XPENDING fails with NOGROUP before the first sender ran: count 0. */
    if (r[1]->type == REDIS_REPLY_ARRAY && r[1]->elements >= 1 && r[1]->element[0]->type == REDIS_REPLY_INTEGER)
        st->pending = r[1]->element[0]->integer;
    st->delayed = r[2]->type == REDIS_REPLY_INTEGER ? r[2]->integer : 0;
    st->open_messages = r[3]->type == REDIS_REPLY_INTEGER ? r[3]->integer : 0;
    if (r[4]->type == REDIS_REPLY_ARRAY && r[4]->elements == 2 && r[4]->element[1]->str)
        st->oldest_open_ms = atoll(r[4]->element[1]->str);
    q_replies_free(r, p.n);
    return 0;
}
