/*
 * gw_compat_resend.c - the Resend-compatible surface: POST /emails,
 * POST /emails/batch and GET /emails/{id}, with Authorization: Bearer
 * <mailgate key>; Idempotency-Key is honoured by the route table as on
 * /v1 (same store, scoped to the tenant and the route).
 *
 * A Resend email maps onto a mailgate message almost field for field
 * (to, cc, bcc and reply_to as a string or an array); tags [{name, value}]
 * become mailgate tags "name:value" and metadata {name: value};
 * scheduled_at (ISO 8601) becomes send_at; template {id, variables}
 * becomes template and data. Fields mailgate has no use for (topic_id,
 * ...) are ignored.
 * Answers: 200 {id}; batch 200 {data: [{id}, ...]} (x-batch-validation
 * "strict", the default, checks every email before queueing any;
 * "permissive" sends the good ones and lists the others in errors[]).
 * Errors {statusCode, message, name} with Resend's names and statuses.
 * Limits: GW_BATCH_MAX emails per batch; all others are the send's.
 */
#include "gateway/gw.h"

#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/util.h"

static void rs_error(struct gw_resp *resp, int status, const char *name, const char *msg)
{
    json_decref(resp->body);
    resp->body = json_pack("{s:i, s:s, s:s}", "statusCode", status, "message", msg, "name", name);
    resp->status = status;
}

void gw_rs_shape(struct gw_req *req, struct gw_resp *resp)
{
    const char *type, *msg, *field;
    if (!gw_compat_error(resp, &type, &msg, &field))
        return;
    char m[700];
    if (*field && !strstr(msg, field))
        snprintf(m, sizeof(m), "%s: %s", field, msg);
    else
        snprintf(m, sizeof(m), "%s", msg);
    switch (resp->status) {
    case 401:
        if (!MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Authorization"))
            rs_error(resp, 401, "missing_api_key",
                     "Missing API key in the authorization header. Include the following header "
                     "Authorization: Bearer YOUR_API_KEY in the request.");
        else
            rs_error(resp, 403, "invalid_api_key", "API key is invalid");
        return;
    case 403:
        rs_error(resp, 401, "restricted_api_key", m);
        return;
    case 404:
        rs_error(resp, 404, "not_found", m);
        return;
    case 405:
        rs_error(resp, 405, "method_not_allowed", m);
        return;
    case 409:
        rs_error(resp, 409, !strcmp(type, "idempotency_in_progress") ? "concurrent_idempotent_requests"
                                                                      : "invalid_idempotent_request", m);
        return;
    case 429:
        rs_error(resp, 429, "rate_limit_exceeded", m);
        return;
    case 400:
    case 413:
    case 415:
        rs_error(resp, resp->status, "validation_error", m);
        return;
    case 422:
        if (!strcmp(field, "Idempotency-Key"))
            rs_error(resp, 400, "invalid_idempotency_key", m);
        else if (!strcmp(field, "from"))
            rs_error(resp, 422, "invalid_from_address", m);
        else if (!strncmp(field, "attachments", 11))
            rs_error(resp, 422, "invalid_attachment", m);
        else if (strstr(msg, " is required"))
            rs_error(resp, 422, "missing_required_field", m);
        else
            rs_error(resp, 422, "validation_error", m);
        return;
    default:
        rs_error(resp, resp->status, resp->status >= 500 ? "application_error" : "validation_error", m);
        return;
    }
}

/* buffer_base64 - an array of byte values (0..255) as a base64 json
 * string, or NULL when it is not one. */
static json_t *buffer_base64(json_t *data)
{
    size_t n = json_array_size(data);
    if (!json_is_array(data) || n > GW_BODY_MAX)
        return NULL;
    unsigned char *bytes = malloc(n ? n : 1);
    if (!bytes)
        return NULL;
    size_t i;
    json_t *v;
    json_array_foreach(data, i, v) {
        json_int_t b = json_integer_value(v);
        if (!json_is_integer(v) || b < 0 || b > 255) {
            free(bytes);
            return NULL;
        }
        bytes[i] = (unsigned char)b;
    }
    json_t *s = gw_compat_base64(bytes, n);
    free(bytes);
    return s;
}

/* translate - one Resend email as a new mailgate object (*out), or -1
 * with a mailgate error in resp (field named as Resend names it). */
static int translate(json_t *in, json_t **out, struct gw_resp *resp)
{
    *out = NULL;
    if (!json_is_object(in)) {
        gw_error(resp, 422, "validation_error", NULL, "an email must be a JSON object");
        return -1;
    }
    json_t *o = json_object();
    static const char *const same[] = {"from", "to", "cc", "bcc", "reply_to", "subject", "html", "text", "headers", NULL};
    for (const char *const *k = same; *k; k++) {
        json_t *v = json_object_get(in, *k);
        if (v && !json_is_null(v))
            json_object_set(o, *k, v);
    }
    json_t *tags = json_object_get(in, "tags");
    if (tags && !json_is_null(tags)) {
        if (!json_is_array(tags) || json_array_size(tags) > GW_TAGS_MAX) {
            json_decref(o);
            gw_error(resp, 422, "validation_error", "tags", "tags must be an array of at most %d {name, value}",
                     GW_TAGS_MAX);
            return -1;
        }
        json_t *tl = json_array(), *meta = json_object();
        size_t i;
        json_t *t;
        json_array_foreach(tags, i, t) {
            const char *name = json_string_value(json_object_get(t, "name"));
            const char *value = json_string_value(json_object_get(t, "value"));
            if (!name || !*name || strlen(name) > 256 || (value && strlen(value) > 256)) {
                json_decref(tl);
                json_decref(meta);
                json_decref(o);
                char f[32];
                snprintf(f, sizeof(f), "tags[%zu]", i);
                gw_error(resp, 422, "validation_error", f, "a tag needs a name and a value of at most 256 characters");
                return -1;
            }
            char tag[520];
            snprintf(tag, sizeof(tag), "%s%s%s", name, value && *value ? ":" : "", value ? value : "");
            json_array_append_new(tl, json_string(tag));
            json_object_set_new(meta, name, json_string(value ? value : ""));
        }
        json_object_set_new(o, "tags", tl);
        json_object_set_new(o, "metadata", meta);
    }
    json_t *atts = json_object_get(in, "attachments");
    if (json_is_array(atts) && json_array_size(atts)) {
        json_t *list = json_array();
        size_t i;
        json_t *a;
        json_array_foreach(atts, i, a) {
            if (json_is_string(json_object_get(a, "path"))) {
                json_decref(list);
                json_decref(o);
                char f[48];
                snprintf(f, sizeof(f), "attachments[%zu].path", i);
                gw_error(resp, 422, "validation_error", f,
                         "attachments by path (URL) are not supported by mailgate; send the content (base64)");
                return -1;
            }
            json_t *m = json_object();
            json_t *content = json_object_get(a, "content");
            if (json_is_object(content) || json_is_array(content)) {
                /* A Node Buffer as JSON.stringify writes it, as older
                 * clients send it: {"type": "Buffer", "data": [bytes]}. */
                json_t *b64 = buffer_base64(json_is_object(content) ? json_object_get(content, "data") : content);
                if (!b64) {
                    json_decref(m);
                    json_decref(list);
                    json_decref(o);
                    char f[48];
                    snprintf(f, sizeof(f), "attachments[%zu].content", i);
                    gw_error(resp, 422, "validation_error", f, "content must be base64 or a Buffer of bytes");
                    return -1;
                }
                json_object_set_new(m, "content", b64);
            }
            static const char *const keep[] = {"filename", "content", "content_type", "content_id", NULL};
            for (const char *const *k = keep; *k; k++) {
                json_t *v = json_object_get(a, *k);
                if (v && !json_is_null(v) && !json_object_get(m, *k))
                    json_object_set(m, *k, v);
            }
            json_array_append_new(list, m);
        }
        json_object_set_new(o, "attachments", list);
    }
    json_t *at = json_object_get(in, "scheduled_at");
    if (at && !json_is_null(at))
        json_object_set(o, "send_at", at); /* ISO 8601; natural language is refused by the send */
    json_t *tpl = json_object_get(in, "template");
    if (json_is_object(tpl)) {
        json_t *id = json_object_get(tpl, "id");
        json_t *vars = json_object_get(tpl, "variables");
        if (id)
            json_object_set(o, "template", id);
        json_object_set_new(o, "data", json_is_object(vars) ? json_incref(vars) : json_object());
    }
    *out = o;
    return 0;
}

/* send_obj - send mailgate object o; resp gets 200 {id} or a mailgate
 * error (shaped by the caller). */
static void send_obj(struct gw_req *req, json_t *o, struct gw_resp *resp)
{
    gw_send_object(req, o, resp);
    if (resp->status == 202) {
        json_t *id = json_incref(json_object_get(resp->body, "id"));
        json_decref(resp->body);
        resp->body = json_pack("{s:o}", "id", id);
        resp->status = 200;
    }
}

/* send_one - translate one Resend email and send it, as send_obj. */
static void send_one(struct gw_req *req, json_t *in, struct gw_resp *resp)
{
    json_t *o;
    if (translate(in, &o, resp) < 0)
        return;
    send_obj(req, o, resp);
    json_decref(o);
}

void gw_rs_send(struct gw_req *req, struct gw_resp *resp)
{
    json_t *in = gw_compat_parse(req, resp);
    if (!in)
        return;
    send_one(req, in, resp);
    json_decref(in);
    gw_rs_shape(req, resp);
}

/* prefix_field - rename the field of the mailgate error in resp to
 * "[i].field" so a batch error names the email at fault. */
static void prefix_field(struct gw_resp *resp, size_t i)
{
    json_t *e = json_object_get(resp->body, "error");
    const char *f = json_string_value(json_object_get(e, "field"));
    char nf[320];
    snprintf(nf, sizeof(nf), "[%zu]%s%s", i, f ? "." : "", f ? f : "");
    if (e)
        json_object_set_new(e, "field", json_string(nf));
}

void gw_rs_batch(struct gw_req *req, struct gw_resp *resp)
{
    json_t *in = gw_compat_parse(req, resp);
    json_t *msgs = NULL;
    if (!in)
        return;
    const char *mode = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "x-batch-validation");
    int permissive = mode && !strcasecmp(mode, "permissive");
    if (!json_is_array(in) || json_array_size(in) == 0) {
        rs_error(resp, 422, "validation_error", "The body must be a non-empty array of emails.");
        goto out;
    }
    if (json_array_size(in) > GW_BATCH_MAX) {
        rs_error(resp, 422, "validation_error", "A batch holds at most 500 emails.");
        goto out;
    }
    json_t *data = json_array(), *errors = json_array();
    size_t i;
    json_t *e;
    if (!permissive) {
        /* strict: translate and check all before queueing any */
        msgs = json_array();
        json_array_foreach(in, i, e) {
            json_t *o;
            if (translate(e, &o, resp) < 0 || gw_compat_precheck(o, resp) < 0) {
                json_decref(o);
                prefix_field(resp, i);
                json_decref(data);
                json_decref(errors);
                goto out;
            }
            json_array_append_new(msgs, o);
        }
    }
    json_array_foreach(in, i, e) {
        struct gw_resp one = {0};
        if (permissive)
            send_one(req, e, &one);
        else
            send_obj(req, json_array_get(msgs, i), &one);
        if (one.status == 200) {
            json_array_append(data, one.body);
        } else if (permissive) {
            gw_rs_shape(req, &one);
            json_array_append_new(errors, json_pack("{s:I, s:O}", "index", (json_int_t)i, "message",
                                                    json_object_get(one.body, "message")));
        } else {
            /* strict, yet a send failed after the pre-check (Redis, rate
             * limit, template): answer that error; the emails before it
             * stay queued. */
            json_decref(data);
            json_decref(errors);
            json_decref(resp->body);
            *resp = one;
            prefix_field(resp, i);
            goto out;
        }
        json_decref(one.body);
    }
    resp->status = 200;
    resp->body = json_pack("{s:o}", "data", data);
    if (permissive)
        json_object_set_new(resp->body, "errors", errors);
    else
        json_decref(errors);
out:
    json_decref(msgs);
    json_decref(in);
    gw_rs_shape(req, resp);
}

/* last_event - the Resend last_event for a mailgate message. */
static const char *last_event(json_t *m)
{
    const char *st = json_string_value(json_object_get(m, "status"));
    if (!st)
        return "queued";
    static const char *const map[][2] = {
        {"queued", "queued"},       {"scheduled", "scheduled"}, {"delivered", "delivered"},
        {"partially_delivered", "delivered"}, {"bounced", "bounced"}, {"suppressed", "suppressed"},
        {"cancelled", "canceled"},  {NULL, NULL}};
    for (size_t i = 0; map[i][0]; i++)
        if (!strcmp(st, map[i][0]))
            return map[i][1];
    /* sending: some recipient is not final yet */
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(m, "recipients"), i, r) {
        const char *rs = json_string_value(json_object_get(r, "status"));
        if (rs && !strcmp(rs, "deferred"))
            return "delivery_delayed";
    }
    return "sent";
}

void gw_rs_get(struct gw_req *req, struct gw_resp *resp, const char *id)
{
    gw_get_message(req, resp, id);
    if (resp->status != 200) {
        gw_rs_shape(req, resp);
        return;
    }
    json_t *m = resp->body;
    json_t *to = json_array(), *tags = json_array();
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(m, "recipients"), i, v)
        json_array_append(to, json_object_get(v, "email"));
    json_array_foreach(json_object_get(m, "tags"), i, v) {
        const char *t = json_string_value(v);
        const char *colon = t ? strchr(t, ':') : NULL;
        if (!t)
            continue;
        json_array_append_new(tags, colon ? json_pack("{s:s%, s:s}", "name", t, (size_t)(colon - t), "value", colon + 1)
                                          : json_pack("{s:s, s:s}", "name", t, "value", ""));
    }
    json_t *out = json_pack("{s:s, s:O?, s:o, s:O?, s:O?, s:O?, s:n, s:n, s:n, s:n, s:n, s:s, s:O?, s:o, s:O?}",
                            "object", "email", "id", json_object_get(m, "id"), "to", to,
                            "from", json_object_get(m, "from"), "created_at", json_object_get(m, "created_at"),
                            "subject", json_object_get(m, "subject"), "html", "text", "cc", "bcc", "reply_to",
                            "last_event", last_event(m), "scheduled_at", json_object_get(m, "send_at"), "tags", tags,
                            "metadata", json_object_get(m, "metadata"));
    resp->body = out;
    json_decref(m);
}
