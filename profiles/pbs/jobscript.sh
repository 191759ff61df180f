#!/bin/bash
# properties = {properties}
#
# Job script of the PBS profile (profiles/pbs). Snakemake fills in the two fields in braces;
# qsub options come from pbs_submit.py, not from #PBS lines, so nothing here is site-specific
# except the optional module lines below. (Snakemake formats this file with str.format:
# shell braces are written doubled.)

# The software environment: pbs_submit.py passes the bin folder of the Python Snakemake runs
# in (a venv or conda environment on the shared file system) as VOCABSEG_ENV_BIN, so the
# job finds vocabseg, torchrun and snakemake without the login shell's environment.
if [ -n "${{VOCABSEG_ENV_BIN:-}}" ]; then
    export PATH="$VOCABSEG_ENV_BIN:$PATH"
    export VIRTUAL_ENV="$(dirname "$VOCABSEG_ENV_BIN")"
fi
# Site modules, if the cluster needs them for GPUs (edit to taste):
# module load cuda/12.4

# The job itself, in a subshell (it ends with "exit"), then its exit status is kept in
# <submission folder>/.snakemake/pbs/<PBS job id>.exit: pbs_status.py reads it when the
# server no longer knows the job (job history disabled or expired).
( {exec_job} )
status=$?
if [ -n "${{PBS_JOBID:-}}" ] && [ -n "${{PBS_O_WORKDIR:-}}" ]; then
    marker_dir="$PBS_O_WORKDIR/.snakemake/pbs"
    mkdir -p "$marker_dir" \
        && echo "$status" > "$marker_dir/$PBS_JOBID.exit.tmp" \
        && mv -f "$marker_dir/$PBS_JOBID.exit.tmp" "$marker_dir/$PBS_JOBID.exit"
fi
exit "$status"
