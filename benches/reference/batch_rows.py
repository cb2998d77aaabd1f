#!/usr/bin/env python3
"""How many distinct users and items a training batch touches (what lazy Adam updates).

Samples one epoch the way `ncf train` does (every positive plus 4 negatives drawn uniformly
among the user's unseen items), shuffles it, and averages the distinct users and items over
the first 2,000 batches. Used for the roofline arithmetic in BENCHMARKS.md.

    python3 benches/reference/batch_rows.py $NCF_DATA/ncf-ml-1m/ml-1m.train.rating [--batch 256]
"""
import argparse
import random

ap = argparse.ArgumentParser()
ap.add_argument("train_rating")
ap.add_argument("--batch", type=int, default=256)
ap.add_argument("--neg", type=int, default=4)
ap.add_argument("--batches", type=int, default=2000)
args = ap.parse_args()

pairs = []
with open(args.train_rating) as f:
    for line in f:
        u, i = line.split("\t")[:2]
        pairs.append((int(u), int(i)))
n_items = 1 + max(i for _, i in pairs)
seen = {}
for u, i in pairs:
    seen.setdefault(u, set()).add(i)
rng = random.Random(1)
rows = []
for u, i in pairs:
    rows.append((u, i))
    for _ in range(args.neg):
        j = rng.randrange(n_items)
        while j in seen[u]:
            j = rng.randrange(n_items)
        rows.append((u, j))
rng.shuffle(rows)
b = args.batch
n = min(args.batches, len(rows) // b)
users = sum(len({u for u, _ in rows[k * b:(k + 1) * b]}) for k in range(n)) / n
items = sum(len({i for _, i in rows[k * b:(k + 1) * b]}) for k in range(n)) / n
print(f"batch {b}: {users:.1f} distinct users, {items:.1f} distinct items per batch (mean of {n} batches)")
