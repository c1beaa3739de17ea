/*
 * gw_cli.c - the administrative subcommands: `key create|list|revoke` and
 * `tenant set`. They talk to Redis directly and print results on stdout.
 * SECURITY: a new key is printed once and only its hash is stored.
 */
#include "gateway/gw.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const all_scopes = "send,read,templates,webhooks,suppressions";

static int usage(void)
{
    fprintf(stderr,
            "usage: mailgate key create --tenant NAME [--scopes send,read,...] [--test]\n"
            "       mailgate key list --tenant NAME\n"
            "       mailgate key revoke KEY_ID\n"
            "       mailgate tenant set NAME [--rate N/s] [--daily N] [--max-recipients N] [--allowed-from dom,...]\n");
    return 2;
}

/* scopes_ok - every comma-separated word is a known scope. */
static int scopes_ok(const char *s)
{
    char copy[256], *save = NULL;
    if (strlen(s) >= sizeof(copy) || !*s)
        return 0;
    strcpy(copy, s);
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char w[64];
        snprintf(w, sizeof(w), ",%s,", t);
        char all[128];
        snprintf(all, sizeof(all), ",%s,", all_scopes);
        if (!strstr(all, w))
            return 0;
    }
    return 1;
}

static struct queue *open_queue(const struct gw_config *c)
{
    char err[256];
    struct queue *q = queue_open(c->redis_url, err, sizeof(err));
    if (!q)
        fprintf(stderr, "mailgate: MAILGATE_REDIS_URL: %s\n", err);
    else if (queue_ping(q) < 0) {
        fprintf(stderr, "mailgate: cannot reach Redis at MAILGATE_REDIS_URL\n");
        queue_close(q);
        q = NULL;
    }
    return q;
}

int gw_cli_key(const struct gw_config *c, int argc, char **argv)
{
    if (argc < 1)
        return usage();
    const char *tenant = NULL, *scopes = all_scopes;
    int test = 0;
    if (!strcmp(argv[0], "revoke")) {
        if (argc != 2)
            return usage();
        struct queue *q = open_queue(c);
        if (!q)
            return 1;
        int rc = queue_key_revoke(q, argv[1]);
        queue_close(q);
        if (rc > 0)
            fprintf(stderr, "mailgate: no key with id %s\n", argv[1]);
        return rc == 0 ? 0 : 1;
    }
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tenant") && i + 1 < argc)
            tenant = argv[++i];
        else if (!strcmp(argv[i], "--scopes") && i + 1 < argc)
            scopes = argv[++i];
        else if (!strcmp(argv[i], "--test"))
            test = 1;
        else
            return usage();
    }
    if (!tenant || !queue_tenant_name_ok(tenant)) {
        fprintf(stderr, "mailgate: --tenant NAME is required: 1-64 of A-Z a-z 0-9 . _ -\n");
        return 2;
    }
    if (!scopes_ok(scopes)) {
        fprintf(stderr, "mailgate: --scopes takes a comma list of %s\n", all_scopes);
        return 2;
    }
    struct queue *q = open_queue(c);
    if (!q)
        return 1;
    int rc = 1;
    if (!strcmp(argv[0], "create")) {
        char key[160];
        if (queue_key_create(q, tenant, scopes, test, key, sizeof(key)) == 0) {
            printf("%s\n", key);
            rc = 0;
        } else {
            fprintf(stderr, "mailgate: could not store the key in Redis\n");
        }
    } else if (!strcmp(argv[0], "list")) {
        json_t *list;
        if (queue_key_list(q, tenant, &list) == 0) {
            size_t i;
            json_t *k;
            json_array_foreach(list, i, k) {
                printf("%s\t%s\t%s\t%s%s\n", json_string_value(json_object_get(k, "id")),
                       json_string_value(json_object_get(k, "prefix")),
                       json_string_value(json_object_get(k, "scopes")),
                       json_string_value(json_object_get(k, "created_at")),
                       json_is_true(json_object_get(k, "test")) ? "\ttest" : "");
            }
            json_decref(list);
            rc = 0;
        }
    } else {
        rc = usage();
    }
    queue_close(q);
    return rc;
}

int gw_cli_tenant(const struct gw_config *c, int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[0], "set") != 0)
        return usage();
    const char *tenant = argv[1];
    if (!queue_tenant_name_ok(tenant)) {
        fprintf(stderr, "mailgate: tenant NAME: 1-64 of A-Z a-z 0-9 . _ -\n");
        return 2;
    }
    const char *pairs[16];
    int np = 0;
    for (int i = 2; i < argc; i++) {
        if (i + 1 >= argc)
            return usage();
        const char *opt = argv[i], *val = argv[++i];
        char *end;
        if (!strcmp(opt, "--rate")) {
            long r = strtol(val, &end, 10);
            if (r < 1 || (strcmp(end, "/s") && *end))
                return usage();
            pairs[np++] = "rate";
        } else if (!strcmp(opt, "--daily")) {
            if (strtol(val, &end, 10) < 1 || *end)
                return usage();
            pairs[np++] = "daily";
        } else if (!strcmp(opt, "--max-recipients")) {
            long m = strtol(val, &end, 10);
            if (m < 1 || m > 1000 || *end)
                return usage();
            pairs[np++] = "max_recipients";
        } else if (!strcmp(opt, "--allowed-from")) {
            pairs[np++] = "allowed_from";
        } else {
            return usage();
        }
        pairs[np++] = val;
        if (np >= 14)
            return usage();
    }
    pairs[np] = NULL;
    struct queue *q = open_queue(c);
    if (!q)
        return 1;
    int rc = queue_tenant_set(q, tenant, pairs);
    queue_close(q);
    return rc == 0 ? 0 : 1;
}
