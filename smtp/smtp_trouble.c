/*
 * smtp_trouble.c - delivery policy: the one place that decides, per
 * recipient, whether what happened means delivered, retry later or bounce.
 *
 * The session (smtp_session.c) only records facts: the reply that decided a
 * recipient, the command it answered, or a local cause. Everything that
 * interprets those facts lives here, so a policy change is one edit.
 *
 * Rules, in order:
 *   - a message over the relay's SIZE (RFC 1870) or a non-ASCII local part
 *     the relay cannot take (no SMTPUTF8, RFC 6531 §3.7.5) bounces: no
 *     retry can change either;
 *   - any other local cause (timeout, lost connection, TLS, a timeout after
 *     the final "." ...) defers: nothing the relay said was final;
 *   - a reply during connection set-up (greeting, EHLO, STARTTLS, AUTH)
 *     defers even when it is 5yz: it is about the relay, not the recipient;
 *   - 2yz is delivery only when it answered the final "." (the recipient's
 *     RCPT got 2yz first, or the session would not have reached it);
 *   - 552 to RCPT means "too many recipients" in old servers and must be
 *     read as 452 (RFC 5321 §4.5.3.1.10);
 *   - 530, 535 or enhanced 5.7.0 to MAIL mean our relay credentials or TLS
 *     set-up are wrong: fix and retry, not the recipient's fault;
 *   - otherwise 5yz bounces, 4yz (and anything odd) defers.
 */
#include "smtp/smtp.h"

#include <string.h>

int smtp_reply_auth_required(const struct smtp_reply *r)
{
    return r->code == 530 || r->code == 535 ||
           (r->code >= 500 && r->code < 600 && strcmp(r->enhanced, "5.7.0") == 0);
}

enum smtp_verdict smtp_verdict_of(const struct smtp_rcpt *r)
{
    int code = r->reply.code;

    if (r->local == SMTP_LOCAL_SIZE_EXCEEDED || r->local == SMTP_LOCAL_SMTPUTF8_REQUIRED)
        return SMTP_BOUNCE;
    if (r->local != SMTP_LOCAL_NONE || code == 0)
        return SMTP_DEFER;
    if (r->stage == SMTP_STAGE_CONNECT)
        return SMTP_DEFER;
    if (code >= 200 && code < 300)
        return r->stage == SMTP_STAGE_DOT ? SMTP_DELIVERED : SMTP_DEFER;
    if (code >= 500 && code < 600) {
        if (r->stage == SMTP_STAGE_RCPT && code == 552)
            return SMTP_DEFER;
        if (r->stage == SMTP_STAGE_MAIL && smtp_reply_auth_required(&r->reply))
            return SMTP_DEFER;
        return SMTP_BOUNCE;
    }
    return SMTP_DEFER;
}

static const char *const local_names[] = {
    [SMTP_LOCAL_NONE] = "none",
    [SMTP_LOCAL_CONNECT] = "connect_failed",
    [SMTP_LOCAL_TIMEOUT] = "timeout",
    [SMTP_LOCAL_LOST] = "connection_lost",
    [SMTP_LOCAL_PROTOCOL] = "protocol_error",
    [SMTP_LOCAL_TLS] = "tls_failed",
    [SMTP_LOCAL_BAD_ADDRESS] = "bad_address",
    [SMTP_LOCAL_TIMEOUT_AFTER_DOT] = "timeout_after_data",
    [SMTP_LOCAL_SIZE_EXCEEDED] = "size_exceeded",
    [SMTP_LOCAL_SMTPUTF8_REQUIRED] = "smtputf8_required",
};

const char *smtp_local_reason(enum smtp_local l)
{
    if ((size_t)l >= sizeof(local_names) / sizeof(local_names[0]) || !local_names[l])
        return "unknown";
    return local_names[l];
}
