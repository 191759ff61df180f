# FTZS pseudo-labels: the zero-shot model predicts the training images once; its
# out-class segments fill the void of each configuration's training ground truth.


rule predict_teacher:
    input:
        weights=BASE_WEIGHTS,
        text=f"{TEXT}/000.pt",
        labels=LABELS,
        prepared=PREPARED,
        raw=RAW,
        clip=CLIP_INPUT,
    output:
        json=f"{RESULTS}/pseudo/teacher/panoptic.json",
        folder=directory(f"{RESULTS}/pseudo/teacher/panoptic"),
    log:
        f"{LOGS}/pseudo/teacher.log",
    benchmark:
        f"{BENCH}/pseudo/teacher.tsv"
    conda:
        CONDA_ENV
    threads: 2
    resources:
        gpu=0,
        cpus_per_gpu=4,
        tasks_per_gpu=0,
        mem_mb=32000,
        runtime=minutes_per_attempt(180),
    params:
        model=model_json(),
        batch=config["inference"]["batch_size"],
    shell:
        "vocabseg predict --model {params.model:q} --weights {input.weights} --text {input.text}"
        " --labels {input.labels} --gt-json {input.prepared}/cityscapes_panoptic_train.json"
        " --image-root {input.raw}/leftImg8bit/train --out-json {output.json}"
        " --out-folder {output.folder} --batch-size {params.batch} --threads {threads} > {log} 2>&1"


rule pseudolabel:
    input:
        gt_json=f"{RESULTS}/vocab/{{conf}}/train_panoptic.json",
        gt_folder=f"{RESULTS}/vocab/{{conf}}/train_panoptic",
        teacher_json=f"{RESULTS}/pseudo/teacher/panoptic.json",
        teacher_folder=f"{RESULTS}/pseudo/teacher/panoptic",
        split=f"{RESULTS}/vocab/{{conf}}/split.json",
        labels=LABELS,
    output:
        json=f"{RESULTS}/pseudo/{{conf}}/train_panoptic.json",
        folder=directory(f"{RESULTS}/pseudo/{{conf}}/train_panoptic"),
    log:
        f"{LOGS}/pseudo/{{conf}}.log",
    benchmark:
        f"{BENCH}/pseudo/{{conf}}.tsv"
    conda:
        CONDA_ENV
    params:
        threshold=config["pseudolabel"]["threshold"],
        min_pixels=config["pseudolabel"]["min_pixels"],
    shell:
        "vocabseg pseudolabel --gt-json {input.gt_json} --gt-folder {input.gt_folder}"
        " --teacher-json {input.teacher_json} --teacher-folder {input.teacher_folder}"
        " --split {input.split} --labels {input.labels} --out-json {output.json} --out-folder {output.folder}"
        " --threshold {params.threshold} --min-pixels {params.min_pixels} > {log} 2>&1"
