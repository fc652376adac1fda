"""The AGK chapter's figures (advbook.book.plots_agk): each fits the column, has no text below MIN_FONT
and none outside the figure, draws the numbers it is given, and refuses malformed rows."""
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.text import Text
from statsmodels.stats.proportion import proportion_confint

from advbook.book import plots, plots_agk

IDS = ["AGK-T1", "AGK-T2", "AGK-T3", "AGK-T4", "AGK-T5", "AGK-T6", "AGK-F1"]


def _texts(fig):
    """Every visible, non-empty text of the figure (titles, labels, ticks, legends, annotations)."""
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def check_readable(fig, tmp_path, name):
    """The book's layout rules, and the PNG is written at the figure's size."""
    assert isinstance(fig, Figure) and fig.get_figwidth() <= plots.COLUMN_INCHES + 1e-9
    texts = _texts(fig)
    assert texts and min(t.get_fontsize() for t in texts) >= plots.MIN_FONT
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    box = fig.bbox
    renderer = canvas.get_renderer()
    for t in texts:                                     # nothing clipped at the figure's edges
        e = t.get_window_extent(renderer)
        assert e.x0 >= box.x0 - 1 and e.x1 <= box.x1 + 1 and e.y0 >= box.y0 - 1 and e.y1 <= box.y1 + 1, t.get_text()
    path = tmp_path / f"{name}.png"
    fig.savefig(path, dpi=50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _bars(ax):
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def _half_widths(acc, n):
    k = np.round(np.asarray(acc) / 100 * n)
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    return np.asarray(acc) - 100 * lo, 100 * hi - np.asarray(acc)


def t1_rows():
    methods, evals = ["um", "at", "agkd_bml", "mystery"], ["natural", "fgsm", "pgd:20", "transfer:vgg16"]
    acc = np.array([[90.0, 10.0, 0.0, 30.0], [80.0, 50.0, 45.0, 60.0], [82.0, 55.0, 45.0, 58.5],
                    [70.0, 20.0, 12.0, 40.0]])
    return pd.DataFrame([dict(method=m, evaluation=e, accuracy=acc[i, j], n=1000)
                         for i, m in enumerate(methods) for j, e in enumerate(evals)])


def ablation_rows():
    return pd.DataFrame([dict(method=m, evaluation=e, accuracy=a, n=200)
                         for m, (c, p) in zip(["agkd", "agkd_gc_orig", "agkd_cam_avg", "agkd_gc_false"],
                                              [(86.0, 54.0), (84.0, 50.0), (85.5, 53.0), (85.0, 51.0)])
                         for e, a in (("natural", c), ("pgd:20", p))])


def tsne_rows(attack="pgd:20", methods=("um", "sml", "bml", "agkd_bml"), attacked=(0, 1, 2)):
    rng = np.random.default_rng(0)
    rows = [dict(method=m, attack=attack, attacked=c, kind=kind, label=lab, x=rng.normal(), y=rng.normal())
            for m in methods for c in attacked for lab in range(10) for kind in ("clean",) * 3]
    rows += [dict(method=m, attack=attack, attacked=c, kind="adversarial", label=c, x=rng.normal(), y=rng.normal())
             for m in methods for c in attacked for _ in range(4)]
    return pd.DataFrame(rows)


def test_labels_are_the_supplements_names_and_unknown_names_pass_through():
    assert [plots_agk.method_label(m) for m in ("feature_scatter", "agkd_bml", "agkd_cam_avg", "new")] == \
        ["FS", "AGKD-BML", "CAM-avg", "new"]
    assert [plots_agk.evaluation_label(e) for e in ("natural", "bim:10", "mim:40", "transfer:wrn_34_10", "pgd:7", "nope:7")] == \
        ["clean", "BIM(10)", "MIM(40)", "transfer from wrn_34_10", "PGD(7)", "nope:7"]


def test_every_figure_has_its_alt_text():
    assert sorted(plots_agk.FIGURES) == sorted(IDS)
    assert all(plots.FIGURES[i] == plots_agk.FIGURES[i] for i in IDS)


def test_attack_table_prints_each_cell_and_bolds_each_columns_best(tmp_path):
    rows = t1_rows()
    fig = plots_agk.attack_table(rows, title="AGK-T1: accuracy under each attack")
    check_readable(fig, tmp_path, "t1")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["UM", "AT", "AGKD-BML", "mystery"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["clean", "FGSM", "PGD(20)", "transfer\nfrom vgg16"]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in ax.texts}
    assert cells[(2, 3)].get_text() == "58.5" and cells[(0, 2)].get_text() == "0.0"
    bold = sorted(k for k, t in cells.items() if t.get_fontweight() == "bold")
    assert bold == [(0, 0), (1, 2), (1, 3), (2, 1), (2, 2)]      # 45.0 is tied in the PGD(20) column
    assert ax.images[0].get_clim() == (0, 100)


def test_attack_table_marks_a_missing_cell_and_refuses_a_repeated_one():
    rows = t1_rows().drop(index=5)                                  # AT under FGSM
    ax = plots_agk.attack_table(rows).axes[0]
    assert [t.get_text() for t in ax.texts if round(t.get_position()[1]) == 1] == ["80.0", "–", "45.0", "60.0"]
    with pytest.raises(ValueError, match="more than one row for method 'um' and evaluation 'fgsm'"):
        plots_agk.attack_table(pd.concat([t1_rows(), t1_rows().iloc[[1]]]))


def test_autoattack_widths_draws_each_model_with_its_wilson_interval(tmp_path):
    rows = pd.DataFrame(dict(model=["WRN-28-10", "WRN-28-10", "WRN-34-10", "WRN-34-10"], epochs=[100, 150] * 2,
                             accuracy=[50.0, 52.0, 53.0, 54.0], n=100))
    fig = plots_agk.autoattack_widths(rows, title="AGK-T2")
    check_readable(fig, tmp_path, "t2")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["WRN-28-10", "WRN-34-10"]
    assert [float(t) for t in ax.get_xticks()] == [100.0, 150.0]
    first = ax.containers[0]
    np.testing.assert_allclose(first.lines[0].get_ydata(), [50.0, 52.0])
    segment = first.lines[2][0].get_segments()[0]
    lo, hi = _half_widths([50.0], 100)
    np.testing.assert_allclose(segment[:, 1], [50 - lo[0], 50 + hi[0]])    # 40.4 .. 59.6 for 50/100
    np.testing.assert_allclose(segment[:, 1], [40.383, 59.617], atol=1e-3)


def test_attention_ablation_splits_class_relevant_from_irrelevant(tmp_path):
    fig = plots_agk.attention_ablation(ablation_rows(), title="AGK-T3")
    check_readable(fig, tmp_path, "t3")
    top, bottom = fig.axes
    assert top.get_title(loc="left") == "class-relevant (Grad-CAM)" and bottom.get_title(loc="left") == "class-irrelevant"
    assert [t.get_text() for t in top.get_yticklabels()] == ["GC-orig", "GC-false"]
    assert [t.get_text() for t in bottom.get_yticklabels()] == ["AGKD", "CAM-avg"]
    assert [p.get_width() for p in _bars(bottom)[0].patches] == [86.0, 85.5]        # clean
    assert [p.get_width() for p in _bars(bottom)[1].patches] == [54.0, 53.0]        # PGD(20)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["clean", "PGD(20)"]
    with pytest.raises(ValueError, match="unknown method.s. at; valid: agkd, agkd_cam_avg, agkd_gc_false, agkd_gc_orig"):
        plots_agk.attention_ablation(pd.concat([ablation_rows(), pd.DataFrame([dict(
            method="at", evaluation="natural", accuracy=80.0, n=200)])]))


def test_time_ratios_shows_methods_of_either_frame_on_a_log_axis(tmp_path):
    ours = pd.DataFrame(dict(method=["at", "agkd_bml", "mine"], ratio=[1.0, 4.0, 0.5], low=[0.9, 3.5, 0.4],
                             high=[1.1, 4.5, 0.6]))
    paper = pd.DataFrame(dict(method=["at", "alp", "agkd_bml"], ratio=[1.0, 1.2, 3.9]))
    fig = plots_agk.time_ratios(ours, paper, title="AGK-T4")
    check_readable(fig, tmp_path, "t4")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["AT", "AGKD-BML", "mine", "ALP"]
    assert any(list(line.get_xdata()) == [1.0, 1.0] for line in ax.lines)          # the line at AT
    hollow = [line for line in ax.lines if line.get_marker() == "D"][0]
    assert hollow.get_markerfacecolor() == "none"
    np.testing.assert_allclose(hollow.get_xdata(), [1.0, 1.2, 3.9])
    np.testing.assert_allclose(ax.containers[0].lines[0].get_xdata(), [1.0, 4.0, 0.5])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.5", "1", "2", "5"]     # 1-2-5 over 0.25 .. 9.9


def test_cat_comparison_groups_methods_per_evaluation(tmp_path):
    evals = ["natural", "pgd:20", "cw:20", "transfer:vgg16", "transfer:wrn_28_10"]
    rows = pd.DataFrame([dict(method=m, evaluation=e, accuracy=10.0 * i + j, n=500)
                         for i, m in enumerate(["cat_ce", "cat_mix", "agkd_bml"]) for j, e in enumerate(evals)])
    fig = plots_agk.cat_comparison(rows, title="AGK-T5")
    check_readable(fig, tmp_path, "t5")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == \
        ["clean", "PGD(20)", "CW(20)", "transfer from\nvgg16", "transfer from\nwrn_28_10"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["CAT-CE", "CAT-MIX", "AGKD-BML"]
    assert [p.get_height() for p in _bars(ax)[2].patches] == [20.0, 21.0, 22.0, 23.0, 24.0]


def test_knn_vs_softmax_puts_each_point_at_its_two_accuracies_clear_of_the_legends(tmp_path):
    rows = pd.DataFrame([dict(method=m, classifier=c, evaluation=e, accuracy=a, n=1000)
                         for m, base in (("at", 80.0), ("agkd_bml", 84.0))
                         for e, shift in (("natural", 0.0), ("pgd:20", -35.0))
                         for c, a in (("softmax", base + shift), ("knn", base + shift - 1.0))])
    fig = plots_agk.knn_vs_softmax(rows, title="AGK-T6")
    check_readable(fig, tmp_path, "t6")
    ax = fig.axes[0]
    points = sorted((float(line.get_xdata()[0]), float(line.get_ydata()[0]), line.get_marker())
                    for line in ax.lines if line.get_linestyle() == "None")
    assert points == [(45.0, 44.0, "^"), (49.0, 48.0, "^"), (80.0, 79.0, "o"), (84.0, 83.0, "o")]
    assert ax.get_aspect() == 1.0 and ax.get_xlim() == ax.get_ylim()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    legends = [a for a in ax.get_children() if a.__class__.__name__ == "Legend"]
    assert len(legends) == 2
    assert all(legend.get_window_extent(renderer).x0 >= frame.x1 for legend in legends)
    with pytest.raises(ValueError, match="unknown classifier.s. linear; valid: knn, softmax"):
        plots_agk.knn_vs_softmax(rows.replace({"classifier": {"knn": "linear"}}))


def test_tsne_panels_lays_out_attacked_classes_by_methods(tmp_path):
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    fig = plots_agk.tsne_panels(tsne_rows(), class_names=names, title="AGK-F1")
    check_readable(fig, tmp_path, "f1")
    axes = [ax for ax in fig.axes]
    assert len(axes) == 12
    assert [ax.get_title() for ax in axes[:4]] == ["UM", "SML", "BML", "AGKD-BML"]
    assert [axes[i].get_ylabel() for i in (0, 4, 8)] == ["attacked: airplane", "attacked: automobile", "attacked: bird"]
    assert all(len(ax.get_xticks()) == 0 and len(ax.get_yticks()) == 0 for ax in axes)
    clean, adversarial = axes[5].collections
    assert len(clean.get_offsets()) == 30 and len(adversarial.get_offsets()) == 4
    np.testing.assert_allclose(adversarial.get_facecolor()[0], [1.0, 0.0, 0.0, 1.0])
    assert fig.get_figheight() == pytest.approx(1.5 * 3 + 1.2)


def test_tsne_panels_refuses_two_attacks_and_too_many_panels():
    with pytest.raises(ValueError, match="one attack at a time; got 2: pgd:20, pgd:100"):
        plots_agk.tsne_panels(pd.concat([tsne_rows(), tsne_rows("pgd:100")]))
    with pytest.raises(ValueError, match="at most 5 attacked classes and 4 methods; got 3 and 5"):
        plots_agk.tsne_panels(tsne_rows(methods=("um", "at", "sml", "bml", "agkd_bml")))
    with pytest.raises(ValueError, match="class_names has 3 names; the points need 10"):
        plots_agk.tsne_panels(tsne_rows(), class_names=["a", "b", "c"])


@pytest.mark.parametrize("draw, frame, drop", [
    (plots_agk.attack_table, t1_rows, "accuracy"),
    (plots_agk.autoattack_widths, lambda: pd.DataFrame(dict(model=["a"], epochs=[1], accuracy=[1.0], n=[1])), "epochs"),
    (plots_agk.attention_ablation, ablation_rows, "n"),
    (plots_agk.cat_comparison, ablation_rows, "evaluation"),
    (plots_agk.tsne_panels, tsne_rows, "kind"),
])
def test_a_missing_column_is_named(draw, frame, drop):
    with pytest.raises(ValueError, match=f"lacks column.s. {drop}$"):
        draw(frame().drop(columns=drop))


def test_knn_and_time_ratios_name_their_missing_columns():
    with pytest.raises(ValueError, match="lacks column.s. classifier, n$"):
        plots_agk.knn_vs_softmax(pd.DataFrame(dict(method=["at"], evaluation=["natural"], accuracy=[1.0])))
    ours = pd.DataFrame(dict(method=["at"], ratio=[1.0], low=[0.9], high=[1.1]))
    with pytest.raises(ValueError, match="lacks column.s. high$"):
        plots_agk.time_ratios(ours.drop(columns="high"), ours[["method", "ratio"]])
    with pytest.raises(ValueError, match="lacks column.s. ratio$"):
        plots_agk.time_ratios(ours, ours[["method"]])


def test_tsne_panels_share_the_clean_points_marked_minus_one_across_rows():
    rng = np.random.default_rng(3)
    rows = [dict(method="um", attack="pgd:20", attacked=-1, kind="clean", label=lab, x=rng.normal(), y=rng.normal())
            for lab in range(10) for _ in range(3)]
    rows += [dict(method="um", attack="pgd:20", attacked=c, kind="adversarial", label=c, x=rng.normal(), y=rng.normal())
             for c in (0, 4) for _ in range(2)]
    fig = plots_agk.tsne_panels(pd.DataFrame(rows))
    axes = fig.axes[:2]
    assert [len(ax.collections[0].get_offsets()) for ax in axes] == [30, 30]     # every clean point in each row
    assert [len(ax.collections[1].get_offsets()) for ax in axes] == [2, 2]       # that row's adversarial points


def test_an_attack_with_other_steps_is_named_as_the_table_names_its_columns():
    assert plots_agk.evaluation_label("pgd:100") == "PGD(100)" and plots_agk.evaluation_label("mim:7") == "MIM(7)"
    assert plots_agk.evaluation_label("pgd:x") == "pgd:x" and plots_agk.evaluation_label("pgd:20") == "PGD(20)"
