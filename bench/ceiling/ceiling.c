/*
 * ceiling.c - the fastest plausible "accept a message" HTTP server, as the
 * ceiling of benchmark (a) in bench/suite.sh. Not part of mailgate.
 *
 *   ceiling PORT REDIS_PORT
 *
 * It does only what any accept path must do, with the same libraries and
 * the same libmicrohttpd threading model as mailgate (internal polling,
 * epoll, a pool of 4 threads):
 *   - read the request body (POST, any path);
 *   - require an "Authorization: Bearer ..." header (not checked further);
 *   - parse the body with jansson and require a JSON object;
 *   - XADD it (re-serialized, compact) to the stream mg:ceiling with
 *     hiredis, over one blocking connection per MHD thread;
 *   - answer 202 {"id":"<stream id>"}.
 * Any other method gets 200 "ok" without touching Redis (the benchmark's
 * wrk script uses GET to idle once its message count is reached).
 *
 * No validation, no MIME, no API key lookup, no events, no indexes: the
 * difference to mailgate's 202 is exactly the work mailgate does on top.
 * Build (bench/suite.sh does this):
 *   cc -O2 -o ceiling ceiling.c $(pkg-config --cflags --libs libmicrohttpd jansson hiredis) -pthread
 */
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <microhttpd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#define BODY_MAX (1024 * 1024)

static int redis_port;
static __thread redisContext *rc;

struct req {
    char *buf;
    size_t len, cap;
    int too_big;
};

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *body)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(r, "Content-Type", "application/json");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static redisContext *redis(void)
{
    if (rc && !rc->err)
        return rc;
    if (rc)
        redisFree(rc);
    rc = redisConnect("127.0.0.1", redis_port);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *data,
                                  size_t *data_len, void **con_cls)
{
    (void)cls, (void)url, (void)version;
    if (strcmp(method, "POST") != 0)
        return reply(c, 200, "\"ok\"");
    struct req *rq = *con_cls;
    if (!rq) {
        rq = calloc(1, sizeof(*rq));
        if (!rq)
            return MHD_NO;
        *con_cls = rq;
        return MHD_YES;
    }
    if (*data_len) {
        if (rq->len + *data_len > BODY_MAX) {
            rq->too_big = 1;
        } else {
            if (rq->len + *data_len > rq->cap) {
                size_t cap = rq->cap ? rq->cap : 4096;
                while (cap < rq->len + *data_len)
                    cap *= 2;
                char *nb = realloc(rq->buf, cap);
                if (!nb)
                    return MHD_NO;
                rq->buf = nb;
                rq->cap = cap;
            }
            memcpy(rq->buf + rq->len, data, *data_len);
            rq->len += *data_len;
        }
        *data_len = 0;
        return MHD_YES;
    }
    if (rq->too_big)
        return reply(c, 413, "{\"error\":\"too large\"}");
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!auth || strncasecmp(auth, "Bearer ", 7) != 0)
        return reply(c, 401, "{\"error\":\"unauthorized\"}");
    json_error_t jerr;
    json_t *msg = json_loadb(rq->buf ? rq->buf : "", rq->len, 0, &jerr);
    if (!msg || !json_is_object(msg)) {
        json_decref(msg);
        return reply(c, 400, "{\"error\":\"bad json\"}");
    }
    char *s = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    redisContext *r = redis();
    redisReply *x = r ? redisCommand(r, "XADD mg:ceiling * m %s", s) : NULL;
    free(s);
    if (!x || x->type != REDIS_REPLY_STRING) {
        if (x)
            freeReplyObject(x);
        return reply(c, 503, "{\"error\":\"redis\"}");
    }
    char out[96];
    snprintf(out, sizeof(out), "{\"id\":\"%s\",\"status\":\"queued\"}", x->str);
    freeReplyObject(x);
    return reply(c, 202, out);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)c, (void)toe;
    struct req *rq = *con_cls;
    if (rq) {
        free(rq->buf);
        free(rq);
        *con_cls = NULL;
    }
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: ceiling PORT REDIS_PORT\n");
        return 2;
    }
    redis_port = atoi(argv[2]);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* MHD threads inherit the mask */
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* loopback only */
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, 0, NULL, NULL, on_request, NULL,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_THREAD_POOL_SIZE, 4u, MHD_OPTION_NOTIFY_COMPLETED,
        on_completed, NULL, MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_CONNECTION_LIMIT, 1024u,
        MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "ceiling: cannot listen on port %s\n", argv[1]);
        return 1;
    }
    int sig;
    sigwait(&set, &sig);
    MHD_stop_daemon(d);
    return 0;
}
