# The results table of the study and its figures.


localrules:
    report,


rule report:
    input:
        [f"{RESULTS}/metrics/{name}.json" for name in APPROACHES],
    output:
        md=report("results/table.md", caption="../report/table.rst", category="Results"),
        csv="results/table.csv",
        bars=report(
            f"{RESULTS}/figures/pq_bars.png", caption="../report/pq_bars.rst", category="Results"
        ),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCH}/report.tsv"
    conda:
        CONDA_ENV
    params:
        title=config["title"],
    shell:
        "vocabseg report --metrics {input} --table-md {output.md} --table-csv {output.csv}"
        " --bars {output.bars} --title {params.title:q} > {log} 2>&1"
