# Training jobs: one per trained approach. Training state (checkpoints) lives in
# models/<approach>/ckpt, which is not an output, so a killed job resumes.


rule train_finetune:
    input:
        init=BASE_WEIGHTS,
        text=lambda wc: f"{TEXT}/{APPROACHES[wc.approach]['vocab']}.pt",
        split=lambda wc: train_split_of(wc.approach),
        gt_json=lambda wc: f"{RESULTS}/vocab/{APPROACHES[wc.approach]['vocab']}/train_panoptic.json",
        gt_folder=lambda wc: f"{RESULTS}/vocab/{APPROACHES[wc.approach]['vocab']}/train_panoptic",
        raw=RAW,
    output:
        f"{RESULTS}/models/{{approach}}/model.pt",
    log:
        f"{LOGS}/train/{{approach}}.log",
    benchmark:
        f"{BENCH}/train/{{approach}}.tsv"
    wildcard_constraints:
        approach=approaches_of_kind("finetune"),
    conda:
        CONDA_ENV
    threads: 2
    resources:
        gpu=0,
    params:
        model=model_json(),
        recipe=lambda wc: recipe_json(APPROACHES[wc.approach]["iters"]),
        state=lambda wc: f"{RESULTS}/models/{wc.approach}/ckpt",
        nproc=nproc,
    shell:
        "torchrun --standalone --nnodes=1 --nproc_per_node={params.nproc} -m vocabseg.train"
        " --kind finetune --model {params.model:q} --init {input.init} --text {input.text}"
        " --split {input.split} --train-json {input.gt_json} --train-folder {input.gt_folder}"
        " --image-root {input.raw}/leftImg8bit/train --recipe {params.recipe:q}"
        " --out {output} --state-dir {params.state} --metrics-log {params.state}/metrics.jsonl"
        " --threads {threads} > {log} 2>&1"
