#!/bin/bash
# GPU training speed on a lent machine (device tool), from the repository root: `medseg train`'s own loop
# (bench/bench_train.py loop: the stage-5 recipe's network, partial-label loss, augmentation and data workers; MLflow
# off, whose wheels do not travel) on cuda, and on the same machine's CPU limited to 2 threads for the ratio.
# Prepare here, once:
#   .venv/bin/python bench/bench_gpu.py kit --train gpukit-train
#   printf '/gpukit-train/\n/.whl/\n' >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     monai==1.6.1 nibabel==5.4.2 pydicom==3.0.2 pydantic==2.14.3 pydantic-core==2.50.4 typing-inspection==0.4.5 \
#     annotated-types==0.8.0
# (10.1 MB of wheels and the 7.2 MB kit beside the 37.7 MB repository), then run with carry [".whl", "gpukit-train"]:
#   bash bench/gpu_train_check.sh
# Everything lands in $OUT.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MEDSEG_CACHE_DIR=/tmp/medseg-cache
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0), torch.get_num_threads())" | tee -a "$OUT/gpu.txt"
loop() {  # name device seconds workers [env]
  env ${5:-} timeout $(( $3 + 150 )) python3 bench/bench_train.py loop --config gpukit-train/train_gpu.yaml \
    --data-root gpukit-train/data --device "$2" --seconds "$3" --workers "$4" --out "$OUT/loop-$1.json" \
    > "$OUT/loop-$1.txt" 2>&1
  echo "$1: exit $?"; tail -c 600 "$OUT/loop-$1.txt"
}
loop cuda-w6 cuda 120 6
loop cuda-w12 cuda 60 12
loop cpu2 cpu 60 1 "OMP_NUM_THREADS=2 MKL_NUM_THREADS=2"
