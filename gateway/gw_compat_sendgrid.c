/*
 * gw_compat_sendgrid.c - the SendGrid v3 compatible surface:
 * POST /v3/mail/send with Authorization: Bearer <mailgate key>.
 *
 * Each entry of personalizations[] becomes a mailgate message of its own
 * (to, cc, bcc, subject, headers, dynamic_template_data as data,
 * custom_args as metadata, send_at), sharing from, reply_to, content[],
 * attachments[] (disposition "inline" + content_id makes a part inline),
 * categories (as tags), template_id (a stored template), headers and
 * custom_args of the request. mail_settings.sandbox_mode.enable checks the
 * request and queues nothing (200, as SendGrid answers). Fields mailgate
 * has no use for (asm, ip_pool_name, batch_id, substitutions, ...) are
 * ignored.
 * Answers: 202 with an empty body and X-Message-Id (the first message's
 * mailgate id); errors {errors: [{message, field, help}]} with 400 for a
 * request SendGrid would refuse, 401/403 for keys.
 * Several personalizations are pre-checked together (gw_compat_precheck)
 * before any is queued, so a bad address in the third queues none.
 * Limits: GW_BATCH_MAX personalizations (SendGrid allows 1000); all
 * others are the send's.
 */
#include "gateway/gw.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/log.h"
#include "common/util.h"

static void sg_error(struct gw_resp *resp, int status, const char *field, const char *msg)
{
    json_decref(resp->body);
    resp->body = json_pack("{s:[{s:s, s:o, s:n}]}", "errors", "message", msg, "field",
                           field && *field ? json_string(field) : json_null(), "help");
    resp->status = status;
}

/* sg_field - a mailgate field name ("to[1]", "attachments[0].content")
 * the way SendGrid names it ("personalizations.0.to.1",
 * "attachments.0.content"). */
static void sg_field(const char *field, long pi, char *out, size_t outlen)
{
    size_t o = 0;
    if (pi >= 0 && (!strncmp(field, "to", 2) || !strncmp(field, "cc", 2) || !strncmp(field, "bcc", 3) ||
                    !strncmp(field, "subject", 7) || !strncmp(field, "headers", 7)))
        o = (size_t)snprintf(out, outlen, "personalizations.%ld.", pi);
    for (const char *p = field; *p && o + 2 < outlen; p++) {
        if (*p == '[')
            out[o++] = '.';
        else if (*p != ']')
            out[o++] = *p;
    }
    out[o < outlen ? o : outlen - 1] = '\0';
}

/* shape - a mailgate error answer as SendGrid's; pi is the personalization
 * the send was for, or -1. */
static void shape(struct gw_req *req, struct gw_resp *resp, long pi)
{
    const char *type, *msg, *field;
    if (!gw_compat_error(resp, &type, &msg, &field))
        return;
    /* msg and field live in resp->body, which sg_error replaces: copy. */
    char f[300], m[700];
    sg_field(field, pi, f, sizeof(f));
    snprintf(m, sizeof(m), "%s", msg);
    switch (resp->status) {
    case 401:
        snprintf(m, sizeof(m), "The provided authorization grant is invalid, expired, or revoked (%s)", msg);
        sg_error(resp, 401, NULL, m);
        return;
    case 403:
        snprintf(m, sizeof(m), "access forbidden (%s)", msg);
        sg_error(resp, 403, NULL, m);
        return;
    case 422:
        sg_error(resp, 400, f, m);
        return;
    default:
        sg_error(resp, resp->status, f, m);
        return;
    }
}

void gw_sg_shape(struct gw_req *req, struct gw_resp *resp)
{
    shape(req, resp, -1);
}

/* merge - a new object: a's members, then b's (b wins). Either may be
 * NULL or not an object (then it is left out). */
static json_t *merge(json_t *a, json_t *b)
{
    json_t *m = json_object();
    if (json_is_object(a))
        json_object_update(m, a);
    if (json_is_object(b))
        json_object_update(m, b);
    return m;
}

static int enabled(json_t *settings, const char *name)
{
    return json_is_true(json_object_get(json_object_get(settings, name), "enable"));
}

/* translate - personalization p (index pi) of request in as a new mailgate
 * object (*out), or -1 with a SendGrid error in resp. */
static int translate(json_t *in, json_t *p, size_t pi, json_t **out, struct gw_resp *resp)
{
    char f[80];
    *out = NULL;
    if (!json_is_object(p)) {
        snprintf(f, sizeof(f), "personalizations.%zu", pi);
        sg_error(resp, 400, f, "Each personalization must be an object.");
        return -1;
    }
    json_t *o = json_object();
    json_t *from = json_object_get(p, "from");
    json_object_set(o, "from", from ? from : json_object_get(in, "from"));
    static const char *const rc[] = {"to", "cc", "bcc", NULL};
    for (const char *const *k = rc; *k; k++) {
        json_t *v = json_object_get(p, *k);
        if (v && !json_is_null(v))
            json_object_set(o, *k, v);
    }
    json_t *rt = json_object_get(in, "reply_to_list");
    if (!rt || json_is_null(rt))
        rt = json_object_get(in, "reply_to");
    if (rt && !json_is_null(rt))
        json_object_set(o, "reply_to", rt);
    json_t *subject = json_object_get(p, "subject");
    if (!subject || json_is_null(subject))
        subject = json_object_get(in, "subject");
    if (subject && !json_is_null(subject))
        json_object_set(o, "subject", subject);

    json_t *content = json_object_get(in, "content");
    size_t i;
    json_t *c;
    json_array_foreach(content, i, c) {
        const char *type = json_string_value(json_object_get(c, "type"));
        json_t *value = json_object_get(c, "value");
        if (type && !strncasecmp(type, "text/plain", 10))
            json_object_set(o, "text", value);
        else if (type && !strncasecmp(type, "text/html", 9))
            json_object_set(o, "html", value);
        /* other types (text/x-amp-html, text/calendar) are ignored */
    }

    json_t *headers = merge(json_object_get(in, "headers"), json_object_get(p, "headers"));
    if (json_object_size(headers))
        json_object_set(o, "headers", headers);
    json_decref(headers);
    json_t *meta = merge(json_object_get(in, "custom_args"), json_object_get(p, "custom_args"));
    if (json_object_size(meta))
        json_object_set(o, "metadata", meta);
    json_decref(meta);
    json_t *cats = json_object_get(in, "categories");
    if (cats && !json_is_null(cats))
        json_object_set(o, "tags", cats);

    json_t *tid = json_object_get(in, "template_id");
    if (json_is_string(tid) && json_string_length(tid)) {
        json_object_set(o, "template", tid);
        json_t *data = json_object_get(p, "dynamic_template_data");
        json_object_set_new(o, "data", json_is_object(data) ? json_incref(data) : json_object());
        /* With a template, SendGrid takes subject and content from it. */
        json_object_del(o, "subject");
        json_object_del(o, "text");
        json_object_del(o, "html");
    }

    json_t *at = json_object_get(p, "send_at");
    if (!at || json_is_null(at))
        at = json_object_get(in, "send_at");
    if (at && !json_is_null(at)) {
        json_t *ts = gw_compat_unix_time(at);
        if (!ts) {
            json_decref(o);
            sg_error(resp, 400, "send_at", "send_at must be a Unix timestamp in seconds.");
            return -1;
        }
        json_object_set_new(o, "send_at", ts);
    }

    json_t *atts = json_object_get(in, "attachments");
    if (json_is_array(atts) && json_array_size(atts)) {
        json_t *list = json_array();
        json_t *a;
        json_array_foreach(atts, i, a) {
            json_t *m = json_object();
            static const char *const map[][2] = {
                {"filename", "filename"}, {"type", "content_type"}, {"content", "content"}, {NULL, NULL}};
            for (size_t k = 0; map[k][0]; k++) {
                json_t *v = json_object_get(a, map[k][0]);
                if (v && !json_is_null(v))
                    json_object_set(m, map[k][1], v);
            }
            const char *disp = json_string_value(json_object_get(a, "disposition"));
            json_t *cid = json_object_get(a, "content_id");
            if (disp && !strcasecmp(disp, "inline") && json_is_string(cid))
                json_object_set(m, "content_id", cid);
            json_array_append_new(list, m);
        }
        json_object_set_new(o, "attachments", list);
    }

    json_t *track = json_object_get(in, "tracking_settings");
    if (enabled(track, "open_tracking"))
        json_object_set_new(o, "track_opens", json_true());
    if (enabled(track, "click_tracking"))
        json_object_set_new(o, "track_clicks", json_true());
    *out = o;
    return 0;
}

void gw_sg_send(struct gw_req *req, struct gw_resp *resp)
{
    json_t *in = gw_compat_parse(req, resp);
    if (!in)
        return; /* shaped by gw_sg_shape */
    json_t *ps = json_object_get(in, "personalizations");
    json_t *msgs = NULL;
    if (!json_is_object(in)) {
        sg_error(resp, 400, NULL, "The request body must be a JSON object.");
        goto out;
    }
    if (!json_is_array(ps) || json_array_size(ps) == 0) {
        sg_error(resp, 400, "personalizations",
                 "The personalizations field is required and must have at least one personalization.");
        goto out;
    }
    if (json_array_size(ps) > GW_BATCH_MAX) {
        sg_error(resp, 400, "personalizations", "mailgate accepts at most 500 personalizations per request.");
        goto out;
    }
    if (!json_is_object(json_object_get(in, "from"))) {
        sg_error(resp, 400, "from", "The from object must be provided for every email send. It is an object that "
                                    "requires the email parameter, but may also contain a name parameter.");
        goto out;
    }
    json_t *content = json_object_get(in, "content");
    if (!json_object_get(in, "template_id") && (!json_is_array(content) || json_array_size(content) == 0)) {
        sg_error(resp, 400, "content", "Unless a valid template_id is provided, the content parameter is required. "
                                       "There must be at least one defined content block.");
        goto out;
    }
    int sandbox = enabled(json_object_get(in, "mail_settings"), "sandbox_mode");

    /* Translate and check every personalization before queueing any. */
    msgs = json_array();
    size_t i;
    json_t *p;
    json_array_foreach(ps, i, p) {
        json_t *o;
        if (translate(in, p, i, &o, resp) < 0)
            goto out;
        json_array_append_new(msgs, o);
        if ((sandbox || json_array_size(ps) > 1) && gw_compat_precheck(o, resp) < 0) {
            shape(req, resp, (long)i);
            goto out;
        }
    }
    if (sandbox) {
        resp->status = 200; /* SendGrid: sandbox mode validates and answers 200, no body */
        goto out;
    }
    json_t *o;
    json_array_foreach(msgs, i, o) {
        struct gw_resp r = {0};
        gw_send_object(req, o, &r);
        if (r.status != 202) {
            json_decref(resp->body);
            *resp = r;
            shape(req, resp, (long)i);
            if (i > 0) {
                /* The pre-check passed, yet a send failed (Redis, rate, a
                 * template): the earlier messages stay queued. */
                char n[24];
                snprintf(n, sizeof(n), "%zu", i);
                log_kv(LOG_WARN, "sendgrid_partial", "tenant", req->key.tenant, "queued", n, NULL);
            }
            goto out;
        }
        if (i == 0)
            util_strlcpy(resp->message_id, json_string_value(json_object_get(r.body, "id")), sizeof(resp->message_id));
        json_decref(r.body);
    }
    resp->status = 202;
out:
    json_decref(msgs);
    json_decref(in);
}
