# Panoptic predictions on the validation set, one rule per approach kind.


rule oracle:
    input:
        PREPARED,
    output:
        json=f"{RESULTS}/predictions/{{approach}}/panoptic.json",
        folder=directory(f"{RESULTS}/predictions/{{approach}}/panoptic"),
    log:
        f"{LOGS}/oracle/{{approach}}.log",
    benchmark:
        f"{BENCH}/oracle/{{approach}}.tsv"
    wildcard_constraints:
        approach=approaches_of_kind("oracle"),
    conda:
        CONDA_ENV
    shell:
        "vocabseg oracle --gt-json {input}/cityscapes_panoptic_val.json"
        " --gt-folder {input}/cityscapes_panoptic_val"
        " --out-json {output.json} --out-folder {output.folder} > {log} 2>&1"


rule predict:
    input:
        weights=lambda wc: weights_of(wc.approach),
        text=lambda wc: predict_text_of(wc.approach),
        train_split=lambda wc: train_split_of(wc.approach),
        labels=LABELS,
        prepared=PREPARED,
        raw=RAW,
        clip=CLIP_INPUT,
    output:
        json=f"{RESULTS}/predictions/{{approach}}/panoptic.json",
        folder=directory(f"{RESULTS}/predictions/{{approach}}/panoptic"),
    log:
        f"{LOGS}/predict/{{approach}}.log",
    benchmark:
        f"{BENCH}/predict/{{approach}}.tsv"
    wildcard_constraints:
        approach=approaches_of_kind(*MODEL_KINDS),
    conda:
        CONDA_ENV
    threads: 2
    resources:
        gpu=0,
        cpus_per_gpu=4,
        tasks_per_gpu=0,
        mem_mb=32000,
        runtime=minutes_per_attempt(60),
    params:
        model=model_json(),
        train_split=lambda wc, input: (
            f"--train-split {input.train_split}" if input.train_split else ""
        ),
        classes=lambda wc, input: (
            f"--classes {input.train_split}" if predicts_own_vocab(wc.approach) else ""
        ),
        batch=config["inference"]["batch_size"],
        combined=lambda wc: combined_args(wc.approach),
    shell:
        "vocabseg predict --model {params.model:q} --weights {input.weights} --text {input.text}"
        " {params.train_split} {params.classes} {params.combined} --labels {input.labels} --gt-json {input.prepared}/cityscapes_panoptic_val.json"
        " --image-root {input.raw}/leftImg8bit/val --out-json {output.json}"
        " --out-folder {output.folder} --batch-size {params.batch} --threads {threads} > {log} 2>&1"


rule intersect:
    input:
        in_json=lambda wc: f"{RESULTS}/predictions/{built_from(wc.approach, 'in')}/panoptic.json",
        in_folder=lambda wc: f"{RESULTS}/predictions/{built_from(wc.approach, 'in')}/panoptic",
        out_json=lambda wc: f"{RESULTS}/predictions/{built_from(wc.approach, 'out')}/panoptic.json",
        out_folder=lambda wc: f"{RESULTS}/predictions/{built_from(wc.approach, 'out')}/panoptic",
        split=lambda wc: f"{RESULTS}/vocab/{spec_of(wc.approach).get('vocab', EVAL_VOCAB)}/split.json",
    output:
        json=f"{RESULTS}/predictions/{{approach}}/panoptic.json",
        folder=directory(f"{RESULTS}/predictions/{{approach}}/panoptic"),
    log:
        f"{LOGS}/intersect/{{approach}}.log",
    benchmark:
        f"{BENCH}/intersect/{{approach}}.tsv"
    wildcard_constraints:
        approach=approaches_of_kind("intersection"),
    conda:
        CONDA_ENV
    params:
        overlap=lambda wc: spec_of(wc.approach).get("overlap", "in"),
    shell:
        "vocabseg intersect --in-json {input.in_json} --in-folder {input.in_folder}"
        " --out-json {input.out_json} --out-folder {input.out_folder} --split {input.split}"
        " --overlap {params.overlap} --merged-json {output.json} --merged-folder {output.folder}"
        " > {log} 2>&1"
