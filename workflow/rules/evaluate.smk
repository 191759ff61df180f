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
