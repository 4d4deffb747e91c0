# The paper's compression-factor study (Rombach et al. 2022, Sec. 4.1 / Fig. 6: LDM-{1,2,4,8,...} trained for the
# same time, quality against training progress), in miniature on the digits:
#   train: starts `ldm train ldm` for each config (pixel space and LDMs on first stages with f = 2, 4, 8; same UNet
#          family, batch and schedule), two at a time with one thread each, and stops each after --budget seconds
#          of wall-clock; the start time goes to RUN_DIR/study-start.txt, every checkpoint's mtime records progress.
#   eval:  for each time point t, the latest checkpoint written by t is exported (`--resume --export-only` on a
#          folder holding only that checkpoint), sampled with `ldm sample` (--per-class samples of each digit, DDIM,
#          classifier-free guidance) and judged by tools/eval/digits_eval.py (SVC accuracy, Frechet distance in the
#          MLP feature space). Results go to OUT/results.json and OUT/compression.png (FD and accuracy vs minutes).
# Run (from the repository root, after tools/data/digits.py --out data/digits and the first stages are trained):
#   python tools/eval/compression_study.py train --ldm .build/release/ldm --budget 480 experiments/compression/ldm-*.json
#   python tools/eval/compression_study.py eval --ldm .build/release/ldm --times 120,240,360,480 --out OUT \
#       experiments/compression/ldm-*.json
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run_dir(config):
    cfg = json.load(open(config))
    return os.path.normpath(os.path.join(os.path.dirname(config), cfg["run_dir"]))


def name_of(config):
    return os.path.splitext(os.path.basename(config))[0]


def train(args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    pending = list(args.configs)
    running = []
    while pending or running:
        while pending and len(running) < args.parallel:
            config = pending.pop(0)
            rd = run_dir(config)
            if os.path.exists(rd):
                sys.exit(f"{rd} exists: remove it first")
            os.makedirs(rd)
            log = open(os.path.join(rd, "..", name_of(config) + ".log"), "w")
            start = time.time()
            p = subprocess.Popen([args.ldm, "train", "ldm", "--config", config, "--run-dir", rd, "--log-every", "25"],
                                 stdout=log, stderr=subprocess.STDOUT, env=env)
            with open(os.path.join(rd, "study-start.txt"), "w") as fh:
                fh.write(f"{start}\n")
            running.append((p, start, config))
        time.sleep(2)
        for item in list(running):
            p, start, config = item
            if p.poll() is not None or time.time() - start > args.budget:
                if p.poll() is None:
                    p.terminate()
                    p.wait()
                running.remove(item)
                print(f"{name_of(config)}: stopped after {time.time() - start:.0f} s", flush=True)


def checkpoints(rd):
    start = float(open(os.path.join(rd, "study-start.txt")).read())
    out = []
    for f in glob.glob(os.path.join(rd, "checkpoints", "step-*.safetensors")):
        step = int(os.path.basename(f)[5:13])
        out.append((os.path.getmtime(f) - start, step, f))
    return sorted(out)


def evaluate(args):
    results = json.load(open(os.path.join(args.out, "results.json"))) if os.path.exists(os.path.join(args.out, "results.json")) else {}
    times = [float(t) for t in args.times.split(",")]
    for config in args.configs:
        name, rd = name_of(config), run_dir(config)
        ckpts = checkpoints(rd)
        for t in times:
            key = f"{name}@{int(t)}"
            if key in results:
                continue
            done = [c for c in ckpts if c[0] <= t]
            if not done:
                print(f"{key}: no checkpoint yet", flush=True)
                continue
            elapsed, step, path = done[-1]
            work = os.path.join(args.out, "work", key.replace("@", "-"))
            shutil.rmtree(work, ignore_errors=True)
            os.makedirs(os.path.join(work, "checkpoints"))
            os.symlink(os.path.abspath(path), os.path.join(work, "checkpoints", os.path.basename(path)))
            subprocess.run([args.ldm, "train", "ldm", "--config", config, "--resume", work, "--export-only"], check=True,
                           stdout=subprocess.DEVNULL)
            samples = os.path.join(work, "samples")
            t0 = time.time()
            for k in range(10):
                os.makedirs(os.path.join(samples, str(k)))
                subprocess.run([args.ldm, "sample", "--model", os.path.join(work, "pipeline"), "--class", str(k),
                                "--batch-size", str(args.per_class), "--steps", str(args.steps), "--sampler", "ddim",
                                "--cfg-scale", str(args.cfg_scale), "--seed", str(k), "--quiet",
                                "--output", os.path.join(samples, str(k), "x.png")], check=True)
            sample_s = time.time() - t0
            js = os.path.join(work, "judge.json")
            subprocess.run([sys.executable, os.path.join(HERE, "digits_eval.py"), "--samples", samples, "--real", args.real,
                            "--json", js], check=True, stdout=subprocess.DEVNULL)
            judge = json.load(open(js))
            results[key] = {"model": name, "budget_s": t, "checkpoint_s": elapsed, "step": step, "sample_s": sample_s,
                            "accuracy": judge["overall_accuracy"], "fd": judge["fd_samples_vs_test"]}
            print(f"{key}: step {step} ({elapsed:.0f} s) accuracy {judge['overall_accuracy']:.3f} FD {judge['fd_samples_vs_test']:.3f}",
                  flush=True)
            with open(os.path.join(args.out, "results.json"), "w") as fh:
                json.dump(results, fh, indent=2, sort_keys=True)
    plot(results, args.out)


def plot(results, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for model in sorted({r["model"] for r in results.values()}):
        rows = sorted((r for r in results.values() if r["model"] == model), key=lambda r: r["budget_s"])
        x = [r["budget_s"] / 60 for r in rows]
        axes[0].plot(x, [r["fd"] for r in rows], marker="o", label=model)
        axes[1].plot(x, [100 * r["accuracy"] for r in rows], marker="o", label=model)
    axes[0].set(xlabel="training time (min, 1 core)", ylabel="Frechet distance (lower is better)", yscale="log")
    axes[1].set(xlabel="training time (min, 1 core)", ylabel="class accuracy of samples (%)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "compression.png"), dpi=100)


def main():
    ap = argparse.ArgumentParser(description="compression-factor study on the digits")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--ldm", required=True)
    t.add_argument("--budget", type=float, required=True, help="seconds of wall-clock per model")
    t.add_argument("--parallel", type=int, default=2)
    t.add_argument("configs", nargs="+")
    e = sub.add_parser("eval")
    e.add_argument("--ldm", required=True)
    e.add_argument("--times", required=True, help="comma-separated seconds")
    e.add_argument("--out", required=True)
    e.add_argument("--real", default="data/digits")
    e.add_argument("--per-class", type=int, default=20)
    e.add_argument("--steps", type=int, default=25)
    e.add_argument("--cfg-scale", type=float, default=2.0)
    e.add_argument("configs", nargs="+")
    args = ap.parse_args()
    os.makedirs(getattr(args, "out", None) or ".", exist_ok=True)
    train(args) if args.cmd == "train" else evaluate(args)


if __name__ == "__main__":
    main()
