/*
 * main.c - the mailgate command: `serve [--role all|api|sender]`, `key`,
 * `tenant`, `--version`, `--help`.
 *
 * serve runs until SIGINT or SIGTERM, then stops the HTTP listener, lets
 * the senders finish their current transaction, QUITs and exits 0.
 */
#include <curl/curl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "gateway/gw.h"
#include "smtp/smtp_deliver.h"

#define MAILGATE_VERSION "0.1.0"

static void help(FILE *f)
{
    fprintf(f,
            "mailgate %s - transactional email gateway\n\n"
            "usage:\n"
            "  mailgate serve [--role all|api|sender]   run the gateway (default: every role)\n"
            "  mailgate key create --tenant NAME [--scopes send,read,templates,webhooks,suppressions] [--test]\n"
            "  mailgate key list --tenant NAME\n"
            "  mailgate key revoke KEY_ID\n"
            "  mailgate tenant set NAME [--rate N/s] [--daily N] [--max-recipients N] [--allowed-from dom,...]\n"
            "  mailgate --version | --help\n\n"
            "Configuration comes from MAILGATE_* environment variables; see README.md.\n",
            MAILGATE_VERSION);
}

/* check_redis - refuse to start on a Redis older than 7.0 or one that may
 * evict keys: eviction silently deletes queued mail. An unreachable Redis is not fatal here
 * (the API answers 503 and senders reconnect until it is back). */
static int check_redis(const struct gw_config *c)
{
    char err[256], policy[64];
    struct queue *q = queue_open(c->redis_url, err, sizeof(err));
    if (!q) {
        fprintf(stderr, "mailgate: MAILGATE_REDIS_URL: %s\n", err);
        return -1;
    }
    int rc = 0, major = 0, minor = 0;
    if (queue_redis_version(q, &major, &minor) == 0 && major < QUEUE_REDIS_MIN_MAJOR) {
        fprintf(stderr, "mailgate: Redis %d.%d is too old; mailgate needs Redis %d.0 or later\n", major, minor,
                QUEUE_REDIS_MIN_MAJOR);
        queue_close(q);
        return -1;
    }
    if (queue_maxmemory_policy(q, policy, sizeof(policy)) < 0) {
        log_kv(LOG_WARN, "redis_unreachable_at_start", "reason", "will retry; the API answers 503 until then", NULL);
    } else if (strcmp(policy, "noeviction") != 0) {
        fprintf(stderr,
                "mailgate: Redis maxmemory-policy is '%s'; it must be 'noeviction', or Redis may silently "
                "delete queued mail (set it with: CONFIG SET maxmemory-policy noeviction, and in redis.conf)\n",
                policy);
        rc = -1;
    }
    queue_close(q);
    return rc;
}

static int serve(const struct gw_config *c, int argc, char **argv)
{
    const char *role = "all";
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--role") && i + 1 < argc)
            role = argv[++i];
        else {
            help(stderr);
            return 2;
        }
    }
    int api = !strcmp(role, "all") || !strcmp(role, "api");
    int sender = !strcmp(role, "all") || !strcmp(role, "sender");
    if (!api && !sender) {
        fprintf(stderr, "mailgate: --role must be all, api or sender\n");
        return 2;
    }
    /* Block the stop signals before any thread exists, so every thread
     * inherits the mask and only sigwait() below ever receives them. */
    sigset_t stopset;
    sigemptyset(&stopset);
    sigaddset(&stopset, SIGINT);
    sigaddset(&stopset, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stopset, NULL);
    signal(SIGPIPE, SIG_IGN);
    gw_config_log(c);

    if (check_redis(c) < 0)
        return 1;
    /* libcurl's global state (TLS, resolver) is set up once, before any
     * thread exists: the webhook dispatcher's threads use it. */
    if (sender && curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "mailgate: cannot initialise libcurl\n");
        return 1;
    }
    /* The API's cache of keys and tenant settings, kept by Redis
     * invalidations; not used until its subscriber is connected. */
    char err[256];
    if (api && queue_cache_start(c->redis_url, err, sizeof(err)) < 0) {
        fprintf(stderr, "mailgate: MAILGATE_REDIS_URL: %s\n", err);
        return 1;
    }
    struct gw_config http = *c;
    if (!api) { /* sender: health and metrics only, when asked for */
        snprintf(http.listen, sizeof(http.listen), "%s", c->admin_listen);
        http.admin_only = 1;
    }
    if ((api || http.listen[0]) && gw_http_start(&http) < 0) {
        queue_cache_stop();
        return 1;
    }
    if (sender) {
        struct smtp_deliver_config dc = {
            .redis_url = c->redis_url, .relays = c->relays, .helo = c->helo,
            .retry_ms = c->retry_ms, .nretry = c->nretry, .max_age_ms = c->max_age_ms,
            .timeouts = c->smtp_timeouts,
            .claim_timeout_ms = c->claim_timeout_ms,
        };
        if (smtp_deliver_start(&dc) < 0) {
            gw_http_stop();
            queue_cache_stop();
            return 1;
        }
        if (gw_dispatch_start(c) < 0) {
            smtp_deliver_stop((int)c->shutdown_ms);
            gw_http_stop();
            queue_cache_stop();
            return 1;
        }
    }
    log_kv(LOG_INFO, "started", "role", role, "version", MAILGATE_VERSION, NULL);
    int sig = 0;
    sigwait(&stopset, &sig);
    log_kv(LOG_INFO, "stopping", "signal", sig == SIGTERM ? "TERM" : "INT", NULL);
    /* Refuse new sends at once, let the senders finish what is in flight
     * (up to the deadline), then close the listener. */
    gw_http_drain();
    if (sender) {
        smtp_deliver_stop((int)c->shutdown_ms);
        gw_dispatch_stop((int)c->shutdown_ms);
    }
    gw_http_stop();
    queue_cache_stop();
    log_kv(LOG_INFO, "stopped", NULL);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        help(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("mailgate %s\n", MAILGATE_VERSION);
        return 0;
    }
    struct gw_config c;
    if (gw_config_load(&c) < 0)
        return 2;
    queue_set_retention_ms((int64_t)c.retention_days * 86400000);
    if (!strcmp(argv[1], "serve"))
        return serve(&c, argc - 2, argv + 2);
    if (!strcmp(argv[1], "key"))
        return gw_cli_key(&c, argc - 2, argv + 2);
    if (!strcmp(argv[1], "tenant"))
        return gw_cli_tenant(&c, argc - 2, argv + 2);
    help(stderr);
    return 2;
}
