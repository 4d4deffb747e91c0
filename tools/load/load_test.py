#!/usr/bin/env python3
"""Bounded loopback load test of `ldm serve` (Python standard library only).

Usage: python tools/load/load_test.py --ldm .build/release/ldm --model models/shapes [--clients 200] [--polls 20]
       [--memory-requests 100] [--json out.json]

Starts `ldm serve --port 0 --queue-size CLIENTS` on 127.0.0.1, then runs CLIENTS concurrent clients (threads), each:
one small generation (32x32, 2 steps, its own seed; half through the job API POST /ldm/v1/jobs + polling GET
/ldm/v1/jobs/{id}, half through the synchronous POST /sdapi/v1/txt2img) interleaved with POLLS reads of
GET /sdapi/v1/progress and GET /sdapi/v1/options. Checks: the server never fails (no 5xx, no refused connection),
every job id is unique, every client gets exactly one image whose PNG `parameters` chunk carries its own seed, and the
server's resident memory (GET /sdapi/v1/memory, process_rss) after MEMORY_REQUESTS further generations has not grown
beyond 5% past the level after a warm-up of the same size. Prints p50/p99 latency of the non-generating routes. Every loop is
bounded; the server is stopped with SIGINT at the end. Exits non-zero on any failed check.
"""
import argparse
import base64
import http.client
import json
import re
import signal
import statistics
import subprocess
import sys
import threading
import time


def request(port, method, path, body=None, timeout=600):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = json.dumps(body).encode() if body is not None else None
    t0 = time.perf_counter()
    c.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
    r = c.getresponse()
    payload = r.read()
    dt = time.perf_counter() - t0
    c.close()
    return r.status, payload, dt


def png_parameters(png):
    """The tEXt 'parameters' chunk of a PNG (what the server wrote)."""
    i = 8
    while i + 8 <= len(png):
        n = int.from_bytes(png[i:i + 4], "big")
        kind = png[i + 4:i + 8]
        chunk = png[i + 8:i + 8 + n]
        if kind == b"tEXt" and chunk.startswith(b"parameters\0"):
            return chunk[len(b"parameters\0"):].decode("latin-1")
        i += 12 + n
    return ""


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ldm", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--polls", type=int, default=20)
    ap.add_argument("--memory-requests", type=int, default=100)
    ap.add_argument("--json")
    args = ap.parse_args()

    server = subprocess.Popen([args.ldm, "serve", "--model", args.model, "--port", "0", "--queue-size", str(args.clients + 8)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    m = re.search(r":(\d+)/", server.stdout.readline())
    if not m:
        server.kill()
        raise SystemExit("server did not start")
    port = int(m.group(1))
    failures, latencies, ids, images = [], {"progress": [], "options": []}, [], {}
    lock = threading.Lock()
    small = {"prompt": "a red circle on a white background", "steps": 2, "width": 32, "height": 32, "sampler_name": "Euler"}

    def client(k):
        seed = 100000 + k
        try:
            if k % 2 == 0:
                st, body, _ = request(port, "POST", "/ldm/v1/jobs", dict(small, seed=seed))
                if st != 202:
                    raise RuntimeError(f"submit {st} {body[:200]!r}")
                jid = json.loads(body)["id"]
                with lock:
                    ids.append(jid)
            else:
                result = {}

                def sync():
                    try:
                        result["r"] = request(port, "POST", "/sdapi/v1/txt2img", dict(small, seed=seed))
                    except Exception as e:  # noqa: BLE001
                        result["e"] = e
                t = threading.Thread(target=sync)
                t.start()
            for i in range(args.polls):
                path = "/sdapi/v1/progress?skip_current_image=true" if i % 2 == 0 else "/sdapi/v1/options"
                st, _, dt = request(port, "GET", path)
                if st != 200:
                    raise RuntimeError(f"{path} {st}")
                with lock:
                    latencies["progress" if "progress" in path else "options"].append(dt)
            if k % 2 == 0:
                for _ in range(6000):
                    st, body, _ = request(port, "GET", f"/ldm/v1/jobs/{jid}?preview=false")
                    j = json.loads(body)
                    if j["status"] in ("succeeded", "failed", "cancelled"):
                        break
                    time.sleep(0.05)
                if j["status"] != "succeeded":
                    raise RuntimeError(f"job {jid} {j['status']}")
                pngs = j["images"]
            else:
                t.join(900)
                if "e" in result or "r" not in result:
                    raise RuntimeError(f"txt2img failed: {result.get('e')}")
                st, body, _ = result["r"]
                if st != 200:
                    raise RuntimeError(f"txt2img {st} {body[:200]!r}")
                pngs = json.loads(body)["images"]
            if len(pngs) != 1:
                raise RuntimeError(f"{len(pngs)} images")
            text = png_parameters(base64.b64decode(pngs[0]))
            if f"Seed: {seed}," not in text:
                raise RuntimeError(f"client {k} got someone else's image: {text!r}")
            with lock:
                images[k] = seed
        except Exception as e:  # noqa: BLE001
            with lock:
                failures.append(f"client {k}: {e}")

    def alive():
        if server.poll() is not None:
            rest = server.stdout.read()
            raise SystemExit(f"the server died (exit {server.returncode}): {rest[-60000:]}")

    t0 = time.time()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(1800)
    wall = time.time() - t0
    alive()
    if len(ids) != len(set(ids)):
        failures.append("duplicated job ids")
    if len(images) != args.clients:
        failures.append(f"{args.clients - len(images)} clients got no image of their own")

    # Memory: resident set after a warm-up of N generations, then after N more.
    def generations(n, base):
        for i in range(n):
            st, body, _ = request(port, "POST", "/sdapi/v1/txt2img", dict(small, seed=base + i, send_images=False))
            if st != 200:
                failures.append(f"memory run: txt2img {st}")
                return

    def rss():
        return json.loads(request(port, "GET", "/sdapi/v1/memory")[1])["ram"]["process_rss"]
    alive()
    generations(args.memory_requests, 500000)
    rss_warm = rss()
    generations(args.memory_requests, 600000)
    rss_after = rss()
    if rss_after > rss_warm * 1.05:
        failures.append(f"resident memory grew from {rss_warm} to {rss_after} bytes across {args.memory_requests} requests")

    server.send_signal(signal.SIGINT)
    rc = server.wait(timeout=120)
    if rc != 0:
        failures.append(f"server exited {rc} on SIGINT")
    report = {"clients": args.clients, "polls_per_client": args.polls, "wall_s": round(wall, 2),
              "jobs_unique": len(set(ids)), "clients_with_own_image": len(images),
              "rss_after_warmup_mb": round(rss_warm / 2**20, 1), "rss_after_more_mb": round(rss_after / 2**20, 1)}
    for name, xs in latencies.items():
        report[name] = {"requests": len(xs), "p50_ms": round(1000 * statistics.median(xs), 2) if xs else None,
                        "p99_ms": round(1000 * percentile(xs, 99), 2) if xs else None}
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if failures:
        print("\n".join(failures[:20]), file=sys.stderr)
        return 1
    print("load test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
