/*
 * gw_metrics.c - GET /metrics in the Prometheus text format (0.0.4).
 *
 * Queue numbers come from Redis (shared by every process); request and
 * delivery counters are this process's own, so a Prometheus sums them
 * across instances. No label carries a tenant, address or secret.
 */
#include "gateway/gw.h"

#include <stdatomic.h>
#include <stdio.h>

#include "common/buf.h"
#include "common/util.h"
#include "smtp/smtp_deliver.h"

static atomic_ullong http_by_class[6]; /* index: status / 100 */

void gw_count_http(int status)
{
    int c = status / 100;
    if (c >= 1 && c <= 5)
        atomic_fetch_add(&http_by_class[c], 1);
}

static void metric(struct buf *b, const char *name, const char *type, const char *help)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void gw_metrics(struct gw_req *req, struct gw_resp *resp)
{
    struct buf b;
    buf_init(&b, 64 * 1024);
    metric(&b, "mailgate_http_requests_total", "counter", "HTTP requests answered, by status class.");
    for (int c = 1; c <= 5; c++)
        buf_printf(&b, "mailgate_http_requests_total{code=\"%dxx\"} %llu\n", c,
                   (unsigned long long)atomic_load(&http_by_class[c]));

    struct smtp_deliver_counters dc;
    smtp_deliver_counters_get(&dc);
    metric(&b, "mailgate_recipients_total", "counter", "Recipient outcomes recorded by this process's senders.");
    buf_printf(&b, "mailgate_recipients_total{outcome=\"delivered\"} %llu\n", dc.delivered);
    buf_printf(&b, "mailgate_recipients_total{outcome=\"deferred\"} %llu\n", dc.deferred);
    buf_printf(&b, "mailgate_recipients_total{outcome=\"bounced\"} %llu\n", dc.bounced);
    metric(&b, "mailgate_smtp_transactions_total", "counter", "SMTP delivery attempts (one per job).");
    buf_printf(&b, "mailgate_smtp_transactions_total %llu\n", dc.attempts);
    metric(&b, "mailgate_smtp_connections_total", "counter", "SMTP connections opened.");
    buf_printf(&b, "mailgate_smtp_connections_total %llu\n", dc.connections);
    metric(&b, "mailgate_smtp_connect_failures_total", "counter", "SMTP connections that could not be opened.");
    buf_printf(&b, "mailgate_smtp_connect_failures_total %llu\n", dc.connect_failures);

    struct queue_stats st;
    int up = req->q && queue_stats_get(req->q, &st) == 0;
    metric(&b, "mailgate_redis_up", "gauge", "1 when Redis answered this scrape.");
    buf_printf(&b, "mailgate_redis_up %d\n", up);
    if (up) {
        metric(&b, "mailgate_queue_jobs", "gauge", "Jobs in the delivery stream, pending included.");
        buf_printf(&b, "mailgate_queue_jobs %lld\n", st.stream_len);
        metric(&b, "mailgate_queue_pending", "gauge", "Jobs read by a sender and not yet acknowledged.");
        buf_printf(&b, "mailgate_queue_pending %lld\n", st.pending);
        metric(&b, "mailgate_queue_delayed", "gauge", "Retries and scheduled sends waiting for their time.");
        buf_printf(&b, "mailgate_queue_delayed %lld\n", st.delayed);
        metric(&b, "mailgate_messages_open", "gauge", "Messages with a recipient not yet in a terminal state.");
        buf_printf(&b, "mailgate_messages_open %lld\n", st.open_messages);
        metric(&b, "mailgate_oldest_open_age_seconds", "gauge",
               "Age of the oldest message with a non-terminal recipient (0 when none).");
        double age = st.oldest_open_ms ? (double)(util_now_ms() - st.oldest_open_ms) / 1000.0 : 0.0;
        buf_printf(&b, "mailgate_oldest_open_age_seconds %.3f\n", age < 0 ? 0.0 : age);
    }
    resp->status = 200;
    resp->text = buf_steal(&b);
    resp->text_type = "text/plain; version=0.0.4; charset=utf-8";
}
