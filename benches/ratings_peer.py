#!/usr/bin/env python3
"""ncf-rs's rating model beside Surprise's SVD and SVD++ on the same split, in one run.

    python3 -m venv /tmp/surprise-venv && /tmp/surprise-venv/bin/pip install scikit-surprise
    cargo build --release
    /tmp/surprise-venv/bin/python benches/ratings_peer.py --data ../shared/data/ml-100k \
        [--out results.json] [--config "FLAGS" ...]

Each --config is one set of flags for `ncf train --model rating` (default: none, the
defaults); every configuration runs on the same split (the same --split-seed).

What it does:
1. `ncf train --model rating --data DIR --write-split TMP ...` trains ncf-rs's rating model on
   its seeded 80/10/10 split (default split seed 42) and writes that split to
   TMP/{train,valid,test}.tsv (raw ids); each further --config trains on the same split. Its test RMSE/MAE are the validation-selected epoch's
   (`--summary-json`); its time is the whole command's wall time (loading, training every
   epoch, evaluating).
2. Surprise's SVD and SVD++ with their default settings (what a Surprise user writes:
   `SVD()`, `SVDpp()`; random_state fixed) are fitted on exactly TMP/train.tsv and scored on
   TMP/test.tsv, predictions clipped to the rating scale as Surprise does. Their time is fit +
   predict. Like ncf-rs, they never see the test ratings; they do not use the validation
   ratings either (ncf-rs uses them only to pick the epoch and stop early).
   `--peers-on-train-valid` fits them on train + validation instead (more data for the peers).
3. Prints a table (and writes it as JSON with --out), with each model's RMSE on the test
   ratings of users with fewer than 20 training ratings (the low-activity bucket).

The split files hold MovieLens ratings: they stay in a temporary folder, never in the repo.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def rmse_mae(pairs):
    n = max(len(pairs), 1)
    se = sum((p - t) ** 2 for p, t in pairs)
    ae = sum(abs(p - t) for p, t in pairs)
    return (se / n) ** 0.5, ae / n


def low_activity_users(train, below=20):
    """Users with fewer than `below` training ratings (ncf-rs's 0-19 residual bucket)."""
    count = {}
    for u, _, _ in train:
        count[u] = count.get(u, 0) + 1
    return {u for u, c in count.items() if c < below}


def read_tsv(path):
    rows = []
    with open(path) as f:
        for line in f:
            u, i, r = line.rstrip("\n").split("\t")
            rows.append((u, i, float(r)))
    return rows


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a MovieLens folder (u.data, ratings.dat or ratings.csv)")
    ap.add_argument("--ncf", default=os.path.join(here, "..", "target", "release", "ncf"), help="the ncf binary")
    ap.add_argument("--out", help="write the table as JSON here")
    ap.add_argument("--peers-on-train-valid", action="store_true", help="fit the peers on train + validation")
    ap.add_argument("--skip-svdpp", action="store_true", help="leave out SVD++ (the slowest)")
    ap.add_argument("--config", action="append", default=[], help="flags for `ncf train --model rating` (repeatable)")
    a = ap.parse_args()
    configs = [c.split() for c in a.config] or [[]]
    if any("--split-seed" in c or "--rating-split" in c for c in configs):
        sys.exit("every configuration must run on the same split: leave --split-seed/--rating-split out of --config")

    try:
        import surprise
        from surprise import SVD, Dataset, Reader, SVDpp
    except ImportError:
        sys.exit("needs scikit-surprise: python3 -m venv V && V/bin/pip install scikit-surprise, then run with V/bin/python")

    rows = []
    with tempfile.TemporaryDirectory(prefix="ncf-peer-") as tmp:
        split = os.path.join(tmp, "split")
        for k, extra in enumerate(configs):
            summary = os.path.join(tmp, f"ncf{k}.json")
            cmd = [a.ncf, "train", "--model", "rating", "--data", a.data, "--summary-json", summary] + extra
            if k == 0:
                cmd += ["--write-split", split]
            t = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True)
            secs = time.perf_counter() - t
            if p.returncode != 0:
                sys.exit(f"ncf failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr}")
            s = json.load(open(summary))
            rows.append({
                "model": "ncf-rs rating " + (" ".join(extra) if extra else "(defaults)"),
                "test_rmse": s["test_rmse"], "test_mae": s["test_mae"], "seconds": secs,
                "fit_on": f"train ({s['train_ratings']}), epoch {s['selected_epoch']} picked on validation",
                "low_activity_rmse": next((b["rmse"] for b in s["residuals"]["by_activity"] if b["label"] == "0-19"), None),
            })

        train, valid, test = (read_tsv(os.path.join(split, f"{n}.tsv")) for n in ("train", "valid", "test"))
        assert len(test) == s["test_ratings"], "the split files match the run"
        fit_rows = train + valid if a.peers_on_train_valid else train
        lo = min(r for _, _, r in train + valid + test)
        hi = max(r for _, _, r in train + valid + test)
        fit_file = os.path.join(tmp, "fit.tsv")
        with open(fit_file, "w") as f:
            f.writelines(f"{u}\t{i}\t{r}\n" for u, i, r in fit_rows)
        reader = Reader(line_format="user item rating", sep="\t", rating_scale=(lo, hi))
        trainset = Dataset.load_from_file(fit_file, reader).build_full_trainset()
        peers = [("Surprise SVD()", SVD(random_state=0))]
        if not a.skip_svdpp:
            peers.append(("Surprise SVDpp()", SVDpp(random_state=0)))
        for name, algo in peers:
            t = time.perf_counter()
            algo.fit(trainset)
            preds = algo.test([(u, i, r) for u, i, r in test])
            secs = time.perf_counter() - t
            rmse, mae = rmse_mae([(pr.est, pr.r_ui) for pr in preds])
            on = "train + validation" if a.peers_on_train_valid else "train"
            low_users = low_activity_users(train)
            low = [(pr.est, pr.r_ui) for pr in preds if pr.uid in low_users]
            rows.append({"model": name, "test_rmse": rmse, "test_mae": mae, "seconds": secs,
                         "fit_on": f"{on} ({len(fit_rows)})", "low_activity_rmse": rmse_mae(low)[0] if low else None})

    print(f"{a.data}: {len(test)} test ratings; surprise {surprise.__version__}; {os.cpu_count()} CPUs")
    print(f"{'model':<78} {'test RMSE':>9} {'test MAE':>9} {'<20 RMSE':>9} {'seconds':>8}  fitted on")
    for r in rows:
        low = r["low_activity_rmse"]
        low = f"{low:>9.4f}" if low is not None else f"{'':>9}"
        print(f"{r['model']:<78} {r['test_rmse']:>9.4f} {r['test_mae']:>9.4f} {low} {r['seconds']:>8.2f}  {r['fit_on']}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"data": a.data, "test_ratings": len(test), "surprise": surprise.__version__, "rows": rows}, f,
                      indent=2)


if __name__ == "__main__":
    main()
