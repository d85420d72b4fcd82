#!/bin/bash
# Training of a flowpose task on a Cloud TPU VM slice (one process per worker host, all chips in
# one data-parallel mesh; launch/main.py starts jax.distributed from the TPU metadata server).
#
#   launch/cluster/tpu_vm.sh TPU_NAME ZONE experiments/prior_cmu.py /mnt/shared/runs/prior
#   launch/cluster/tpu_vm.sh TPU_NAME ZONE experiments/prior_cmu.py /mnt/shared/runs/prior \
#       --config.batch_size=4096                     # extra arguments go to launch.main
#
# Runs, on every worker at once (gcloud ... --worker=all):
#   cd ~/flowpose && .venv/bin/python -m launch.main --cluster=tpu --config=C --workdir=W
# Needs: the repo at ~/flowpose with its .venv on every worker (install jax[tpu] of the pinned
# jax version there instead of the CPU wheels), the mocap source or prepared TFDS data
# ($FLOWPOSE_CACHE) on each worker, and a workdir every worker mounts at the same path (NFS /
# Filestore, or a bucket through gcsfuse: the workdir lock and config check need a POSIX path,
# not gs://). Process 0 (worker 0) writes metrics, config.json and exports. Rerun to resume.
set -euo pipefail
tpu=${1:?usage: tpu_vm.sh TPU_NAME ZONE CONFIG.py[:ARG] WORKDIR [launch.main flags]}
zone=${2:?usage: tpu_vm.sh TPU_NAME ZONE CONFIG.py[:ARG] WORKDIR [launch.main flags]}
config=${3:?usage: tpu_vm.sh TPU_NAME ZONE CONFIG.py[:ARG] WORKDIR [launch.main flags]}
workdir=${4:?usage: tpu_vm.sh TPU_NAME ZONE CONFIG.py[:ARG] WORKDIR [launch.main flags]}
shift 4
extra=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "${tpu}" --zone="${zone}" --worker=all --command="\
  cd ~/flowpose && OPENBLAS_NUM_THREADS=1 .venv/bin/python -m launch.main --cluster=tpu \
  --config=$(printf '%q' "${config}") --workdir=$(printf '%q' "${workdir}")${extra}"
