# pixeldino: Sentinel-2 -> PixelDINO -> retrogressive thaw slump polygons.
#
#   snakemake --cores 8 --use-conda                       # the demo (config/config.yaml)
#   snakemake --cores 8 --use-conda --configfile config/region.yaml
#   snakemake --workflow-profile workflow/profiles/slurm --use-conda
#
# Stages live in workflow/rules/*.smk; each rule calls one function of the pixeldino library through a short
# script in workflow/scripts/. Outputs go to results/<run>/.
from snakemake.utils import min_version

min_version("9.0")


# The demo config is the default only when no --configfile is given: a user's config never inherits the demo's
# paths, sites or hold-out (every key it leaves out takes the neutral default of the schema).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/fetch.smk"
include: "workflow/rules/chip.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/polygonize.smk"
include: "workflow/rules/merge.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/change.smk"
include: "workflow/rules/catalog.smk"


rule all:
    input:
        f"{RESULTS}/rts_polygons.gpkg",
        evaluation_outputs(),
        list(CHANGE_OUTPUTS.values()) if CHANGE else [],
        f"{RESULTS}/stac",
    default_target: True
