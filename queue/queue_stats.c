/*
 * queue_stats.c - queue depth and age, for /metrics and /readyz. One
 * pipelined round trip; every number is O(1) or O(log n) in Redis.
 */
#include "queue/queue_int.h"

#include <stdlib.h>
#include <string.h>

#include "common/util.h"

int queue_stats_get(struct queue *q, struct queue_stats *st)
{
    memset(st, 0, sizeof(*st));
    redisReply *t = q_cmd(q, "SMEMBERS " QUEUE_TENANTS);
    if (!t)
        return -1;
    struct q_pipe p;
    q_pipe_begin(&p, q);
    q_pipe_cmd(&p, "ZCARD " QUEUE_DELAYED);
    q_pipe_cmd(&p, "ZCARD " QUEUE_OPEN);
    q_pipe_cmd(&p, "ZRANGE " QUEUE_OPEN " 0 0 WITHSCORES");
    q_pipe_cmd(&p, "XLEN " QUEUE_DEAD);
    q_pipe_cmd(&p, "ZCARD " QUEUE_WH_DUE);
    /* a claimed delivery's score is its lease end, so it is not counted */
    q_pipe_cmd(&p, "ZCOUNT " QUEUE_WH_DUE " -inf %lld", (long long)util_now_ms());
    for (size_t i = 0; i < t->elements; i++) {
        q_pipe_cmd(&p, "XLEN " QUEUE_STREAM_PREFIX "%s", t->element[i]->str);
        q_pipe_cmd(&p, "XPENDING " QUEUE_STREAM_PREFIX "%s " QUEUE_GROUP, t->element[i]->str);
    }
    size_t nt = t->elements;
    freeReplyObject(t);
    redisReply **r = q_pipe_end(&p);
    if (!r)
        return -1;
    st->delayed = r[0]->type == REDIS_REPLY_INTEGER ? r[0]->integer : 0;
    st->open_messages = r[1]->type == REDIS_REPLY_INTEGER ? r[1]->integer : 0;
    if (r[2]->type == REDIS_REPLY_ARRAY && r[2]->elements == 2 && r[2]->element[1]->str)
        st->oldest_open_ms = atoll(r[2]->element[1]->str);
    st->dead = r[3]->type == REDIS_REPLY_INTEGER ? r[3]->integer : 0;
    st->wh_pending = r[4]->type == REDIS_REPLY_INTEGER ? r[4]->integer : 0;
    st->wh_due = r[5]->type == REDIS_REPLY_INTEGER ? r[5]->integer : 0;
    for (size_t i = 0; i < nt; i++) {
        redisReply *len = r[6 + 2 * i], *pend = r[7 + 2 * i];
        st->stream_len += len->type == REDIS_REPLY_INTEGER ? len->integer : 0;
        /* NOGROUP before the first sender saw the stream: count 0 */
        if (pend->type == REDIS_REPLY_ARRAY && pend->elements >= 1 && pend->element[0]->type == REDIS_REPLY_INTEGER)
            st->pending += pend->element[0]->integer;
    }
    q_replies_free(r, p.n);
    return 0;
}
