# Panoptic predictions on the validation set, one rule per approach kind.


rule oracle:
    input:
        PREPARED,
    output:
        json=f"{RESULTS}/predictions/{{approach}}/panoptic.json",
        folder=directory(f"{RESULTS}/predictions/{{approach}}/panoptic"),
    log:
        f"{LOGS}/oracle/{{approach}}.log",
    benchmark:
        f"{BENCH}/oracle/{{approach}}.tsv"
    wildcard_constraints:
        approach=approaches_of_kind("oracle"),
    conda:
        CONDA_ENV
    shell:
        "vocabseg oracle --gt-json {input}/cityscapes_panoptic_val.json"
        " --gt-folder {input}/cityscapes_panoptic_val"
        " --out-json {output.json} --out-folder {output.folder} > {log} 2>&1"
