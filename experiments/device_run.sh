#!/usr/bin/env bash
# What produced the GPU figures in docs/RESULTS.md and docs/BENCHMARKS.md: one lent NVIDIA H200,
# its image's own JAX (CUDA build), PyTorch and CUDA, this project's pinned pure-Python packages
# carried as wheels in .whl/ (flax, optax, orbax-checkpoint, chex, ml_collections, tensorboardX),
# no TensorFlow. Run from the repository root:
#
#   bash experiments/device_run.sh smoke      # imports, a 1-epoch --jobs run on a small slice
#                                             # (teacher and student), the train-step benchmark
#   JOBS=10 ABLATION_S=400 bash experiments/device_run.sh ablation
#                                             # the proxy ablation, then full-recipe epoch times;
#                                             # ARMS="r18_bf16 m3_r18_ce" SEEDS="0 1 2" picks arms,
#                                             # RECIPE_DTYPES= skips the full-recipe epochs
#   bash experiments/device_run.sh bench      # the GPU-speed table (<= 5 min): trainer epochs
#                                             # f32/bf16 x batch 256/512 against the PyTorch
#                                             # twin (eager, compiled; fp32, bf16 autocast)
#   bash experiments/device_run.sh profile    # one train step's profile, float32 and bfloat16
#   bash experiments/device_run.sh concurrency  # 1, 2, 4 full runs sharing the GPU
#   QUEUE_S=540 bash experiments/device_run.sh queue  # the full-scale queue (timeout_s >=
#                                             # QUEUE_S + 60); see docs/RESULTS.md "Full scale"
#   SEGMENT_S=540 bash experiments/device_run.sh full configs/reactnet18_cifar10.py:method1 r18_m1
#                                             # one segment of a full-scale run: stops (SIGTERM,
#                                             # saved mid-epoch) after SEGMENT_S seconds; the
#                                             # same call on the still-warm machine resumes it
#
# A full ReActNet-18 run (256 epochs) needs about 11 minutes on an H200 (2.25 s per epoch):
# two back-to-back `full` calls, the first one carrying the last data part. Its checkpoint
# (~135 MB) cannot come back, so the run is lost if the machine goes back in between.
#
# The ablation mode needs the CIFAR-10 archive's parts in .device-data/ (c10.part-*); results
# (metrics.jsonl + config.json of every finished run) come back as $OUT/results_gpu.tgz.
#
# TINY=1 tries bench, profile, concurrency and queue on the CPU at small sizes (no .whl/ needed,
# DATA= the archive): TINY=1 DATA=../shared/data/cifar-10-binary.tar.gz bash ... bench
set -uo pipefail
mode=${1:?usage: device_run.sh smoke|ablation|bench|profile|concurrency|queue|full CONFIG NAME}
PY=${PY:-python3}  # the device image's Python (it has JAX's CUDA build and PyTorch)
out=${OUT:-/tmp/device_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
fi
command -v nvidia-smi > /dev/null && nvidia-smi -L
tiny=${TINY:+--tiny}
data=${DATA:-/tmp/c10.tar.gz}
need_data() { [ -f "$data" ] || cat .device-data/c10.part-* > "$data" || exit 1; }
$PY -c "import jax, flax, optax, orbax.checkpoint, chex, torch; print('jax', jax.__version__,
'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, jax.devices())"

case $mode in
smoke)
  timeout 200 $PY experiments/proxy.py --data .device-data/tiny.tar.gz --runs /tmp/smoke \
    --results /tmp/smoke_results --epochs 1 --jobs 4 --seeds 0 \
    --arms m2_fp m3_r18_both m1_bnfree_agc_wreg m3_vgg_ce 2>&1 | tee "$out/smoke.log"
  for f in /tmp/smoke/*.log; do echo "== $f"; grep -v "^WARNING\|^I0\|^W0" "$f" | tail -n 8; done
  timeout 200 $PY benchmarks/bench_train_step.py --width 1 --batches 256 --steps 10 \
    --repeats 5 --torch-device cuda --xla-flags= --dtypes float32,bfloat16 2>&1 \
    | tee "$out/bench_train_step_gpu.txt"
  ;;
ablation)
  need_data; ls -la "$data"
  timeout -s TERM "${ABLATION_S:-400}" $PY experiments/proxy.py --data /tmp/c10.tar.gz \
    --runs /tmp/runs --results /tmp/results_gpu --jobs "${JOBS:-8}" --seeds ${SEEDS:-0 1} \
    --arms ${ARMS:-m2_fp m3_teacher_vgg_fp m3_r18_ce m3_r18_both m3_r18_semantic m3_r18_detail \
    m3_vgg_ce m3_vgg_both m1_wreg_0.3_late m1_wreg_1.0_late m1_wreg_0.1_late m1_l2 m1_wreg_0.1 \
    m1_wreg_0.3 m1_wreg_1.0 m1_cosmom m1_wreg_cosmom m1_bnfree_agc m1_bnfree_agc_wreg \
    m2_bnn m2_all m2_reactnet_fda} > "$out/ablation.log" 2>&1
  sleep 5  # the interrupted runs save their checkpoints
  tail -n 60 "$out/ablation.log"
  tar czf "$out/results_gpu.tgz" -C /tmp results_gpu
  (cd /tmp/runs && tar czf "$out/run_logs.tgz" ./*.log)
  for dtype in ${RECIPE_DTYPES-float32 bfloat16}; do    # RECIPE_DTYPES= skips these epochs
    timeout 100 $PY train.py --config configs/reactnet18_cifar10.py \
      --workdir "/tmp/full_$dtype" --config.data.path=/tmp/c10.tar.gz --config.num_epochs=2 \
      --config.model.dtype=$dtype --config.progress_bar=False > "/tmp/full_$dtype.log" 2>&1
    echo "== full recipe $dtype"; cat "/tmp/full_$dtype/metrics.jsonl"
    cp "/tmp/full_$dtype/metrics.jsonl" "$out/full_recipe_${dtype}.jsonl"
  done
  ;;
bench)
  need_data
  # each row is written as it finishes: a time-out keeps the rows before it
  timeout "${BENCH_S:-290}" $PY benchmarks/bench_recipe.py --data "$data" --out "$out" $tiny \
    --dtypes "${DTYPES:-float32,bfloat16}" --batches "${BATCHES:-256,512}" \
    --epochs "${EPOCHS:-2}" ${TORCH:+--torch "$TORCH"} 2>&1 | tail -n 40 | tee "$out/bench.log"
  ;;
profile)
  need_data
  for dtype in float32 bfloat16; do
    timeout 200 $PY benchmarks/profile_step.py --data "$data" --out "$out/profile_$dtype" $tiny \
      --set model.dtype=$dtype --peak-gbps "${PEAK_GBPS:-3350}" --no-keep-trace 2>&1 \
      | tail -n 30
  done
  ;;
concurrency)
  need_data
  timeout "${CONC_S:-400}" $PY benchmarks/bench_concurrency.py --data "$data" --out "$out" \
    $tiny --procs "${PROCS:-1,2,4}" --epochs "${EPOCHS:-3}" 2>&1 | tail -n 20
  ;;
queue)
  need_data
  $PY experiments/full_scale.py --data "$data" --runs /tmp/full_runs $tiny \
    --seconds "${QUEUE_S:-540}" --out "$out" --tar --jobs "${JOBS:-1}" ${SPLIT:+--allow-split} \
    2>&1 | tee "$out/queue.log"
  ;;
full)
  cfg=${2:?config, e.g. configs/reactnet18_cifar10.py:method1}; name=${3:?run name}
  mkdir -p /tmp/full; need_data
  timeout -s TERM "${SEGMENT_S:-540}" $PY train.py --config "$cfg" --workdir "/tmp/full/$name" \
    --config.data.path=/tmp/c10.tar.gz --config.progress_bar=False >> "/tmp/full/$name.log" 2>&1
  echo "train.py exit $? (124: stopped after SEGMENT_S and saved; rerun to resume)"
  tail -n 5 "/tmp/full/$name.log"
  cp "/tmp/full/$name/metrics.jsonl" "$out/$name.metrics.jsonl"
  cp "/tmp/full/$name/config.json" "$out/$name.config.json"
  ;;
esac
ls -la "$out"
