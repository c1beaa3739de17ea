/*
 * queue_idem.c - Idempotency-Key claims and stored answers.
 *
 * The claim is one Lua script: look the key up, and either claim it,
 * report a conflict or an in-progress first request, or return the stored
 * answer. A claim expires after QUEUE_IDEM_INFLIGHT_MS so a crashed
 * request does not lock its key for a day; a kept answer lives 24 h.
 */
#include "queue/queue_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

const char q_lua_idem[] =
    "local v = redis.call('HMGET', KEYS[1], 'state', 'hash', 'status', 'body')\n"
    "if not v[1] then\n"
    "  redis.call('HSET', KEYS[1], 'state', 'inflight', 'hash', ARGV[1])\n"
    "  redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
    "  return {0}\n"
    "end\n"
    "if v[2] ~= ARGV[1] then return {2} end\n"
    "if v[1] == 'inflight' then return {3} end\n"
    "return {1, v[3], v[4]}\n";

static void idem_key(char *out, size_t len, const char *tenant, const char *route, const char *key)
{
    char h[65];
    util_sha256_hex(key, strlen(key), h);
    snprintf(out, len, "mg:idem:%s:%s:%s", tenant, route, h);
}

int queue_idem_begin(struct queue *q, const char *tenant, const char *route, const char *key,
                     const char *body_sha256, int *status, char **body)
{
    char k[256];
    idem_key(k, sizeof(k), tenant, route, key);
    redisReply *r = q_script_cmd(q, q_lua_idem, "1 %s %s %lld", k, body_sha256, (long long)QUEUE_IDEM_INFLIGHT_MS);
    if (!r)
        return -1;
    int rc = -1;
    if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 && r->element[0]->type == REDIS_REPLY_INTEGER) {
        rc = (int)r->element[0]->integer;
        if (rc == QUEUE_IDEM_REPLAY) {
            if (r->elements == 3 && r->element[1]->str && r->element[2]->str) {
                *status = atoi(r->element[1]->str);
                *body = strdup(r->element[2]->str);
            } else {
                rc = QUEUE_IDEM_IN_PROGRESS;
            }
        }
    }
    freeReplyObject(r);
    return rc;
}

int queue_idem_finish(struct queue *q, const char *tenant, const char *route, const char *key,
                      int status, const char *body)
{
    char k[256];
    idem_key(k, sizeof(k), tenant, route, key);
    redisReply *r;
    if (status >= 200 && status < 300) {
        char st[8], ttl[24];
        snprintf(st, sizeof(st), "%d", status);
        snprintf(ttl, sizeof(ttl), "%lld", (long long)QUEUE_IDEM_TTL_MS);
        const char *argv[] = {"HSET", k, "state", "done", "status", st, "body", body ? body : ""};
        struct q_pipe p;
        q_pipe_begin(&p, q);
        q_pipe_cmdv(&p, 8, argv, NULL);
        q_pipe_cmd(&p, "PEXPIRE %s %s", k, ttl);
        redisReply **v = q_pipe_end(&p);
        int ok = v != NULL;
        q_replies_free(v, p.n);
        return ok ? 0 : -1;
    }
    r = q_cmd(q, "DEL %s", k);
    if (!r)
        return -1;
    freeReplyObject(r);
    return 0;
}
