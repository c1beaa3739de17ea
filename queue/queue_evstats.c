/*
 * queue_evstats.c - GET /v1/stats: event counts per hour or day, and the
 * rates derived from them.
 *
 * The counts are kept at write time by the event script (queue_events.c):
 * one hash per tenant and UTC day, mg:stats:{t}:{day ms}, with a field
 * "{HH}:{counter}" per hour and counter, and the same per tag. A counter is
 * the event type, or for opens and clicks "opened" (a person),
 * "opened_machine" (a privacy proxy's prefetch, a link scanner) and
 * "opened_unique" (a person's first open of that message); the same for
 * "clicked". A query reads one hash per day it covers, in one round trip
 * (at most QUEUE_STATS_DAYS_MAX + 1 hashes of at most 24 x 13 fields), so
 * its cost does not depend on how many events there were.
 *
 * Rates (the README explains them for users) use unique human counts:
 * a bot's prefetch is not a reader, and one person opening a mail five
 * times is one open.
 */
#include "queue/queue_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

#define Q_DAY_MS 86400000LL
#define Q_HOUR_MS 3600000LL

/* Every bucket shows these counters, 0 when nothing was counted. */
static const char *const counters[] = {
    "queued",  "delivered",     "deferred",       "bounced", "suppressed",    "cancelled",      "opened",
    "opened_unique", "opened_machine", "clicked", "clicked_unique", "clicked_machine", "unsubscribed", NULL,
};

static double ratio(long long num, long long den)
{
    if (den <= 0)
        return 0.0;
    return round((double)num / (double)den * 10000.0) / 10000.0;
}

void queue_stats_rates(long long delivered, long long bounced, long long opened_unique, long long clicked_unique,
                       struct queue_rates *r)
{
    r->delivery = ratio(delivered, delivered + bounced);
    r->bounce = ratio(bounced, delivered + bounced);
    r->open = ratio(opened_unique, delivered);
    r->click = ratio(clicked_unique, delivered);
    r->click_to_open = ratio(clicked_unique, opened_unique);
}

long queue_stats_span(int64_t since_ms, int64_t until_ms, int64_t step_ms, int64_t *start)
{
    if (since_ms < 0)
        since_ms = 0;
    *start = since_ms - since_ms % step_ms;
    if (until_ms <= since_ms)
        return 0;
    return (long)((until_ms - *start + step_ms - 1) / step_ms);
}

static json_t *counts_new(void)
{
    json_t *o = json_object();
    for (int i = 0; counters[i]; i++)
        json_object_set_new(o, counters[i], json_integer(0));
    return o;
}

static void counts_add(json_t *o, const char *name, long long n)
{
    json_t *v = json_object_get(o, name);
    json_object_set_new(o, name, json_integer((v ? json_integer_value(v) : 0) + n));
}

static json_t *rates_json(json_t *counts)
{
#define C(name) (long long)json_integer_value(json_object_get(counts, name))
    struct queue_rates r;
    queue_stats_rates(C("delivered"), C("bounced"), C("opened_unique"), C("clicked_unique"), &r);
#undef C
    return json_pack("{s:f, s:f, s:f, s:f, s:f}", "delivery", r.delivery, "bounce", r.bounce, "open", r.open, "click",
                     r.click, "click_to_open", r.click_to_open);
}

int queue_stats_query(struct queue *q, const char *tenant, const char *tag, int64_t since_ms, int64_t until_ms,
                      int64_t step_ms, json_t **out)
{
    int64_t start;
    long nb = queue_stats_span(since_ms, until_ms, step_ms, &start);
    int64_t end = start + nb * step_ms;
    int64_t first_day = start - start % Q_DAY_MS;
    long ndays = nb ? (long)((end - 1 - first_day) / Q_DAY_MS + 1) : 0;
    json_t **buckets = calloc(nb ? (size_t)nb : 1, sizeof(*buckets));
    for (long i = 0; i < nb; i++)
        buckets[i] = counts_new();
    struct q_pipe p;
    q_pipe_begin(&p, q);
    for (long d = 0; d < ndays; d++) {
        long long day = (long long)(first_day + d * Q_DAY_MS);
        if (tag)
            q_pipe_cmd(&p, "HGETALL mg:stats:%s:%lld:tag:%s", tenant, day, tag);
        else
            q_pipe_cmd(&p, "HGETALL mg:stats:%s:%lld", tenant, day);
    }
    redisReply **r = ndays ? q_pipe_end(&p) : NULL;
    if (ndays && !r) {
        for (long i = 0; i < nb; i++)
            json_decref(buckets[i]);
        free(buckets);
        return -1;
    }
    json_t *total = counts_new();
    for (long d = 0; d < ndays; d++) {
        const redisReply *h = r[d];
        for (size_t k = 0; h->type == REDIS_REPLY_ARRAY && k + 1 < h->elements; k += 2) {
            const char *f = h->element[k]->str;
            /* "HH:counter" */
            if (!f || strlen(f) < 4 || f[2] != ':' || f[0] < '0' || f[0] > '2' || f[1] < '0' || f[1] > '9')
                continue;
            int64_t at = first_day + d * Q_DAY_MS + ((f[0] - '0') * 10 + (f[1] - '0')) * Q_HOUR_MS;
            if (at < start || at >= end)
                continue;
            long long n = h->element[k + 1]->str ? atoll(h->element[k + 1]->str) : 0;
            counts_add(buckets[(at - start) / step_ms], f + 3, n);
            counts_add(total, f + 3, n);
        }
    }
    if (r)
        q_replies_free(r, p.n);
    json_t *data = json_array();
    for (long i = 0; i < nb; i++) {
        char ts[40];
        json_array_append_new(data, json_pack("{s:s, s:o, s:o}", "start",
                                              util_rfc3339(start + i * step_ms, ts, sizeof(ts)), "counts",
                                              buckets[i], "rates", rates_json(buckets[i])));
    }
    free(buckets);
    *out = json_pack("{s:s, s:o, s:{s:o, s:o}}", "interval", step_ms == Q_DAY_MS ? "day" : "hour", "data", data,
                     "totals", "counts", total, "rates", rates_json(total));
    return 0;
}
