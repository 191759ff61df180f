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
        labels=LABELS,
        raw=RAW,
        clip=CLIP_INPUT,
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
            spec_of(wc.approach)["kind"], spec_of(wc.approach)["kind"]
        ),
        split=lambda wc, input: (
            "" if spec_of(wc.approach)["kind"] == "pseudolabel" else f"--split {input.split}"
        ),
        model=model_json(),
        # replicate k of the approach trains with its own seed (common.smk, replicate_seed)
        recipe=lambda wc: recipe_json(
            spec_of(wc.approach)["iters"], base_and_replicate(wc.approach)[1]
        ),
        state=lambda wc: f"{RESULTS}/models/{wc.approach}/ckpt",
        nproc=nproc,
    shell:
        f"{TORCHRUN} -m vocabseg.train"
        " --kind {params.kind} --model {params.model:q} --init {input.init} --text {input.text}"
        " --labels {input.labels}"
        " {params.split} --train-json {input.gt_json} --train-folder {input.gt_folder}"
        " --image-root {input.raw}/leftImg8bit/train --recipe {params.recipe:q}"
        " --out {output} --state-dir {params.state} --metrics-log {params.state}/metrics.jsonl"
        " --threads {threads}"


rule train_combined:
    input:
        unpack(lambda wc: combined_inputs(wc.run)),
        raw=RAW,
        labels=LABELS,
        clip=CLIP_INPUT,
    output:
        f"{RESULTS}/models/combined/{{run}}/model.pt",
    log:
        f"{LOGS}/train/combined/{{run}}.log",
    benchmark:
        f"{BENCH}/train/combined/{{run}}.tsv"
    wildcard_constraints:
        run=combined_run_regex(),
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
        fusion=lambda wc: spec_of(COMBINED_RUNS[wc.run])["fusion"],
        # start trained: M2 from its own file, same targets; base_in_only: M2 a copy of
        # M1 on the in-class ground truth only
        start=lambda wc, input: (f"--init-m2 {input.init_m2}" if input.init_m2 else "--m2-in-only"),
        model=model_json(),
        recipe=lambda wc: recipe_json(
            spec_of(COMBINED_RUNS[wc.run])["iters"], base_and_replicate(wc.run)[1]
        ),
        state=lambda wc: f"{RESULTS}/models/combined/{wc.run}/ckpt",
        nproc=nproc,
    shell:
        f"{TORCHRUN} -m vocabseg.train"
        " --kind combined --fusion {params.fusion} --model {params.model:q} --init {input.init}"
        " {params.start} --text {input.text} --labels {input.labels} --split {input.split}"
        " --train-json {input.gt_json}"
        " --train-folder {input.gt_folder} --image-root {input.raw}/leftImg8bit/train"
        " --recipe {params.recipe:q} --out {output} --state-dir {params.state}"
        " --metrics-log {params.state}/metrics.jsonl --threads {threads}"


rule wiseft:
    input:
        zeroshot=BASE_WEIGHTS,
        finetuned=lambda wc: weights_of(built_from(wc.approach, "finetuned")),
        clip=CLIP_INPUT,
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
        alpha=lambda wc: spec_of(wc.approach)["alpha"],
    shell:
        "vocabseg wiseft --model {params.model:q} --zeroshot {input.zeroshot}"
        " --finetuned {input.finetuned} --alpha {params.alpha} --out {output} > {log} 2>&1"
