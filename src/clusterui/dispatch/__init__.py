"""The dispatcher: one process per cluster-mode listener, owning its accept loop.

Run as ``python -m clusterui.dispatch [MODE]`` with

- ``CLUSTERUI_LISTEN_FD``: the listening socket, already bound and listening (absent
  for a Node app whose port comes from its workers' listen(): see "socket" below);
- ``CLUSTERUI_CONTROL_FD``: an AF_UNIX SOCK_SEQPACKET socket to the supervisor;
- MODE (argv[1], else ``CLUSTERUI_DISPATCH_MODE``): ``round-robin`` (default),
  ``least-connections`` or ``proxy``.

It exits when the control socket reaches end of file, and takes PR_SET_PDEATHSIG
so it never outlives the process that started it. With ``CLUSTERUI_ORPHAN_GRACE=S``
(a socket handed in from outside, which outlives the supervisor) it instead stops
accepting at end of file, hands the workers what it had accepted, and exits; the
supervisor's guardian kills it S seconds later if it is still there.

Control messages, one JSON object per datagram (see ``protocol``):

supervisor → dispatcher
  ``{"t":"add","id":W}`` + SCM_RIGHTS [dispatcher_end, worker_end] of W's channel
      socketpair. The dispatcher keeps worker_end open so that, when W dies,
      connections still queued for it can be taken back and handed to others.
  ``{"t":"add","id":W,"framing":"node"}`` + the same two fds: W is a Node worker on a
      SOCK_STREAM pair, spoken to in Node's IPC framing (``clusterui.dispatch.node``).
  ``{"t":"socket"}`` + SCM_RIGHTS [listening socket]: the socket a Node worker asked
      for; ``{"t":"listen-failed","code":C,"message":M}`` if it could not be bound.
  ``{"t":"add","id":W,"port":P}`` (proxy): W listens on 127.0.0.1:P; probed until it
      accepts, then bytes are forwarded to it.
  ``{"t":"drain","id":W}``: route nothing more to W; forward ``{"t":"drain"}`` to it.
  ``{"t":"remove","id":W}``: W is gone; re-route what it never received, forget it.
  ``{"t":"stats"}``: answer with a stats message now.
  ``{"t":"probe","id":W,"token":T[,"ack":true]}`` + SCM_RIGHTS [fd]: a health probe's
      connection, handed to W itself (ready or not) like a client's. Answered with
      ``{"t":"probe","id":W,"token":T,"ok":false,"error":...}`` when it cannot be sent,
      and with ack, ``{"t":"probe",...,"ok":true}`` once W has taken it off its channel.
  ``{"t":"health","id":W,"ok":B}``: W failed (false) or passed (true) its health probe;
      while false it gets no new connections, and those still queued for it go to others.
  With ``dispatchers: N`` (``CLUSTERUI_DISPATCH_SHARED`` is ``primary`` or ``helper``):
  ``{"t":"ready","id":W}`` to a helper (the primary read it from W);

dispatcher → supervisor
  ``{"t":"ready","id":W}``; ``{"t":"metrics","id":W,"values":{...}}``; ``{"t":"probe",...}``;
  ``{"t":"stats","workers":{"W":{"handed":n,"open":m}},"accepted":N,"pending":k}``
      (pushed at most once a second, when a figure changed, and on request); N counts
      every accepted connection, ``"accepted_c"`` those the C hot path accepted;
  ``{"t":"error","id":W,"message":...}`` for a worker breaking the protocol;
  ``{"t":"drained","id":W}`` (a helper): it routes nothing more to W.
  ``{"t":"listen","id":W,"address":A,"port":P}`` or ``{...,"path":X}``: a Node
      worker's listen() while there is no socket yet (asked once until answered).

The implementation is in ``clusterui.dispatch.core``; this package's ``__init__``
stays empty so that ``clusterui.worker`` can import ``protocol`` cheaply.
"""
