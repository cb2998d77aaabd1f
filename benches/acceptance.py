#!/usr/bin/env python3
"""Issue 17's acceptance points, judged from the files one `benches/acceptance.sh` run wrote.

  python3 benches/acceptance.py OUT                  # OUT/compare, OUT/ttq, OUT/protocol.*
  python3 benches/acceptance.py --compare DIR --ttq DIR --protocol FILE.summary.json

Reads, without running anything:
  - compare: `benches/compare.py`'s results.json (NeuMF-8, batch 256, 2 threads each). Speed:
    ncf-rs's median run against the fastest torch configuration's median run, >= 30x. Epoch:
    the ncf-rs median run's mean whole epoch (sampling + training + evaluation), <= 1.0 s.
  - ttq: `benches/time_to_quality.sh`'s logs. ncf-rs `--preset fast` (ncf.log) against
    discorec's fastest setting that reached the target (discorec.log): <= half its wall time.
  - protocol: `ncf train --epochs 20` at the defaults, its --summary-json. The
    validation-selected epoch's test HR@10 >= 0.675 and NDCG@10 >= 0.400.
It checks that the three ran on one CPU and one ncf-rs SIMD level, and says whether that level
was forced (an AVX2 run on a CPU with AVX-512 emulates issue 17's CPU; it is not one). The
fourth point, AVX-512 not getting worse, needs an older binary to compare with and is left to
`benches/ab_binaries.sh`. Writes OUT/verdict.md and OUT/verdict.json and prints the table; exits
0 when every judged point holds, 1 when one does not, 2 when a file is missing or unreadable.
Standard library only.
"""

import argparse
import json
import re
import sys
from pathlib import Path

SPEED_RATIO = 30.0
EPOCH_S = 1.0
TTQ_SHARE = 0.5
PAPER_HR, PAPER_NDCG = 0.675, 0.400


class Fail(Exception):
    """A missing or unreadable input: printed as one message, exit 2."""


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except OSError as e:
        raise Fail(f"{path}: {e.strerror}")
    except json.JSONDecodeError as e:
        raise Fail(f"{path}: line {e.lineno}: not JSON ({e.msg})")


def read_text(path):
    try:
        return Path(path).read_text()
    except OSError as e:
        raise Fail(f"{path}: {e.strerror}")


def field(d, path, where):
    """d[k1][k2]..., or a Fail naming the file and the missing field."""
    for k in path:
        if not isinstance(d, dict) or k not in d:
            raise Fail(f"{where}: no field {'.'.join(path)}")
        d = d[k]
    return d


def judge_compare(folder):
    where = Path(folder) / "results.json"
    r = read_json(where)
    s = field(r, ["summary"], where)
    ncf = field(r, ["summary", "ncf-rs"], where)
    torches = {k: v for k, v in s.items() if k.startswith("torch-")}
    if not torches:
        raise Fail(f"{where}: no torch configuration in summary")
    rate = lambda t: field(t, ["samples_per_second", "256"], where)  # noqa: E731
    fastest = max(torches, key=lambda k: rate(torches[k]))
    ratio = rate(ncf) / rate(torches[fastest])
    epoch = field(ncf, ["seconds"], where)
    env = field(r, ["environment"], where)
    return {
        "file": str(where),
        "ncf_samples_per_s": rate(ncf),
        "ncf_runs": ncf.get("each_run", []),
        "torch_fastest": fastest.removeprefix("torch-"),
        "torch_samples_per_s": rate(torches[fastest]),
        "torch_runs": torches[fastest].get("each_run", []),
        "others": {k.removeprefix("torch-"): rate(v) for k, v in torches.items() if k != fastest},
        "ratio": ratio,
        "epoch_s": field(epoch, ["total"], where),
        "epoch_training_s": field(epoch, ["training"], where),
        "cpu": env.get("cpu"),
        "ncf_simd": env.get("ncf_simd"),
        "torch_simd": env.get("torch_simd"),
        "git": env.get("git"),
    }


def judge_ttq(folder):
    folder = Path(folder)
    log = read_text(folder / "ncf.log")
    m = re.search(r"time to test HR@10 >= ([0-9.]+): ([0-9.]+) s", log)
    if not m:
        raise Fail(f"{folder / 'ncf.log'}: no 'time to test HR@10 >= X: S s' line (the preset did not reach the target?)")
    target, ncf_s = float(m.group(1)), float(m.group(2))
    simd = re.search(r"SIMD ([^,\s]+)", log)
    runs = []
    for n, line in enumerate(read_text(folder / "discorec.log").splitlines(), 1):
        if line.startswith("{"):
            try:
                runs.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise Fail(f"{folder / 'discorec.log'}: line {n}: not JSON ({e.msg})")
    hits = [r for r in runs if r.get("test_hr", 0.0) >= target]
    best = min(hits, key=lambda r: r["wall_s"]) if hits else None
    env = read_text(folder / "env.txt") if (folder / "env.txt").exists() else ""
    cpu = re.search(r"cpu: (.*) \(\d+ cores\)", env)
    return {
        "dir": str(folder),
        "target": target,
        "ncf_s": ncf_s,
        "ncf_simd": simd.group(1) if simd else None,
        "discorec_s": best["wall_s"] if best else None,
        "discorec_setting": ({k: best[k] for k in ("factors", "iterations", "alpha", "regularization") if k in best}
                             if best else None),
        "share": ncf_s / best["wall_s"] if best else None,
        "cpu": cpu.group(1) if cpu else None,
    }


def judge_protocol(path):
    d = read_json(path)
    return {
        "file": str(path),
        "epochs_run": field(d, ["epochs_run"], path),
        "selected_epoch": field(d, ["selected_epoch"], path),
        "test_hr": field(d, ["test_hr"], path),
        "test_ndcg": field(d, ["test_ndcg"], path),
        "model": field(d, ["model"], path),
        "ncf_simd": d.get("simd"),
        "defaults": (d.get("config", {}).get("preset") is None and d.get("model") == "neumf"
                     and d.get("factors") == 8 and d.get("config", {}).get("batch") == 256),
    }


def verdict(c, t, p):
    """Rows of (point, measured, threshold, holds)."""
    runs = lambda xs: ", ".join(f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.0f}k" for x in xs)  # noqa: E731
    rows = [
        ("NeuMF-8, batch 256: ncf-rs / the fastest torch configuration",
         f"{c['ratio']:.1f}x: {c['ncf_samples_per_s'] / 1e6:.2f}M (runs {runs(c['ncf_runs'])}) against torch "
         f"{c['torch_fastest']} {c['torch_samples_per_s'] / 1e3:.0f}k (runs {runs(c['torch_runs'])})",
         f">= {SPEED_RATIO:.0f}x", c["ratio"] >= SPEED_RATIO),
        ("an ML-1M epoch (the median run's mean: sampling + training + evaluation)",
         f"{c['epoch_s']:.3f} s ({c['epoch_training_s']:.3f} s of it training)",
         f"<= {EPOCH_S:.1f} s", c["epoch_s"] <= EPOCH_S),
    ]
    if t["share"] is None:
        rows.append(("time to test HR@10 >= target: `--preset fast` / discorec",
                     f"ncf-rs {t['ncf_s']:.2f} s; discorec reached {t['target']} in no setting tried",
                     f"<= {TTQ_SHARE}", False))
    else:
        rows.append(("time to test HR@10 >= target: `--preset fast` / discorec",
                     f"{t['share']:.2f}: ncf-rs {t['ncf_s']:.2f} s against discorec {t['discorec_s']:.3f} s "
                     f"({', '.join(f'{k} {v}' for k, v in t['discorec_setting'].items())})",
                     f"<= {TTQ_SHARE}", t["share"] <= TTQ_SHARE))
    rows.append(("paper protocol: 20 epochs at the defaults, the validation-selected epoch's test HR@10 / NDCG@10",
                 f"{p['test_hr']:.4f} / {p['test_ndcg']:.4f} (epoch {p['selected_epoch']} of {p['epochs_run']})",
                 f">= {PAPER_HR:.3f} / {PAPER_NDCG:.3f}",
                 p["test_hr"] >= PAPER_HR and p["test_ndcg"] >= PAPER_NDCG and p["defaults"]
                 and p["epochs_run"] == 20))
    return rows


def consistency(c, t, p):
    """Problems that make the run not one run on one CPU and level."""
    problems = []
    base = lambda s: (s or "").split(" ")[0]  # noqa: E731  "avx2+fma (NCF_SIMD=avx2)" -> "avx2+fma"
    levels = {"compare": base(c["ncf_simd"]), "ttq": base(t["ncf_simd"]), "protocol": base(p["ncf_simd"])}
    if len(set(levels.values())) != 1:
        problems.append("ncf-rs SIMD levels differ: " + ", ".join(f"{k} {v or '?'}" for k, v in levels.items()))
    if t["cpu"] and c["cpu"] and not t["cpu"].startswith(c["cpu"]):
        problems.append(f"CPUs differ: compare {c['cpu']!r}, ttq {t['cpu']!r}")
    return problems


def render(c, t, p, rows, problems, cpu_flags):
    forced = "NCF_SIMD=" in (c["ncf_simd"] or "")
    has512 = "avx512f" in cpu_flags
    if has512 and forced:
        machine = ("**emulated**: this CPU has AVX-512 and every tool's level was forced to AVX2; "
                   "issue 17 asks for a CPU without AVX-512")
    elif has512:
        machine = "this CPU has AVX-512 and the level was not forced: these are AVX-512 numbers"
    elif cpu_flags:
        machine = "a CPU without AVX-512, as issue 17 asks"
    else:
        machine = "the CPU's flags were not recorded (no cpuinfo-flags.txt beside the results)"
    out = [
        "# Issue 17's acceptance, one run",
        "",
        f"CPU {c['cpu']}; ncf-rs {c['git']}, SIMD {c['ncf_simd']}; torch SIMD {c['torch_simd']}; {machine}.",
        "",
        "| point | measured | needs | holds |",
        "|---|---|---|---|",
    ]
    out += [f"| {a} | {m} | {n} | {'yes' if ok else '**no**'} |" for a, m, n, ok in rows]
    out += ["", "The AVX-512 point (must not get worse) needs an older binary: `benches/ab_binaries.sh`."]
    if problems:
        out += ["", "**Not one run on one CPU and level:** " + "; ".join(problems) + "."]
    out += ["", f"Files: {c['file']}, {t['dir']}, {p['file']}."]
    return "\n".join(out) + "\n"


def cpu_flags(out):
    """The run's CPU flags: OUT/cpuinfo-flags.txt (acceptance.sh writes it), else none known."""
    try:
        return set((out / "cpuinfo-flags.txt").read_text().split()) if out is not None else set()
    except OSError:
        return set()


def main():
    ap = argparse.ArgumentParser(description="Judge issue 17's acceptance points from a benches/acceptance.sh run.")
    ap.add_argument("out", nargs="?", type=Path, help="the run's folder (compare/, ttq/, protocol.summary.json)")
    ap.add_argument("--compare", type=Path, help="a compare.py output folder (default OUT/compare)")
    ap.add_argument("--ttq", type=Path, help="a time_to_quality.sh output folder (default OUT/ttq)")
    ap.add_argument("--protocol", type=Path, help="a 20-epoch run's --summary-json (default OUT/protocol.summary.json)")
    ap.add_argument("--write", type=Path, help="where to write verdict.md and verdict.json (default OUT; none without OUT)")
    a = ap.parse_args()
    if a.out is None and not (a.compare and a.ttq and a.protocol):
        ap.error("give OUT, or all of --compare, --ttq and --protocol")
    c = judge_compare(a.compare or a.out / "compare")
    t = judge_ttq(a.ttq or a.out / "ttq")
    p = judge_protocol(a.protocol or a.out / "protocol.summary.json")
    rows = verdict(c, t, p)
    problems = consistency(c, t, p)
    md = render(c, t, p, rows, problems, cpu_flags(a.out))
    print(md, end="")
    dest = a.write or a.out
    if dest is not None:
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "verdict.md").write_text(md)
        (dest / "verdict.json").write_text(json.dumps(
            {"compare": c, "ttq": t, "protocol": p, "problems": problems,
             "points": [{"point": a, "measured": m, "needs": n, "holds": ok} for a, m, n, ok in rows]}, indent=1) + "\n")
    return 0 if all(ok for *_, ok in rows) and not problems else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Fail as e:
        print(f"acceptance.py: {e}", file=sys.stderr)
        sys.exit(2)
