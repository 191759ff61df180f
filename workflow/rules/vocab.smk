# Vocabulary configurations (vocab_configs, or the seed's 000-008): split.json,
# filtered training ground truth, plots.


rule vocab_split:
    input:
        prepared=PREPARED,
        labels=LABELS,
    output:
        split=f"{RESULTS}/vocab/{{conf}}/split.json",
        gt_json=f"{RESULTS}/vocab/{{conf}}/train_panoptic.json",
        gt_folder=directory(f"{RESULTS}/vocab/{{conf}}/train_panoptic"),
    log:
        f"{LOGS}/vocab_split/{{conf}}.log",
    benchmark:
        f"{BENCH}/vocab_split/{{conf}}.tsv"
    conda:
        CONDA_ENV
    params:
        deleted=lambda wc: deleted_args(wc.conf),
    shell:
        "vocabseg vocab-split --conf {wildcards.conf} {params.deleted}"
        " --labels {input.labels} --train-json {input.prepared}/cityscapes_panoptic_train.json"
        " --train-folder {input.prepared}/cityscapes_panoptic_train"
        " --split-out {output.split} --gt-json-out {output.gt_json}"
        " --gt-folder-out {output.gt_folder} > {log} 2>&1"


rule class_frequency:
    input:
        prepared=PREPARED,
        split=f"{RESULTS}/vocab/{{conf}}/split.json",
        labels=LABELS,
    output:
        report(
            f"{RESULTS}/vocab/{{conf}}/class_frequency.png",
            caption="../report/class_frequency.rst",
            category="Data",
            labels={"configuration": "{conf}"},
        ),
    log:
        f"{LOGS}/class_frequency/{{conf}}.log",
    benchmark:
        f"{BENCH}/class_frequency/{{conf}}.tsv"
    conda:
        CONDA_ENV
    shell:
        "vocabseg class-frequency --train-json {input.prepared}/cityscapes_panoptic_train.json"
        " --val-json {input.prepared}/cityscapes_panoptic_val.json --split {input.split}"
        " --labels {input.labels} --out {output} > {log} 2>&1"
