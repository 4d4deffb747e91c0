#!/usr/bin/env python3
"""Checks `ldm serve`'s /openapi.json with a real OpenAPI validator and against the routes the server serves.

Usage: python tools/browser/openapi_check.py --ldm .build/debug/ldm --model models/shapes

1. The document validates as OpenAPI 3.1 (openapi-spec-validator from PyPI, the reference validator of the
   OpenAPI Initiative's JSON schemas).
2. Every route registered in Sources/Server/*.swift (`route(router, .METHOD, "PATH", ...)`, read from the source, not from
   the server) is in the document with its method, and the document lists nothing else.
3. Every documented operation is served: a request to it (malformed JSON for bodies, an unknown id for {id}) is not
   answered "no route" (404 from the router) or 405.
Exits non-zero on any failure; the server is stopped with SIGINT and must exit 0.
"""
import argparse
import glob
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request

from openapi_spec_validator import validate

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../..")


def source_routes():
    found = set()
    for path in glob.glob(os.path.join(ROOT, "Sources/Server/*.swift")):
        with open(path, encoding="utf8") as f:
            for m in re.finditer(r'route\(router,\s*\.(get|post|delete|put|patch),\s*"([^"]+)"', f.read()):
                found.add((m.group(1).upper(), m.group(2)))
    return found


def request(port, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                                 headers={"Content-Type": "application/json"} if body is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ldm", required=True)
    ap.add_argument("--model", required=True)
    a = ap.parse_args()
    p = subprocess.Popen([a.ldm, "serve", "--model", a.model, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = p.stdout.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if not m:
        p.kill()
        raise SystemExit(f"server did not start: {line!r}")
    port, failures = int(m.group(1)), []
    try:
        status, body = request(port, "GET", "/openapi.json")
        assert status == 200, status
        doc = json.loads(body)
        validate(doc)  # raises OpenAPIValidationError with the failing path
        print(f"openapi.json: valid OpenAPI {doc['openapi']}, {len(doc['paths'])} paths")
        documented = {(method.upper(), path) for path, item in doc["paths"].items() for method in item
                      if method in ("get", "post", "put", "delete", "patch")}
        registered = source_routes()
        if not registered:
            failures.append("no route registrations found in Sources/Server")
        for r in sorted(registered - documented):
            failures.append(f"served but not documented: {r[0]} {r[1]}")
        for r in sorted(documented - registered):
            failures.append(f"documented but not registered: {r[0]} {r[1]}")
        for method, path in sorted(documented):
            url = path.replace("{id}", "00000000-0000-0000-0000-000000000000")
            body = b"{" if method in ("POST", "PUT", "PATCH") else None
            st, data = request(port, method, url, body)
            detail = ""
            try:
                detail = json.loads(data).get("detail", "") if data[:1] == b"{" else ""
            except ValueError:
                pass
            if st == 405 or (st == 404 and detail.startswith("no route")):
                failures.append(f"documented but not served: {method} {path} -> {st} {detail}")
            else:
                print(f"  {method:6} {path:36} -> {st}")
    finally:
        p.send_signal(signal.SIGINT)
        rc = p.wait(timeout=120)
        if rc != 0:
            failures.append(f"server exited {rc}")
    for f in failures:
        print("FAIL:", f)
    if failures:
        sys.exit(1)
    print(f"openapi check passed: {len(documented)} operations documented, served and registered")


if __name__ == "__main__":
    main()
