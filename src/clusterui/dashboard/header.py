"""The one-line header: file, supervisor, host load, total connections per second."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from clusterui.dashboard.model import fmt_bytes, fmt_cpu, fmt_duration, fmt_rate
from clusterui.dashboard.style import fg_style


class StatusHeader(Widget):
    DEFAULT_CSS = """
    StatusHeader {
        dock: top;
        height: 1;
        background: $panel;
        color: $foreground;
        & > .header--brand { color: $text-accent; text-style: bold; }
        /* $text-accent is orange in light themes too, too pale on $panel there */
        &:light > .header--brand { color: $text-primary; }
        & > .header--dim { color: $text-muted; }
        & > .header--lost { color: $text-error; text-style: bold reverse; }
        &.-lost { background: $error-muted; }
    }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {"header--brand", "header--dim", "header--lost"}

    def __init__(self, file: str | None = None, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.file = file
        self.snapshot: dict[str, Any] = {}
        self.connected = True
        self.reason = ""

    def update_state(
        self,
        snapshot: dict[str, Any] | None = None,
        *,
        connected: bool | None = None,
        reason: str = "",
    ) -> None:
        if snapshot is not None:
            self.snapshot = snapshot
        if connected is not None:
            self.connected = connected
            self.reason = reason
            self.set_class(not connected, "-lost")
        self.refresh()

    def _s(self, name: str) -> Style:
        return fg_style(self, name)

    def render(self) -> Text:
        width = self.size.width or 80
        if not self.connected:
            text = Text(" clusterui ", self._s("header--brand"), no_wrap=True, end="")
            text.append(" supervisor connection lost ", self._s("header--lost"))
            text.append(f" {self.reason}" if self.reason else "")
            text.append(" · retrying · q quits", self._s("header--dim"))
            return text
        # Drop the least useful pieces until the line fits.
        for brand, cores in ((True, True), (True, False), (False, False)):
            text = self._line(brand, cores)
            if text.cell_len <= width:
                return text
        text.truncate(width, overflow="ellipsis")
        return text

    def _line(self, brand: bool, cores: bool) -> Text:
        sup = self.snapshot.get("supervisor") or {}
        host = sup.get("host") or {}
        files = sup.get("files") or []
        # The files apps come from now: one whose apps were all deleted is not named.
        shown = self.file if self.file in files else (files[0] if files else None)
        parts: list[str] = []
        if shown:
            name = os.path.basename(shown)
            if len(files) > 1:
                name += f" +{len(files) - 1}"
            parts.append(name)
        if sup.get("pid") is not None:
            parts.append(f"pid {sup['pid']} up {fmt_duration(sup.get('uptime'))}")
        if host:
            cpus = host.get("cpus")
            parts.append(
                f"cpu {fmt_cpu(host.get('cpu'))}" + (f" ({cpus} cores)" if cpus and cores else "")
            )
            if host.get("memory_total"):
                used, total = host.get("memory_used"), host.get("memory_total")
                parts.append(f"mem {fmt_bytes(used)}/{fmt_bytes(total)}")
        if sup.get("conn_rate") is not None:
            parts.append(f"{fmt_rate(sup.get('conn_rate'))} conn/s")
        text = Text(no_wrap=True, end="")
        if brand:
            text.append(" clusterui", self._s("header--brand"))
            parts.insert(0, "")
        else:
            text.append(" ")
        for i, part in enumerate(parts):
            if i:
                text.append(" │ ", self._s("header--dim"))
            text.append(part)
        return text
