"""Watch survives its folder being deleted and made again (an rsync --delete-after, a
`git clean`, a deploy that swaps the folder): it says so, then re-arms."""

from __future__ import annotations

import json
import shutil

import pytest
from support import Env, wait_for

pytestmark = pytest.mark.timeout(90)

APP = 'import time\nprint("version {v}", flush=True)\ntime.sleep(600)\n'


def event(cu: Env) -> str:
    app = json.loads(cu.run("describe", "app", "--json", check=True).stdout)["app"]
    return app["last_watch_event"] or ""


def test_watch_rearms_when_the_folder_is_deleted_and_recreated(cu: Env) -> None:
    cu.write("code/app.py", APP.format(v=1))
    cu.write("src/keep.txt", "x")
    cu.write(
        "ecosystem.yaml",
        """
        apps:
          - name: app
            script: code/app.py
            watch: [src]
            watch_delay: 150
        """,
    )
    cu.run("up", "-d", check=True)
    shutil.rmtree(cu.root / "src")
    wait_for(lambda: "watch broken" in event(cu), 15, "the broken watch to be shown")
    (cu.root / "src").mkdir()
    wait_for(lambda: "re-armed" in event(cu), 15, "the watch to re-arm")
    cu.write("code/app.py", APP.format(v=2))
    cu.write("src/trigger.txt", "go")
    wait_for(lambda: "version 2" in cu.run("logs", "app").stdout, 15, "a reload after re-arm")
    assert "src/trigger.txt changed" in event(cu)
    assert cu.ls()[0]["restarts"] >= 1
