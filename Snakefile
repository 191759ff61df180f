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


rule all:
    default_target: True
    input:
        final_outputs(),
