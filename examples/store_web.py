"""Results by id across processes: a web service hands out task ids, another process awaits them.

Run the service (stdlib only), start a job, and wait for it from a second process::

    python examples/store_web.py serve 8080 &
    curl -s -X POST localhost:8080/reports/7        # {"task_id": "5f0c..."}
    python examples/store_web.py wait 5f0c...       # progress, then the result
    curl -s localhost:8080/tasks/5f0c...            # {"state": "SUCCESS", "info": ...}

Both sides name the same store (a SQLite file here; a Redis server works the same with
``redis://host:6379/0?key=...``), so the id is all that needs to travel.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncbridge as ab

STORE = ab.ResultStore("sqlite:///examples-results.db", expires=3600)


@ab.task(store=STORE)
def render_report(report_id: int) -> str:
    for page in range(1, 4):
        time.sleep(0.5)  # the work itself: rendering a page
        ab.checkpoint()  # a cancel from any process stops it here
        ab.report_progress(page=page, of=3)
    return f"report {report_id}: 3 pages"


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # POST /reports/<n>: start the job, answer with its id at once
        h = render_report.delay(int(self.path.rsplit("/", 1)[1]))
        self.answer({"task_id": h.id})

    def do_GET(self) -> None:  # GET /tasks/<id>: where it stands, from the store
        try:
            h: ab.Result[Any] = ab.Result(self.path.rsplit("/", 1)[1], store=STORE)
        except ab.UnknownResult as exc:
            self.answer({"error": str(exc)}, status=404)
            return
        info = h.info
        self.answer(
            {"state": str(h.state), "info": info if not isinstance(info, BaseException) else repr(info)}
        )

    def answer(self, body: dict[str, Any], status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


async def wait(task_id: str) -> None:
    h: ab.Result[Any] = ab.Result(task_id, store=STORE)
    async for meta in h.progress():
        print("progress", meta)
    print("result", await h)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Handler)
        print("serving on port", server.server_port, flush=True)
        server.serve_forever()
    else:
        asyncio.run(wait(sys.argv[2]))
