"""What a categorical generator's categories mean to the classifier that labels their replay.

After an experience, the classifier that will label the next experience's replay (the one frozen
at its end) classifies ``per_category`` samples x ~ p(x|c_k) of every category k in use
(q(c_k) > ``threshold``). For each such category: its share q(c_k), its majority class and its
purity (the share of its samples that get the majority class). The replay's class histogram
follows exactly, since replay draws categories in proportion to q(c):

    P(class y in replay) = sum_k q(c_k) P(y | c_k) / sum_k q(c_k)     (k in use).

Class-balanced replay replaces q(c) by the category weights w that make that histogram uniform over
the replayed classes, as near as the categories' class mixes allow (``balanced_category_weights``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .generator_core import GeneratorCore

__all__ = ["CategorySemantics", "balanced_category_weights", "category_class_mix", "category_semantics",
           "class_histogram_figure", "labelled_rows_image", "render_figure", "replay_class_histogram"]


@dataclass
class CategorySemantics:
    """``report`` is JSON-ready (``categories``, ``replay_class_histogram``, ``mean_purity``,
    ``categories_in_use``); ``rows`` holds the first samples of each category in use, (n_used, m, D),
    in the order of ``report['categories']`` (most probable first)."""

    report: dict
    rows: torch.Tensor


@torch.no_grad()
def category_semantics(
    generator: GeneratorCore,
    predict: Callable[[torch.Tensor], torch.Tensor],
    class_names: list[str],
    per_category: int = 200,
    per_row: int = 10,
    threshold: float = 1e-3,
    balance_classes: list[int] | None = None,
) -> CategorySemantics | None:
    """The class mix of every category in use under ``predict`` (None for a generator without
    categories). With ``balance_classes`` (class-balanced replay over those classes) the report
    also gives each category's ``balanced_share`` and the ``balanced_replay_class_histogram``."""
    if not generator.categorical:
        return None
    q = generator.q_c.detach().cpu().double()
    used, mix, x = category_class_mix(generator, predict, len(class_names), per_category, threshold)
    shares = q[used] / q[used].sum()
    histogram = replay_class_histogram(mix[used], shares)
    categories = []
    for k in used:
        majority = int(mix[k].argmax())
        categories.append({"category": k, "share": float(q[k]), "majority_class": class_names[majority],
                           "purity": float(mix[k, majority])})
    report = {
        "categories_in_use": len(used),
        "categories": categories,
        "mean_purity": float(sum(s * cat["purity"] for s, cat in zip(shares.tolist(), categories))),
        "replay_class_histogram": {name: float(p) for name, p in zip(class_names, histogram)},
        "samples_per_category": per_category,
    }
    if balance_classes:
        balanced = balanced_category_weights(mix[used], q[used], balance_classes)
        for category, share in zip(categories, balanced.tolist()):
            category["balanced_share"] = share
        report["balanced_replay_class_histogram"] = {
            name: float(p) for name, p in zip(class_names, replay_class_histogram(mix[used], balanced))}
    by_category = x.view(-1, per_category, x.shape[-1]) if used else x.new_zeros(0, per_category, x.shape[-1])
    order = {k: i for i, k in enumerate(sorted(used))}  # sample_counts groups categories in index order
    rows = torch.stack([by_category[order[k], :per_row] for k in used]) if used else by_category[:, :per_row]
    return CategorySemantics(report, rows.cpu())


@torch.no_grad()
def category_class_mix(
    generator: GeneratorCore,
    predict: Callable[[torch.Tensor], torch.Tensor],
    num_classes: int,
    per_category: int = 200,
    threshold: float = 1e-3,
) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """P(y | c_k) estimated from ``per_category`` samples x ~ p(x|c_k) of every category in use
    (q(c_k) > ``threshold``), labelled by ``predict``. Returns the categories in use (most probable
    first), the (K, ``num_classes``) class mix (zero rows for the others) and the samples, grouped
    by category in index order."""
    q = generator.q_c.detach().cpu()
    used = [int(k) for k in torch.argsort(q, descending=True) if q[k] > threshold]
    counts = torch.zeros(q.shape[0], dtype=torch.long)
    counts[used] = per_category
    x, c = generator.sample_counts(counts)
    labels = predict(x).cpu()
    mix = torch.zeros(q.shape[0], num_classes, dtype=torch.float64)
    mix.index_put_((c.cpu(), labels), torch.ones(len(labels), dtype=torch.float64), accumulate=True)
    return used, mix / per_category, x


def replay_class_histogram(mix: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The replay's class histogram h_y = sum_k w_k P(y|c_k) / sum_k w_k for category weights w."""
    return (weights.double() / weights.sum()) @ mix.double()


def balanced_category_weights(mix: torch.Tensor, q: torch.Tensor, classes: list[int], iterations: int = 1000,
                              tolerance: float = 1e-4) -> torch.Tensor:
    """Category weights w whose replay class histogram h_y = sum_k w_k P(y|c_k) is uniform (u) over
    ``classes``, as near as the class mixes ``mix`` = P(y|c_k) allow:

        w = argmax_{w in simplex} sum_y u_y log sum_k w_k P(y|c_k),

    the maximum-likelihood mixture weights of the uniform class distribution, found by EM started
    at w = q(c):  w_k <- w_k sum_y u_y P(y|c_k) / h_y. Its fixed points with h = u are exact
    balance; every update scales categories with the same class mix alike, so started at q they
    keep their ratio from q, and categories with q_k = 0 stay unused. Classes no category produces are
    left out of u. Stops when max_y |h_y - u_y| < ``tolerance``."""
    mix, w = mix.double(), (q.double() / q.sum())
    columns = torch.as_tensor(classes, dtype=torch.long)
    produced = mix[:, columns].sum(0) > 0
    columns = columns[produced]
    if len(columns) == 0:
        return w.to(q.dtype)
    p = mix[:, columns] / mix[:, columns].sum(1, keepdim=True).clamp_min(1e-12)  # P(y | c_k, y replayed)
    u = torch.full((len(columns),), 1.0 / len(columns), dtype=torch.float64)
    for _ in range(iterations):
        h = w @ p
        if (h - u).abs().max() < tolerance:
            break
        w = w * (p @ (u / h.clamp_min(1e-12)))
        w = w / w.sum()
    return w.to(q.dtype)


def labelled_rows_image(semantics: CategorySemantics, image_shape: tuple[int, ...], title: str, max_rows: int = 20,
                        scale: int = 2):
    """One row of samples per category in use (most probable first), each labelled with the
    category, its share of q(c), its majority class and purity, as an (H, W, 3) uint8 array
    (``scale`` x enlarged samples; PIL draws the labels, a fraction of matplotlib's time)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont
    from torchvision.utils import make_grid

    categories = semantics.report["categories"][:max_rows]
    rows = semantics.rows[: len(categories)]
    grid = make_grid(rows.float().clamp(0, 1).reshape(-1, *image_shape), nrow=rows.shape[1], padding=2, pad_value=0.5)
    samples = Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy())
    samples = samples.resize((samples.width * scale, samples.height * scale), Image.NEAREST)
    font = ImageFont.load_default(size=12)
    labels = [f"c{c['category']}  q={c['share']:.2f} -> {c['majority_class']} ({100 * c['purity']:.0f}%)"
              for c in categories]
    margin = 12 + max(int(font.getlength(label)) for label in labels)
    top = 24
    canvas = Image.new("RGB", (max(margin + samples.width, 12 + int(font.getlength(title))), top + samples.height),
                       "white")
    canvas.paste(samples, (margin, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((6, top // 2), title, fill="black", font=font, anchor="lm")
    row_height = (samples.height - 2 * scale) / len(categories)
    for i, label in enumerate(labels):
        draw.text((margin - 6, top + 2 * scale + row_height * (i + 0.5)), label, fill="black", font=font, anchor="rm")
    return np.asarray(canvas)


def render_figure(figure):
    """A matplotlib figure rendered once, cropped to its contents, as an (H, W, 3) uint8 array (for
    TensorBoard's ``add_image``)."""
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", pad_inches=0.05)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def class_histogram_figure(semantics: CategorySemantics, title: str):
    """A bar chart of the replay's class histogram (``report['replay_class_histogram']``, categories
    in proportion to q(c)), beside the class-balanced one when the report has it."""
    from matplotlib.figure import Figure

    histogram = semantics.report["replay_class_histogram"]
    balanced = semantics.report.get("balanced_replay_class_histogram")
    figure = Figure(figsize=(max(4, 0.3 * len(histogram) + 1), 3))
    axis = figure.subplots()
    positions = torch.arange(len(histogram), dtype=torch.float64)
    width = 0.8 if balanced is None else 0.4
    axis.bar(positions - (0 if balanced is None else 0.2), [100 * v for v in histogram.values()], width,
             label="categories in proportion to q(c)")
    if balanced is not None:
        axis.bar(positions + 0.2, [100 * v for v in balanced.values()], width, label="class-balanced")
        axis.legend(fontsize=7)
    axis.set_xticks(range(len(histogram)), list(histogram), fontsize=7, rotation=90 if len(histogram) > 20 else 0)
    axis.set_ylabel("% of replay")
    axis.set_title(title, fontsize=9)
    return figure
