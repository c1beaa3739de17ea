/*
 * gw_config.c - the configuration table: every MAILGATE_* variable with
 * its default and bounds, validated once at start-up. A bad value stops
 * start-up with one line naming the variable. Secrets (passwords in URLs,
 * MAILGATE_SECRET) are masked whenever the configuration is printed.
 */
#include "gateway/gw.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "smtp/smtp.h"

/* The loaded DKIM keys live as long as the process (copies of the config
 * share them); kept here too so that they stay reachable to the end. */
static struct mime_dkim_keys *dkim_keys;

static int bad(const char *var, const char *why)
{
    fprintf(stderr, "mailgate: %s: %s\n", var, why);
    return -1;
}

static const char *env(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

/* duration_ms - util_parse_duration, plus a whole number of
 * milliseconds ("200ms"), which short test schedules need. 0 or -1. */
static int duration_ms(const char *s, int64_t *ms)
{
    size_t n = strlen(s);
    if (n > 2 && !strcmp(s + n - 2, "ms")) {
        char *end;
        long long v = strtoll(s, &end, 10);
        if (!isdigit((unsigned char)s[0]) || end != s + n - 2 || v < 0 || v > 86400000LL)
            return -1;
        *ms = v;
        return 0;
    }
    return util_parse_duration(s, ms);
}

/* copy - env var into dst, refusing values that do not fit. */
static int copy(char *dst, size_t len, const char *var, const char *dflt)
{
    const char *v = env(var, dflt);
    if (util_strlcpy(dst, v, len) >= len)
        return bad(var, "value too long");
    return 0;
}

static int check_hostport(const char *var, const char *v)
{
    const char *c = strrchr(v, ':');
    char *end;
    long port = c ? strtol(c + 1, &end, 10) : -1;
    if (!c || c == v || *end || port < 0 || port > 65535)
        return bad(var, "expected host:port");
    return 0;
}

int gw_config_load(struct gw_config *c)
{
    char err[256];
    memset(c, 0, sizeof(*c));
    if (copy(c->listen, sizeof(c->listen), "MAILGATE_LISTEN", "127.0.0.1:8080") ||
        check_hostport("MAILGATE_LISTEN", c->listen))
        return -1;
    if (copy(c->admin_listen, sizeof(c->admin_listen), "MAILGATE_ADMIN_LISTEN", ""))
        return -1;
    if (c->admin_listen[0] && check_hostport("MAILGATE_ADMIN_LISTEN", c->admin_listen))
        return -1;
    if (copy(c->redis_url, sizeof(c->redis_url), "MAILGATE_REDIS_URL", "redis://127.0.0.1:6379/0"))
        return -1;
    if (queue_url_check(c->redis_url, err, sizeof(err)) < 0)
        return bad("MAILGATE_REDIS_URL", err);
    if (copy(c->relays, sizeof(c->relays), "MAILGATE_RELAYS", ""))
        return -1;
    if (c->relays[0]) {
        struct smtp_relay *v;
        size_t n;
        if (smtp_relays_parse(c->relays, &v, &n, err, sizeof(err)) < 0)
            return bad("MAILGATE_RELAYS", err);
        smtp_relays_free(v, n);
    }
    char host[256] = "localhost";
    gethostname(host, sizeof(host) - 1);
    if (copy(c->helo, sizeof(c->helo), "MAILGATE_HELO_NAME", host))
        return -1;
    if (util_has_crlf(c->helo) || strchr(c->helo, ' '))
        return bad("MAILGATE_HELO_NAME", "must be a host name");
    if (copy(c->return_path_domain, sizeof(c->return_path_domain), "MAILGATE_RETURN_PATH_DOMAIN", ""))
        return -1;
    char dflt_url[300];
    snprintf(dflt_url, sizeof(dflt_url), "http://%s", c->listen);
    if (copy(c->public_url, sizeof(c->public_url), "MAILGATE_PUBLIC_URL", dflt_url))
        return -1;
    if (strncmp(c->public_url, "http://", 7) && strncmp(c->public_url, "https://", 8))
        return bad("MAILGATE_PUBLIC_URL", "must start with http:// or https://");
    if (strcspn(c->public_url, " \"'<>\\") != strlen(c->public_url) || strchr(c->public_url, '?') ||
        strchr(c->public_url, '#'))
        return bad("MAILGATE_PUBLIC_URL", "must be a base URL without spaces, quotes, <>, ? or #");
    /* tracking links are PUBLIC_URL + "/t/...": no trailing slash */
    for (size_t n = strlen(c->public_url); n > 8 && c->public_url[n - 1] == '/'; n--)
        c->public_url[n - 1] = '\0';
    /* The token key: MAILGATE_SECRET, or (unset) one kept in Redis. */
    const char *secret = getenv("MAILGATE_SECRET");
    if (secret && *secret) {
        size_t sl = strlen(secret);
        if (sl < GW_SECRET_MIN || sl >= sizeof(c->secret))
            return bad("MAILGATE_SECRET", "must have 16 to 255 characters (32 random bytes, hex or base64, are best)");
        memcpy(c->secret, secret, sl + 1);
        c->secret_len = sl;
    }
    if (copy(c->log_level, sizeof(c->log_level), "MAILGATE_LOG_LEVEL", "info"))
        return -1;
    enum log_level lvl;
    if (log_parse_level(c->log_level, &lvl) < 0)
        return bad("MAILGATE_LOG_LEVEL", "expected debug, info, warn or error");
    log_set_level(lvl);
    if (util_parse_duration(env("MAILGATE_MAX_AGE", "5d"), &c->max_age_ms) < 0 || c->max_age_ms <= 0)
        return bad("MAILGATE_MAX_AGE", "expected a duration such as 5d, 12h, 30m or 90s");
    char *end;
    long days = strtol(env("MAILGATE_RETENTION_DAYS", "30"), &end, 10);
    if (*end || days < 1 || days > 3650)
        return bad("MAILGATE_RETENTION_DAYS", "expected whole days from 1 to 3650");
    c->retention_days = (int)days;
    if (copy(c->smtp_timeouts, sizeof(c->smtp_timeouts), "MAILGATE_SMTP_TIMEOUTS", ""))
        return -1;
    if (c->smtp_timeouts[0]) {
        struct smtp_timeouts t;
        smtp_timeouts_default(&t);
        if (smtp_timeouts_parse(c->smtp_timeouts, &t, err, sizeof(err)) < 0)
            return bad("MAILGATE_SMTP_TIMEOUTS", err);
    }
    if (util_parse_duration(env("MAILGATE_SEND_AT_HORIZON", "30d"), &c->send_at_horizon_ms) < 0 ||
        c->send_at_horizon_ms < 60000)
        return bad("MAILGATE_SEND_AT_HORIZON", "expected a duration of at least 1m, such as 30d");
    if (util_parse_duration(env("MAILGATE_CLAIM_TIMEOUT", "30s"), &c->claim_timeout_ms) < 0 ||
        c->claim_timeout_ms < 1000 || c->claim_timeout_ms > 3600 * 1000)
        return bad("MAILGATE_CLAIM_TIMEOUT", "expected a duration from 1s to 1h, such as 30s");
    if (util_parse_duration(env("MAILGATE_SHUTDOWN_TIMEOUT", "30s"), &c->shutdown_ms) < 0 ||
        c->shutdown_ms > 3600 * 1000)
        return bad("MAILGATE_SHUTDOWN_TIMEOUT", "expected a duration up to 1h, such as 30s");
    /* Rendered message size: bytes, or K/M (binary) multiples. */
    const char *ms = env("MAILGATE_MAX_MESSAGE_SIZE", "25M");
    unsigned long long mb = strtoull(ms, &end, 10);
    unsigned long long mult = (*end == 'K' || *end == 'k') ? 1024 : (*end == 'M' || *end == 'm') ? 1024 * 1024 : 1;
    if (mult > 1)
        end++;
    if (!isdigit((unsigned char)ms[0]) || *end || mb == 0 || mb > GW_MESSAGE_MAX_LIMIT / mult ||
        mb * mult < 1024)
        return bad("MAILGATE_MAX_MESSAGE_SIZE", "expected bytes, or a size such as 512K or 25M, from 1K to 48M");
    c->max_message = (size_t)(mb * mult);
    if (mime_dkim_keys_load(env("MAILGATE_DKIM_KEYS", ""), &c->dkim, err, sizeof(err)) < 0)
        return bad("MAILGATE_DKIM_KEYS", err);
    mime_dkim_keys_free(dkim_keys);
    dkim_keys = c->dkim;
    /* Back-off between attempts; the last step repeats until MAX_AGE. */
    char sched[512];
    if (copy(sched, sizeof(sched), "MAILGATE_RETRY_SCHEDULE", "1m,5m,15m,30m,1h"))
        return -1;
    char *save = NULL;
    for (char *t = strtok_r(sched, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (c->nretry == GW_RETRY_STEPS_MAX)
            return bad("MAILGATE_RETRY_SCHEDULE", "at most 16 steps");
        if (util_parse_duration(t, &c->retry_ms[c->nretry]) < 0 || c->retry_ms[c->nretry] <= 0)
            return bad("MAILGATE_RETRY_SCHEDULE", "expected comma-separated durations such as 1m,5m,1h");
        c->nretry++;
    }
    if (c->nretry == 0)
        return bad("MAILGATE_RETRY_SCHEDULE", "needs at least one step");
    /* Webhooks: the SSRF guard's switch, and the back-off between
     * delivery attempts (the last step repeats until 24 h have passed). */
    const char *ap = env("MAILGATE_WEBHOOK_ALLOW_PRIVATE", "false");
    if (strcmp(ap, "true") && strcmp(ap, "false"))
        return bad("MAILGATE_WEBHOOK_ALLOW_PRIVATE", "expected true or false");
    c->webhook_allow_private = !strcmp(ap, "true");
    if (copy(sched, sizeof(sched), "MAILGATE_WEBHOOK_RETRY_SCHEDULE", "5s,30s,2m,10m,30m,1h,2h,4h"))
        return -1;
    save = NULL;
    for (char *t = strtok_r(sched, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (c->webhook_nretry == GW_RETRY_STEPS_MAX)
            return bad("MAILGATE_WEBHOOK_RETRY_SCHEDULE", "at most 16 steps");
        if (duration_ms(t, &c->webhook_retry_ms[c->webhook_nretry]) < 0 ||
            c->webhook_retry_ms[c->webhook_nretry] <= 0 || c->webhook_retry_ms[c->webhook_nretry] > 86400000)
            return bad("MAILGATE_WEBHOOK_RETRY_SCHEDULE",
                       "expected comma-separated durations up to 24h such as 5s,30s,2m (or 200ms)");
        c->webhook_nretry++;
    }
    if (c->webhook_nretry == 0)
        return bad("MAILGATE_WEBHOOK_RETRY_SCHEDULE", "needs at least one step");
    return 0;
}

/* mask_url - copy a URL with any password replaced by "***". */
static void mask_url(const char *in, char *out, size_t len)
{
    struct buf b;
    buf_init(&b, len - 1);
    const char *p = in;
    while (*p) {
        const char *scheme = strstr(p, "://");
        if (!scheme) {
            buf_puts(&b, p);
            break;
        }
        buf_append(&b, p, (size_t)(scheme + 3 - p));
        p = scheme + 3;
        const char *stop = p + strcspn(p, "/?,");
        const char *at = memchr(p, '@', (size_t)(stop - p));
        if (at) {
            const char *colon = memchr(p, ':', (size_t)(at - p));
            if (colon) {
                buf_append(&b, p, (size_t)(colon - p));
                buf_puts(&b, ":***");
                p = at;
            }
        }
        size_t seg = strcspn(p, ",");
        buf_append(&b, p, seg);
        p += seg;
        if (*p == ',')
            buf_putc(&b, *p++);
    }
    util_strlcpy(out, b.data ? b.data : "", len);
    buf_free(&b);
}

void gw_config_log(const struct gw_config *c)
{
    char redis[1024], relays[4096], age[32], days[16];
    mask_url(c->redis_url, redis, sizeof(redis));
    mask_url(c->relays, relays, sizeof(relays));
    snprintf(age, sizeof(age), "%llds", (long long)(c->max_age_ms / 1000));
    snprintf(days, sizeof(days), "%d", c->retention_days);
    char maxmsg[24], dkim[1024];
    snprintf(maxmsg, sizeof(maxmsg), "%zu", c->max_message);
    mime_dkim_keys_describe(c->dkim, dkim, sizeof(dkim)); /* domains and selectors, never paths or keys */
    log_kv(LOG_INFO, "config", "listen", c->listen, "admin_listen", c->admin_listen, "redis_url",
           redis, "relays", relays, "helo", c->helo, "public_url", c->public_url, "max_age", age,
           "retention_days", days, "log_level", c->log_level, "max_message_size", maxmsg, "dkim_keys", dkim,
           "secret", c->secret_len ? "***" : "(generated, kept in Redis mg:secret)", NULL);
    /* RFC 8058 §3.1: the one-click URI must be https. Sends with
     * "unsubscribe": true still get the headers (development). */
    if (!strncmp(c->public_url, "http://", 7))
        log_kv(LOG_WARN, "public_url_not_https", "public_url", c->public_url, "reason",
               "List-Unsubscribe one-click links (RFC 8058) need an https MAILGATE_PUBLIC_URL; "
               "mail providers may ignore them over http",
               NULL);
}
