# The synthetic world's base model, standing in for the official COCO weights:
# a tiny CLIP pretrained on image regions of the source-style city and of "web"
# images (a target-style city of its own seed), then a tiny FC-CLIP trained on the
# source-style city alone with all 19 classes.
# Both are the head of the FC-CLIP chain: they go first (priority) on one thread, as
# the training jobs (see train.smk), while ContMAV or the plots use the other core.


if PRETRAIN_BASE:

    rule pretrain_clip:
        input:
            f"resources/{SOURCE}/raw",
            f"resources/{WEB}/raw",
        output:
            CLIP_WEIGHTS,
        log:
            f"{LOGS}/pretrain_clip.log",
        benchmark:
            f"{BENCH}/pretrain_clip.tsv"
        priority: 10
        conda:
            CONDA_ENV
        threads: 1
        params:
            steps=config["pretrain"]["clip_steps"],
            # the resolution FC-CLIP later sees: region features do not carry over sizes
            size=config["dataset"]["synthetic"],
            seed=SEED,
        shell:
            "vocabseg pretrain-clip --raw {input} --out {output} --steps {params.steps}"
            " --height {params.size[height]} --width {params.size[width]} --seed {params.seed}"
            " --threads {threads} > {log} 2>&1"

    # The text classifier of the source city's classes (Cityscapes', whatever the study's
    # dataset): the base model learns them; it meets the study's own classes zero-shot.
    # The tiny CLIP's: seconds, on the submit host.
    rule pretrain_text:
        input:
            clip=CLIP_INPUT,
        output:
            f"{RESULTS}/pretrain/text_source.pt",
        log:
            f"{LOGS}/pretrain_text.log",
        benchmark:
            f"{BENCH}/pretrain_text.tsv"
        priority: 10
        localrule: True
        conda:
            CONDA_ENV
        params:
            model=model_json(),
        shell:
            "vocabseg text-embeddings --model {params.model:q} --out {output} > {log} 2>&1"

    rule pretrain_base:
        input:
            clip=CLIP_INPUT,
            prepared=f"resources/{SOURCE}/prepared",
            raw=f"resources/{SOURCE}/raw",
            text=f"{RESULTS}/pretrain/text_source.pt",
        output:
            BASE_WEIGHTS,
        log:
            f"{LOGS}/pretrain_base.log",
        benchmark:
            f"{BENCH}/pretrain_base.tsv"
        priority: 10
        conda:
            CONDA_ENV
        threads: 1
        resources:
            gpu=0,
            cpus_per_gpu=8,
            tasks_per_gpu=0,
            mem_mb=32000,
            runtime=minutes_per_attempt(240),
        params:
            model=model_json(),
            recipe=recipe_json(config["pretrain"]["base_iters"], lr=config["pretrain"]["base_lr"]),
            state=f"{RESULTS}/models/base/ckpt",
            nproc=nproc,
        shell:
            f"{TORCHRUN} -m vocabseg.train"
            " --kind finetune --model {params.model:q} --text {input.text}"
            " --train-json {input.prepared}/cityscapes_panoptic_train.json"
            " --train-folder {input.prepared}/cityscapes_panoptic_train"
            " --image-root {input.raw}/leftImg8bit/train --recipe {params.recipe:q}"
            " --out {output} --state-dir {params.state} --metrics-log {params.state}/metrics.jsonl"
            " --threads {threads}"

elif not os.path.exists(BASE_WEIGHTS):
    # Only while the checkpoint is missing: a rule whose output is the user's file
    # would let Snakemake delete it (a forced rerun removes outputs first, a failed
    # job removes them afterwards). Present, it is a plain input that no rule touches.

    rule official_weights:
        output:
            BASE_WEIGHTS,
        log:
            f"{LOGS}/official_weights.log",
        localrule: True
        conda:
            CONDA_ENV
        params:
            message=(
                f"The official FC-CLIP checkpoint {BASE_WEIGHTS} (model.weights) is missing. "
                "Download it from the FC-CLIP model zoo (README of github.com/bytedance/fc-clip: "
                "fcclip_cocopan_r50.pth for R50, fcclip_cocopan.pth for ConvNeXt-L) and put it "
                f"at {BASE_WEIGHTS}, point model.weights in the study config to it, or set "
                "model.weights_url (and model.weights_sha256) for the workflow to download it."
            ),
            # with model.weights_url: downloaded here, on the submit host (docs/clusters.md)
            url=WEIGHTS_URL,
            sha256=f"--sha256 {MODEL['weights_sha256']}" if MODEL.get("weights_sha256") else "",
        shell:
            (
                "vocabseg fetch-url --url {params.url:q} {params.sha256} --out {output} > {log} 2>&1"
                if WEIGHTS_URL
                else "echo {params.message:q} | tee {log} >&2; exit 1"
            )
