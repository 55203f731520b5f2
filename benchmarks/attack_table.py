"""Every attack on one model, each on its own (not a cascade): clean and robust accuracy, success rate
on the correctly classified inputs, perturbation sizes and wall time — the attack table of the
issue note.

Usage: python benchmarks/attack_table.py [RUN] [--n 1000] [--cw-n 200]
(RUN defaults to runs/demo/standard, written by ``make demo``.)
"""

from __future__ import annotations

import argparse
import time

from robustlab import ThreatModel, load_model
from robustlab.attacks import build_attack
from robustlab.evaluation import clean_accuracy, evaluate, predict
from robustlab.runs.train import load_run_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default="runs/demo/standard")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--cw-n", type=int, default=200)
    args = ap.parse_args()

    model = load_model(args.run, map_location="cpu")
    x, y, _ = load_run_data(args.run, "test", "cpu", limit=args.n)
    print(f"{args.run}: clean accuracy {clean_accuracy(model, x, y):.4f} on the first {len(x)} test images")
    print(f"{'attack':<34} {'robust acc':>10} {'success':>8} {'mean dist':>10} {'seconds':>8}")

    linf, l2 = ThreatModel("linf", 0.1), ThreatModel("l2", 1.5)
    rows = [
        ("noise (random signs) Linf 0.1", linf, dict(name="noise", seed=0)),
        ("FGSM Linf 0.1", linf, dict(name="fgsm")),
        ("FGV Linf 0.1", linf, dict(name="fgv")),
        ("PGD-20 Linf 0.1 (rel step 0.1)", linf, dict(name="pgd", steps=20, rel_step_size=0.1, seed=0)),
        ("PGD-20 Linf 0.1, 5 restarts", linf, dict(name="pgd", steps=20, rel_step_size=0.1, restarts=5, seed=0)),
        ("MIM-20 Linf 0.1 (mu 1.0)", linf, dict(name="mim", steps=20)),
        ("APGD-CE-20 Linf 0.1", linf, dict(name="apgd", steps=20, seed=0)),
        ("PGD-20 L2 1.5", l2, dict(name="pgd", steps=20, rel_step_size=0.1, seed=0)),
    ]
    for label, threat, opts in rows:
        name = opts.pop("name")
        res = evaluate(model, x, y, threat, [build_attack(name, threat, **opts)], cascade=False, progress=False)
        (summ,) = res.to_dict(per_sample=False)["attacks"].values()
        print(f"{label:<34} {res.robust_accuracy:10.4f} {summ['success_rate']:8.4f} "
              f"{summ[f'mean_{threat.norm}']:10.4f} {summ['seconds']:8.2f}")

    # Targeted PGD: hit rate of target (y + 1) mod 10, both objectives, eps 0.1 and 0.2.
    pred = predict(model, x)
    t = (y + 1) % 10
    for eps in (0.1, 0.2):
        threat = ThreatModel("linf", eps)
        for loss in ("ce", "ce-difference"):
            t0 = time.perf_counter()
            r = build_attack("pgd", threat, steps=40, rel_step_size=0.05, loss=loss, seed=0).run(model, x, y, target=t)
            hit = float(r.success.float().mean())
            print(f"{'targeted PGD-40 ' + loss + f' Linf {eps:g}':<34} {'hit':>10} {hit:8.4f} "
                  f"{float(r.distance.mean()):10.4f} {time.perf_counter() - t0:8.2f}")

    # C&W L2: the closest example it finds for each correctly classified input (no eps cap).
    m = min(args.cw_n, len(x))
    correct = (pred[:m] == y[:m])
    xc, yc = x[:m][correct], y[:m][correct]
    t0 = time.perf_counter()
    r = build_attack("cw", ThreatModel("l2", 1e6)).run(model, xc, yc)
    found = r.success
    med = float(r.distance[found].median()) if found.any() else float("nan")
    print(f"{'C&W L2 (defaults), first ' + str(m):<34} {'found':>10} {float(found.float().mean()):8.4f} "
          f"{'median ' + format(med, '.3f'):>10} {time.perf_counter() - t0:8.2f}")


if __name__ == "__main__":
    main()
