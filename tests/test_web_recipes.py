"""Every `<!-- recipe: NAME -->` ecosystem entry in README.md, run as written.

Only the port is changed (8000 -> a free one on 127.0.0.1); the apps are the
framework apps of tests/webapps under the file names the recipes expect.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
from support import Env, free_port, get, wait_for

ROOT = Path(__file__).resolve().parents[1]
APPS = Path(__file__).parent / "webapps"
RECIPE = re.compile(r"<!-- recipe: (\w+) -->\n```yaml\n(.*?)```", re.S)

# recipe -> (files to copy from tests/webapps as name in the app's cwd)
FILES = {
    "fastapi": {"fastapi_main.py": "main.py"},
    "starlette": {"starlette_main.py": "main.py"},
    "django": {"mysite": "mysite"},
    "flask": {"flask_app.py": "app.py"},
    "gunicorn": {"flask_app.py": "app.py"},
    "uvicorn": {"fastapi_main.py": "main.py"},
}


def recipes() -> dict[str, str]:
    found = dict(RECIPE.findall((ROOT / "README.md").read_text()))
    assert set(found) == set(FILES), f"README recipes {sorted(found)} != tested {sorted(FILES)}"
    return found


@pytest.mark.parametrize("name", sorted(FILES))
def test_readme_recipe_serves_and_reloads(cu: Env, name: str):
    text = recipes()[name]
    port = free_port()
    assert "listen: 8000" in text
    # The venv's bin (gunicorn, uvicorn) on PATH, as after `pip install` in it.
    bin_dir = str(Path(sys.executable).parent)
    cu.env["PATH"] = f"{bin_dir}:{cu.env.get('PATH', '')}"
    # Two instances whatever the recipe says: the machine running the tests is small.
    text = re.sub(r"instances: \d+", "instances: 2", text)
    text = text.replace("listen: 8000", f"listen: 127.0.0.1:{port}\n    listen_timeout: 20s")
    for src, dest in FILES[name].items():
        if (APPS / src).is_dir():
            shutil.copytree(
                APPS / src, cu.root / dest, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy(APPS / src, cu.root / dest)
    cu.write("ecosystem.yaml", text)
    r = cu.run("up", "-d", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    workers = cu.ls()
    assert workers and all(w["status"] == "online" for w in workers), workers

    def answered_by_all() -> set[str]:
        seen = set()
        for _ in range(4 * len(workers)):
            body = get(port)
            assert body.status == 200, body
            seen.add(body)
        return seen if len(seen) >= need else set()

    # Round-robin and proxy spread over the workers; the kernel (shared) as it likes.
    need = 1 if "dispatch: shared" in text else 2
    wait_for(answered_by_all, 20, f"{name}: answers from more than one worker")
    r = cu.run("reload", workers[0]["app"], timeout=90)
    assert r.returncode == 0, r.stderr
    assert get(port).status == 200
