"""The examples the README points to run as it says."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import urllib.request

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def test_a_web_handler_hands_out_an_id_that_another_process_awaits(tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    example = str(EXAMPLES / "store_web.py")
    server = subprocess.Popen(
        [sys.executable, example, "serve", "0"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split()[-1])  # printed once it listens
        with urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{port}/reports/7", method="POST")
        ) as r:
            task_id = json.load(r)["task_id"]
        waited = subprocess.run(
            [sys.executable, example, "wait", task_id],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert waited.returncode == 0, waited.stderr
        assert waited.stdout.splitlines()[-1] == "result report 7: 3 pages"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/tasks/{task_id}") as r:
            assert json.load(r) == {"state": "SUCCESS", "info": "report 7: 3 pages"}
    finally:
        server.kill()
        server.communicate(timeout=30)
