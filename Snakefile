# vocabseg: in-vocabulary / out-of-vocabulary panoptic segmentation studies.
#
#   snakemake --cores all                                   # the default study (synthetic city)
#   snakemake --configfile config/cityscapes-r50.yaml ...   # a real study
#
# Every rule is a thin call of the `vocabseg` command line; see README.md.
from snakemake.utils import min_version

min_version("9.0")


# The default study, unless a study is named with --configfile (which then replaces
# it instead of being merged into it).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/vocab.smk"
include: "workflow/rules/fetch.smk"
include: "workflow/rules/text.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/pseudolabel.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/openworld.smk"
include: "workflow/rules/report.smk"


check_user_weights()  # needs every rule: a user's file must not be any rule's output


onstart:
    slurm_logs_per_study()


# Every study writes its own tables under results/<study>/, so a study always runs to
# its outputs whatever other studies left. results/table.md is a copy of the table of
# the study last run to its end: a target without output runs on every call, so the
# copy follows the study just run even when its table was already up to date.
rule all:
    default_target: True
    input:
        table=f"{RESULTS}/table.md",
        outputs=final_outputs(),
    log:
        f"{LOGS}/latest_table.log",
    localrule: True
    conda:
        "envs/vocabseg.yaml"  # CONDA_ENV, seen from this file
    params:
        latest="results/table.md",
        partial=f"results/.table.md.{STUDY}.partial",  # renamed into place: never half a table
    shell:
        "(cp {input.table:q} {params.partial:q} && mv {params.partial:q} {params.latest:q}) > {log} 2>&1"
