# Raw data (the synthetic city or the Cityscapes download) and its preparation.


if KIND == "synthetic":

    rule synth_city:
        output:
            directory(RAW),
        log:
            f"logs/{DATASET}/synth_city.log",
        benchmark:
            f"benchmarks/{DATASET}/synth_city.tsv"
        conda:
            CONDA_ENV
        params:
            size=config["dataset"]["synthetic"],
        shell:
            "vocabseg synth --root {output} --train {params.size[train]} --val {params.size[val]}"
            " --height {params.size[height]} --width {params.size[width]} --seed {params.size[seed]}"
            " > {log} 2>&1"

else:

    rule download_cityscapes:
        output:
            directory(RAW),
        log:
            f"logs/{DATASET}/download_cityscapes.log",
        benchmark:
            f"benchmarks/{DATASET}/download_cityscapes.tsv"
        retries: 3
        conda:
            CONDA_ENV
        params:
            zips=config["dataset"]["cityscapes"]["zips"] or f"resources/{DATASET}/zips",
            credentials=(
                f"--credentials {config['dataset']['cityscapes']['credentials']}"
                if config["dataset"]["cityscapes"]["credentials"]
                else ""
            ),
        shell:
            "vocabseg download-cityscapes --dest {output} --zips {params.zips} {params.credentials}"
            " > {log} 2>&1"


rule prepare:
    input:
        RAW,
    output:
        directory(PREPARED),
    log:
        f"logs/{DATASET}/prepare.log",
    benchmark:
        f"benchmarks/{DATASET}/prepare.tsv"
    conda:
        CONDA_ENV
    threads: 4
    shell:
        "vocabseg prepare --raw {input} --out {output} --splits train val --threads {threads}"
        " > {log} 2>&1"
