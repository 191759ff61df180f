# Panoptic quality (as cityscapesscripts) plus In / Out groups and semantic mIoU, and
# the per-image counts they are sums of (what the report's bootstrap resamples).


rule evaluate:
    input:
        prepared=PREPARED,
        pred_json=f"{RESULTS}/predictions/{{approach}}/panoptic.json",
        pred_folder=f"{RESULTS}/predictions/{{approach}}/panoptic",
        split=f"{RESULTS}/vocab/{EVAL_VOCAB}/split.json",
    output:
        metrics=f"{RESULTS}/metrics/{{approach}}.json",
        images=f"{RESULTS}/metrics/{{approach}}.images.npz",
    log:
        f"{LOGS}/evaluate/{{approach}}.log",
    benchmark:
        f"{BENCH}/evaluate/{{approach}}.tsv"
    wildcard_constraints:
        approach=approaches_of_kind(*PREDICTED_KINDS),
    conda:
        CONDA_ENV
    threads: 2
    params:
        facts=lambda wildcards: run_facts(wildcards.approach),
    shell:
        "vocabseg evaluate-panoptic --gt-json {input.prepared}/cityscapes_panoptic_val.json"
        " --gt-folder {input.prepared}/cityscapes_panoptic_val"
        " --pred-json {input.pred_json} --pred-folder {input.pred_folder}"
        " --split {input.split} --threads {threads} {params.facts}"
        " --out {output.metrics} --images-out {output.images} > {log} 2>&1"


# The seed's naive row: per-class results of two approaches, no prediction of its own;
# its per-image counts are combined the same way, class by class.
rule classwise:
    input:
        in_metrics=lambda wc: f"{RESULTS}/metrics/{built_from(wc.approach, 'in')}.json",
        out_metrics=lambda wc: f"{RESULTS}/metrics/{built_from(wc.approach, 'out')}.json",
        in_images=lambda wc: f"{RESULTS}/metrics/{built_from(wc.approach, 'in')}.images.npz",
        out_images=lambda wc: f"{RESULTS}/metrics/{built_from(wc.approach, 'out')}.images.npz",
        split=lambda wc: f"{RESULTS}/vocab/{spec_of(wc.approach).get('vocab', EVAL_VOCAB)}/split.json",
        labels=LABELS,
    output:
        metrics=f"{RESULTS}/metrics/{{approach}}.json",
        images=f"{RESULTS}/metrics/{{approach}}.images.npz",
    log:
        f"{LOGS}/classwise/{{approach}}.log",
    benchmark:
        f"{BENCH}/classwise/{{approach}}.tsv"
    wildcard_constraints:
        approach=approaches_of_kind("classwise"),
    conda:
        CONDA_ENV
    params:
        facts=lambda wildcards: run_facts(wildcards.approach),
    shell:
        "vocabseg classwise --in-metrics {input.in_metrics} --out-metrics {input.out_metrics}"
        " --in-images {input.in_images} --out-images {input.out_images} --split {input.split}"
        " --labels {input.labels} {params.facts} --out {output.metrics} --images-out {output.images} > {log} 2>&1"
