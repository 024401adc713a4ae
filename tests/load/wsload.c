/*
 * wsload: a native WebSocket load client for tests/load/ws_bench.py (--client native).
 *
 * The Python load client costs the machine about as much CPU per message as the
 * server does; on a 2-core machine shared by both, that CPU is taken from the
 * server and the benchmark measures the client. This client does the same work
 * (N connections, each keeping up to DEPTH `send` frames unacked until COUNT are
 * acked, one send time per message, ack latency = ack received - send written)
 * in a single epoll loop for a few microseconds a message.
 *
 * Usage: wsload HOST PORT TO BODY_BYTES COUNT DEPTH START_AT < tokens
 *   tokens: one access token per line, one connection each.
 *   START_AT: Unix time (seconds, fractional) at which every connection starts.
 * Output (stdout): "FIRST LAST" (Unix seconds of the first send and last ack),
 * then one ack latency per line in microseconds. Errors: a message on stderr
 * and exit status 2. Only ever pointed at 127.0.0.1 by ws_bench.
 *
 * Frames are masked with a random key per connection (RFC 6455 5.3); server
 * frames are parsed by hand: text (must be an ack), ping (answered), close (error).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TIMEOUT_SECONDS 300.0

typedef struct {
    int fd;
    long sent, acked;
    double *sent_at; /* monotonic seconds, by sequence number */
    unsigned char mask[4];
    unsigned char *rbuf;
    size_t rlen, rcap;
    unsigned char *wbuf;
    size_t wlen, woff, wcap;
    int writing; /* EPOLLOUT armed */
} conn_t;

static long COUNT;
static int DEPTH;
static const char *TO;
static char *BODY;
static char RUN_A[9], RUN_B[4], RUN_C[4];
static double *LAT;
static long NLAT;

static void die(const char *what) {
    fprintf(stderr, "wsload: %s%s%s\n", what, errno ? ": " : "", errno ? strerror(errno) : "");
    exit(2);
}

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void reserve(unsigned char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return;
    size_t n = *cap ? *cap : 4096;
    while (n < need) n *= 2;
    *buf = realloc(*buf, n);
    if (!*buf) die("out of memory");
    *cap = n;
}

/* Append one masked client frame (opcode, payload) to the connection's write buffer. */
static void put_frame(conn_t *c, int opcode, const char *payload, size_t n) {
    reserve(&c->wbuf, &c->wcap, c->wlen + n + 14);
    unsigned char *p = c->wbuf + c->wlen;
    *p++ = 0x80 | opcode;
    if (n < 126) {
        *p++ = 0x80 | n;
    } else if (n < 65536) {
        *p++ = 0x80 | 126;
        *p++ = n >> 8;
        *p++ = n & 0xff;
    } else {
        *p++ = 0x80 | 127;
        for (int i = 7; i >= 0; i--) *p++ = (n >> (8 * i)) & 0xff;
    }
    memcpy(p, c->mask, 4);
    p += 4;
    for (size_t i = 0; i < n; i++) p[i] = payload[i] ^ c->mask[i & 3];
    c->wlen = (p + n) - c->wbuf;
}

static void queue_send(conn_t *c, int index) {
    static char frame[70000];
    long seq = c->sent++;
    /* A valid, unique UUID: run id (random per process), connection index, sequence number. */
    int n = snprintf(frame, sizeof frame,
                     "{\"type\":\"send\",\"message_id\":\"%s-%04x-4%s-8%s-%012lx\",\"to\":\"%s\",\"body\":\"%s\"}",
                     RUN_A, index & 0xffff, RUN_B, RUN_C, seq, TO, BODY);
    c->sent_at[seq] = mono();
    put_frame(c, 1, frame, (size_t)n);
}

static void flush(int ep, conn_t *c, int index) {
    while (c->woff < c->wlen) {
        ssize_t w = write(c->fd, c->wbuf + c->woff, c->wlen - c->woff);
        if (w < 0) {
            if (errno == EAGAIN) break;
            die("write");
        }
        c->woff += w;
    }
    if (c->woff == c->wlen) {
        c->woff = c->wlen = 0;
        if (c->writing) {
            struct epoll_event ev = {.events = EPOLLIN, .data.u32 = index};
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            c->writing = 0;
        }
    } else if (!c->writing) {
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = index};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->writing = 1;
    }
}

/* Parse complete server frames; returns the number of acks seen. */
static long consume(conn_t *c, double now) {
    long acks = 0;
    size_t off = 0;
    for (;;) {
        size_t avail = c->rlen - off;
        if (avail < 2) break;
        unsigned char *p = c->rbuf + off;
        int opcode = p[0] & 0x0f;
        uint64_t n = p[1] & 0x7f;
        size_t head = 2;
        if (n == 126) {
            if (avail < 4) break;
            n = ((uint64_t)p[2] << 8) | p[3];
            head = 4;
        } else if (n == 127) {
            if (avail < 10) break;
            n = 0;
            for (int i = 0; i < 8; i++) n = (n << 8) | p[2 + i];
            head = 10;
        }
        if (avail < head + n) break;
        const char *payload = (const char *)p + head;
        if (opcode == 1) {
            /* {"type":"ack","message_id":"<36 chars>",... : the sequence number is the last 12 hex digits */
            if (n < 64 || memcmp(payload, "{\"type\":\"ack\"", 13) != 0) {
                fprintf(stderr, "wsload: unexpected frame: %.*s\n", (int)(n < 300 ? n : 300), payload);
                exit(2);
            }
            char hex[13];
            memcpy(hex, payload + 52, 12);
            hex[12] = 0;
            long seq = strtol(hex, NULL, 16);
            if (seq < 0 || seq >= c->sent) {
                fprintf(stderr, "wsload: ack for an unknown message: %.*s\n", 80, payload);
                exit(2);
            }
            LAT[NLAT++] = now - c->sent_at[seq];
            acks++;
        } else if (opcode == 9) {
            put_frame(c, 10, payload, n);
        } else if (opcode == 8) {
            fprintf(stderr, "wsload: the server closed the connection: %.*s\n", (int)(n > 2 ? n - 2 : 0),
                    n > 2 ? payload + 2 : "");
            exit(2);
        }
        off += head + n;
    }
    memmove(c->rbuf, c->rbuf + off, c->rlen - off);
    c->rlen -= off;
    return acks;
}

static int open_conn(const char *host, int port, const char *token, conn_t *c) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) die("HOST must be an IPv4 address");
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char req[8192];
    int n = snprintf(req, sizeof req,
                     "GET /ws HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: d3Nsb2FkLWJlbmNoLWtleQ==\r\nSec-WebSocket-Version: 13\r\n"
                     "Authorization: Bearer %s\r\n\r\n",
                     host, port, token);
    if (write(fd, req, n) != n) die("write handshake");
    reserve(&c->rbuf, &c->rcap, 65536);
    c->rlen = 0;
    for (;;) {
        ssize_t r = read(fd, c->rbuf + c->rlen, c->rcap - c->rlen);
        if (r <= 0) die("handshake: connection closed");
        c->rlen += r;
        unsigned char *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
        if (end) {
            if (memcmp(c->rbuf, "HTTP/1.1 101", 12) != 0) {
                fprintf(stderr, "wsload: handshake refused: %.*s\n", (int)(end - c->rbuf), c->rbuf);
                exit(2);
            }
            size_t used = end + 4 - c->rbuf;
            memmove(c->rbuf, c->rbuf + used, c->rlen - used);
            c->rlen -= used;
            break;
        }
        if (c->rlen == c->rcap) die("handshake: answer too long");
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    if (getrandom(c->mask, 4, 0) != 4) die("getrandom");
    c->fd = fd;
    return fd;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: wsload HOST PORT TO BODY_BYTES COUNT DEPTH START_AT < tokens\n");
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    TO = argv[3];
    int body_bytes = atoi(argv[4]);
    COUNT = atol(argv[5]);
    DEPTH = atoi(argv[6]);
    double start_at = atof(argv[7]);
    if (port <= 0 || body_bytes < 0 || body_bytes > 60000 || COUNT <= 0 || DEPTH <= 0) {
        fprintf(stderr, "wsload: bad arguments\n");
        return 2;
    }
    BODY = malloc(body_bytes + 1);
    memset(BODY, 'x', body_bytes);
    BODY[body_bytes] = 0;
    unsigned char rnd[8];
    if (getrandom(rnd, sizeof rnd, 0) != sizeof rnd) die("getrandom");
    snprintf(RUN_A, sizeof RUN_A, "%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3]);
    snprintf(RUN_B, sizeof RUN_B, "%03x", (rnd[4] << 4 | rnd[5] >> 4) & 0xfff);
    snprintf(RUN_C, sizeof RUN_C, "%03x", (rnd[6] << 4 | rnd[7] >> 4) & 0xfff);

    static char line[16384];
    int nconn = 0, cap = 0;
    conn_t *conns = NULL;
    int ep = epoll_create1(0);
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!*line) continue;
        if (nconn == cap) {
            cap = cap ? cap * 2 : 64;
            conns = realloc(conns, cap * sizeof *conns);
        }
        conn_t *c = &conns[nconn];
        memset(c, 0, sizeof *c);
        c->sent_at = malloc(COUNT * sizeof(double));
        open_conn(host, port, line, c);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = nconn};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
        nconn++;
    }
    if (!nconn) die("no tokens on stdin");
    LAT = malloc((size_t)nconn * COUNT * sizeof(double));

    double wait = start_at - wall();
    if (wait > 0) {
        struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
        nanosleep(&ts, NULL);
    }
    double first = wall();
    double mono_first = mono();
    for (int i = 0; i < nconn; i++) {
        for (int k = 0; k < DEPTH && conns[i].sent < COUNT; k++) queue_send(&conns[i], i);
        flush(ep, &conns[i], i);
    }
    long total = (long)nconn * COUNT, done = 0;
    struct epoll_event events[256];
    while (done < total) {
        int ready = epoll_wait(ep, events, 256, 1000);
        if (ready < 0 && errno != EINTR) die("epoll_wait");
        if (mono() - mono_first > TIMEOUT_SECONDS) die("timed out");
        for (int e = 0; e < ready; e++) {
            int i = events[e].data.u32;
            conn_t *c = &conns[i];
            if (events[e].events & EPOLLOUT) flush(ep, c, i);
            if (!(events[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            for (;;) {
                reserve(&c->rbuf, &c->rcap, c->rlen + 65536);
                ssize_t r = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
                if (r < 0) {
                    if (errno == EAGAIN) break;
                    die("read");
                }
                if (r == 0) die("the server closed a connection");
                c->rlen += r;
                if ((size_t)r < 65536) break;
            }
            long acks = consume(c, mono());
            c->acked += acks;
            done += acks;
            for (long k = 0; k < acks && c->sent < COUNT; k++) queue_send(c, i);
            if (c->wlen) flush(ep, c, i);
        }
    }
    double last = wall();
    printf("%.6f %.6f\n", first, last);
    for (long i = 0; i < NLAT; i++) printf("%.1f\n", LAT[i] * 1e6);
    return 0;
}
