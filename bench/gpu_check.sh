#!/bin/bash
# #19's GPU check on a lent machine (device tool), from the repository root. Prepare here, once:
#   .venv/bin/python bench/bench_gpu.py kit --lite gpukit-lite
#   printf '/gpukit-lite/\n/.whl/\n' >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl monai==1.6.1 nibabel==5.4.2 pydicom==3.0.2 highdicom==0.28.2 \
#     pydantic==2.14.3 pydantic-core==2.50.4 typing-inspection==0.4.5 annotated-types==0.8.0 isal==1.9.1 \
#     connected-components-3d==4.1.1 fastremap==1.21.0 fill-voids==2.1.2
# (the packages of the inference path that the GPU image lacks, versions from requirements.lock; with the kit and
# the repository about 60 MiB of the 64 that travel), then run with carry [".whl", "gpukit-lite"]:
#   bash bench/gpu_check.sh
# Measures: MONAI's import plain and through medseg.monai_import (fresh processes, twice each), the CUDA runner
# parity test, and bench_gpu.py (infer on cuda and cpu, parity of labels and SEG; no training: MLflow's wheels do
# not fit). Everything lands in $OUT.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c "import torch, numpy; print(torch.__version__, torch.cuda.get_device_name(0), numpy.__version__)"
for i in 1 2; do
  python3 -c "import time,torch; t=time.perf_counter(); from monai.networks.nets import UNet; print('plain_monai_import_s', round(time.perf_counter()-t,3))"
  python3 -c "import time,torch; t=time.perf_counter(); from medseg.monai_import import import_monai; import_monai(); from monai.networks.nets import UNet; print('lean_monai_import_s', round(time.perf_counter()-t,3))"
done 2>&1 | tee "$OUT/imports.txt"
python3 -X importtime -c "import torch; from medseg.monai_import import import_monai; import_monai()" 2> "$OUT/importtime_lean.txt"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_infer_runtime.py -k cuda 2>&1 | tail -8 | tee "$OUT/pytest.txt"
timeout 300 python3 bench/bench_gpu.py run --kit gpukit-lite --out "$OUT/gpu.json" --repeat 3 --train-s 0 2>&1 | tee "$OUT/bench.txt"
