#!/usr/bin/env bash
# Runs every libFuzzer target built in BUILD_DIR for SECONDS each, starting from the seed corpora
# in tests/fuzz/corpus/ (plus the reference fixtures' configs and tokenizer when ../shared is
# present). Exits non-zero when a target finds a crash, a sanitizer error, a leak, a timeout or
# an out-of-memory input; the input is kept in BUILD_DIR/artifacts/ and named in the output.
#
#   tests/fuzz/run_fuzzers.sh [BUILD_DIR=build-fuzz] [SECONDS=10] [TARGET...]
#
# The corpus each run grows is kept in BUILD_DIR/corpus/<target>/ (never in the source tree), so
# a second run continues where the first stopped. Figures per target: runs, coverage (cov: edges
# of vdm code reached; ft: features), corpus size.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="${1:-build-fuzz}"
seconds="${2:-10}"
shift $(( $# >= 2 ? 2 : $# ))
case "$build" in /*) ;; *) build="$root/$build" ;; esac
fixtures="${VDM_FIXTURES:-$root/../shared/fixtures/diffusers-tiny}/t2v_pipeline"

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for bin in "$build"/fuzz_*; do [ -x "$bin" ] && targets+=("$(basename "$bin")"); done
fi
if [ ${#targets[@]} -eq 0 ]; then
  echo "no fuzz targets in $build; run 'make fuzz' first" >&2
  exit 2
fi

# Extra seeds from the reference model folder, when it is there (read, never copied into the tree).
extra_seeds() {
  local name="$1" dest="$2"
  [ -d "$fixtures" ] || return 0
  case "$name" in
    fuzz_json_config)
      for f in unet/config.json vae/config.json text_encoder/config.json \
               scheduler/scheduler_config.json tokenizer/tokenizer_config.json; do
        [ -f "$fixtures/$f" ] && cp "$fixtures/$f" "$dest/fixture_${f//\//_}"
      done ;;
    fuzz_model_index)
      [ -f "$fixtures/model_index.json" ] && cp "$fixtures/model_index.json" "$dest/fixture_model_index.json" ;;
    fuzz_tokenizer_files)
      local t="$fixtures/tokenizer"
      if [ -f "$t/vocab.json" ] && [ -f "$t/merges.txt" ]; then
        { cat "$t/vocab.json"; printf '\n@@@\n'; cat "$t/merges.txt"; printf '\n@@@\n'
          cat "$t/tokenizer_config.json" 2>/dev/null; printf '\n@@@\n'
          cat "$t/special_tokens_map.json" 2>/dev/null; } > "$dest/fixture_tokenizer.txt"
      fi ;;
  esac
}

mkdir -p "$build/artifacts" "$build/logs"
failed=()
printf '%-22s %10s %8s %8s %8s %8s\n' target runs exec/s cov ft corpus
for name in "${targets[@]}"; do
  bin="$build/$name"
  if [ ! -x "$bin" ]; then
    echo "$name: not built in $build" >&2
    failed+=("$name")
    continue
  fi
  corpus="$build/corpus/$name"
  mkdir -p "$corpus"
  seeds="$here/corpus/${name#fuzz_}"
  [ -d "$seeds" ] && cp -n "$seeds"/* "$corpus"/ 2>/dev/null
  extra_seeds "$name" "$corpus"
  log="$build/logs/$name.log"
  # -timeout: an input that takes longer is a hang; -rss_limit_mb: one that needs more is a bug.
  "$bin" "$corpus" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$build/artifacts/$name-" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  stats=$(grep -a 'DONE' "$log" | tail -1)
  runs=$(grep -a 'stat::number_of_executed_units' "$log" | awk '{print $2}')
  eps=$(grep -a 'stat::average_exec_per_sec' "$log" | awk '{print $2}')
  cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$stats")
  ft=$(sed -n 's/.*ft: \([0-9]*\).*/\1/p' <<<"$stats")
  files=$(find "$corpus" -type f | wc -l)
  printf '%-22s %10s %8s %8s %8s %8s\n' "$name" "${runs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" "$files"
  if [ $rc -ne 0 ]; then
    failed+=("$name")
    echo "  FAILED (exit $rc): $(grep -aE 'ERROR|SUMMARY' "$log" | head -2 | tr '\n' ' ')" >&2
    grep -a 'Test unit written to' "$log" | sed 's/^/  /' >&2
    echo "  full log: $log" >&2
  fi
done
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzzing found problems in: ${failed[*]}" >&2
  exit 1
fi
