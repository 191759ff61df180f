# Text classifiers, computed once per (model, vocabulary) and reused by every job.


rule text_embeddings:
    input:
        clip=CLIP_INPUT,
        split=f"{RESULTS}/vocab/{{conf}}/split.json",
        labels=LABELS,
    output:
        f"{TEXT}/{{conf}}.pt",
    log:
        f"{LOGS}/text_embeddings/{{conf}}.log",
    benchmark:
        f"{BENCH}/text_embeddings/{{conf}}.tsv"
    conda:
        CONDA_ENV
    params:
        model=model_json(),
    shell:
        "vocabseg text-embeddings --model {params.model:q} --split {input.split}"
        " --labels {input.labels} --out {output}"
        " > {log} 2>&1"
