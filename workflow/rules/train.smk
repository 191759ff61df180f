# Training jobs: one per trained approach (one per combined run). Training state
# (checkpoints) lives in <model folder>/ckpt, which is not an output, so a killed job
# resumes where it stopped. One thread per CPU job: the tiny model's steps scale badly
# across threads, so two jobs side by side finish sooner than two 2-thread jobs in a
# row; a cluster profile raises it (set-threads) for big models.
# GPUs: none here (torchrun starts one CPU process); a cluster profile or
# `--set-resources train:gpu=4` sets them, and torchrun starts one process per GPU.


rule train:
    input:
        unpack(lambda wc: train_inputs(wc.approach)),
        init=BASE_WEIGHTS,
        raw=RAW,
    output:
        f"{RESULTS}/models/{{approach}}/model.pt",
    log:
        f"{LOGS}/train/{{approach}}.log",
    benchmark:
        f"{BENCH}/train/{{approach}}.tsv"
    wildcard_constraints:
        approach=approaches_of_kind(*TRAINED),
    conda:
        CONDA_ENV
    threads: 1
    resources:
        gpu=0,
        cpus_per_gpu=8,
        tasks_per_gpu=0,
        mem_mb=64000,
        runtime=minutes_per_attempt(240),
    params:
        # FTZS is a fine-tuning on pseudo-labelled ground truth of all 19 classes
        kind=lambda wc: {"pseudolabel": "finetune"}.get(
            APPROACHES[wc.approach]["kind"], APPROACHES[wc.approach]["kind"]
        ),
        split=lambda wc, input: (
            "" if APPROACHES[wc.approach]["kind"] == "pseudolabel" else f"--split {input.split}"
        ),
        model=model_json(),
        recipe=lambda wc: recipe_json(APPROACHES[wc.approach]["iters"]),
        state=lambda wc: f"{RESULTS}/models/{wc.approach}/ckpt",
        nproc=nproc,
    shell:
        f"{TORCHRUN} -m vocabseg.train"
        " --kind {params.kind} --model {params.model:q} --init {input.init} --text {input.text}"
        " {params.split} --train-json {input.gt_json} --train-folder {input.gt_folder}"
        " --image-root {input.raw}/leftImg8bit/train --recipe {params.recipe:q}"
        " --out {output} --state-dir {params.state} --metrics-log {params.state}/metrics.jsonl"
        " --threads {threads}"


rule train_combined:
    input:
        init=BASE_WEIGHTS,
        text=f"{TEXT}/000.pt",
        split=f"{RESULTS}/vocab/{{conf}}/split.json",
        gt_json=f"{RESULTS}/pseudo/{{conf}}/train_panoptic.json",
        gt_folder=f"{RESULTS}/pseudo/{{conf}}/train_panoptic",
        raw=RAW,
    output:
        f"{RESULTS}/models/combined_{{fusion}}_{{conf}}_{{iters}}/model.pt",
    log:
        f"{LOGS}/train/combined_{{fusion}}_{{conf}}_{{iters}}.log",
    benchmark:
        f"{BENCH}/train/combined_{{fusion}}_{{conf}}_{{iters}}.tsv"
    wildcard_constraints:
        fusion="[a-z_]+?",
        iters=r"\d+",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        gpu=0,
        cpus_per_gpu=8,
        tasks_per_gpu=0,
        mem_mb=64000,
        runtime=minutes_per_attempt(240),
    params:
        model=model_json(),
        recipe=lambda wc: recipe_json(int(wc.iters)),
        state=lambda wc: f"{RESULTS}/models/combined_{wc.fusion}_{wc.conf}_{wc.iters}/ckpt",
        nproc=nproc,
    shell:
        f"{TORCHRUN} -m vocabseg.train"
        " --kind combined --fusion {wildcards.fusion} --model {params.model:q} --init {input.init}"
        " --text {input.text} --split {input.split} --train-json {input.gt_json}"
        " --train-folder {input.gt_folder} --image-root {input.raw}/leftImg8bit/train"
        " --recipe {params.recipe:q} --out {output} --state-dir {params.state}"
        " --metrics-log {params.state}/metrics.jsonl --threads {threads}"


rule wiseft:
    input:
        zeroshot=BASE_WEIGHTS,
        finetuned=lambda wc: weights_of(APPROACHES[wc.approach]["finetuned"]),
    output:
        f"{RESULTS}/models/{{approach}}/model.pt",
    log:
        f"{LOGS}/wiseft/{{approach}}.log",
    benchmark:
        f"{BENCH}/wiseft/{{approach}}.tsv"
    wildcard_constraints:
        approach=approaches_of_kind("wiseft"),
    conda:
        CONDA_ENV
    params:
        model=model_json(),
        alpha=lambda wc: APPROACHES[wc.approach]["alpha"],
    shell:
        "vocabseg wiseft --model {params.model:q} --zeroshot {input.zeroshot}"
        " --finetuned {input.finetuned} --alpha {params.alpha} --out {output} > {log} 2>&1"
