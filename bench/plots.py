"""The benchmark's plots, drawn with matplotlib from a run's report (results.json).

    python bench/plots.py bench/out/results.json [--out DIR]

  time_per_jacobian.png  (a) steady-state time per Jacobian, problem by problem, every peer,
                         log scale; cells without a time are labelled with their status
  scaling.png            (b) broyden's Jacobian for n = 10 .. 10^5 and a batch of arms for
                         N = 1 .. 10^6: time against size, every peer that finishes
  first_call.png         (c) first call (construction + trace/compile + first evaluation)
                         against jacext's tape size, jacext and JAX
"""

from __future__ import annotations

import argparse
import json
import os
import sys

PEER_STYLE = {  # colour, marker: one per peer, the same in every plot
    "jacext": ("#d62728", "o"), "jacext-out": ("#ff9896", "o"),
    "jacext-sparse": ("#8c0000", "D"),
    "torch-autograd": ("#1f77b4", "v"), "torch-autograd-vec": ("#aec7e8", "v"),
    "torch-jacrev": ("#17becf", "^"), "torch-jacfwd": ("#9edae5", "^"),
    "jax-jacfwd": ("#2ca02c", "s"), "jax-jacrev": ("#98df8a", "s"),
    "casadi": ("#9467bd", "P"), "casadi-buffer": ("#c5b0d5", "P"),
    "casadi-sparse-buffer": ("#5b3a8a", "X"),
    "numpy-hand": ("#7f7f7f", "*"), "numpy-hand-csr": ("#3f3f3f", "*"),
}
SHORT = {"timeout": "timeout", "missing": "missing", "n/a": "n/a", "too large": "too large",
         "skipped": "skipped", "out of memory": "OOM", "error": "error", "crashed": "crashed"}


def _style(peer):
    return PEER_STYLE.get(peer, ("#000000", "."))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _subtitle(report):
    m = report.get("machine", {})
    return (f"{m.get('cpu', '?')}, {m.get('usable_cores', '?')} cores, "
            f"{report.get('settings', {}).get('threads', '?')} threads; "
            f"{report.get('date', '')}")


def plot_table(report, path):
    """(a) grouped bars: problems along x, one bar per peer, log-scaled time."""
    plt = _pyplot()
    rows = [r for r in report["results"] if r["section"] == "table"]
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    peers = list(dict.fromkeys(r["peer"] for r in rows))
    if not problems:
        return None
    fig, ax = plt.subplots(figsize=(11, 5.2), dpi=100)
    width = 0.8 / len(peers)
    times = [r["median_ns"] for r in rows if r["status"] == "ok"]
    floor = min(times) / 3 if times else 1.0
    for j, peer in enumerate(peers):
        colour, _ = _style(peer)
        xs, hs = [], []
        for i, problem in enumerate(problems):
            r = next((r for r in rows if r["problem"] == problem and r["peer"] == peer), None)
            x = i - 0.4 + (j + 0.5) * width
            if r is None:
                continue
            if r["status"] == "ok":
                xs.append(x)
                hs.append(r["median_ns"] / 1e3)
            elif r["status"] != "n/a":
                ax.text(x, floor / 1e3 * 1.15, SHORT.get(r["status"], r["status"]),
                        rotation=90, fontsize=6, ha="center", va="bottom", color=colour)
        ax.bar(xs, [h - floor / 1e3 for h in hs], width=width, bottom=floor / 1e3,
               color=colour, label=peer, edgecolor="white", linewidth=0.3)
    ax.set_yscale("log")
    ax.set_xticks(range(len(problems)))
    labels = []
    for problem in problems:
        base = next((r for r in rows if r["problem"] == problem and r["peer"] == "jacext"
                     and r["status"] == "ok"), None)
        labels.append(problem + (f"\njacext {_fmt(base['median_ns'])}" if base else ""))
    ax.set_xticklabels(labels)
    ax.set_ylabel("median time per Jacobian, µs (arm_batch: per batch of 10^4)")
    ax.set_title("(a) Time per Jacobian, steady state (lower is better)\n" + _subtitle(report),
                 fontsize=10)
    ax.grid(axis="y", which="major", alpha=0.3)
    ax.legend(fontsize=7, ncol=6, loc="upper left", frameon=False)
    ax.set_ylim(floor / 1e3, max(times) / 1e3 * 30 if times else 10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def _scaling_panel(ax, rows, what, title):
    peers = list(dict.fromkeys(r["peer"] for r in rows))
    ends = []
    for peer in peers:
        pts = sorted((r["size"], r["median_ns"] / 1e9) for r in rows
                     if r["peer"] == peer and r["status"] == "ok")
        if not pts:
            continue
        colour, marker = _style(peer)
        sparse = peer.endswith("-sparse") or peer.endswith("-csr") or "sparse" in peer
        lw = 2.2 if peer.startswith("jacext") else 1.2
        ax.plot(*zip(*pts, strict=True), marker=marker, color=colour, label=peer,
                linestyle="--" if sparse else "-", linewidth=lw, markersize=4)
        last = next((r for r in rows if r["peer"] == peer and r["status"] != "ok"
                     and r["status"] not in ("n/a", "skipped", "too large")), None)
        if last is not None:  # where the peer stopped, and why
            ends.append((pts[-1], SHORT.get(last["status"], last["status"]), colour))
    for (x, y), text, colour in ends:
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, -3), fontsize=6,
                    color=colour)
    too_large = sorted({r["size"] for r in rows if r["status"] == "too large"})
    if too_large:  # one note for the whole panel, not one label per peer
        ax.text(0.98, 0.02, f"{what} = {too_large[0]:,}: dense results too large "
                "(not attempted);\nonly sparse results", transform=ax.transAxes,
                fontsize=7, ha="right", va="bottom", alpha=0.8)
    # guides: slopes 1 and 2 through jacext's (or the first peer's) smallest point
    anchor = sorted((r["size"], r["median_ns"] / 1e9) for r in rows
                    if r["status"] == "ok" and r["peer"] in ("jacext-sparse", "jacext"))
    sizes = sorted({r["size"] for r in rows})
    if anchor and len(sizes) > 1:
        x0, y0 = anchor[0]
        xs = [x0, sizes[-1]]
        ax.plot(xs, [y0, y0 * xs[1] / x0], color="black", alpha=0.25, linewidth=0.8)
        ax.text(xs[1], y0 * xs[1] / x0, f"∝ {what} ", fontsize=7, alpha=0.6, va="bottom",
                ha="right")
        if what == "n":
            ax.plot(xs, [y0, y0 * (xs[1] / x0) ** 2], color="black", alpha=0.25,
                    linewidth=0.8, linestyle=":")
            ax.text(xs[1], y0 * (xs[1] / x0) ** 2, "∝ n² ", fontsize=7, alpha=0.6,
                    va="top", ha="right")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(what)
    ax.set_ylabel("median time per Jacobian, s" if what == "n" else
                  "median time per batch, s")
    ax.set_title(title, fontsize=9)
    ax.grid(which="major", alpha=0.3)
    ax.legend(fontsize=6, ncol=2, frameon=False)


def plot_scaling(report, path):
    """(b) time against size: broyden n (left), a batch of arms N (right)."""
    plt = _pyplot()
    panels = [(s, [r for r in report["results"] if r["section"] == s])
              for s in ("broyden_scaling", "arm_scaling")]
    panels = [(s, rows) for s, rows in panels if rows]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), dpi=100,
                             squeeze=False)
    titles = {"broyden_scaling": ("n", "broyden: n → n Jacobian (dashed: sparse result)"),
              "arm_scaling": ("N", "arm: batch of N configurations → (N, 12, 7)")}
    for ax, (section, rows) in zip(axes[0], panels, strict=True):
        what, title = titles[section]
        _scaling_panel(ax, rows, what, title)
    fig.suptitle("(b) How cost grows (lower is better); " + _subtitle(report), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_first_call(report, path):
    """(c) first call against jacext's tape size, jacext and JAX on the same functions."""
    plt = _pyplot()
    results = report["results"]
    cases = []  # (label, section, problem, size, n_instructions, jacext's first call in s)
    scaled = any(r["section"] == "broyden_scaling" for r in results)
    seen = set()
    # jacext's dense row names the case; where it has none (too large), jacext-sparse's does
    for r in sorted(results, key=lambda r: r["peer"] != "jacext"):
        if r["peer"] not in ("jacext", "jacext-sparse") or r["status"] != "ok" \
                or not r.get("n_instructions"):
            continue
        if r["problem"] == "arm_batch" or (r["problem"] == "broyden" and scaled
                                           and r["section"] == "table"):
            continue
        case = (r["section"], r["problem"], r["size"])
        if case in seen:
            continue
        seen.add(case)
        label = r["problem"] if r["problem"] != "broyden" else f"broyden n={r['size']:,}"
        cases.append((label, *case, r["n_instructions"], r["first_call_worker_ns"] / 1e9))
    if not cases:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=100)
    for peer in ("jacext", "jacext-sparse", "jax-jacfwd", "jax-jacrev"):
        pts = []
        for _, section, problem, size, n_instr, _ in cases:
            r = next((r for r in results if r["section"] == section
                      and r["problem"] == problem and r["size"] == size
                      and r["peer"] == peer and r["status"] == "ok"), None)
            if r is not None and r.get("first_call_worker_ns"):
                pts.append((n_instr, r["first_call_worker_ns"] / 1e9))
        if not pts:
            continue
        pts.sort()
        colour, marker = _style(peer)
        ax.plot(*zip(*pts, strict=True), marker=marker, color=colour, label=peer,
                linestyle="none", markersize=7, alpha=0.9)
    for label, _, _, _, n_instr, first in cases:
        ax.annotate(label, (n_instr, first), fontsize=6, textcoords="offset points",
                    xytext=(3, -9))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("jacext tape size (F.n_instructions)")
    ax.set_ylabel("first call: construction + trace/compile + first Jacobian, s")
    ax.set_title("(c) First call against tape size (in a started worker)\n"
                 + _subtitle(report), fontsize=9)
    ax.grid(which="major", alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _shrink(path):
    """Re-save as a 256-colour palette PNG (line plots lose nothing visible): the committed
    plots in bench/results/ stay well under 100 KB each."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256)
    small.save(path, optimize=True)


def make_plots(report, out_dir):
    """Draw every plot the report has data for; the paths written."""
    _pyplot()  # ImportError here when matplotlib is missing
    os.makedirs(out_dir, exist_ok=True)
    made = [plot_table(report, os.path.join(out_dir, "time_per_jacobian.png")),
            plot_scaling(report, os.path.join(out_dir, "scaling.png")),
            plot_first_call(report, os.path.join(out_dir, "first_call.png"))]
    made = [p for p in made if p]
    for path in made:
        _shrink(path)
    return made


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a results.json written by bench/run.py")
    parser.add_argument("--out", help="where the PNGs go (default: beside the JSON)")
    args = parser.parse_args(argv)
    with open(args.results) as f:
        report = json.load(f)
    for path in make_plots(report, args.out or os.path.dirname(os.path.abspath(args.results))):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
