# Raw data (the synthetic city, the Cityscapes download or the user's COCO-panoptic
# dataset) and its preparation.


# the study's city, or the pretraining cities of a base model pretrained here
if KIND == "synthetic" or PRETRAIN_BASE:

    rule synth_city:
        output:
            directory("resources/{city}/raw"),
        log:
            "logs/{city}/synth_city.log",
        benchmark:
            "benchmarks/{city}/synth_city.tsv"
        wildcard_constraints:
            city=f"{DATASET}|{SOURCE}|{WEB}" if KIND == "synthetic" else f"{SOURCE}|{WEB}",
        conda:
            CONDA_ENV
        params:
            size=lambda wc: synth_size(wc.city),
            style=lambda wc: "source" if wc.city == SOURCE else "target",
        shell:
            "vocabseg synth --root {output} --train {params.size[train]} --val {params.size[val]}"
            " --height {params.size[height]} --width {params.size[width]} --seed {params.size[seed]}"
            " --style {params.style} > {log} 2>&1"


if KIND == "cityscapes":

    # Works in a staging folder renamed to raw/ at the end: Snakemake deletes the output
    # of a failed job, the staging folder keeps every package already verified and
    # extracted for the next run. Never retried by Snakemake (whatever the profile's
    # `retries`): credentials and corrupt zips do not mend themselves, and the command
    # retries network failures itself, so the log ends with the real cause.
    rule download_cityscapes:
        output:
            directory(RAW),
        log:
            f"logs/{DATASET}/download_cityscapes.log",
        benchmark:
            f"benchmarks/{DATASET}/download_cityscapes.tsv"
        retries: 0
        localrule: True
        conda:
            CONDA_ENV
        params:
            staging=f"resources/{DATASET}/raw.staging",
            zips=config["dataset"]["cityscapes"]["zips"] or f"resources/{DATASET}/zips",
            credentials=(
                f"--credentials {config['dataset']['cityscapes']['credentials']}"
                if config["dataset"]["cityscapes"]["credentials"]
                else ""
            ),
        shell:
            "vocabseg download-cityscapes --dest {output} --staging {params.staging} --zips {params.zips}"
            " {params.credentials}"
            " > {log} 2>&1"


if KIND == "coco_panoptic":

    # Checks every file of the user's dataset (each problem on its own line) before
    # anything else runs, then links the photos (raw/) and the panoptic pairs (prepared/).
    rule prepare_coco:
        output:
            raw=directory(RAW),
            prepared=directory(PREPARED),
        log:
            f"logs/{DATASET}/prepare_coco.log",
        benchmark:
            f"benchmarks/{DATASET}/prepare_coco.tsv"
        priority: 20
        localrule: True
        conda:
            CONDA_ENV
        params:
            # a function: the paths' {split} is no wildcard
            layout=lambda wc: " ".join(
                f"--{key} {shlex.quote(COCO[key])}" for key in ("root", "images", "json", "png")
            ),
        shell:
            "vocabseg prepare-coco {params.layout} --raw-out {output.raw} --out {output.prepared}"
            " > {log} 2>&1"

    ruleorder: prepare_coco > prepare


rule prepare:
    input:
        "resources/{city}/raw",
    output:
        directory("resources/{city}/prepared"),
    log:
        "logs/{city}/prepare.log",
    benchmark:
        "benchmarks/{city}/prepare.tsv"
    priority: 20
    conda:
        CONDA_ENV
    # one thread for a synthetic city (a few dozen images; it then runs beside the
    # pretraining instead of waiting for both cores); first, as everything waits for it
    threads: 1 if KIND == "synthetic" else 4
    shell:
        "vocabseg prepare --raw {input} --out {output} --splits train val --threads {threads}"
        " > {log} 2>&1"


# The study's label set (vocabseg.data.labelset): every command that needs the
# dataset's classes reads it (--labels).
rule labelset:
    input:
        [PREPARED] if KIND == "coco_panoptic" else [],
    output:
        LABELS,
    log:
        f"{LOGS}/labelset.log",
    benchmark:
        f"{BENCH}/labelset.tsv"
    localrule: True
    conda:
        CONDA_ENV
    params:
        args=labelset_args(),
    shell:
        "vocabseg labelset {params.args} --out {output} > {log} 2>&1"
