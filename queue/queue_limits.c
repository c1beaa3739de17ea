/*
 * queue_limits.c - per-tenant rate (messages per second) and daily limits.
 *
 * Fixed windows: one counter per second and one per UTC day, each with a
 * TTL a little longer than its window, so nothing needs cleaning up. Both
 * are checked before either is taken, in one Lua script, so a request is
 * either counted in full or not at all.
 */
#include "queue/queue_int.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/util.h"

const char q_lua_limits[] =
    "local n = tonumber(ARGV[1])\n"
    "local rate, daily = tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "local s = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
    "local d = tonumber(redis.call('GET', KEYS[2]) or '0')\n"
    "if rate > 0 and s + n > rate then return {0, 0, s, d} end\n"
    "if daily > 0 and d + n > daily then return {0, 1, s, d} end\n"
    "if rate > 0 then redis.call('INCRBY', KEYS[1], n); redis.call('PEXPIRE', KEYS[1], 2000) end\n"
    "if daily > 0 then redis.call('INCRBY', KEYS[2], n); redis.call('PEXPIRE', KEYS[2], 90000000) end\n"
    "return {1, 0, s + n, d + n}\n";

int queue_limits_take(struct queue *q, const char *tenant, long rate, long daily, long n,
                      struct queue_limit_result *r)
{
    memset(r, 0, sizeof(*r));
    r->allowed = 1;
    r->limit = rate;
    if (rate <= 0 && daily <= 0)
        return 0;
    int64_t now = util_now_ms();
    time_t sec = (time_t)(now / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    char k1[128], k2[128];
    snprintf(k1, sizeof(k1), "mg:rl:%s:%lld", tenant, (long long)sec);
    snprintf(k2, sizeof(k2), "mg:daily:%s:%04d%02d%02d", tenant, tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
    redisReply *x = q_script_cmd(q, q_lua_limits, "2 %s %s %ld %ld %ld", k1, k2, n, rate, daily);
    if (!x)
        return -1;
    int ok = x->type == REDIS_REPLY_ARRAY && x->elements == 4;
    if (ok) {
        r->allowed = (int)x->element[0]->integer;
        r->daily = (int)x->element[1]->integer;
        long s = (long)x->element[2]->integer, d = (long)x->element[3]->integer;
        int64_t day_end = ((int64_t)sec / 86400 + 1) * 86400 * 1000;
        if (r->daily) {
            r->remaining = daily - d > 0 ? daily - d : 0;
            r->reset_ms = day_end;
        } else {
            r->remaining = rate > 0 ? (rate - s > 0 ? rate - s : 0) : (daily - d > 0 ? daily - d : 0);
            r->reset_ms = rate > 0 ? ((int64_t)sec + 1) * 1000 : day_end;
        }
    }
    freeReplyObject(x);
    return ok ? 0 : -1;
}
