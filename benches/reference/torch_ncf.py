#!/usr/bin/env python3
"""PyTorch reference trainer for NCF (GMF / MLP / NeuMF), written to mirror `ncf train`.

What it mirrors (see crates/ncf-model, ncf-train, ncf-eval, ncf-data):
  * data: an NCF split folder (NAME.train.rating, NAME.test.rating, NAME.test.negative);
    n_users / n_items = 1 + the largest id in the train and test files; training lines with
    rating > 0 are interactions, repeated (user, item) pairs count once.
  * validation: one training interaction per user (users with >= 2) is held out, ranked
    among 99 items the user never interacted with (neither in training nor as test item).
  * models: embeddings N(0, 0.01); hidden layers Glorot uniform + ReLU; output layer LeCun
    uniform; biases zero. MLP embedding width is layers[0] / 2 per side, input = [user | item].
    NeuMF's head is Linear(factors + layers[-1] -> 1) on [gmf_product | mlp_out].
  * loss: BCE with logits, mean over the batch; the epoch's loss is the mean of batch losses.
  * each epoch: `--neg` negatives per positive, uniform over the items the user never
    interacted with in training (exact rejection: redraw collisions until none; the test item
    may be drawn, as in ncf-rs), shuffled, mini-batches.
  * optimizer: Adam (0.9, 0.999, 1e-8). Embeddings are *lazy*: only the rows a batch touches
    are updated (their moments too), bias correction from the global step. Here: sparse
    embeddings + SparseAdam (its per-tensor step count equals the global step, since every table
    gets a gradient every step; it adds eps to sqrt(v) before bias correction, where Adam adds it
    after: a difference of order eps) and Adam for the rest. `--dense-adam` uses one ordinary
    Adam on dense gradients everywhere (every embedding row moves every step; faster in torch).
  * evaluation: HR@K / NDCG@K; candidates deduplicated like evaluate.py's dict; ties count
    against the target (rank = number of other candidates scoring >= the target).
Not bit-identical: the random streams differ (init, holdout, negatives, shuffle), so the
validation items and every epoch's rows differ from ncf-rs's; the rules are the same.

Timings per epoch, with ncf-rs's field names: sampling_s (negatives + shuffle + index
tensors), training_s (the optimizer loop only), eval_s (validation + test), and
samples_per_second = rows / training_s. With --compile (torch.compile of the model, trained through
it), compile_s is the time its two graphs took to compile, before epoch 1's training clock starts.

Run (needs only torch):
  python benches/reference/torch_ncf.py --data $NCF_DATA/ncf-ml-1m --epochs 10 --threads 4 \
      --metrics-jsonl torch.jsonl --summary-json torch.json
"""

import argparse
import json
import math
import os
import platform
import resource
import sys
import time
from array import array
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------------- data


def find_split(folder: Path):
    """The three files of the one NCF split in `folder` (like ncf-data's SplitFiles::find)."""
    names = sorted(p.name[: -len(".train.rating")] for p in folder.glob("*.train.rating"))
    if len(names) != 1:
        what = "no NAME.train.rating file" if not names else f"several splits ({', '.join(names)})"
        sys.exit(f"torch_ncf.py: {folder}: {what}; expected one NCF split (NAME.train.rating, .test.rating, .test.negative)")
    files = [folder / f"{names[0]}.{s}" for s in ("train.rating", "test.rating", "test.negative")]
    for f in files:
        if not f.is_file():
            sys.exit(f"torch_ncf.py: {f}: missing")
    return files


def read_ratings(path: Path):
    """`user item rating timestamp` lines -> (users, items, ratings) tensors."""
    users, items, ratings = array("q"), array("q"), array("d")  # compact, unlike lists of ints
    with open(path) as f:
        for line in f:
            if line.strip():
                u, i, r = line.split("\t", 3)[:3]
                users.append(int(u))
                items.append(int(i))
                ratings.append(float(r))
    return torch.tensor(users), torch.tensor(items), torch.tensor(ratings)


def read_negatives(path: Path):
    """`(user,item)\\tneg...` lines -> a list of (user, item, [negatives])."""
    out = []
    for line in path.read_text().splitlines():
        if line:
            head, *negs = line.split("\t")
            u, i = head.strip("()").split(",")
            out.append((int(u), int(i), [int(j) for j in negs]))
    return out


class Data:
    """The split, ready to train: positives, the `seen` mask, validation and test cases."""

    def __init__(self, folder: Path, k_neg_valid: int, gen: torch.Generator):
        train_f, test_f, neg_f = find_split(folder)
        tu, ti, tr = read_ratings(train_f)
        su, si, _ = read_ratings(test_f)
        negatives = read_negatives(neg_f)
        self.n_users = int(torch.cat([tu, su]).max()) + 1
        self.n_items = int(torch.cat([ti, si]).max()) + 1
        keep = tr > 0
        # Every (user, item) the training file knows, sorted by key = user * n_items + item.
        known = torch.unique(tu[keep] * self.n_items + ti[keep])  # sorted, deduplicated
        users = known // self.n_items
        counts = torch.bincount(users, minlength=self.n_users)
        # A dense flat mask: seen[u * n_items + i]; 22 MB for ML-1M, an O(1) lookup per draw.
        self.seen = torch.zeros(self.n_users * self.n_items, dtype=torch.bool)
        self.seen[known] = True
        self.full_users = counts >= self.n_items  # users with no unseen item (ncf-rs: no negatives)

        # Validation holdout: one uniformly chosen training item of each user with >= 2.
        offsets = torch.cumsum(counts, 0) - counts
        pick = offsets + (torch.rand(self.n_users, generator=gen, dtype=torch.float64) * counts).long()
        has_valid = counts >= 2
        held_keys = known[pick[has_valid]]
        is_train = torch.ones(len(known), dtype=torch.bool)
        is_train[pick[has_valid]] = False
        train_keys = known[is_train]
        self.pos_u = (train_keys // self.n_items).int()
        self.pos_i = (train_keys % self.n_items).int()

        # Test cases, and validation cases with 99 unseen items (not the user's test item).
        test_item = torch.full((self.n_users,), -1, dtype=torch.long)
        test_item[su] = si
        valid_u = held_keys // self.n_items
        valid_negs = self._sample_unseen(valid_u, test_item[valid_u], k_neg_valid, gen)
        self.valid = make_cases(valid_u, held_keys % self.n_items, valid_negs)
        width = max((len(n) for _, _, n in negatives), default=0)
        test_negs = torch.full((len(negatives), width), -1, dtype=torch.long)
        for r, (_, _, n) in enumerate(negatives):
            test_negs[r, : len(n)] = torch.tensor(n, dtype=torch.long)
        if (test_negs >= self.n_items).any() or any(u >= self.n_users for u, _, _ in negatives):
            sys.exit(f"torch_ncf.py: {neg_f}: a user or item id outside the training and test files")
        test_u, test_i = torch.tensor([u for u, _, _ in negatives]), torch.tensor([i for _, i, _ in negatives])
        self.test = make_cases(test_u, test_i, test_negs)
        self.test_lines = negatives  # as read, for --debug-checks
        self.n_train = len(train_keys)
        self.n_known = len(known)

    def _sample_unseen(self, users, extra, n, gen, chunk=1024):
        """`n` distinct unseen items per user (-1 padding when fewer exist): the n smallest of
        one uniform draw per item, with seen items (and `extra`) pushed out of reach."""
        out = []
        for s in range(0, len(users), chunk):
            u = users[s : s + chunk]
            r = torch.rand(len(u), self.n_items, generator=gen)
            r[self.seen.view(self.n_users, self.n_items)[u]] = 2.0
            has_extra = extra[s : s + chunk] >= 0
            r[has_extra.nonzero().squeeze(1), extra[s : s + chunk][has_extra]] = 2.0
            val, idx = torch.topk(r, min(n, self.n_items), dim=1, largest=False)
            out.append(torch.where(val < 2.0, idx, -1))
        return torch.cat(out)

    def sample_epoch(self, neg: int, gen: torch.Generator):
        """One epoch's rows: every positive plus `neg` unseen items per positive, shuffled.
        Ids are int32 (embedding lookups take them as they are): half the memory of int64."""
        n_items = self.n_items
        neg_u = self.pos_u.repeat_interleave(neg)
        neg_i = torch.randint(n_items, neg_u.shape, generator=gen, dtype=torch.int32)
        can = ~self.full_users[neg_u]
        redraw = (self.seen[neg_u.long() * n_items + neg_i] & can).nonzero().squeeze(1)
        while len(redraw):  # redraw only the collisions until none is left
            neg_i[redraw] = torch.randint(n_items, redraw.shape, generator=gen, dtype=torch.int32)
            redraw = redraw[self.seen[neg_u[redraw].long() * n_items + neg_i[redraw]]]
        neg_y = (~can).float()  # 0 = negative
        if not can.all():  # like ncf-rs: a user with every item gets its positive instead
            neg_i[~can] = self.pos_i.repeat_interleave(neg)[~can]
        perm = torch.randperm(len(self.pos_u) + len(neg_u), generator=gen)
        users = torch.cat([self.pos_u, neg_u])[perm]
        items = torch.cat([self.pos_i, neg_i])[perm]
        labels = torch.cat([torch.ones(len(self.pos_u)), neg_y])[perm]
        return users, items, labels


def make_cases(users, targets, negatives):
    """Ranking cases as tensors: candidates (n, 1 + width) with the target first, and a mask of
    the candidates that count: distinct items (evaluate.py's dict), padding (-1) excluded."""
    cand = torch.cat([targets[:, None], negatives], 1)
    # A stable sort puts repeats right after their first (leftmost) occurrence.
    sorted_c, order = torch.sort(cand, dim=1, stable=True)
    repeat = torch.zeros_like(cand, dtype=torch.bool)
    repeat[:, 1:] = sorted_c[:, 1:] == sorted_c[:, :-1]
    duplicate = torch.zeros_like(repeat).scatter_(1, order, repeat)  # back to candidate order
    valid = (cand >= 0) & ~duplicate
    return users, cand.clamp(min=0), valid


# ---------------------------------------------------------------------------------- model


def lecun_uniform_(w):
    a = math.sqrt(3.0 / w.shape[1])
    return nn.init.uniform_(w, -a, a)


class NCF(nn.Module):
    """GMF, MLP or NeuMF: logits for (user, item) pairs."""

    def __init__(self, kind, n_users, n_items, factors, layers, sparse):
        super().__init__()
        self.kind = kind
        emb = lambda n, d: nn.Embedding(n, d, sparse=sparse)
        head_in = 0
        if kind in ("gmf", "neumf"):
            self.gmf_user, self.gmf_item = emb(n_users, factors), emb(n_items, factors)
            head_in += factors
        if kind in ("mlp", "neumf"):
            self.mlp_user, self.mlp_item = emb(n_users, layers[0] // 2), emb(n_items, layers[0] // 2)
            self.mlp = nn.ModuleList(nn.Linear(i, o) for i, o in zip(layers, layers[1:]))
            head_in += layers[-1]
        self.predict = nn.Linear(head_in, 1)
        for m in self.modules():
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, 0.01)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)  # Glorot uniform
                nn.init.zeros_(m.bias)
        lecun_uniform_(self.predict.weight)

    def forward(self, u, i):
        parts = []
        if self.kind in ("gmf", "neumf"):
            parts.append(self.gmf_user(u) * self.gmf_item(i))
        if self.kind in ("mlp", "neumf"):
            x = torch.cat([self.mlp_user(u), self.mlp_item(i)], 1)
            for layer in self.mlp:
                x = torch.relu(layer(x))
            parts.append(x)
        return self.predict(torch.cat(parts, 1) if len(parts) > 1 else parts[0]).squeeze(1)


def make_optimizers(model, lr, dense_adam):
    """Lazy Adam on embeddings (SparseAdam on sparse gradients) + Adam on the rest; or one
    dense Adam on everything."""
    def adam(params):
        try:  # the fused CPU kernel where this torch has it (2.4+)
            return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
        except (RuntimeError, TypeError):
            return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    if dense_adam:
        return [adam(model.parameters())]
    emb = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]
    rest = [p for p in model.parameters() if all(p is not e for e in emb)]
    return [torch.optim.SparseAdam(emb, lr=lr, betas=(0.9, 0.999), eps=1e-8), adam(rest)]


# ----------------------------------------------------------------------------- evaluation


@torch.inference_mode()
def evaluate(model, cases, k, rows_per_call=102_400):
    """Mean HR@K and NDCG@K; every case's candidates scored in a few big forward calls."""
    users, cand, valid = cases
    per_call = max(1, rows_per_call // cand.shape[1])
    scores = torch.cat([
        model(users[s : s + per_call, None].expand_as(cand[s : s + per_call]).reshape(-1),
              cand[s : s + per_call].reshape(-1)).view(-1, cand.shape[1])
        for s in range(0, len(users), per_call)
    ])
    rank = ((scores[:, 1:] >= scores[:, :1]) & valid[:, 1:]).sum(1)  # ties count against
    hit = rank < k
    ndcg = torch.where(hit, 1.0 / torch.log2(rank.double() + 2.0), torch.zeros((), dtype=torch.float64, device=rank.device))
    return hit.double().mean().item(), ndcg.mean().item()


def check_eval_against_python(model, cases, lines, k):
    """Debug: the vectorized ranking equals RankCase::new + rank_of_first, case by case."""
    users, cand, valid = cases
    with torch.inference_mode():
        for r, (user, target, negs) in enumerate(lines[:300]):
            c = [target] + [j for j in dict.fromkeys(negs) if j != target]
            s = model(torch.full((len(c),), user), torch.tensor(c)).tolist()
            rank = sum(x >= s[0] for x in s[1:])
            one = evaluate(model, (users[r : r + 1], cand[r : r + 1], valid[r : r + 1]), k)
            want = (float(rank < k), 1.0 / math.log2(rank + 2) if rank < k else 0.0)
            assert abs(one[0] - want[0]) < 1e-12 and abs(one[1] - want[1]) < 1e-9, (r, one, want)


# ---------------------------------------------------------------------------------- train


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="NCF split folder")
    ap.add_argument("--model", default="neumf", choices=["gmf", "mlp", "neumf"])
    ap.add_argument("--factors", type=int, default=8)
    ap.add_argument("--layers", default="64,32,16,8")
    ap.add_argument("--neg", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--dense-adam", action="store_true", help="dense Adam on embeddings too (not lazy)")
    ap.add_argument("--compile", action="store_true",
                    help="train through torch.compile(model, dynamic=False) (inductor); its graphs are compiled "
                         "before epoch 1's clock starts (compile_s), evaluation runs the plain model")
    ap.add_argument("--debug-checks", action="store_true", help="assert negatives are unseen; check eval ranks")
    ap.add_argument("--metrics-jsonl", type=Path)
    ap.add_argument("--summary-json", type=Path)
    ap.add_argument("--device", default="cpu", help="cpu or cuda: where the model trains and is evaluated "
                    "(negatives are sampled on the CPU and copied over once per epoch, inside sampling_s)")
    a = ap.parse_args()
    layers = [int(x) for x in a.layers.split(",")]
    if a.model != "gmf" and (len(layers) < 2 or layers[0] % 2):
        sys.exit("torch_ncf.py: --layers needs an even first width and at least two widths")

    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(a.threads)
    torch.manual_seed(a.seed)
    t = time.perf_counter()
    data = Data(a.data, 99, torch.Generator().manual_seed(a.seed ^ 0x7A11D))
    print(f"{a.data}: {data.n_users} users, {data.n_items} items, {data.n_known} training interactions; "
          f"{len(data.valid[0])} validation and {len(data.test[0])} test users; loaded in {time.perf_counter() - t:.2f} s; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)

    dev = torch.device(a.device)
    if a.debug_checks and dev.type != "cpu":
        sys.exit("torch_ncf.py: --debug-checks runs on the CPU only")
    # Timings read the clock only after the device has finished its queued work.
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    model = NCF(a.model, data.n_users, data.n_items, a.factors, layers, sparse=not a.dense_adam).to(dev)
    valid_cases = tuple(x.to(dev) for x in data.valid)
    test_cases = tuple(x.to(dev) for x in data.test)
    optimizers = make_optimizers(model, a.lr, a.dense_adam)
    # --compile: what a PyTorch 2 user adds for speed. Static shapes: a graph for the full batch and
    # one for the epoch's last, shorter batch, both compiled before the first timed step.
    train_model = torch.compile(model, dynamic=False) if a.compile else model
    if a.debug_checks:
        check_eval_against_python(model, data.test, data.test_lines, a.k)
        # a constant model ties everywhere: ties count against the target, so HR is 0
        const = lambda u, i: torch.zeros(len(u))
        assert evaluate(const, data.test, a.k) == (0.0, 0.0)
        vu, vc, vv = data.valid  # validation negatives: unseen, not the test item, distinct
        negs, ok = vc[:, 1:], vv[:, 1:]
        assert not (data.seen[vu[:, None] * data.n_items + negs] & ok).any()
        test_item = dict((u, i) for u, i, _ in data.test_lines)
        assert not ((negs == torch.tensor([test_item.get(int(u), -1) for u in vu])[:, None]) & ok).any()

    reports = []
    jsonl = open(a.metrics_jsonl, "w") if a.metrics_jsonl else None
    for epoch in range(1, a.epochs + 1):
        t0 = time.perf_counter()
        users, items, labels = data.sample_epoch(a.neg, torch.Generator().manual_seed(a.seed * 1_000_003 + epoch))
        if dev.type != "cpu":
            users, items, labels = users.to(dev), items.to(dev), labels.to(dev)
            sync()
        t1 = time.perf_counter()
        if a.debug_checks:
            neg = labels == 0
            assert not data.seen[(users[neg].long() * data.n_items + items[neg]).cpu()].any(), "a negative the user has"
        model.train()
        compile_s = 0.0
        if a.compile and epoch == 1:
            # Forward and backward on the two batch shapes, gradients dropped: compiles both graphs
            # without moving a weight or an optimizer state.
            tc = time.perf_counter()
            for s in sorted({0, (len(users) - 1) // a.batch * a.batch}):
                F.binary_cross_entropy_with_logits(train_model(users[s : s + a.batch], items[s : s + a.batch]),
                                                   labels[s : s + a.batch]).backward()
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
            sync()
            compile_s = time.perf_counter() - tc
        t_train = time.perf_counter()  # (t1 unless --debug-checks or --compile's first epoch)
        loss_sum, steps = torch.zeros((), dtype=torch.float64, device=dev), 0
        for s in range(0, len(users), a.batch):
            loss = F.binary_cross_entropy_with_logits(train_model(users[s : s + a.batch], items[s : s + a.batch]),
                                                      labels[s : s + a.batch])
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimizers:
                opt.step()
            loss_sum += loss.detach()
            steps += 1
        sync()
        t2 = time.perf_counter()
        model.eval()
        valid_hr, valid_ndcg = evaluate(model, valid_cases, a.k)
        test_hr, test_ndcg = evaluate(model, test_cases, a.k)
        sync()
        t3 = time.perf_counter()
        r = dict(batch=a.batch, epoch=epoch, loss=loss_sum.item() / max(steps, 1), valid_hr=valid_hr, valid_ndcg=valid_ndcg,
                 test_hr=test_hr, test_ndcg=test_ndcg, sampling_s=t1 - t0, training_s=t2 - t_train, eval_s=t3 - t2,
                 samples_per_second=len(users) / max(t2 - t_train, 1e-9), compile_s=compile_s)
        k = a.k
        print(f"epoch {epoch:>3}  loss {r['loss']:.4f}  valid HR@{k} {valid_hr:.4f} NDCG@{k} {valid_ndcg:.4f}  "
              f"test HR@{k} {test_hr:.4f} NDCG@{k} {test_ndcg:.4f}  [{r['sampling_s']:.2f}s sample, "
              f"{r['training_s']:.2f}s train, {r['eval_s']:.2f}s eval; {r['samples_per_second']:.0f} samples/s]", flush=True)
        reports.append(r)
        if jsonl:
            jsonl.write(json.dumps(r) + "\n")
            jsonl.flush()

    if not reports:
        return
    mean = lambda f: sum(r[f] for r in reports) / len(reports)
    sel = max(reports, key=lambda r: r["valid_hr"])  # first epoch with the best validation HR
    best = max(reversed(reports), key=lambda r: r["test_hr"])  # the last best, like ncf-rs
    sec = {f: mean(f + "_s") for f in ("sampling", "training", "eval")}
    sec["total"] = sum(sec.values())
    summary = dict(
        tool="torch", model=a.model, factors=a.factors, layers=layers, epochs_run=len(reports),
        selected_epoch=sel["epoch"], k=a.k, test_hr=sel["test_hr"], test_ndcg=sel["test_ndcg"],
        valid_hr=sel["valid_hr"], valid_ndcg=sel["valid_ndcg"],
        best_test_hr=best["test_hr"], best_test_ndcg=best["test_ndcg"], best_test_epoch=best["epoch"],
        final_test_hr=reports[-1]["test_hr"], final_test_ndcg=reports[-1]["test_ndcg"],
        seconds_per_epoch=sec, samples_per_second=mean("samples_per_second"),
        threads=torch.get_num_threads(), interop_threads=torch.get_num_interop_threads(),
        torch_version=torch.__version__, python_version=platform.python_version(),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        device=str(dev), gpu=torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        config=dict(vars(a), data=str(a.data), layers=layers, metrics_jsonl=str(a.metrics_jsonl),
                    summary_json=str(a.summary_json), optimizer="adam" if a.dense_adam else "sparse-adam+adam"),
        compile_s=reports[0]["compile_s"],
    )
    k = a.k
    print(f"selected epoch {sel['epoch']} (best validation HR@{k}): test HR@{k} {sel['test_hr']:.4f} "
          f"NDCG@{k} {sel['test_ndcg']:.4f}; best test epoch {best['epoch']}: HR@{k} {best['test_hr']:.4f} "
          f"NDCG@{k} {best['test_ndcg']:.4f}; {sec['total']:.2f} s/epoch; peak RSS {summary['peak_rss_mb']:.0f} MB")
    if a.summary_json:
        a.summary_json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
