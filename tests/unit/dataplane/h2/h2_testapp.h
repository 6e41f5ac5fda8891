/* A small HTTP/2 server application on ztm_h2, shared by the in-memory
 * tests, the TCP driver that real clients talk to, and the fuzz target.
 *
 *   GET  /bytes/N        N bytes of tapp_pattern
 *   POST /echo           the request body back, streamed: a byte is consumed
 *                        (window credit returned) only once it has been
 *                        pulled into an outgoing DATA frame
 *   POST /hold           body received but not consumed until tapp_release();
 *                        200 with no body after the request ends
 *   GET  /trailers/N     N bytes, then trailers grpc-status: 0
 *   GET  /trailers-late/N  N bytes; trailers only when tapp_send_late_trailers()
 *   GET  /trailers-only  200 + grpc-status: 7 in the head, END_STREAM
 *   GET  /big-head/N     200 with one response header of N bytes
 *   anything else        404, no body */
#ifndef ZTM_TESTS_H2_TESTAPP_H
#define ZTM_TESTS_H2_TESTAPP_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/h2/h2.h"

static inline uint8_t tapp_pattern(uint64_t i)
{
    return (uint8_t)((i * 2654435761u) >> 13);
}

enum { TK_BYTES, TK_ECHO, TK_HOLD, TK_TRAILERS, TK_TRAILERS_LATE, TK_OTHER };

typedef struct {
    int32_t id;
    int kind;
    uint64_t total, sent;
    uint8_t *buf; /* echo: received, not yet sent back */
    size_t off, len, cap;
    bool req_done;
    uint64_t received, unconsumed;
} tapp_stream_t;

#define TAPP_HELD_MAX 512

typedef struct {
    size_t n_requests, n_closed, n_closed_ok, live, n_trailers;
    char last_method[16], last_protocol[32], last_trailer[32];
    uint32_t last_close_error;
    uint64_t received_total, unconsumed_total, max_unconsumed_total;
    size_t max_echo_buffered;
    bool oom;
    /* held bytes of /hold streams, by stream id (closed ones included) */
    struct {
        int32_t id;
        uint64_t n;
    } held[TAPP_HELD_MAX];
    size_t n_held;
    int32_t late[TAPP_HELD_MAX]; /* /trailers-late streams waiting */
    size_t n_late;
} tapp_t;

static void tapp_hold(tapp_t *a, int32_t id, uint64_t n)
{
    for (size_t i = 0; i < a->n_held; i++)
        if (a->held[i].id == id) {
            a->held[i].n += n;
            return;
        }
    if (a->n_held < TAPP_HELD_MAX)
        a->held[a->n_held++] = (typeof(a->held[0])){id, n};
}

/* Consumes every held byte. */
static inline void tapp_release(tapp_t *a, ztm_h2_session_t *s)
{
    for (size_t i = 0; i < a->n_held; i++) {
        ztm_h2_consume(s, a->held[i].id, a->held[i].n);
        a->unconsumed_total -= a->held[i].n;
    }
    a->n_held = 0;
}

static inline void tapp_send_late_trailers(tapp_t *a, ztm_h2_session_t *s)
{
    ztm_h2_header_t t[] = {{"grpc-status", 11, "0", 1}, {"grpc-message", 12, "late", 4}};
    for (size_t i = 0; i < a->n_late; i++)
        ztm_h2_trailers(s, a->late[i], t, 2);
    a->n_late = 0;
}

static uint64_t tapp_num(const char *p)
{
    uint64_t n = strtoull(p, NULL, 10);
    return n > (1ull << 34) ? (1ull << 34) : n;
}

static void tapp_on_request(ztm_h2_session_t *s, void *user, int32_t id, void *sdata,
                            const ztm_h2_msg_t *req)
{
    tapp_t *a = user;
    a->n_requests++;
    tapp_stream_t *st = calloc(1, sizeof(*st));
    if (!st) {
        a->oom = true;
        ztm_h2_reset(s, id, ZTM_H2_INTERNAL_ERROR);
        return;
    }
    st->id = id;
    a->live++;
    snprintf(a->last_method, sizeof(a->last_method), "%s", req->method ? req->method : "");
    snprintf(a->last_protocol, sizeof(a->last_protocol), "%s", req->protocol ? req->protocol : "");
    ztm_h2_stream_set_data(s, id, st);
    const char *path = req->path ? req->path : "";
    static const ztm_h2_header_t ct = {"content-type", 12, "application/octet-stream", 24};
    unsigned flags = ZTM_H2_BODY;
    if (!strncmp(path, "/bytes/", 7)) {
        st->kind = TK_BYTES;
        st->total = tapp_num(path + 7);
    } else if (!strcmp(path, "/echo")) {
        st->kind = TK_ECHO;
    } else if (!strcmp(path, "/hold")) {
        st->kind = TK_HOLD;
        return; /* answered at on_end_stream */
    } else if (!strncmp(path, "/trailers/", 10)) {
        st->kind = TK_TRAILERS;
        st->total = tapp_num(path + 10);
        flags |= ZTM_H2_TRAILERS;
    } else if (!strncmp(path, "/trailers-late/", 15)) {
        st->kind = TK_TRAILERS_LATE;
        st->total = tapp_num(path + 15);
        flags |= ZTM_H2_TRAILERS;
        if (a->n_late < TAPP_HELD_MAX)
            a->late[a->n_late++] = id;
    } else if (!strcmp(path, "/trailers-only")) {
        st->kind = TK_OTHER;
        ztm_h2_header_t h[] = {{"content-type", 12, "application/grpc", 16},
                               {"grpc-status", 11, "7", 1},
                               {"grpc-message", 12, "denied", 6}};
        ztm_h2_respond(s, id, 200, h, 3, 0);
        return;
    } else if (!strncmp(path, "/big-head/", 10)) {
        st->kind = TK_OTHER;
        size_t n = (size_t)tapp_num(path + 10);
        n = n > 200000 ? 200000 : n;
        char *v = malloc(n + 1);
        if (v) {
            memset(v, 'x', n);
            ztm_h2_header_t h = {"x-big", 5, v, n};
            ztm_h2_respond(s, id, 200, &h, 1, 0);
            free(v);
        }
        return;
    } else {
        st->kind = TK_OTHER;
        ztm_h2_respond(s, id, 404, NULL, 0, 0);
        return;
    }
    ztm_h2_respond(s, id, 200, &ct, 1, flags);
    if (st->kind == TK_TRAILERS) {
        ztm_h2_header_t t[] = {{"grpc-status", 11, "0", 1}, {"grpc-message", 12, "ok", 2}};
        ztm_h2_trailers(s, id, t, 2);
    }
}

static void tapp_on_data(ztm_h2_session_t *s, void *user, int32_t id, void *sdata,
                         const uint8_t *data, size_t len)
{
    tapp_t *a = user;
    tapp_stream_t *st = sdata;
    a->received_total += len;
    a->unconsumed_total += len;
    if (a->unconsumed_total > a->max_unconsumed_total)
        a->max_unconsumed_total = a->unconsumed_total;
    if (!st)
        return;
    st->received += len;
    if (st->kind == TK_HOLD) {
        tapp_hold(a, id, len);
        return;
    }
    if (st->kind != TK_ECHO) {
        ztm_h2_consume(s, id, len);
        a->unconsumed_total -= len;
        return;
    }
    if (st->off == st->len)
        st->off = st->len = 0;
    if (st->len + len > st->cap) {
        if (st->off) {
            memmove(st->buf, st->buf + st->off, st->len - st->off);
            st->len -= st->off;
            st->off = 0;
        }
        size_t cap = st->cap ? st->cap : 16384;
        while (cap < st->len + len)
            cap *= 2;
        uint8_t *p = realloc(st->buf, cap);
        if (!p) {
            a->oom = true;
            ztm_h2_reset(s, id, ZTM_H2_INTERNAL_ERROR);
            return;
        }
        st->buf = p;
        st->cap = cap;
    }
    memcpy(st->buf + st->len, data, len);
    st->len += len;
    if (st->len - st->off > a->max_echo_buffered)
        a->max_echo_buffered = st->len - st->off;
    ztm_h2_resume(s, id);
}

static void tapp_on_end_stream(ztm_h2_session_t *s, void *user, int32_t id, void *sdata)
{
    tapp_stream_t *st = sdata;
    if (!st)
        return;
    st->req_done = true;
    if (st->kind == TK_HOLD)
        ztm_h2_respond(s, id, 200, NULL, 0, 0);
    else if (st->kind == TK_ECHO)
        ztm_h2_resume(s, id);
}

static void tapp_on_trailers(ztm_h2_session_t *s, void *user, int32_t id, void *sdata,
                             const ztm_h2_header_t *h, size_t n)
{
    tapp_t *a = user;
    a->n_trailers++;
    if (n)
        snprintf(a->last_trailer, sizeof(a->last_trailer), "%s=%s", h[0].name, h[0].value);
}

static ssize_t tapp_read_body(ztm_h2_session_t *s, void *user, int32_t id, void *sdata,
                              uint8_t *dst, size_t max, bool *eof)
{
    tapp_t *a = user;
    tapp_stream_t *st = sdata;
    if (st->kind == TK_ECHO) {
        size_t n = st->len - st->off;
        if (n > max)
            n = max;
        if (n) {
            memcpy(dst, st->buf + st->off, n);
            st->off += n;
            ztm_h2_consume(s, id, n);
            a->unconsumed_total -= n;
        }
        *eof = st->req_done && st->off == st->len;
        return (ssize_t)n;
    }
    uint64_t left = st->total - st->sent;
    size_t n = left < max ? (size_t)left : max;
    for (size_t i = 0; i < n; i++)
        dst[i] = tapp_pattern(st->sent + i);
    st->sent += n;
    *eof = st->sent == st->total;
    return (ssize_t)n;
}

static void tapp_on_stream_close(ztm_h2_session_t *s, void *user, int32_t id, void *sdata,
                                 uint32_t error_code)
{
    tapp_t *a = user;
    tapp_stream_t *st = sdata;
    a->n_closed++;
    a->last_close_error = error_code;
    if (!error_code)
        a->n_closed_ok++;
    if (!st)
        return;
    if (st->kind == TK_ECHO && st->len > st->off) {
        /* dropped unsent: give the window back */
        ztm_h2_consume(s, id, st->len - st->off);
        a->unconsumed_total -= st->len - st->off;
    }
    for (size_t i = 0; i < a->n_late; i++)
        if (a->late[i] == id)
            a->late[i] = a->late[--a->n_late];
    a->live--;
    free(st->buf);
    free(st);
}

static const ztm_h2_callbacks_t tapp_callbacks = {
    .on_request = tapp_on_request,
    .on_data = tapp_on_data,
    .on_end_stream = tapp_on_end_stream,
    .on_trailers = tapp_on_trailers,
    .on_stream_close = tapp_on_stream_close,
    .read_body = tapp_read_body,
};

#endif
