# Open-world semantic segmentation (seed 003): ContMAV and its variants, trained on the
# known classes of a dataset and scored on how well they flag the unknown ones. Runs
# when the config has an `openworld` block; its metrics make the second table of
# results/<study>/table.md. Checkpoints live in <model folder>/ckpt (not an output), so a
# killed job resumes, as the FC-CLIP training does.


if OW_ON_BDD:

    rule build_bdd_anomaly:
        output:
            directory(OW_IMAGES),
        log:
            f"logs/bdd-anomaly-{OW_BDD_VARIANT}.log",
        benchmark:
            f"benchmarks/bdd-anomaly-{OW_BDD_VARIANT}.tsv"
        conda:
            CONDA_ENV
        threads: 4
        params:
            bdd100k=OW.get("bdd100k"),
            variant=OW_BDD_VARIANT,
        shell:
            "vocabseg build-bdd-anomaly --bdd100k {params.bdd100k:q} --out {output}"
            " --variant {params.variant} --threads {threads} > {log} 2>&1"


rule contmav_weights:
    input:
        images=OW_IMAGES,
        labels=OW_LABELS,
        labelset=LABELS,
    output:
        f"{OW_RESULTS}/class_weights.json",
    log:
        f"{LOGS}/openworld/class_weights.log",
    benchmark:
        f"{BENCH}/openworld/class_weights.tsv"
    conda:
        CONDA_ENV
    params:
        roots=ow_roots("train"),
        known=OW_KNOWN_ARG,
    shell:
        "vocabseg contmav-weights {params.roots} {params.known} --labels {input.labelset} --out {output} > {log} 2>&1"


rule contmav_train:
    input:
        images=OW_IMAGES,
        labels=OW_LABELS,
        labelset=LABELS,
        weights=f"{OW_RESULTS}/class_weights.json",
    output:
        f"{OW_RESULTS}/models/{{variant}}/model.pt",
    log:
        f"{LOGS}/openworld/train/{{variant}}.log",
    benchmark:
        f"{BENCH}/openworld/train/{{variant}}.tsv"
    wildcard_constraints:
        variant="|".join(re.escape(row) for row in OW_ROWS) or "(?!)",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        gpu=0,
        cpus_per_gpu=8,
        tasks_per_gpu=0,
        mem_mb=32000,
        runtime=minutes_per_attempt(24 * 60),
    params:
        roots=ow_roots("train"),
        known=OW_KNOWN_ARG,
        model=lambda wc: ow_variant_json(wc.variant, "model"),
        loss=lambda wc: ow_variant_json(wc.variant, "loss"),
        recipe=lambda wc: ow_recipe_json(wc.variant),
        state=lambda wc: f"{OW_RESULTS}/models/{wc.variant}/ckpt",
        nproc=nproc,
    shell:
        f"{TORCHRUN} -m vocabseg.cli contmav-train"
        " {params.roots} {params.known} --labels {input.labelset} --weights {input.weights}"
        " --model {params.model:q} --variant {params.loss:q} --recipe {params.recipe:q}"
        " --out {output} --state-dir {params.state} --metrics-log {params.state}/metrics.jsonl"
        " --threads {threads}"


rule contmav_eval:
    input:
        model=f"{OW_RESULTS}/models/{{variant}}/model.pt",
        images=OW_IMAGES,
        labels=OW_LABELS,
        labelset=LABELS,
    output:
        metrics=f"{OW_RESULTS}/metrics/{{variant}}.json",
        images=f"{OW_RESULTS}/metrics/{{variant}}.images.npz",
    log:
        f"{LOGS}/openworld/eval/{{variant}}.log",
    benchmark:
        f"{BENCH}/openworld/eval/{{variant}}.tsv"
    wildcard_constraints:
        variant="|".join(re.escape(row) for row in OW_ROWS) or "(?!)",
    conda:
        CONDA_ENV
    threads: 1
    # the metrics stream into fixed score histograms; memory grows only by the per-image
    # counts of the bootstrap, sparse (at worst about 15 MiB per 1024x2048 image:
    # benchmarks/contmav_eval_memory.py, docs/benchmarks.md); the cluster
    # profiles give it one GPU
    resources:
        gpu=0,
        cpus_per_gpu=8,
        tasks_per_gpu=0,
        mem_mb=16000,
        runtime=minutes_per_attempt(4 * 60),
    params:
        roots=ow_roots(OW_EVAL_SPLIT),
        unknown=f"--unknown {OW_UNKNOWN}" if OW_UNKNOWN else "",
        size=f"--size {OW_EVAL['size'][0]} {OW_EVAL['size'][1]}" if OW_EVAL["size"] else "",
        stride=OW_EVAL["cluster_stride"],
        similar=openworld_similar_args(),
        facts=lambda wc: ow_facts(wc.variant),
    shell:
        "vocabseg contmav-eval --model {input.model} {params.roots} {params.unknown}"
        " {params.size} --cluster-stride {params.stride} {params.similar} --threads {threads} --labels {input.labelset} {params.facts}"
        " --out {output.metrics} --images-out {output.images} > {log} 2>&1"
