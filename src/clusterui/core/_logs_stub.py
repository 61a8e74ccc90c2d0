# TEMPORARY stand-in until core/logs.py lands; deleted before commit.
import asyncio, os, time
from dataclasses import dataclass, asdict
from collections import deque

@dataclass
class LogLine:
    worker: int; app: str; instance: int; stream: str; time: float; text: str
    def to_dict(self): return asdict(self)

class _W:
    def __init__(self): self.done = asyncio.Event()
    async def wait_closed(self): await self.done.wait()

class LogHub:
    def __init__(self, logs_dir, ring_lines=1000):
        self.dir = logs_dir; self.rings = {}; self.subs = []
    def paths(self, app, instance, spec):
        return (spec.out_file or str(self.dir / f"{app}-{instance}-out.log"), spec.error_file or str(self.dir / f"{app}-{instance}-err.log"))
    def attach(self, wid, app, instance, spec, out_fd, err_fd):
        loop = asyncio.get_running_loop(); w = _W(); left = [2]
        for fd, stream, path in ((out_fd, "out", self.paths(app, instance, spec)[0]), (err_fd, "err", self.paths(app, instance, spec)[1])):
            f = open(path, "ab"); buf = [b""]
            os.set_blocking(fd, False)
            def rd(fd=fd, stream=stream, f=f, buf=buf):
                try: data = os.read(fd, 65536)
                except BlockingIOError: return
                if not data:
                    loop.remove_reader(fd); os.close(fd)
                    if buf[0]: self._line(wid, app, instance, stream, buf[0], f)
                    f.close(); left[0] -= 1
                    if not left[0]: w.done.set()
                    return
                parts = (buf[0] + data).split(b"\n"); buf[0] = parts.pop()
                for p in parts: self._line(wid, app, instance, stream, p, f)
                f.flush()
            loop.add_reader(fd, rd)
        return w
    def _line(self, wid, app, instance, stream, raw, f):
        f.write(raw + b"\n")
        ll = LogLine(wid, app, instance, stream, time.time(), raw.decode(errors="replace"))
        self.rings.setdefault(wid, deque(maxlen=1000)).append(ll)
        for s in self.subs: s([ll])
    def emit(self, wid, app, instance, text):
        ll = LogLine(wid, app, instance, "sys", time.time(), text)
        self.rings.setdefault(wid, deque(maxlen=1000)).append(ll)
        for s in self.subs: s([ll])
    def subscribe(self, cb): self.subs.append(cb); return lambda: self.subs.remove(cb)
    def recent(self, ids, n):
        lines = [l for wid, r in self.rings.items() if ids is None or wid in ids for l in r]
        lines.sort(key=lambda l: l.time); return lines[-n:] if n else []
    async def aclose(self): pass
