/* The dispatcher's hot path in C: accept what waits, share it out in turn, hand it over.

   One call does, for one wakeup of the listening socket, what Dispatcher._on_listen,
   _route and _hand do in Python for the common case (protocol v1 channels, "rotate"):
   the per-connection work (accept4, the SCM_RIGHTS datagram, close) runs without the
   interpreter, and while the listening socket is the only thing ready it goes on to
   the next wakeup without coming back to Python. Everything that is not that common
   case (a full channel, a worker at its queue cap, an accept error) goes back to the
   Python code, which stays the one place that decides what such a case means. Built
   as an optional extension: without a compiler the dispatcher runs the same logic in
   Python (clusterui.dispatch.core).
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ACCEPT_BATCH in core.py bounds `room`; one datagram carries a target's whole group. */
#define MAX_CONNS 64
#define MAX_TARGETS (1 << 20) /* a sanity bound: workers of one listener */

static int accept_retry(int e) {
    /* core._ACCEPT_RETRY: the connection went away, or a firewall said no: try the next. */
    return e == ECONNABORTED || e == EPROTO || e == EINTR || e == EPERM;
}

static PyObject *int_tuple(const long *values, Py_ssize_t n) {
    PyObject *t = PyTuple_New(n);
    if (t == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyLong_FromLong(values[i]);
        if (v == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, v);
    }
    return t;
}

static int read_ints(PyObject *seq, const char *what, long *out, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        out[i] = PyLong_AsLong(PyTuple_GET_ITEM(seq, i));
        if (out[i] == -1 && PyErr_Occurred()) {
            PyErr_Format(PyExc_TypeError, "%s must hold ints", what);
            return -1;
        }
    }
    return 0;
}

/* What one accept_hand call works with, batch after batch. Used without the GIL. */
struct batch {
    int lfd, room;
    Py_ssize_t count;
    const long *fds;
    long *caps;          /* decremented by what each target got */
    long *sent;          /* fds per target, over every batch */
    unsigned char *sizes; /* per target, MAX_CONNS slots: the datagrams' fd counts */
    long *ndgrams;       /* datagrams per target so far */
    long *share;         /* scratch: connections per target in the current batch */
    const void *msg;
    size_t msglen;
    long start;          /* the turn: the next connection goes to this target */
    long last;           /* the target that got the last connection handed, -1: none */
    long accepted;
    int lastgot;         /* accepted by the latest batch */
    int failed, send_errno, accept_errno;
    int left[MAX_CONNS];
    int nleft;
};

/* One wakeup's worth: accept up to room, share out in turn from b->start, send each
   target's share as one datagram. Returns 0 when all of it went out (or nothing was
   accepted), 1 when some did not (its fds in b->left) or accepting failed. */
static int one_batch(struct batch *b) {
    int conns[MAX_CONNS], got = 0;
    long *share = b->share;
    for (int tries = 0; tries < b->room; tries++) {
        int c = accept4(b->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (c >= 0) {
            conns[got++] = c;
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        if (accept_retry(errno)) continue;
        b->accept_errno = errno;
        break;
    }
    b->lastgot = got;
    if (!got) return b->accept_errno ? 1 : 0;
    b->accepted += got;
    Py_ssize_t count = b->count;
    int fits = 1;
    for (Py_ssize_t t = 0; t < count; t++) share[t] = 0;
    for (int k = 0; k < got; k++) share[(b->start + k) % count]++;
    for (Py_ssize_t t = 0; t < count; t++)
        if (share[t] > b->caps[t]) fits = 0;
    int handed[MAX_CONNS];
    memset(handed, 0, sizeof handed);
    for (Py_ssize_t t = 0; fits && t < count; t++) {
        if (!share[t]) continue;
        int first = (int)((t - b->start + count) % count), n = 0, group[MAX_CONNS];
        for (int k = first; k < got; k += (int)count) group[n++] = conns[k];
        union {
            char buf[CMSG_SPACE(sizeof(int) * MAX_CONNS)];
            struct cmsghdr align;
        } control;
        struct iovec iov = {.iov_base = (void *)b->msg, .iov_len = b->msglen};
        struct msghdr mh = {0};
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        mh.msg_control = control.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n);
        memcpy(CMSG_DATA(cm), group, sizeof(int) * (size_t)n);
        if (sendmsg((int)b->fds[t], &mh, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
            b->failed = (int)t;
            b->send_errno = errno;
            break;
        }
        for (int k = first; k < got; k += (int)count) {
            close(conns[k]);
            handed[k] = 1;
        }
        b->sent[t] += n;
        b->caps[t] -= n;
        b->sizes[t * MAX_CONNS + b->ndgrams[t]++] = (unsigned char)n;
    }
    b->nleft = 0;
    for (int k = 0; k < got; k++)
        if (!handed[k]) b->left[b->nleft++] = conns[k];
    if (b->nleft) return 1;
    b->last = (b->start + got - 1) % count;
    b->start = (b->start + got) % count;
    return b->accept_errno ? 1 : 0;
}

/* In loop mode: wait on the dispatcher's epoll set until the deadline (busy: only look,
   the last batch was full); 1 when only the listening socket is ready (another batch),
   0 when anything else is, or the deadline has come, full batches or not. */
static int only_listen_ready(int epfd, int lfd, double deadline, int busy) {
    struct epoll_event evs[8];
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double left = deadline - ((double)now.tv_sec + (double)now.tv_nsec / 1e9);
    if (left <= 0) return 0;
    int timeout = busy ? 0 : (int)(left * 1000.0) + 1;
    int n = epoll_wait(epfd, evs, 8, timeout);
    if (n <= 0) return busy && n == 0 ? only_listen_ready(epfd, lfd, deadline, 0) : 0;
    for (int i = 0; i < n; i++)
        if (evs[i].data.fd != lfd) return 0;
    return 1;
}

PyDoc_STRVAR(accept_hand_doc,
"accept_hand(lfd, room, dends, caps, start, message, epfd=-1, deadline=0.0)\n"
"    -> (accepted, sent, sizes, last, leftover, failed, send_errno, accept_errno)\n"
"\n"
"Accept up to room connections from lfd; connection k goes to target (start + k) %\n"
"len(dends), each target's share in one datagram `message` with the fds as\n"
"SCM_RIGHTS, sent with MSG_DONTWAIT; a handed fd is closed here.\n"
"\n"
"room is 1..64; caps[t] (at most 64) is how many more connections target t may\n"
"queue: if a share would pass it, nothing of that batch is sent. A send that fails\n"
"stops the handing there. Either way the fds not handed come back in `leftover`,\n"
"in the order they were accepted, for the caller to route.\n"
"\n"
"With epfd (the caller's epoll set, which holds lfd), after a batch that all went out\n"
"it waits on epfd until the CLOCK_MONOTONIC deadline and takes the next batch as long\n"
"as lfd is the only fd ready; anything else ready, the deadline, a signal or a batch\n"
"that did not all go out returns.\n"
"\n"
"sent[t] is how many connections target t got, sizes[t] (bytes) the fd counts of the\n"
"datagrams it got, in order; last is the target that got the last connection handed\n"
"(-1: none); failed is the target whose send failed (-1: none) with its errno;\n"
"accept_errno the errno that ended accepting (0: the queue was empty or room reached).");

static PyObject *accept_hand(PyObject *self, PyObject *args) {
    int lfd, room, epfd = -1;
    long start;
    double deadline = 0.0;
    PyObject *dends_arg, *caps_arg;
    Py_buffer message;
    (void)self;
    if (!PyArg_ParseTuple(args, "iiOOly*|id", &lfd, &room, &dends_arg, &caps_arg, &start,
                          &message, &epfd, &deadline))
        return NULL;

    PyObject *result = NULL;
    PyObject *dends = PySequence_Tuple(dends_arg);
    PyObject *caps_t = dends ? PySequence_Tuple(caps_arg) : NULL;
    long *fds = NULL, *caps = NULL, *sent = NULL, *ndgrams = NULL, *share = NULL;
    unsigned char *sizes = NULL;
    if (caps_t == NULL) goto done;
    Py_ssize_t count = PyTuple_GET_SIZE(dends);
    if (count < 1 || count > MAX_TARGETS || PyTuple_GET_SIZE(caps_t) != count) {
        PyErr_SetString(PyExc_ValueError, "dends and caps: one entry per target, at least one");
        goto done;
    }
    if (room < 1 || room > MAX_CONNS || start < 0) {
        PyErr_SetString(PyExc_ValueError, "room must be 1..64 and start >= 0");
        goto done;
    }
    fds = PyMem_Calloc((size_t)count, sizeof(long));
    caps = PyMem_Calloc((size_t)count, sizeof(long));
    sent = PyMem_Calloc((size_t)count, sizeof(long));
    ndgrams = PyMem_Calloc((size_t)count, sizeof(long));
    share = PyMem_Calloc((size_t)count, sizeof(long));
    sizes = PyMem_Calloc((size_t)count * MAX_CONNS, 1);
    if (!fds || !caps || !sent || !ndgrams || !share || !sizes) {
        PyErr_NoMemory();
        goto done;
    }
    if (read_ints(dends, "dends", fds, count) || read_ints(caps_t, "caps", caps, count))
        goto done;
    for (Py_ssize_t t = 0; t < count; t++) {
        if (caps[t] > MAX_CONNS) {
            /* A target's datagrams are kept in MAX_CONNS slots: never more fds than that. */
            PyErr_SetString(PyExc_ValueError, "a cap is at most 64");
            goto done;
        }
    }

    struct batch b = {
        .lfd = lfd, .room = room, .count = count, .fds = fds, .caps = caps, .sent = sent,
        .sizes = sizes, .ndgrams = ndgrams, .share = share,
        .msg = message.buf, .msglen = (size_t)message.len,
        .start = start % count, .last = -1, .failed = -1,
    };
    Py_BEGIN_ALLOW_THREADS
    while (one_batch(&b) == 0 && epfd >= 0) {
        /* A full batch may have left more in the queue: look without waiting first. */
        if (!only_listen_ready(epfd, lfd, deadline, b.lastgot == b.room)) break;
    }
    Py_END_ALLOW_THREADS

    PyObject *sent_t = int_tuple(sent, count);
    PyObject *sizes_t = sent_t ? PyTuple_New(count) : NULL;
    PyObject *left_l = sizes_t ? PyList_New(b.nleft) : NULL;
    int ok = left_l != NULL;
    for (Py_ssize_t t = 0; ok && t < count; t++) {
        PyObject *v = PyBytes_FromStringAndSize((const char *)sizes + t * MAX_CONNS,
                                                ndgrams[t]);
        if (v == NULL) ok = 0;
        else PyTuple_SET_ITEM(sizes_t, t, v);
    }
    for (int i = 0; ok && i < b.nleft; i++) {
        PyObject *v = PyLong_FromLong(b.left[i]);
        if (v == NULL) ok = 0;
        else PyList_SET_ITEM(left_l, i, v);
    }
    if (!ok) {
        /* Out of memory: the caller would never see these fds, so close them here. */
        for (int i = 0; i < b.nleft; i++) close(b.left[i]);
        Py_XDECREF(sent_t);
        Py_XDECREF(sizes_t);
        Py_XDECREF(left_l);
        goto done;
    }
    result = Py_BuildValue("(lNNlNiii)", b.accepted, sent_t, sizes_t, b.last, left_l,
                           b.failed, b.send_errno, b.accept_errno);
    if (result == NULL) /* out of memory: the caller cannot take these fds, so close them */
        for (int i = 0; i < b.nleft; i++) close(b.left[i]);

done:
    PyMem_Free(fds);
    PyMem_Free(caps);
    PyMem_Free(sent);
    PyMem_Free(ndgrams);
    PyMem_Free(share);
    PyMem_Free(sizes);
    Py_XDECREF(dends);
    Py_XDECREF(caps_t);
    PyBuffer_Release(&message);
    return result;
}

static PyMethodDef methods[] = {
    {"accept_hand", accept_hand, METH_VARARGS, accept_hand_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_handoff",
    "The dispatcher's accept-and-hand loop in C (see accept_hand).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__handoff(void) { return PyModule_Create(&module); }
