#!/usr/bin/env python3
"""ncf-rs's rating model beside Surprise's SVD and SVD++ on the same split, in one run.

    python3 -m venv /tmp/surprise-venv && /tmp/surprise-venv/bin/pip install scikit-surprise
    cargo build --release
    /tmp/surprise-venv/bin/python benches/ratings_peer.py --data ../shared/data/ml-100k \
        [--out results.json] [-- extra flags for `ncf train --model rating`]

What it does:
1. `ncf train --model rating --data DIR --write-split TMP ...` trains ncf-rs's rating model on
   its seeded 80/10/10 split (`--split-seed`, default 42) and writes that split to
   TMP/{train,valid,test}.tsv (raw ids). Its test RMSE/MAE are the validation-selected epoch's
   (`--summary-json`); its time is the whole command's wall time (loading, training every
   epoch, evaluating).
2. Surprise's SVD and SVD++ with their default settings (what a Surprise user writes:
   `SVD()`, `SVDpp()`; random_state fixed) are fitted on exactly TMP/train.tsv and scored on
   TMP/test.tsv, predictions clipped to the rating scale as Surprise does. Their time is fit +
   predict. Like ncf-rs, they never see the test ratings; they do not use the validation
   ratings either (ncf-rs uses them only to pick the epoch and stop early).
   `--peers-on-train-valid` fits them on train + validation instead (more data for the peers).
3. Prints a table (and writes it as JSON with --out).

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
    ap.add_argument("ncf_args", nargs=argparse.REMAINDER, help="after --: flags for `ncf train --model rating`")
    a = ap.parse_args()
    extra = [x for x in a.ncf_args if x != "--"]

    try:
        import surprise
        from surprise import SVD, Dataset, Reader, SVDpp
    except ImportError:
        sys.exit("needs scikit-surprise: python3 -m venv V && V/bin/pip install scikit-surprise, then run with V/bin/python")

    rows = []
    with tempfile.TemporaryDirectory(prefix="ncf-peer-") as tmp:
        split, summary = os.path.join(tmp, "split"), os.path.join(tmp, "ncf.json")
        cmd = [a.ncf, "train", "--model", "rating", "--data", a.data, "--write-split", split, "--summary-json", summary]
        cmd += extra
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        secs = time.perf_counter() - t
        if p.returncode != 0:
            sys.exit(f"ncf failed ({p.returncode}):\n{p.stderr}")
        s = json.load(open(summary))
        rows.append({
            "model": "ncf-rs rating (" + " ".join(extra or ["defaults"]) + ")",
            "test_rmse": s["test_rmse"], "test_mae": s["test_mae"], "seconds": secs,
            "fit_on": f"train ({s['train_ratings']}), epoch picked on validation ({s['valid_ratings']})",
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
            rows.append({"model": name, "test_rmse": rmse, "test_mae": mae, "seconds": secs,
                         "fit_on": f"{on} ({len(fit_rows)})"})

    print(f"{a.data}: {len(test)} test ratings; surprise {surprise.__version__}; {os.cpu_count()} CPUs")
    print(f"{'model':<60} {'test RMSE':>9} {'test MAE':>9} {'seconds':>8}  fitted on")
    for r in rows:
        print(f"{r['model']:<60} {r['test_rmse']:>9.4f} {r['test_mae']:>9.4f} {r['seconds']:>8.2f}  {r['fit_on']}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"data": a.data, "test_ratings": len(test), "surprise": surprise.__version__, "rows": rows}, f,
                      indent=2)


if __name__ == "__main__":
    main()
