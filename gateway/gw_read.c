/*
 * gw_read.c - read-back routes: GET /v1/messages/{id}, GET /v1/messages,
 * GET /v1/events, GET /v1/stats. Every query is scoped to the key's tenant;
 * another tenant's id answers 404 exactly like an unknown one.
 *
 * Query parameters are checked here (422 naming the parameter); the
 * queue layer only ever sees valid filters, and answers 1 for a cursor it
 * did not make (422 "cursor").
 */
#include "gateway/gw.h"

#include <stdlib.h>
#include <string.h>

#include "common/util.h"

#define GW_FILTER_MAX 1024 /* bytes of a recipient or tag filter (a tag is up to 256 characters) */
#define GW_STATS_DEFAULT_MS (7LL * 86400000) /* /v1/stats without since: the last 7 days */

static int id_ok(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > 64)
        return 0;
    for (const char *p = id; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
              *p == '_' || *p == '-'))
            return 0;
    return 1;
}

void gw_get_message(struct gw_req *req, struct gw_resp *resp, const char *id)
{
    if (!id_ok(id)) {
        gw_error(resp, 404, "not_found", NULL, "no such message");
        return;
    }
    json_t *m;
    int rc = queue_message_get(req->q, req->key.tenant, id, &m);
    if (rc < 0) {
        gw_error(resp, 503, "unavailable", NULL, "the queue store (Redis) is unavailable");
        util_strlcpy(resp->retry_after, "5", sizeof(resp->retry_after));
    } else if (rc > 0) {
        gw_error(resp, 404, "not_found", NULL, "no such message");
    } else {
        resp->status = 200;
        resp->body = m;
    }
}

/* parse_query - the common list parameters. 0, or -1 with resp set. */
static int parse_query(struct gw_req *req, struct gw_resp *resp, struct queue_query *qq)
{
    memset(qq, 0, sizeof(*qq));
    qq->limit = 100;
    const char *v = gw_query(req, "limit");
    if (v) {
        char *end;
        long l = strtol(v, &end, 10);
        if (*end || l < 1 || l > 1000) {
            gw_error(resp, 422, "validation_error", "limit", "limit must be a whole number from 1 to 1000");
            return -1;
        }
        qq->limit = (int)l;
    }
    static const char *const times[] = {"since", "until"};
    for (int i = 0; i < 2; i++) {
        v = gw_query(req, times[i]);
        int64_t *dst = i ? &qq->until_ms : &qq->since_ms;
        if (v && util_parse_rfc3339(v, dst) < 0) {
            gw_error(resp, 422, "validation_error", times[i], "%s must be an RFC 3339 date-time", times[i]);
            return -1;
        }
    }
    qq->type = gw_query(req, "type");
    qq->message_id = gw_query(req, "message_id");
    qq->recipient = gw_query(req, "recipient");
    qq->status = gw_query(req, "status");
    qq->tag = gw_query(req, "tag");
    qq->cursor = gw_query(req, "cursor");
    if (qq->type && !queue_event_type_ok(qq->type)) {
        gw_error(resp, 422, "validation_error", "type",
                 "type must be one of queued, delivered, deferred, bounced, suppressed, cancelled, opened, "
                 "clicked, unsubscribed");
        return -1;
    }
    if (qq->status && !queue_message_status_ok(qq->status)) {
        gw_error(resp, 422, "validation_error", "status",
                 "status must be one of queued, scheduled, sending, delivered, partially_delivered, bounced, "
                 "suppressed, cancelled");
        return -1;
    }
    static const char *const texts[] = {"recipient", "tag"};
    for (int i = 0; i < 2; i++) {
        v = gw_query(req, texts[i]);
        if (v && (!*v || strlen(v) > GW_FILTER_MAX || !util_utf8_valid(v, strlen(v)))) {
            gw_error(resp, 422, "validation_error", texts[i], "%s must be 1 to %d bytes of UTF-8", texts[i],
                     GW_FILTER_MAX);
            return -1;
        }
    }
    if (qq->cursor && strlen(qq->cursor) >= QUEUE_CURSOR_MAX) {
        gw_error(resp, 422, "validation_error", "cursor", "cursor is not one this API returned");
        return -1;
    }
    return 0;
}

static void answer(struct gw_resp *resp, int rc, json_t *out)
{
    if (rc < 0) {
        gw_error(resp, 503, "unavailable", NULL, "the queue store (Redis) is unavailable");
        util_strlcpy(resp->retry_after, "5", sizeof(resp->retry_after));
    } else if (rc > 0) {
        gw_error(resp, 422, "validation_error", "cursor", "cursor is not one this API returned");
    } else {
        resp->status = 200;
        resp->body = out;
    }
}

void gw_list_events(struct gw_req *req, struct gw_resp *resp)
{
    struct queue_query qq;
    if (parse_query(req, resp, &qq) < 0)
        return;
    if (qq.message_id && !id_ok(qq.message_id)) {
        resp->status = 200;
        resp->body = json_pack("{s:[], s:n}", "data", "next_cursor");
        return;
    }
    json_t *out = NULL;
    int rc = queue_events_query(req->q, req->key.tenant, &qq, &out);
    answer(resp, rc, out);
}

void gw_list_messages(struct gw_req *req, struct gw_resp *resp)
{
    struct queue_query qq;
    if (parse_query(req, resp, &qq) < 0)
        return;
    json_t *out = NULL;
    int rc = queue_messages_query(req->q, req->key.tenant, &qq, &out);
    answer(resp, rc, out);
}

/* GET /v1/stats?since=&until=&interval=hour|day&tag= : until defaults to
 * now and since to 7 days before until; buckets are whole UTC hours or
 * days (since rounds down, until up), at most QUEUE_STATS_HOURS_MAX or
 * QUEUE_STATS_DAYS_MAX of them. */
void gw_stats(struct gw_req *req, struct gw_resp *resp)
{
    const char *interval = gw_query(req, "interval");
    int64_t step;
    long max;
    if (!interval || !strcmp(interval, "day")) {
        step = 86400000;
        max = QUEUE_STATS_DAYS_MAX;
    } else if (!strcmp(interval, "hour")) {
        step = 3600000;
        max = QUEUE_STATS_HOURS_MAX;
    } else {
        gw_error(resp, 422, "validation_error", "interval", "interval must be hour or day");
        return;
    }
    int64_t since = 0, until = util_now_ms();
    const char *v = gw_query(req, "until");
    if (v && util_parse_rfc3339(v, &until) < 0) {
        gw_error(resp, 422, "validation_error", "until", "until must be an RFC 3339 date-time");
        return;
    }
    v = gw_query(req, "since");
    if (v && util_parse_rfc3339(v, &since) < 0) {
        gw_error(resp, 422, "validation_error", "since", "since must be an RFC 3339 date-time");
        return;
    }
    if (!v)
        since = until - GW_STATS_DEFAULT_MS;
    if (since < 0 || until <= since) {
        gw_error(resp, 422, "validation_error", "until", "until must be later than since (and since after 1970)");
        return;
    }
    int64_t start;
    if (queue_stats_span(since, until, step, &start) > max) {
        gw_error(resp, 422, "validation_error", "since", "at most %ld %ss per query", max,
                 step == 3600000 ? "hour" : "day");
        return;
    }
    const char *tag = gw_query(req, "tag");
    if (tag && (!*tag || strlen(tag) > GW_FILTER_MAX || !util_utf8_valid(tag, strlen(tag)))) {
        gw_error(resp, 422, "validation_error", "tag", "tag must be 1 to %d bytes of UTF-8", GW_FILTER_MAX);
        return;
    }
    json_t *out = NULL;
    int rc = queue_stats_query(req->q, req->key.tenant, tag, since, until, step, &out);
    answer(resp, rc, out);
}

void gw_cancel_message(struct gw_req *req, struct gw_resp *resp, const char *id)
{
    int rc = id_ok(id) ? queue_message_cancel(req->q, req->key.tenant, id) : 1;
    if (rc < 0) {
        gw_error(resp, 503, "unavailable", NULL, "the queue store (Redis) is unavailable");
        util_strlcpy(resp->retry_after, "5", sizeof(resp->retry_after));
    } else if (rc == 1) {
        gw_error(resp, 404, "not_found", NULL, "no such message");
    } else if (rc == 2) {
        gw_error(resp, 409, "not_cancellable", NULL, "only a message that is still scheduled can be cancelled");
    } else {
        resp->status = 204;
    }
}
