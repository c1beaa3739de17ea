/*
 * gw_read.c - read-back routes: GET /v1/messages/{id}, GET /v1/messages,
 * GET /v1/events. Every query is scoped to the key's tenant; another
 * tenant's id answers 404 exactly like an unknown one.
 */
#include "gateway/gw.h"

#include <stdlib.h>
#include <string.h>

#include "common/util.h"

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
