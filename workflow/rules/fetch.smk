# Downloads, made by local rules on the host Snakemake runs on (the submit host of a
# cluster): compute nodes without internet then read local files only (docs/clusters.md,
# "Offline compute nodes"). Each download is checked against a published sha256.


if CLIP_FETCHED:

    rule fetch_clip:
        output:
            CLIP_FETCHED,
        log:
            f"{LOGS}/fetch_clip.log",
        localrule: True
        conda:
            CONDA_ENV
        params:
            model=json.dumps(
                {key: MODEL[key] for key in ("preset", "clip_pretrained", "overrides")}
            ),
        shell:
            "vocabseg fetch-clip --model {params.model:q} --out {output} > {log} 2>&1"


if WEIGHTS_URL:

    # the official FC-CLIP checkpoint; resumed from <model.weights>.part after an interruption
    rule official_weights:
        output:
            BASE_WEIGHTS,
        log:
            f"{LOGS}/official_weights.log",
        localrule: True
        conda:
            CONDA_ENV
        params:
            url=WEIGHTS_URL,
            sha256=f"--sha256 {MODEL['weights_sha256']}" if MODEL.get("weights_sha256") else "",
        shell:
            "vocabseg fetch-url --url {params.url:q} {params.sha256} --out {output} > {log} 2>&1"
