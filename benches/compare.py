#!/usr/bin/env python3
"""ncf-rs vs PyTorch, side by side, on the same data, model, hyper-parameters and thread count.

Runs, one after the other (never at the same time):
  1. `ncf train`, then benches/reference/torch_ncf.py in each of its configurations
     (--torch-configs: `dense`, one fused dense Adam, what a PyTorch user writes; `sparse`,
     SparseAdam on the embeddings + Adam, ncf-rs's lazy rule; `compiled`, `dense` trained
     through torch.compile, its compile time outside the clock), for --epochs epochs at batch 256;
  2. all again for one epoch at each other batch size of --batches (256 reuses run 1).
The torch column and every ratio use the fastest torch configuration (by samples/s at batch
256); the others are listed below it. The table names the CPU and each side's SIMD level
(ncf-rs's, which NCF_SIMD can force lower, and torch's), and refuses runs whose ncf-rs SIMD
levels differ.
Each child's peak RSS comes from os.wait4. Writes results.json, table.md and plot.svg to --out
and prints the table. Standard library only; `benches/compare.sh` sets up torch and calls this.

  python3 benches/compare.py --torch-python ~/.cache/ncf-rs/torch-venv/bin/python --threads 4
"""

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH_SCRIPT = ROOT / "benches" / "reference" / "torch_ncf.py"
MAIN_BATCH = 256
TOOLS = ("ncf-rs", "torch")
TORCH_CONFIGS = {"dense": "dense fused Adam", "sparse": "SparseAdam on embeddings + Adam",
                 "compiled": "dense fused Adam, torch.compile'd model"}
TORCH_FLAGS = {"dense": ["--dense-adam"], "sparse": [], "compiled": ["--dense-adam", "--compile"]}


class Fail(Exception):
    """An expected failure: printed as one clear message, no traceback."""


# ------------------------------------------------------------------------------- arguments


def parse_args():
    ap = argparse.ArgumentParser(description="Benchmark ncf-rs against a PyTorch reference trainer.")
    ap.add_argument("--data", type=Path, help="NCF split folder (default: $NCF_DATA/ncf-ml-1m, else data/ncf-ml-1m)")
    ap.add_argument("--ncf", type=Path, default=ROOT / "target" / "release" / "ncf", help="the ncf binary")
    ap.add_argument("--torch-python", default=sys.executable, help="a python that can `import torch`")
    ap.add_argument("--out", type=Path, help="output folder (default: bench-results/compare-<timestamp>)")
    ap.add_argument("--epochs", type=int, default=10, help="epochs of the batch-256 runs (default 10)")
    ap.add_argument("--batches", default="256,1024,4096", help="batch sizes of the throughput runs")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for both (default: all cores)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--model", default="neumf", choices=["gmf", "mlp", "neumf"])
    ap.add_argument("--factors", type=int, default=8)
    ap.add_argument("--layers", default="64,32,16,8")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each tool at batch 256, interleaved (ncf-rs, then each torch configuration, "
                         "round after round); each tool's table column is its median run by samples/s, and the "
                         "table lists every run's rate (default 1)")
    ap.add_argument("--torch-configs", default="dense,sparse,compiled",
                    help="torch configurations to run: dense (one fused dense Adam, what PyTorch users write), "
                         "sparse (SparseAdam on embeddings, ncf-rs's lazy rule), compiled (dense, trained through "
                         "torch.compile; compile time outside the clock); the fastest is compared")
    a = ap.parse_args()
    a.torch_configs = [c.strip() for c in a.torch_configs.split(",") if c.strip()]
    if not a.torch_configs or any(c not in TORCH_CONFIGS for c in a.torch_configs):
        raise Fail(f"--torch-configs: expected a list of {', '.join(TORCH_CONFIGS)}")
    if a.epochs < 1 or a.threads < 1 or a.repeat < 1:
        raise Fail("--epochs, --threads and --repeat must be at least 1")
    try:
        a.batches = sorted({int(b) for b in a.batches.split(",") if b.strip()} | {MAIN_BATCH})  # run 1 is at 256
    except ValueError:
        raise Fail(f"--batches {a.batches!r}: expected comma-separated integers such as 256,1024,4096")
    if not a.batches or min(a.batches) < 1:
        raise Fail("--batches needs positive batch sizes")
    if a.data is None:
        env = os.environ.get("NCF_DATA")
        a.data = Path(env) / "ncf-ml-1m" if env else ROOT / "data" / "ncf-ml-1m"
    if a.out is None:
        a.out = ROOT / "bench-results" / f"compare-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    return a


def check_inputs(a):
    if not a.data.is_dir():
        raise Fail(f"data folder {a.data} not found (pass --data DIR, or set NCF_DATA to the folder holding ncf-ml-1m/)")
    splits = sorted(a.data.glob("*.train.rating"))
    if len(splits) != 1:
        raise Fail(f"data folder {a.data}: expected one NAME.train.rating file, found {len(splits)}")
    name = splits[0].name[: -len(".train.rating")]
    for suffix in ("test.rating", "test.negative"):
        if not (a.data / f"{name}.{suffix}").is_file():
            raise Fail(f"data folder {a.data}: {name}.{suffix} is missing")
    if not a.ncf.is_file() or not os.access(a.ncf, os.X_OK):
        raise Fail(f"ncf binary {a.ncf} not found or not executable (build it: cargo build --release --bin ncf, or pass --ncf)")
    if not TORCH_SCRIPT.is_file():
        raise Fail(f"{TORCH_SCRIPT} is missing")


# --------------------------------------------------------------------------------- running


def run_child(name, cmd, log_path):
    """Runs `cmd`, echoing and logging its output; returns wall time and peak RSS (os.wait4)."""
    print(f"\n$ {shlex.join(map(str, cmd))}", flush=True)
    t = time.perf_counter()
    try:
        p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
    except OSError as e:
        raise Fail(f"{name}: cannot start {cmd[0]}: {e.strerror}")
    with open(log_path, "wb") as log:
        for line in p.stdout:
            log.write(line)
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
    p.stdout.close()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
    if p.returncode != 0:
        tail = "\n    ".join(log_path.read_text(errors="replace").splitlines()[-12:])
        raise Fail(f"{name} exited with status {p.returncode}: {shlex.join(map(str, cmd))}\n"
                   f"  last lines of {log_path}:\n    {tail}")
    return {"wall_s": time.perf_counter() - t, "peak_rss_mb": usage.ru_maxrss / 1024}


def train_cmd(a, tool, batch, epochs, jsonl, summary):
    common = ["--data", a.data, "--model", a.model, "--factors", a.factors, "--layers", a.layers, "--neg", 4,
              "--batch", batch, "--lr", 0.001, "--epochs", epochs, "--threads", a.threads, "--seed", a.seed,
              "--metrics-jsonl", jsonl, "--summary-json", summary]
    if tool == "ncf-rs":
        return [a.ncf, "train", *common, "--force"]
    return [a.torch_python, TORCH_SCRIPT, *common] + TORCH_FLAGS[tool.split("-", 1)[1]]


def train_run(a, tool, batch, epochs, rep=None):
    stem = f"{tool}-b{batch}-e{epochs}" + (f"-r{rep}" if rep is not None else "")
    jsonl, summary, log = (a.out / f"{stem}{ext}" for ext in (".jsonl", ".summary.json", ".log"))
    cmd = train_cmd(a, tool, batch, epochs, jsonl, summary)
    res = run_child(f"{tool} (batch {batch}, {epochs} epoch{'s' * (epochs != 1)})", cmd, log)
    try:
        res["epochs"] = [json.loads(l) for l in jsonl.read_text().splitlines() if l.strip()]
        res["summary"] = json.loads(summary.read_text())
    except (OSError, ValueError) as e:
        raise Fail(f"{tool} finished but its metrics could not be read ({e}); see {log}")
    if len(res["epochs"]) != epochs:
        raise Fail(f"{tool} wrote {len(res['epochs'])} epochs to {jsonl}, expected {epochs}")
    res.update(tool=tool, batch=batch, epochs_run=epochs, cmd=shlex.join(map(str, cmd)), log=str(log))
    res["samples_per_second"] = mean([r["samples_per_second"] for r in res["epochs"]])
    return res


def median_run(rs):
    """The median of a tool's repeated runs by samples/s (of two, the faster)."""
    return sorted(rs, key=lambda r: r["samples_per_second"])[len(rs) // 2]


def torch_import_rss(a):
    """Peak RSS of a python that only imports torch (the floor under torch's number)."""
    cmd = [a.torch_python, "-c",
           "import torch; print('simd', torch.backends.cpu.get_cpu_capability()); print('torch', torch.__version__)"]
    try:
        res = run_child("`import torch`", cmd, a.out / "torch-import.log")
    except Fail as e:
        raise Fail(f"--torch-python {a.torch_python} cannot import torch (run benches/compare.sh, which sets up a "
                   f"venv, or pass a python with torch)\n{e}")
    log = (a.out / "torch-import.log").read_text()
    res["version"] = log.split("torch ")[-1].strip()
    res["simd"] = next((l.split(" ", 1)[1] for l in log.splitlines() if l.startswith("simd ")), "unknown")
    return res


# ------------------------------------------------------------------------------- reporting


def mean(xs):
    return sum(xs) / len(xs)


def summarize(a, main, by_batch):
    """The numbers the table and plot show, per run name (`ncf-rs`, `torch-dense`, `torch-sparse`,
    `torch-compiled`),
    then `torch` = the fastest torch configuration (samples/s at batch 256); each `torch-*` entry
    carries its `config`."""
    s = {}
    for tool in main:
        ep = main[tool]["epochs"]
        best_hr = max(reversed(ep), key=lambda r: r["test_hr"])  # the last best, like ncf-rs
        best_ndcg = max(reversed(ep), key=lambda r: r["test_ndcg"])
        s[tool] = {
            "seconds": {f: mean([r[f + "_s"] for r in ep]) for f in ("sampling", "training", "eval")},
            # batch 256: the mean over run 1's epochs; other batches: their single epoch
            "samples_per_second": {b: (mean([r["samples_per_second"] for r in ep]) if b == MAIN_BATCH else
                                       by_batch[b][tool]["epochs"][0]["samples_per_second"]) for b in a.batches},
            "peak_rss_mb": {b: (main[tool] if b == MAIN_BATCH else by_batch[b][tool])["peak_rss_mb"] for b in a.batches},
            "last": ep[-1], "best_hr": best_hr, "best_ndcg": best_ndcg,
            "threads": main[tool]["summary"].get("threads"),
            "compile_s": main[tool]["summary"].get("compile_s", 0.0),  # torch.compile, before the clock
            "in_process_rss_mb": main[tool]["summary"].get("peak_rss_mb"),  # torch reports it
            "each_run": [r["samples_per_second"] for r in main[tool].get("repeats", [main[tool]])],
        }
        s[tool]["seconds"]["total"] = sum(s[tool]["seconds"].values())
    for t in main:
        if t.startswith("torch-"):
            s[t]["config"] = t.split("-", 1)[1]
    s["torch"] = dict(s[torches_fastest_first(s)[0]])
    return s


def torches_fastest_first(s):
    """The `torch-*` run names, fastest first (samples/s at batch 256)."""
    return sorted((t for t in s if t.startswith("torch-")), key=lambda t: -s[t]["samples_per_second"][MAIN_BATCH])


def fmt_rate(x):
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.0f}k" if x >= 1e3 else f"{x:.0f}"


def fmt_tick(v):
    return f"{v / 1e6:g}M" if v >= 1e6 else f"{v / 1e3:g}k" if v >= 1e3 else f"{v:g}"


def fmt_s(x):
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.0f}"


def compile_row(t):
    """The table row of a torch configuration's compile time, if it compiles."""
    return [("torch.compile before epoch 1 (s; in no time above)", "", fmt_s(t["compile_s"]), "")] \
        if t["config"] == "compiled" else []


def ratio(x, y):
    return f"{x / y:.2f}" if y else "–"


def table_md(a, s, env, commands):
    r, t = s["ncf-rs"], s["torch"]
    which = f"mean of {a.epochs} epochs" + (f", the median run of {a.repeat}" if a.repeat > 1 else "")
    rows = [(f"**epoch time, batch 256** ({which})", "", "", "")]
    for f, label in (("sampling", "sampling (s)"), ("training", "training (s)"), ("eval", "evaluation (s)"),
                     ("total", "**total (s)**")):
        rows.append((label, fmt_s(r["seconds"][f]), fmt_s(t["seconds"][f]), ratio(r["seconds"][f], t["seconds"][f])))
    rows += compile_row(t)
    rows.append(("**throughput** (training samples/s)", "", "", ""))
    for b in a.batches:
        note = f" (mean of {a.epochs} epochs)" if b == MAIN_BATCH else " (1 epoch)"
        if b == MAIN_BATCH and a.repeat > 1:
            note = f" (median of {a.repeat} runs, each the mean of {a.epochs} epochs)"
        x, y = r["samples_per_second"][b], t["samples_per_second"][b]
        rows.append((f"batch {b}{note}", fmt_rate(x), fmt_rate(y), ratio(x, y)))
        if b == MAIN_BATCH and a.repeat > 1:
            rows.append((f"batch {b}, each run in the order they ran", ", ".join(map(fmt_rate, r["each_run"])),
                         ", ".join(map(fmt_rate, t["each_run"])), ""))
    for other in torches_fastest_first(s)[1:]:
        o = s[other]
        rows.append((f"**torch, {TORCH_CONFIGS[o['config']]}** (a slower torch configuration; not in the ratios)",
                     "", "", ""))
        for b in a.batches:
            x, y = r["samples_per_second"][b], o["samples_per_second"][b]
            rows.append((f"batch {b} samples/s", fmt_rate(x), fmt_rate(y), ratio(x, y)))
            if b == MAIN_BATCH and a.repeat > 1:
                rows.append((f"batch {b}, each run", "", ", ".join(map(fmt_rate, o["each_run"])), ""))
        rows.append(("epoch total at batch 256 (s)", fmt_s(r["seconds"]["total"]), fmt_s(o["seconds"]["total"]),
                     ratio(r["seconds"]["total"], o["seconds"]["total"])))
        rows += compile_row(o)
    rows.append(("**peak memory** (RSS, MB)", "", "", ""))
    for b in a.batches:
        x, y = r["peak_rss_mb"][b], t["peak_rss_mb"][b]
        rows.append((f"run at batch {b}", f"{x:.0f}", f"{y:.0f}", ratio(x, y)))
    rows.append(("(torch at batch 256, in-process peak before interpreter exit)", "",
                 f"{t['in_process_rss_mb']:.0f}", ""))
    rows.append(("(`import torch` alone)", "", f"{env['torch_import_rss_mb']:.0f}", ""))
    rows.append((f"**quality after {a.epochs} epochs** (test, K=10)", "", "", ""))
    rows.append(("HR@10, last epoch", f"{r['last']['test_hr']:.4f}", f"{t['last']['test_hr']:.4f}",
                 ratio(r["last"]["test_hr"], t["last"]["test_hr"])))
    rows.append(("NDCG@10, last epoch", f"{r['last']['test_ndcg']:.4f}", f"{t['last']['test_ndcg']:.4f}",
                 ratio(r["last"]["test_ndcg"], t["last"]["test_ndcg"])))
    rows.append(("best HR@10 over epochs (epoch)", f"{r['best_hr']['test_hr']:.4f} ({r['best_hr']['epoch']})",
                 f"{t['best_hr']['test_hr']:.4f} ({t['best_hr']['epoch']})",
                 ratio(r["best_hr"]["test_hr"], t["best_hr"]["test_hr"])))
    rows.append(("best NDCG@10 over epochs (epoch)", f"{r['best_ndcg']['test_ndcg']:.4f} ({r['best_ndcg']['epoch']})",
                 f"{t['best_ndcg']['test_ndcg']:.4f} ({t['best_ndcg']['epoch']})",
                 ratio(r["best_ndcg"]["test_ndcg"], t["best_ndcg"]["test_ndcg"])))
    rows.append(("training loss, last epoch", f"{r['last']['loss']:.4f}", f"{t['last']['loss']:.4f}", ""))
    rows.append(("threads", str(r["threads"]), str(t["threads"]), ""))
    lines = [
        f"# ncf-rs vs PyTorch: {a.model.upper()} (factors {a.factors}, layers {a.layers}), 4 negatives, Adam lr 0.001",
        "",
        f"Data `{a.data}`; {env['cpu']} ({env['cores']} cores), {a.threads} threads each; ncf-rs {env['git']}, "
        f"SIMD {env['ncf_simd']}; torch {env['torch_version']}, SIMD {env['torch_simd']}, the torch column is its "
        f"fastest configuration here: **{TORCH_CONFIGS[t['config']]}**; Python {env['python']}; {env['date']}.",
        "",
        "| | ncf-rs | torch | ratio ncf-rs/torch |",
        "|---|---:|---:|---:|",
        *[f"| {c0} | {c1} | {c2} | {c3} |" for c0, c1, c2, c3 in rows],
        "",
        f"ncf-rs trains {r['samples_per_second'][MAIN_BATCH] / t['samples_per_second'][MAIN_BATCH]:.1f}× as many "
        f"samples per second as torch ({TORCH_CONFIGS[t['config']]}) at batch {MAIN_BATCH}; a whole epoch takes torch "
        f"{t['seconds']['total'] / r['seconds']['total']:.1f}× as long.",
        "",
        "Commands, in the order they ran:",
        "",
        "```sh",
        *commands,
        "```",
        "",
    ]
    return "\n".join(lines)


# -------------------------------------------------------------------------------- the plot

COLORS = {"ncf-rs": "#d95f02", "torch": "#1b6ca8"}
PARTS = (("sampling", "#66c2a5"), ("training", "#fc8d62"), ("eval", "#8da0cb"))


def esc(x):
    return str(x).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def text(x, y, s, size=12, anchor="start", weight="normal", fill="#222"):
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}">{esc(s)}</text>')


def nice_step(span, n=5):
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def throughput_panel(a, s, x0, y0, w, h):
    """Samples/s against batch size: log-2 x, log-10 y."""
    out = [text(x0 + w / 2, y0 - 26, "Training throughput (samples/s, log scale)", 14, "middle", "bold")]
    vals = [s[t]["samples_per_second"][b] for t in TOOLS for b in a.batches]
    lo, hi = math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))
    hi += hi == lo
    bx = [math.log2(b) for b in a.batches]
    xmin, xmax = min(bx) - 0.5, max(bx) + 0.5
    X = lambda b: x0 + (math.log2(b) - xmin) / (xmax - xmin) * w
    Y = lambda v: y0 + h - (math.log10(v) - lo) / (hi - lo) * h
    out.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>')
    for d in range(lo, hi + 1):
        for m in (1, 2, 5):
            v = m * 10 ** d
            if lo <= math.log10(v) <= hi:
                out.append(f'<line x1="{x0}" x2="{x0 + w}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" '
                           f'stroke="{"#ccc" if m == 1 else "#eee"}"/>')
                out.append(text(x0 - 6, Y(v) + 4, fmt_tick(v), 11, "end", fill="#555"))
    for b in a.batches:
        out.append(text(X(b), y0 + h + 18, str(b), 11, "middle", fill="#555"))
    out.append(text(x0 + w / 2, y0 + h + 38, "batch size", 12, "middle"))
    for k, t in enumerate(TOOLS):
        pts = [(X(b), Y(s[t]["samples_per_second"][b])) for b in a.batches]
        out.append(f'<polyline points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in pts)}" fill="none" '
                   f'stroke="{COLORS[t]}" stroke-width="2.5"/>')
        for (x, y), b in zip(pts, a.batches):
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5" fill="{COLORS[t]}"/>')
            out.append(text(x + 7, y - 7, fmt_rate(s[t]["samples_per_second"][b]), 11, fill=COLORS[t]))
        out.append(f'<rect x="{x0 + 12}" y="{y0 + 12 + 18 * k}" width="14" height="4" fill="{COLORS[t]}"/>')
        out.append(text(x0 + 32, y0 + 19 + 18 * k, t, 12))
    return out


def breakdown_panel(a, s, x0, y0, w, h):
    """One stacked bar per tool, each on its own linear scale, every segment labelled."""
    out = [text(x0 + w / 2, y0 - 26, f"Epoch time in s, batch {MAIN_BATCH} (mean of {a.epochs}; own scale each)",
                14, "middle", "bold")]
    sub_w = w / 2
    for k, t in enumerate(TOOLS):
        sx = x0 + k * sub_w + 44
        secs = s[t]["seconds"]
        step = nice_step(secs["total"] * 1.1)
        top = step * math.ceil(secs["total"] * 1.1 / step)
        Y = lambda v: y0 + h - v / top * h
        out.append(f'<line x1="{sx}" x2="{sx}" y1="{y0}" y2="{y0 + h}" stroke="#999"/>')
        v = 0.0
        while v <= top + 1e-9:
            out.append(f'<line x1="{sx - 4}" x2="{sx + sub_w - 60}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#eee"/>')
            out.append(text(sx - 6, Y(v) + 4, f"{v:g}", 11, "end", fill="#555"))
            v += step
        bar_x, bar_w = sx + 14, 48
        acc, labels = 0.0, []
        for part, color in PARTS:
            y_top, y_bot = Y(acc + secs[part]), Y(acc)
            out.append(f'<rect x="{bar_x}" y="{y_top:.1f}" width="{bar_w}" height="{max(y_bot - y_top, 0.5):.1f}" '
                       f'fill="{color}" stroke="white" stroke-width="0.5"/>')
            labels.append([(y_top + y_bot) / 2 + 4, f"{part} {fmt_s(secs[part])} s"])
            acc += secs[part]
        for j in range(len(labels) - 2, -1, -1):  # labels run bottom-up; keep them 13 px apart
            labels[j][0] = max(labels[j][0], labels[j + 1][0] + 13)
        overflow = max(0.0, labels[0][0] - (y0 + h + 4))  # pushed below the axis: move all up
        for ly, lab in labels:
            ly -= overflow
            out.append(text(bar_x + bar_w + 6, ly, lab, 11, fill="#333"))
        out.append(text(bar_x + bar_w / 2, Y(secs["total"]) - 6, f"{fmt_s(secs['total'])} s", 12, "middle", "bold"))
        out.append(text(bar_x + bar_w / 2, y0 + h + 18, t, 12, "middle", "bold", COLORS[t]))
    r, t = (s[tool]["seconds"]["total"] for tool in TOOLS)
    out.append(text(x0 + w / 2, y0 - 9, f"torch takes {t / r:.1f}× as long as ncf-rs", 12, "middle", fill="#555"))
    return out


def plot_svg(a, s):
    W, H = 1000, 440
    body = throughput_panel(a, s, 80, 60, 360, 310) + breakdown_panel(a, s, 540, 60, 440, 310)
    legend_x = 560
    for k, (part, color) in enumerate(PARTS):
        body.append(f'<rect x="{legend_x + 110 * k}" y="{H - 22}" width="12" height="12" fill="{color}"/>')
        body.append(text(legend_x + 110 * k + 17, H - 12, part, 12))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
            f'font-family="sans-serif">\n<rect width="{W}" height="{H}" fill="white"/>\n' + "\n".join(body) + "\n</svg>\n")


# -------------------------------------------------------------------------------- main


def environment(a, torch_info):
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=10).stdout.strip() or "unknown commit"
    except (OSError, subprocess.SubprocessError):
        rev = "unknown commit"
    return {"cpu": cpu, "cores": os.cpu_count(), "git": rev, "python": platform.python_version(),
            "torch_version": torch_info["version"], "torch_import_rss_mb": torch_info["peak_rss_mb"],
            "torch_simd": torch_info["simd"], "ncf_simd_env": os.environ.get("NCF_SIMD", ""),
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node()}


def main():
    a = parse_args()
    check_inputs(a)
    try:
        a.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise Fail(f"cannot create output folder {a.out}: {e.strerror}")
    results_root = ROOT / "bench-results"
    if a.out.resolve().parent == results_root.resolve() and not (results_root / ".gitignore").exists():
        (results_root / ".gitignore").write_text("# benchmark outputs, never committed\n*\n")
    torch_info = torch_import_rss(a)
    env = environment(a, torch_info)

    runs = ["ncf-rs"] + [f"torch-{c}" for c in a.torch_configs]
    # Repeated runs interleave the tools, so a slow spell of the machine falls on all of them.
    reps = {tool: [] for tool in runs}
    for k in range(a.repeat):
        for tool in runs:
            reps[tool].append(train_run(a, tool, MAIN_BATCH, a.epochs, k + 1 if a.repeat > 1 else None))
    main_runs = {tool: dict(median_run(rs), repeats=rs) for tool, rs in reps.items()}
    by_batch = {b: {tool: train_run(a, tool, b, 1) for tool in runs} for b in a.batches if b != MAIN_BATCH}
    levels = {r["summary"].get("simd", "unknown") for r in reps["ncf-rs"] + [by_batch[b]["ncf-rs"] for b in by_batch]}
    if len(levels) != 1:
        raise Fail(f"the ncf-rs runs report different SIMD levels {sorted(levels)}: one table holds one CPU and level")
    env["ncf_simd"] = levels.pop() + (f" (NCF_SIMD={env['ncf_simd_env']})" if env["ncf_simd_env"] else "")
    s = summarize(a, main_runs, by_batch)
    commands = [reps[t][k]["cmd"] for k in range(a.repeat) for t in runs] + [by_batch[b][t]["cmd"] for b in by_batch for t in runs]

    table = table_md(a, s, env, commands)
    (a.out / "table.md").write_text(table)
    (a.out / "plot.svg").write_text(plot_svg(a, s))
    results = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "environment": env,
        "summary": {t: {**s[t], "samples_per_second": {str(b): v for b, v in s[t]["samples_per_second"].items()},
                        "peak_rss_mb": {str(b): v for b, v in s[t]["peak_rss_mb"].items()}} for t in s},
        "runs": [reps[t][k] for k in range(a.repeat) for t in runs] + [by_batch[b][t] for b in by_batch for t in runs],
        "median_runs": {t: main_runs[t]["log"] for t in runs},
        "torch_import": torch_info,
    }
    (a.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n" + table)
    print(f"wrote {a.out / 'results.json'}, {a.out / 'table.md'} and {a.out / 'plot.svg'}")


if __name__ == "__main__":
    try:
        main()
    except Fail as e:
        print(f"compare.py: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("compare.py: interrupted", file=sys.stderr)
        sys.exit(130)
