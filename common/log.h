/*
 * log.h - structured logs: one JSON object per line on stderr.
 *
 * Every line has the keys "ts" (RFC 3339, ms), "level" and "event", then the
 * caller's key/value pairs. Values are JSON-escaped, stripped of control
 * characters and capped at LOG_VALUE_MAX bytes, so text a remote server sent
 * can be logged safely.
 * SECURITY: never pass API keys, passwords, secrets or message bodies.
 */
#ifndef MG_LOG_H
#define MG_LOG_H

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

#define LOG_VALUE_MAX 512 /* bytes of one value kept in a log line */

/* log_set_level - lines below level are dropped. */
void log_set_level(enum log_level level);

/* log_parse_level - "debug|info|warn|error" to a level. Returns 0 or -1. */
int log_parse_level(const char *s, enum log_level *out);

/* log_kv - write one line: event name, then NULL-terminated pairs of
 * (const char *key, const char *value); a NULL value is skipped.
 * Thread-safe: a line is written with one write(2). */
void log_kv(enum log_level level, const char *event, ...);

/* log_hold - from now on this thread's lines are kept in a thread-local
 * buffer (at most PIPE_BUF bytes, so that one write stays whole on a pipe;
 * past that they are written at once) and written
 * together, with one write(2), by log_release: a request's
 * lines then cost one system call. Lines of other threads never
 * interleave with them. Hold only around short work that never waits long
 * (an API request), since held lines are late by that long and lost if
 * the process dies meanwhile. */
void log_hold(void);

/* log_release - write the lines held since log_hold and stop holding. */
void log_release(void);

#endif
