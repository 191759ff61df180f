# The results tables of the study and its figures, all under results/<study>/.
# results/table.md is a copy of the table of the study last run to its end (rule all).


localrules:
    report,
    panels,


rule report:
    input:
        # every row: each replicate of an approach (ftzs, ftzs.r1, ...); the report groups them
        metrics=[f"{RESULTS}/metrics/{row}.json" for row in ROWS],
        images=[f"{RESULTS}/metrics/{row}.images.npz" for row in ROWS],
        openworld=openworld_metrics(),
        openworld_images=[f.replace(".json", ".images.npz") for f in openworld_metrics()],
        labels=LABELS,
    output:
        md=report(f"{RESULTS}/table.md", caption="../report/table.rst", category="Results"),
        csv=f"{RESULTS}/table.csv",
        # written beside table.csv when the study has ContMAV rows
        openworld_csv=[f"{RESULTS}/table_openworld.csv"] if OW_VARIANTS else [],
        bars=report(
            f"{RESULTS}/figures/pq_bars.png", caption="../report/pq_bars.rst", category="Results"
        ),
        tradeoff=report(
            f"{RESULTS}/figures/tradeoff.png", caption="../report/tradeoff.rst", category="Results"
        ),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCH}/report.tsv"
    conda:
        CONDA_ENV
    params:
        title=config["title"],
        uncertainty=uncertainty_args(),
    shell:
        "vocabseg report --labels {input.labels} --metrics {input.metrics} --openworld {input.openworld} --table-md {output.md} --table-csv {output.csv}"
        " --bars {output.bars} --tradeoff {output.tradeoff} --title {params.title:q}"
        " --images {input.images} --openworld-images {input.openworld_images} {params.uncertainty} > {log} 2>&1"


# Qualitative panels: photo, ground truth and every approach's prediction (not the
# oracle's, which is the ground truth; a class-wise row has none) on the first
# validation images.
PANEL_APPROACHES = [
    name
    for name, spec in APPROACHES.items()
    if spec["kind"] in PREDICTED_KINDS and spec["kind"] != "oracle"
]


rule panels:
    input:
        prepared=PREPARED,
        raw=RAW,
        labels=LABELS,
        preds=[f"{RESULTS}/predictions/{name}/panoptic.json" for name in PANEL_APPROACHES],
    output:
        report(
            directory(f"{RESULTS}/figures/panels"),
            patterns=["panel_{image}.png"],
            caption="../report/panels.rst",
            category="Qualitative",
        ),
    log:
        f"{LOGS}/panels.log",
    benchmark:
        f"{BENCH}/panels.tsv"
    conda:
        CONDA_ENV
    params:
        preds=" ".join(
            f"--pred {name} {RESULTS}/predictions/{name}/panoptic.json {RESULTS}/predictions/{name}/panoptic"
            for name in PANEL_APPROACHES
        ),
    shell:
        "vocabseg panels --gt-json {input.prepared}/cityscapes_panoptic_val.json"
        " --gt-folder {input.prepared}/cityscapes_panoptic_val --image-root {input.raw}/leftImg8bit/val"
        " {params.preds} --labels {input.labels} --count 3 --out-dir {output} > {log} 2>&1"
