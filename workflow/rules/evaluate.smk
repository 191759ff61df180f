# Panoptic quality (as cityscapesscripts) plus In / Out groups and semantic mIoU.


rule evaluate:
    input:
        prepared=PREPARED,
        pred_json=f"{RESULTS}/predictions/{{approach}}/panoptic.json",
        pred_folder=f"{RESULTS}/predictions/{{approach}}/panoptic",
        split=f"{RESULTS}/vocab/{EVAL_VOCAB}/split.json",
    output:
        f"{RESULTS}/metrics/{{approach}}.json",
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
        " --split {input.split} --threads {threads} {params.facts} --out {output} > {log} 2>&1"


# The seed's naive row: per-class results of two approaches, no prediction of its own.
rule classwise:
    input:
        in_metrics=lambda wc: f"{RESULTS}/metrics/{APPROACHES[wc.approach]['in']}.json",
        out_metrics=lambda wc: f"{RESULTS}/metrics/{APPROACHES[wc.approach]['out']}.json",
        split=lambda wc: f"{RESULTS}/vocab/{APPROACHES[wc.approach].get('vocab', EVAL_VOCAB)}/split.json",
    output:
        f"{RESULTS}/metrics/{{approach}}.json",
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
        " --split {input.split} {params.facts} --out {output} > {log} 2>&1"
