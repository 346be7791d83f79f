"""The plot of a `mtp-bench repro` result (plot.png): metric per arm and seed; tau and speedup
against heads used; step memory and time per configuration."""

from __future__ import annotations

import io


def _plot_speedup(doc: dict, plt):
    """Table S2 as two panels: tau and speedup against heads used, each seed and the mean."""
    ks, per_k = doc["ks"], doc["per_k"]
    seeds = doc["arms"]["n=4"]["seeds"]
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.4), dpi=100)
    for ax, key, label in ((axes[0], "tau", "tau (tokens per forward)"), (axes[1], "speedup", "speedup vs greedy")):
        for s, rec in seeds.items():
            ax.plot(ks, [rec["per_k"][str(k)]["metrics"][key]["value"] for k in ks], color="#1f77b4", alpha=0.3,
                    linewidth=0.8, marker=".", label=f"seed {s}" if s == next(iter(seeds)) else None)
        mean = [per_k[str(k)][key]["mean"] for k in ks]
        err = [[m - (per_k[str(k)][key]["ci95"] or [m, m])[0] for k, m in zip(ks, mean)],
               [(per_k[str(k)][key]["ci95"] or [m, m])[1] - m for k, m in zip(ks, mean)]]
        ax.errorbar(ks, mean, yerr=err, color="#1f77b4", marker="o", linewidth=2, capsize=3, label="mean, 95%")
        ax.axhline(1.0, color="#888888", linestyle="--", linewidth=0.8)
        if key == "tau":
            ax.plot(ks, ks, color="#cccccc", linestyle=":", linewidth=0.8, label="tau = k (bound)")
        ax.set_xticks(ks)
        ax.set_xlabel("heads used k")
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
    deg = doc["checks"]["degenerate_fraction"]
    return fig, f" (degenerate outputs {deg:.0%})"


def _plot_memory(doc: dict, plt):
    """Bars of the training step's peak memory (and time) per config, each repeat a dot."""
    mib = 2**20
    configs = doc["configs"]
    colors = {"n=1": "#444444", "n=4 sequential": "#1f77b4", "n=4 naive": "#d62728"}
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.4), dpi=100)
    for ax, key, scale, label in ((axes[0], "step_mem_bytes", mib, "step memory (MiB)"),
                                  (axes[1], "median_step_s", 1.0, "median step time (s)")):
        for i, (name, c) in enumerate(configs.items()):
            ax.bar(i, c[key]["mean"] / scale, color=colors.get(name), alpha=0.6)
            ax.scatter([i] * len(c[key]["values"]), [v / scale for v in c[key]["values"]], color="black", s=8)
        ax.set_xticks(range(len(configs)), list(configs), fontsize=8)
        ax.set_title(label, fontsize=9)
    limit = configs["n=1"]["step_mem_bytes"]["mean"] * (1 + doc["rule"]["tolerance"]) / mib
    axes[0].axhline(limit, color="#888888", linestyle="--", linewidth=0.8,
                    label=f"n=1 + {doc['rule']['tolerance']:.0%}")
    axes[0].legend(fontsize=7)
    s = doc["size"]
    return fig, f" (d={s['dim']}, V={s['vocab_size']}, B={s['batch_size']}, T={s['seq_len']})"


def plot(doc: dict) -> bytes:
    """A PNG in the style of the paper's figure: per-arm points per seed and the mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if doc["finding"] in ("speedup", "memory"):
        fig, note = (_plot_speedup if doc["finding"] == "speedup" else _plot_memory)(doc, plt)
        fig.suptitle(f"{doc['finding']} ({doc['budget']}): {doc['verdict']}{note}", fontsize=10)
        fig.tight_layout()
        return _png(fig, plt)
    arms = doc["arms"]
    colors = {"n=1": "#444444", "n=2": "#d62728", "n=4": "#1f77b4"}
    if doc["finding"] == "arithmetic":
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
        ms = doc["eval_config"].get("ms") or list(range(1, 11))
        for arm, a in arms.items():
            per_seed = [[s["metrics"][f"arithmetic.acc_m{m}"]["value"] for m in ms] for s in a["seeds"].values()]
            avg = [sum(col) / len(col) for col in zip(*per_seed)]
            ax.plot(ms, avg, marker="o", label=arm, color=colors.get(arm))
            for row in per_seed:
                ax.plot(ms, row, color=colors.get(arm), alpha=0.25, linewidth=0.8)
        ax.axvspan(5.5, max(ms) + 0.5, color="#eeeeee", zorder=0)
        ax.text(5.6, ax.get_ylim()[1] * 0.95 or 0.01, "out of domain", fontsize=8, va="top")
        ax.set_xlabel("number of operations m")
        ax.set_ylabel("exact-match accuracy")
    else:
        fig, axes = plt.subplots(1, 2, figsize=(7, 3.4), dpi=100)
        for ax, key, label in ((axes[0], "induction.second_token_acc", "names: 2nd-token accuracy"),
                               (axes[1], "induction_random.copy_acc", "random: copy accuracy")):
            for i, (arm, a) in enumerate(arms.items()):
                vals = [s["metrics"][key]["value"] for s in a["seeds"].values()]
                ax.scatter([i] * len(vals), vals, color=colors.get(arm), alpha=0.6)
                ax.plot([i - 0.2, i + 0.2], [sum(vals) / len(vals)] * 2, color=colors.get(arm), linewidth=2)
            ax.set_xticks(range(len(arms)), list(arms))
            ax.set_xlim(-0.6, len(arms) - 0.4)
            ax.set_title(label, fontsize=9)
        axes[0].set_ylabel("accuracy")
        ax = axes[0]
    fig.suptitle(f"{doc['finding']} ({doc['budget']}): {doc['verdict']}", fontsize=10)
    if doc["finding"] == "arithmetic":
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig, plt)


def _png(fig, plt) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
