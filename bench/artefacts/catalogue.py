"""The catalogue of the paper's tables and figures and of the analyses: one declaration
(:class:`~bench.artefacts.spec.Artefact`) per artefact, and ``--table`` names.

A new table or figure is one module with its view or figure function, plus its
declaration here.
"""

from __future__ import annotations

from bench.artefacts import figures, mechanisms_view, robustness_view, views
from bench.artefacts.spec import (
    ABLATIONS,
    ADNI_COMBOS,
    ADNI_MODELS,
    ANY,
    COMPLEXITY_MODELS,
    EXTRA_MODELS,
    MECHANISM_RATES,
    MECHANISMS,
    MIMIC_COMBOS,
    MIMIC_MODELS,
    SENSITIVITY,
    Artefact,
    Sweep,
    sensitivity_setting,
)
from bench.errors import UserError

#: The explanations the figures' captions end with.
MODALITIES_EXPLAIN = ("Test accuracy (%) averaged over the combinations with that many "
                      "modalities and their seeds; bars: population std over them.")
COST_EXPLAIN = ("Forward GFLOP per sample by torch.utils.flop_counter (2 per multiply-add, "
                "along the real MoE routing); bubble area grows with the parameter count; "
                "means over seeds.")
SENSITIVITY_EXPLAIN = ("Test accuracy (%), mean ± population std over seeds; other settings "
                       "at the defaults (16 experts, 1 SMoE layer, top-4); k SMoE layers "
                       "means num_layers = 2k − 1 (sparse and dense layers alternate); × "
                       "marks a setting without a result.")


def _metric(number: int, family: str, metric: str, name: str, file: str) -> Artefact:
    models, combos = ((ADNI_MODELS, ADNI_COMBOS) if family == "adni"
                      else (MIMIC_MODELS, MIMIC_COMBOS))
    data = "ADNI" if family == "adni" else "MIMIC-IV"
    return Artefact(f"table{number}", "metric", family, f"{data} {name} (%)",
                    (Sweep(models + EXTRA_MODELS, combos),), metric, file,
                    view=views.metric_view, panels=(figures.significance_panel,))


def _robustness(family: str) -> Artefact:
    """Test-time missing modalities on the family's full combination: the same runs as
    ``run`` makes there, scored again with modalities removed (``bench.training.robustness``)."""
    models, combo, data = ((ADNI_MODELS, ADNI_COMBOS[-1], "ADNI") if family == "adni"
                           else (MIMIC_MODELS, MIMIC_COMBOS[-1], "MIMIC-IV"))
    return Artefact(f"robustness-{family}", "robustness", family,
                    f"Test-time missing modalities ({data} {combo})",
                    (Sweep(models + EXTRA_MODELS, (combo,)),), "test_acc",
                    view=robustness_view.robustness_view, figure=figures.robustness_figure)


def _mechanisms() -> Artefact:
    """Accuracy against the missing rate per mechanism on a data set's full combination: rate
    0 once (``missing=none``, shared by the three curves), then each mechanism × rate. The
    models are the paper's ten and I2MoE — every built-in model but the ablation variants —
    on whatever data set is named, so the table has the same columns everywhere."""
    models = ADNI_MODELS + EXTRA_MODELS
    sweeps = [Sweep(models, (), axis="none", value=0.0, data_options={"missing": "none"})]
    sweeps += [Sweep(models, (), axis=m, value=rate,
                     data_options={"missing": m, "missing_rate": rate})
               for m in MECHANISMS for rate in MECHANISM_RATES]
    return Artefact("mechanisms", "mechanisms", ANY,
                    "Accuracy vs missing rate per missingness mechanism", tuple(sweeps),
                    "test_acc", view=mechanisms_view.mechanisms_view,
                    figure=figures.mechanisms_figure)


def _sensitivity_sweeps() -> tuple[Sweep, ...]:
    return tuple(Sweep(("flexmoe",), ("IGCB",), sensitivity_setting(param, v), axis, v)
                 for axis, (param, values) in SENSITIVITY.items() for v in values)


ARTEFACTS: dict[str, Artefact] = {a.id: a for a in (
    _metric(1, "adni", "test_acc", "accuracy", "table1_adni_acc.csv"),
    _metric(2, "mimic", "test_acc", "accuracy", "table2_mimic_acc.csv"),
    Artefact("table3", "ablation", "adni", "Flex-MoE ablations on ADNI IGCB (%)",
             (Sweep(tuple(ABLATIONS), ("IGCB",)),), None, "table3_adni_ablation.csv",
             view=views.ablation_view),
    Artefact("table4", "complexity", "adni", "Cost on ADNI: time, FLOPs, parameters, accuracy",
             (Sweep(COMPLEXITY_MODELS, ("IG", "IGC", "IGCB")),), "test_acc",
             "table4_adni_complexity.csv", view=views.complexity_view),
    _metric(7, "adni", "test_f1", "macro-F1", "table7_adni_f1.csv"),
    _metric(8, "adni", "test_auc", "AUC", "table8_adni_auc.csv"),
    _metric(9, "mimic", "test_f1", "macro-F1", "table9_mimic_f1.csv"),
    _metric(10, "mimic", "test_auc", "AUC", "table10_mimic_auc.csv"),
    Artefact("fig4", "bank", "adni", "Figure 4: cosine similarity between missing-modality "
             "bank entries: observed combinations (rows) and missing modalities (columns) "
             "(Flex-MoE, IGCB)", (Sweep(("flexmoe",), ("IGCB",)),),
             figure=figures.bank_figure, in_grid=False),
    Artefact("fig5", "experts", "adni", "Figure 5: expert activation by observed combination "
             "(Flex-MoE, IGCB, first SMoE layer)", (Sweep(("flexmoe",), ("IGCB",)),),
             figure=figures.experts_figure, in_grid=False),
    Artefact("fig6", "sensitivity", "adni", "Figure 6: sensitivity of Flex-MoE on IGCB",
             _sensitivity_sweeps(), "test_acc", figure=figures.sensitivity_figure,
             explain=SENSITIVITY_EXPLAIN),
    Artefact("modalities", "modalities", "adni",
             "Accuracy vs number of observed modalities (ADNI)",
             (Sweep(ADNI_MODELS + EXTRA_MODELS, ADNI_COMBOS),), "test_acc",
             figure=figures.modalities_figure, explain=MODALITIES_EXPLAIN),
    Artefact("cost", "cost", "adni", "Accuracy vs cost (ADNI IG / IGC / IGCB)",
             (Sweep(COMPLEXITY_MODELS, ("IG", "IGC", "IGCB")),), "test_acc",
             figure=figures.cost_figure, explain=COST_EXPLAIN),
    _robustness("adni"),
    _robustness("mimic"),
    _mechanisms(),
)}
#: Names ``--table`` accepts for several artefacts at once.
GROUPS: dict[str, tuple[str, ...]] = {"robustness": ("robustness-adni", "robustness-mimic")}
#: Studies of their own, trained only when named: ``all`` means the paper's artefacts and the
#: analyses that reuse their runs (``mechanisms`` trains ten settings of every model).
BY_NAME_ONLY = ("mechanisms",)


def select(spec: str) -> list[Artefact]:
    """Artefacts named by ``--table``: ``all`` (every one but :data:`BY_NAME_ONLY`), or ids
    separated by commas (``1``, ``table1``, ``fig6``, ``modalities``, ``cost``,
    ``robustness`` = both of :data:`GROUPS`' artefacts, ``mechanisms``)."""
    if spec.strip() == "all":
        return [a for a in ARTEFACTS.values() if a.id not in BY_NAME_ONLY]
    choices = ", ".join([a.removeprefix("table") for a in ARTEFACTS] + list(GROUPS))
    if not spec.strip(" ,"):
        raise UserError(f"--table is empty; choose all or any of {choices}")
    out = []
    for item in (s.strip().lower() for s in spec.split(",") if s.strip()):
        key = f"table{item}" if item.isdigit() else item
        if key not in ARTEFACTS and key not in GROUPS:
            raise UserError(f"unknown table or figure {item!r}; choose all or any of {choices}")
        out.extend(ARTEFACTS[k] for k in GROUPS.get(key, (key,)))
    return list({a.id: a for a in out}.values())
