# open_clip's pretrained CLIP weights, downloaded by a local rule on the host Snakemake
# runs on (the submit host of a cluster) and checked against the checksum their source
# publishes: compute nodes without internet then read a local file only (docs/clusters.md,
# "Offline compute nodes"). The official FC-CLIP checkpoint: rule official_weights.


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
