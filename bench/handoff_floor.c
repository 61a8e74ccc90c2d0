/* The kernel's floor for handing connections over: bench/dispatch.py's anchor row.

   The least a dispatcher process can do per connection in this design, with no
   bookkeeping: wait on epoll, accept4 what waits (64 at most), give the workers their
   shares in turn as one protocol v1 conn datagram each (SCM_RIGHTS), close our copies.
   Worker messages are read and dropped. No caps, no health, no drains: not a
   dispatcher anyone should run, only what clusterui's is measured against.

   usage: handoff_floor LISTEN_FD CHANNEL_FD...   (each worker has said ready already)
*/
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64
#define MAX_WORKERS 256

static const char CONN[] = "{\"t\":\"conn\"}";

static void hand(int chan, const int *fds, int n) {
    union {
        char buf[CMSG_SPACE(sizeof(int) * BATCH)];
        struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = (void *)CONN, .iov_len = sizeof CONN - 1};
    struct msghdr mh = {0};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control.buf;
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n);
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n);
    memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)n);
    while (sendmsg(chan, &mh, MSG_NOSIGNAL) < 0 && errno == EINTR) {
    }
}

int main(int argc, char **argv) {
    if (argc < 3 || argc - 2 > MAX_WORKERS) {
        fprintf(stderr, "usage: handoff_floor LISTEN_FD CHANNEL_FD...\n");
        return 2;
    }
    int lfd = atoi(argv[1]), n = argc - 2, chans[MAX_WORKERS];
    fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = -1};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    for (int i = 0; i < n; i++) {
        chans[i] = atoi(argv[i + 2]);
        struct epoll_event e = {.events = EPOLLIN, .data.fd = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, chans[i], &e);
    }
    int turn = 0;
    static char junk[65536];
    for (;;) {
        struct epoll_event evs[64];
        int k = epoll_wait(ep, evs, 64, -1);
        for (int j = 0; j < k; j++) {
            if (evs[j].data.fd >= 0) {
                if (recv(chans[evs[j].data.fd], junk, sizeof junk, MSG_DONTWAIT) == 0) return 0;
                continue;
            }
            int conns[BATCH], got = 0;
            while (got < BATCH) {
                int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
                if (c < 0) break;
                conns[got++] = c;
            }
            for (int t = 0; t < n && t < got; t++) {
                int group[BATCH], m = 0;
                for (int q = t; q < got; q += n) group[m++] = conns[q];
                hand(chans[(turn + t) % n], group, m);
            }
            for (int q = 0; q < got; q++) close(conns[q]);
            turn = (turn + got) % n;
        }
    }
}
