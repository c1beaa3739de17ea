/*
 * gw_supp.c - the suppression list API: GET, POST /v1/suppressions and
 * DELETE /v1/suppressions/{email}. Tenant-scoped like everything else.
 */
#include "gateway/gw.h"

#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "templates/mime.h"

static void redis_down(struct gw_resp *resp)
{
    gw_error(resp, 503, "unavailable", NULL, "the queue store (Redis) is unavailable");
    util_strlcpy(resp->retry_after, "5", sizeof(resp->retry_after));
}

void gw_supp_list(struct gw_req *req, struct gw_resp *resp)
{
    int limit = 100;
    const char *l = gw_query(req, "limit");
    if (l) {
        char *end;
        long v = strtol(l, &end, 10);
        if (*end || v < 1 || v > 1000) {
            gw_error(resp, 422, "validation_error", "limit", "limit must be a whole number from 1 to 1000");
            return;
        }
        limit = (int)v;
    }
    json_t *out;
    int rc = queue_supp_list(req->q, req->key.tenant, gw_query(req, "cursor"), limit, &out);
    if (rc < 0)
        redis_down(resp);
    else if (rc > 0)
        gw_error(resp, 422, "validation_error", "cursor", "cursor is not one this API returned");
    else {
        resp->status = 200;
        resp->body = out;
    }
}

void gw_supp_add(struct gw_req *req, struct gw_resp *resp)
{
    json_error_t jerr;
    json_t *o = json_loadb(req->body, req->bodylen, 0, &jerr);
    if (!o) {
        gw_error(resp, 400, "invalid_json", NULL, "body is not valid JSON: %s", jerr.text);
        return;
    }
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        if (strcmp(k, "email") && strcmp(k, "reason")) {
            gw_error(resp, 422, "validation_error", k, "%.100s is not a known field (email, reason)", k);
            json_decref(o);
            return;
        }
    }
    const char *email = json_string_value(json_object_get(o, "email"));
    json_t *rv = json_object_get(o, "reason");
    const char *reason = json_string_value(rv);
    char err[256];
    if (!email || mime_addr_check_email(email, err, sizeof(err)) < 0) {
        gw_error(resp, 422, "validation_error", "email", "email must be a valid address%s%s",
                 email ? ": " : "", email ? err : "");
    } else if ((rv && !json_is_null(rv) && !reason) || (reason && (strlen(reason) > 200 || util_has_crlf(reason)))) {
        gw_error(resp, 422, "validation_error", "reason", "reason must be a string of at most 200 characters");
    } else {
        json_t *rec;
        if (queue_supp_add(req->q, req->key.tenant, email, reason ? reason : "manual", &rec) < 0) {
            redis_down(resp);
        } else {
            resp->status = 201;
            resp->body = rec;
        }
    }
    json_decref(o);
}

void gw_supp_delete(struct gw_req *req, struct gw_resp *resp, const char *email)
{
    int rc = queue_supp_remove(req->q, req->key.tenant, email);
    if (rc < 0)
        redis_down(resp);
    else if (rc > 0)
        gw_error(resp, 404, "not_found", NULL, "that address is not suppressed");
    else
        resp->status = 204;
}
