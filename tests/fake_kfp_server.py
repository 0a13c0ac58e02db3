"""A Kubeflow Pipelines API server (REST, v2beta1) on loopback for tests: real HTTP, in-memory state.

It answers the endpoints ``kfp.Client`` calls to submit and schedule (healthz, experiments, pipelines and their
versions, uploads, runs, recurring runs: create, list with paging, enable, disable, delete) with the JSON shapes of
``kfp_server_api``'s models, and records every request (method, path, query, headers, JSON body or uploaded file)
so a test can assert what was sent.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API = "/apis/v2beta1"
NOW = "2026-01-01T00:00:00Z"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any = None  # parsed JSON, or None
    files: dict[str, bytes] = field(default_factory=dict)  # multipart uploads by field name


def _multipart(content_type: str, data: bytes) -> dict[str, bytes]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + data)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in message.iter_parts()}


def _display_name_filter(query: dict[str, str]) -> str | None:
    """The display_name of an EQUALS filter (what kfp.Client sends to look an object up by name)."""
    if "filter" not in query:
        return None
    for predicate in json.loads(query["filter"]).get("predicates", []):
        if predicate.get("key") in ("display_name", "name"):
            return predicate.get("stringValue") or predicate.get("string_value")
    return None


class FakeKfpServer:
    """``with FakeKfpServer() as server: kfp.Client(host=server.url)``; ``server.requests`` lists what came in."""

    def __init__(self, multi_user: bool = False):
        self.multi_user = multi_user
        self.requests: list[Request] = []
        self.experiments: dict[str, dict[str, Any]] = {}
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, list[dict[str, Any]]] = {}  # pipeline id -> versions, oldest first
        self.packages: dict[str, str] = {}  # pipeline version id -> the uploaded pipeline YAML
        self.runs: dict[str, dict[str, Any]] = {}
        self.recurring_runs: dict[str, dict[str, Any]] = {}
        self.deleted_recurring_runs: dict[str, dict[str, Any]] = {}  # as they were when deleted
        self.page_size_cap = 100  # at most this many items per list page, to exercise paging
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeKfpServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_POST(self) -> None:
                self._dispatch("POST")

            def do_DELETE(self) -> None:
                self._dispatch("DELETE")

            def _dispatch(self, method: str) -> None:
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                ctype = self.headers.get("Content-Type", "")
                req = Request(method, parts.path, query, {k.lower(): v for k, v in self.headers.items()})
                if ctype.startswith("multipart/form-data"):
                    req.files = _multipart(ctype, raw)
                elif raw:
                    req.body = json.loads(raw)
                with server._lock:
                    server.requests.append(req)
                    status, payload = server._route(req)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-kfp", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeKfpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers for tests
    def calls(self, method: str, path: str) -> list[Request]:
        """The recorded requests to one endpoint (``path`` relative to /apis/v2beta1, regex)."""
        return [r for r in self.requests if r.method == method and re.fullmatch(API + path, r.path)]

    # ------------------------------------------------------------------ the API
    def _new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids):04d}"

    def _route(self, req: Request) -> tuple[int, Any]:
        path, q = req.path, req.query
        if (req.method, path) == ("GET", f"{API}/healthz"):
            return 200, {"multi_user": self.multi_user, "pipeline_store": "database"}
        if (req.method, path) == ("GET", f"{API}/experiments"):
            name = _display_name_filter(q)
            found = [e for e in self.experiments.values() if name is None or e["display_name"] == name]
            return 200, {"experiments": found, "total_size": len(found)} if found else {}
        if (req.method, path) == ("POST", f"{API}/experiments"):
            exp = {**req.body, "experiment_id": self._new_id("exp"), "created_at": NOW, "storage_state": "AVAILABLE"}
            self.experiments[exp["experiment_id"]] = exp
            return 200, exp
        if (req.method, path) == ("GET", f"{API}/pipelines"):
            name = _display_name_filter(q)
            found = [p for p in self.pipelines.values() if name is None or p["display_name"] == name]
            return 200, {"pipelines": found, "total_size": len(found)} if found else {}
        if (req.method, path) == ("POST", f"{API}/pipelines/upload"):
            name = q.get("name") or q.get("display_name")
            if any(p["display_name"] == name for p in self.pipelines.values()):
                return 409, {"error": f"pipeline {name} exists", "code": 6}
            pid = self._new_id("pipeline")
            pipeline = {"pipeline_id": pid, "display_name": name, "name": name,
                        "description": q.get("description", ""), "created_at": NOW}
            self.pipelines[pid] = pipeline
            self.versions[pid] = [self._version(pid, name, req.files["uploadfile"])]
            return 200, pipeline
        if (req.method, path) == ("POST", f"{API}/pipelines/upload_version"):
            pid = q.get("pipelineid", "")
            if pid not in self.pipelines:
                return 404, {"error": f"no pipeline {pid}", "code": 5}
            version = self._version(pid, q.get("name", ""), req.files["uploadfile"])
            self.versions[pid].append(version)
            return 200, version
        m = re.fullmatch(f"{API}/pipelines/([^/]+)/versions", path)
        if req.method == "GET" and m:
            versions = list(reversed(self.versions.get(m.group(1), [])))  # newest first (sort_by created_at desc)
            return 200, {"pipeline_versions": versions, "total_size": len(versions)} if versions else {}
        if (req.method, path) == ("POST", f"{API}/runs"):
            run = {**req.body, "run_id": self._new_id("run"), "state": "PENDING", "created_at": NOW}
            self.runs[run["run_id"]] = run
            return 200, run
        if (req.method, path) == ("POST", f"{API}/recurringruns"):
            rr = {**req.body, "recurring_run_id": self._new_id("recurring"), "status": "ENABLED",
                  "created_at": NOW, "updated_at": NOW}
            self.recurring_runs[rr["recurring_run_id"]] = rr
            return 200, rr
        if (req.method, path) == ("GET", f"{API}/recurringruns"):
            name = _display_name_filter(q)
            found = [r for r in self.recurring_runs.values()
                     if q.get("experiment_id") in (None, r.get("experiment_id"))
                     and (name is None or r["display_name"] == name)]
            start = int(q.get("page_token") or 0)
            size = min(int(q.get("page_size") or 10), self.page_size_cap)
            # "recurringRuns": the proto field is camelCase (kfp_server_api's attribute_map reads this key).
            page: dict[str, Any] = {"recurringRuns": found[start:start + size], "total_size": len(found)}
            if start + size < len(found):
                page["next_page_token"] = str(start + size)
            return 200, page if page["recurringRuns"] else {}
        m = re.fullmatch(f"{API}/recurringruns/([^/:]+)(:disable|:enable)?", path)
        if m and req.method in ("POST", "DELETE") and (req.method == "POST") == bool(m.group(2)):
            rr_id = m.group(1)
            if rr_id not in self.recurring_runs:
                return 404, {"error": f"no recurring run {rr_id}", "code": 5}
            if req.method == "DELETE":
                self.deleted_recurring_runs[rr_id] = self.recurring_runs.pop(rr_id)
            else:
                enable = m.group(2) == ":enable"
                self.recurring_runs[rr_id].update(status="ENABLED" if enable else "DISABLED",
                                                  mode="ENABLE" if enable else "DISABLE", updated_at=NOW)
            return 200, {}
        return 404, {"error": f"fake KFP server: no route for {req.method} {path}", "code": 5}

    def _version(self, pipeline_id: str, name: str, package: bytes) -> dict[str, Any]:
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": self._new_id("version"), "display_name": name,
                   "name": name, "created_at": NOW}
        self.packages[version["pipeline_version_id"]] = package.decode()
        return version
