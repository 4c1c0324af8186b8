#!/usr/bin/env bash
# One device call, several stages: `bash tools/gpu_run.sh STAGE...` on the GPU machine, logs under $OUT.
# Stages: tests (GPU-marked tests), core (ops microbenchmark), bench:WORKLOAD[,WORKLOAD] (xgr bench),
# cold:WORKLOAD[,WORKLOAD] (tools/cold_start.py), beauty (Amazon Beauty SIDs, training and evaluation;
# the data carried in .data/, never committed), quality:DATASET (tools/quality_experiment.py on .data/DATASET
# with $QUALITY_ARGS, e.g. "--seeds 0 --sid-sets ours": one seed and SID set a call; runs add up in
# build/quality/DATASET while the machine stays warm, and every call writes the summary over all of them),
# fp8gate (tools/float8_gate.py on .data/amazon-beauty: float8 against bf16 on a trained model, $GATE_ARGS),
# truncation:sliding|stable (docs/results.md's truncation-policy commands on .data/amazon-beauty).
# Data goes to the device in .data/ (git-ignored; carry it), never into the repository.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if [ -d .whl ]; then  # the device image lacks omegaconf: carried wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1
# compiled kernels kept in the (ignored) build folder: a warm machine's next call reuses them
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/build/inductor}
# the GPU tests spread over processes where pytest-xdist is carried (compilation is CPU-bound)
workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n ${TEST_WORKERS:-6}")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for stage in "$@"; do
  echo "=== $stage $(date +%T)"
  case $stage in
    tests) timeout ${TESTS_TIMEOUT:-540} python3 -m pytest -q -m gpu -p no:cacheprovider ${workers:-} --durations=15 tests 2>&1 | tee "$OUT/gpu_tests.log" | tail -25 ;;
    core) timeout ${CORE_TIMEOUT:-300} python3 tools/bench_core.py 2>&1 | tee "$OUT/core.log" | tail -40
          cp docs/benchmarks/core_microbench.* "$OUT"/ 2>/dev/null ;;
    bench:*) # into $OUT/b (what a killed call wrote still comes back), added to docs/benchmarks/bench.json
             # unless BENCH_FRESH is set
             mkdir -p "$OUT/b"
             [ -z "${BENCH_FRESH:-}" ] && cp docs/benchmarks/bench.json "$OUT/b/" 2>/dev/null
             python3 -m xgr_toolkit bench $(echo ${stage#bench:} | tr , " ") ${BENCH_ARGS:-} --append --out "$OUT/b" \
               2>&1 | tee "$OUT/bench.log" | grep -v "it/s\]" | tail -40 ;;
    cold:*) python3 tools/cold_start.py --device cuda --workloads $(echo ${stage#cold:} | tr , " ") --append \
              2>&1 | tee "$OUT/cold_start.log" | tail -20
            cp docs/benchmarks/cold_start.json docs/benchmarks/cold_start.png "$OUT"/ 2>/dev/null ;;
    beauty) python3 tools/beauty_experiment.py --device cuda --data .data/amazon-beauty --work /tmp/beauty \
              --out "$OUT" ${BEAUTY_ARGS:-} 2>&1 | tee "$OUT/beauty.log" | grep -v "it/s\]" | tail -40 ;;
    fp8gate) python3 tools/float8_gate.py --device cuda --data .data/amazon-beauty --work build/float8_gate \
               --out "$OUT" ${GATE_ARGS:-} 2>&1 | tee "$OUT/float8_gate.log" | grep -v "it/s\]\|step/s\]\|user/s\]" | tail -30 ;;
    truncation:*) # docs/results.md's truncation commands: train with model.truncation T, evaluate; a sliding
                  # model is also evaluated under stable (serving it with stable, no retraining)
                  T=${stage#truncation:} D=.data/amazon-beauty M=build/beauty/trunc-${stage#truncation:}
                  { python3 -m xgr_toolkit train --data $D/sequences.txt --sids $D/semantic_ids.letter.json --codes 256 \
                      --out $M --layers 4 --hidden 256 --mlp 1024 --dropout 0.3 --label-smoothing 0.1 --epochs 30 \
                      --patience 0 --batch-size 1024 --lr 2e-3 --seed 0 --device cuda --bf16 --truncation $T \
                    && python3 -m xgr_toolkit eval $M --data $D/sequences.txt --split both --beam-width 20 \
                      --device cuda --json "$OUT/trunc-$T.json" \
                    && { [ "$T" != sliding ] || python3 -m xgr_toolkit eval $M --data $D/sequences.txt --split both \
                      --beam-width 20 --device cuda --truncation stable --json "$OUT/trunc-sliding-as-stable.json"; }
                  } 2>&1 | tee "$OUT/truncation_$T.log" | grep -v "it/s\]\|step/s\]\|user/s\]\|epoch/s\]" | tail -20 ;;
    quality:*) name=${stage#quality:}
               timeout ${QUALITY_TIMEOUT:-570} python3 tools/quality_experiment.py --device cuda --data ".data/$name" \
                 --work "build/quality/$name" --out "$OUT" ${QUALITY_ARGS:-} 2>&1 | tee "$OUT/quality_$name.log" \
                 | grep -v "it/s\]\|step/s\]\|user/s\]\|epoch/s\]" | tail -40 ;;
    *) echo "unknown stage $stage" ;;
  esac
done
echo "=== done $(date +%T)"
