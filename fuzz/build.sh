#!/usr/bin/env bash
# Builds and runs the libFuzzer targets: fuzz/build.sh [SECONDS_PER_TARGET] (default 60).
# The targets are compiled into one binary with the library sources under -sanitize=fuzzer,address;
# each is seeded from the fixtures and run for the given time; a crash leaves its input in fuzz/out/<target>/ and
# fails the run. Regression inputs in fuzz/regressions/<target>/ (the hostile files of the issues,
# from fuzz/make_regressions.py) are replayed first and seed the corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
out=${FUZZ_OUT:-fuzz/out}
mkdir -p "$out"
# The recipe reader needs Yams, a package swiftc does not see here; no fuzz target reaches it.
lib=$(find Sources/WSAMergeKit -name '*.swift' -not -path '*/Recipes/*' | sort)
clang=$(dirname "$(command -v swiftc)")/clang
kernels=()
for c in Sources/CKernels/*.c; do
  o=$out/$(basename "$c" .c).o
  "$clang" -c -O2 -ffp-contract=off -fsanitize=address,fuzzer-no-link -I Sources/CKernels/include "$c" -o "$o"
  kernels+=("$o")
done
# One binary holds every target (fuzz/Targets.swift picks one by WSAMERGE_FUZZ_TARGET), so the
# library is compiled once.
bin=$out/wsamerge-fuzz
rm -f "$bin"
targets=$(ls fuzz/*.swift | grep -v Targets.swift)
swiftc -O -sanitize=fuzzer,address -parse-as-library -module-name WSAMergeKit \
  -I Sources/CZip -I Sources/CKernels/include $(pkg-config --libs libzip) -lz "${kernels[@]}" $lib $targets fuzz/Targets.swift -o "$bin" 2>&1 | grep -v "ld.gold: warning" || true
[ -x "$bin" ] || { echo "fuzz build failed"; exit 1; }
for target in ${FUZZ_TARGETS:-SafetensorsHeaderFuzz NpyHeaderFuzz NpzReaderFuzz PickleFuzz JSONReaderFuzz}; do
  export WSAMERGE_FUZZ_TARGET=$target
  corpus=$out/$target-corpus
  mkdir -p "$corpus"
  case $target in
    SafetensorsHeaderFuzz) cp fixtures/*.safetensors fixtures/sharded/*.safetensors "$corpus"/ ;;
    NpyHeaderFuzz) cp fixtures/npy/*.npy "$corpus"/ ;;
    NpzReaderFuzz) cp fixtures/*.npz fixtures/merge/*.npz "$corpus"/ ;;
    # The data.pkl of every torch fixture and hostile file.
    PickleFuzz) python3 -c 'import sys, zipfile, os
for i, p in enumerate(sys.argv[2:]):
    with zipfile.ZipFile(p) as z:
        for n in z.namelist():
            if n.endswith("data.pkl"): open(os.path.join(sys.argv[1], "%d.pkl" % i), "wb").write(z.read(n))
' "$corpus" $(find fixtures/torch -name '*.pt' -o -name '*.pth' -o -name '*.ckpt' -o -name '*.bin' | grep -v -e compressed -e refused/legacy) ;;
    JSONReaderFuzz) cp fixtures/sharded/*.json "$corpus"/ ;;
  esac
  # The hostile files of the regression folder seed the corpus too.
  if [ -d "fuzz/regressions/$target" ]; then cp fuzz/regressions/$target/* "$corpus"/; fi
  if [ -d "fuzz/regressions/$target" ]; then
    "$bin" -runs=0 fuzz/regressions/$target/* >/dev/null 2>&1 || { echo "$target: a regression input crashes"; exit 1; }
  fi
  echo "== $target: ${seconds}s"
  "$bin" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=1024 -timeout=5 \
    -artifact_prefix="$out/$target-" -print_final_stats=1 "$corpus" 2>&1 | grep -E "^(#[0-9]+.*DONE|stat::number_of_executed_units|==[0-9]+==ERROR|SUMMARY)" || true
  if ls "$out/$target-"crash-* "$out/$target-"leak-* "$out/$target-"timeout-* >/dev/null 2>&1; then
    echo "$target: crash found, see $out"; exit 1
  fi
done
echo "fuzzing: no crash"
