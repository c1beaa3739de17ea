/*
 * gw_compat_postmark.c - the Postmark-compatible surface: POST /email,
 * /email/batch, /email/withTemplate and /email/batchWithTemplates,
 * authenticated by X-Postmark-Server-Token (a mailgate key).
 *
 * Each Postmark message (PascalCase) is translated into a mailgate message
 * object and sent with gw_send_object: same validation, templates, queue
 * and events. Fields mailgate has no use for (MessageStream, InlineCss,
 * ...) are ignored, not refused, because unchanged clients send them.
 * Answers: 200 {To, SubmittedAt, MessageID, ErrorCode: 0, Message: "OK"};
 * errors 422 {ErrorCode, Message} with Postmark's codes (300 invalid
 * request, 402 invalid JSON, 406 inactive recipient, 409 JSON required,
 * 410 too many batch messages, 1101 template not found), 401 with code 10
 * for a bad token. A batch answers 200 with one such object per message.
 * Limits: GW_BATCH_MAX messages per batch; all other limits are the send's.
 */
#include "gateway/gw.h"

#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/util.h"

#define PM_INVALID_REQUEST 300
#define PM_INVALID_JSON 402
#define PM_INACTIVE_RECIPIENT 406
#define PM_JSON_REQUIRED 409
#define PM_TOO_MANY_BATCH 410
#define PM_BAD_TOKEN 10
#define PM_RATE_LIMITED 429
#define PM_MAINTENANCE 100
#define PM_TEMPLATE_NOT_FOUND 1101

static void pm_error(struct gw_resp *resp, int status, int code, const char *msg)
{
    json_decref(resp->body);
    resp->body = json_pack("{s:i, s:s}", "ErrorCode", code, "Message", msg);
    resp->status = status;
}

/* copy_member - o[to] = in[from], unless that is absent, null or "". A
 * value of the wrong type is copied too, so that the send names it. */
static void copy_member(json_t *in, const char *from, json_t *o, const char *to)
{
    json_t *v = json_object_get(in, from);
    if (!v || json_is_null(v) || (json_is_string(v) && json_string_length(v) == 0))
        return;
    json_object_set(o, to, v);
}

/* translate - a Postmark message into a new mailgate object (*out), or -1
 * with a Postmark error in resp. with_template: the /withTemplate form. */
static int translate(json_t *in, int with_template, json_t **out, struct gw_resp *resp)
{
    *out = NULL;
    if (!json_is_object(in)) {
        pm_error(resp, 422, PM_INVALID_REQUEST, "Each message must be a JSON object.");
        return -1;
    }
    json_t *o = json_object();
    copy_member(in, "From", o, "from");
    copy_member(in, "To", o, "to");
    copy_member(in, "Cc", o, "cc");
    copy_member(in, "Bcc", o, "bcc");
    copy_member(in, "ReplyTo", o, "reply_to");
    copy_member(in, "Subject", o, "subject");
    copy_member(in, "HtmlBody", o, "html");
    copy_member(in, "TextBody", o, "text");
    copy_member(in, "Metadata", o, "metadata");

    json_t *tag = json_object_get(in, "Tag");
    if (json_is_string(tag) && json_string_length(tag))
        json_object_set_new(o, "tags", json_pack("[O]", tag));
    else if (tag && !json_is_null(tag) && !json_is_string(tag))
        json_object_set(o, "tags", tag);

    /* TrackOpens true / TrackLinks other than "None" ask for tracking;
     * false or absent ask for nothing. */
    if (json_is_true(json_object_get(in, "TrackOpens")))
        json_object_set_new(o, "track_opens", json_true());
    const char *links = json_string_value(json_object_get(in, "TrackLinks"));
    if (links && strcasecmp(links, "None") != 0)
        json_object_set_new(o, "track_clicks", json_true());

    json_t *hs = json_object_get(in, "Headers");
    json_t *as = json_object_get(in, "Attachments");
    if ((hs && !json_is_null(hs) && !json_is_array(hs)) || (as && !json_is_null(as) && !json_is_array(as))) {
        json_decref(o);
        pm_error(resp, 422, PM_INVALID_REQUEST, "Headers and Attachments must be arrays.");
        return -1;
    }
    if (json_array_size(hs)) {
        if (json_array_size(hs) > GW_HEADERS_MAX) {
            json_decref(o);
            pm_error(resp, 422, PM_INVALID_REQUEST, "Headers: more than 100 custom headers.");
            return -1;
        }
        json_t *h = json_object();
        size_t i;
        json_t *e;
        json_array_foreach(hs, i, e) {
            const char *name = json_string_value(json_object_get(e, "Name"));
            json_t *value = json_object_get(e, "Value");
            if (!name || !json_is_string(value)) {
                json_decref(h);
                json_decref(o);
                pm_error(resp, 422, PM_INVALID_REQUEST, "Headers: each header needs a Name and a string Value.");
                return -1;
            }
            json_object_set(h, name, value);
        }
        json_object_set_new(o, "headers", h);
    }

    if (json_array_size(as)) {
        json_t *list = json_array();
        size_t i;
        json_t *e;
        json_array_foreach(as, i, e) {
            json_t *a = json_object();
            copy_member(e, "Name", a, "filename");
            copy_member(e, "Content", a, "content");
            copy_member(e, "ContentType", a, "content_type");
            /* Postmark's ContentID is often written "cid:logo.png". */
            const char *cid = json_string_value(json_object_get(e, "ContentID"));
            if (cid && *cid)
                json_object_set_new(a, "content_id", json_string(strncasecmp(cid, "cid:", 4) ? cid : cid + 4));
            json_array_append_new(list, a);
        }
        json_object_set_new(o, "attachments", list);
    }

    if (with_template) {
        json_t *alias = json_object_get(in, "TemplateAlias");
        json_t *id = json_object_get(in, "TemplateId");
        if (json_is_string(alias) && json_string_length(alias)) {
            json_object_set(o, "template", alias);
        } else if (json_is_integer(id)) {
            char n[32];
            snprintf(n, sizeof(n), "%lld", (long long)json_integer_value(id));
            json_object_set_new(o, "template", json_string(n));
        } else {
            json_decref(o);
            pm_error(resp, 422, PM_INVALID_REQUEST, "Provide either a TemplateAlias or a TemplateId.");
            return -1;
        }
        json_t *model = json_object_get(in, "TemplateModel");
        json_object_set_new(o, "data", model && !json_is_null(model) ? json_incref(model) : json_object());
        /* A template's parts replace these; Postmark does the same. */
        json_object_del(o, "subject");
        json_object_del(o, "html");
        json_object_del(o, "text");
    }
    *out = o;
    return 0;
}

/* shape_one - a mailgate error answer as Postmark's {ErrorCode, Message},
 * with Postmark's status codes. */
static void shape_one(struct gw_resp *resp, int has_token)
{
    const char *type, *msg, *field;
    if (!gw_compat_error(resp, &type, &msg, &field))
        return;
    char m[600];
    snprintf(m, sizeof(m), "%s", msg);
    switch (resp->status) {
    case 401:
    case 403:
        snprintf(m, sizeof(m), "%s: %s", has_token ? "Request does not contain a valid Server token" :
                                                     "Request does not contain a Server token", msg);
        pm_error(resp, 401, PM_BAD_TOKEN, m);
        return;
    case 400:
        pm_error(resp, 422, PM_INVALID_JSON, m);
        return;
    case 415:
        pm_error(resp, 422, PM_JSON_REQUIRED, "The request must be JSON (Content-Type: application/json).");
        return;
    case 429:
        pm_error(resp, 429, PM_RATE_LIMITED, m);
        return;
    case 422:
        if (!strcmp(field, "template") && strstr(msg, "no template"))
            pm_error(resp, 422, PM_TEMPLATE_NOT_FOUND, m);
        else
            pm_error(resp, 422, PM_INVALID_REQUEST, m);
        return;
    default:
        pm_error(resp, resp->status, resp->status >= 500 ? PM_MAINTENANCE : PM_INVALID_REQUEST, m);
        return;
    }
}

void gw_pm_shape(struct gw_req *req, struct gw_resp *resp)
{
    shape_one(resp, MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "X-Postmark-Server-Token") != NULL);
}

/* answer - a 202 from gw_send_object (sent, borrowed) as Postmark's 200,
 * or its 406 when every recipient is on the suppression list (nothing is
 * sent to them; the message is on record as suppressed). */
static void answer(json_t *in, json_t *sent, struct gw_resp *resp)
{
    json_t *rcpts = json_object_get(sent, "recipients");
    char inactive[1024] = "";
    size_t nsupp = 0, i;
    json_t *r;
    json_array_foreach(rcpts, i, r) {
        const char *st = json_string_value(json_object_get(r, "status"));
        if (st && !strcmp(st, "suppressed")) {
            size_t l = strlen(inactive);
            snprintf(inactive + l, sizeof(inactive) - l, "%s%s", nsupp ? ", " : "",
                     json_string_value(json_object_get(r, "email")));
            nsupp++;
        }
    }
    if (nsupp && nsupp == json_array_size(rcpts)) {
        char m[1300];
        snprintf(m, sizeof(m), "You tried to send to recipient(s) that have been marked as inactive. Found inactive "
                               "addresses: %s. Inactive recipients are ones that have generated a hard bounce, a "
                               "spam complaint, or a manual suppression.", inactive);
        pm_error(resp, 422, PM_INACTIVE_RECIPIENT, m);
        return;
    }
    json_t *to = json_object_get(in, "To");
    json_t *to_text = json_is_string(to) ? json_incref(to) : NULL;
    if (!to_text) {
        char list[1024] = "";
        json_array_foreach(rcpts, i, r) {
            size_t l = strlen(list);
            snprintf(list + l, sizeof(list) - l, "%s%s", i ? ", " : "", json_string_value(json_object_get(r, "email")));
        }
        to_text = json_string(list);
    }
    char ts[40];
    json_decref(resp->body);
    resp->body = json_pack("{s:o, s:s, s:O, s:i, s:s}", "To", to_text, "SubmittedAt",
                           util_rfc3339(util_now_ms(), ts, sizeof(ts)), "MessageID", json_object_get(sent, "id"),
                           "ErrorCode", 0, "Message", "OK");
    resp->status = 200;
}

/* send_one - translate and send one Postmark message into resp (200 or a
 * Postmark error). */
static void send_one(struct gw_req *req, json_t *in, int with_template, struct gw_resp *resp)
{
    json_t *o;
    if (translate(in, with_template, &o, resp) < 0)
        return;
    struct gw_resp r = {0};
    gw_send_object(req, o, &r);
    json_decref(o);
    if (r.status == 202) {
        answer(in, r.body, resp);
        json_decref(r.body);
        return;
    }
    json_decref(resp->body);
    *resp = r;
    shape_one(resp, 1);
}

static void single(struct gw_req *req, struct gw_resp *resp, int with_template)
{
    json_t *in = gw_compat_parse(req, resp);
    if (!in)
        return; /* shaped by gw_pm_shape */
    send_one(req, in, with_template, resp);
    json_decref(in);
}

/* batch - an array of messages (each sent or refused alone), answered 200
 * with one result per message, in order. */
static void batch(struct gw_req *req, struct gw_resp *resp, json_t *msgs, int with_template)
{
    if (!json_is_array(msgs)) {
        pm_error(resp, 422, PM_INVALID_REQUEST, with_template ? "Messages must be an array of messages."
                                                              : "The body must be a JSON array of messages.");
        return;
    }
    if (json_array_size(msgs) > GW_BATCH_MAX) {
        pm_error(resp, 422, PM_TOO_MANY_BATCH, "Too many batch messages: a batch holds at most 500 messages.");
        return;
    }
    json_t *results = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        struct gw_resp one = {0};
        send_one(req, m, with_template, &one);
        json_array_append_new(results, one.body ? one.body : json_pack("{s:i, s:s}", "ErrorCode", PM_INVALID_REQUEST,
                                                                        "Message", "no answer"));
        if (one.status == 503)
            util_strlcpy(resp->retry_after, one.retry_after, sizeof(resp->retry_after));
    }
    resp->status = 200;
    resp->body = results;
}

void gw_pm_email(struct gw_req *req, struct gw_resp *resp)
{
    single(req, resp, 0);
}

void gw_pm_template(struct gw_req *req, struct gw_resp *resp)
{
    single(req, resp, 1);
}

void gw_pm_batch(struct gw_req *req, struct gw_resp *resp)
{
    json_t *in = gw_compat_parse(req, resp);
    if (!in)
        return;
    batch(req, resp, in, 0);
    json_decref(in);
}

void gw_pm_batch_template(struct gw_req *req, struct gw_resp *resp)
{
    json_t *in = gw_compat_parse(req, resp);
    if (!in)
        return;
    batch(req, resp, json_object_get(in, "Messages"), 1);
    json_decref(in);
}
