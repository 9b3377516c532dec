#!/usr/bin/env bash
# Wheels that let the GPU benchmarks run on a machine that has torch, torchaudio, pyarrow, pandas
# and aiohttp but reaches no package index (the lent GPU machines: Python 3.12, x86_64), where
# what can be carried there is capped (64 MiB). Ray's wheel is 79 MB; without its Java jar, its
# dashboard's web client, RLlib, Serve and Ray LLM, none of which training or separation loads,
# the set is about 45 MiB.
#
#   bench/offline_wheels.sh [DIR]          # default DIR: .whl (git-ignored)
#   PYTHON_VERSION=3.11 bench/offline_wheels.sh DIR   # wheels for another Python (to try them here)
#   # there:  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   #         PYTHONPATH=/tmp/site:. python3 -m bench.train_throughput --device cuda --amp
set -euo pipefail
dir=${1:-.whl}
py=${PYTHON_VERSION:-3.12}
mkdir -p "$dir"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" \
  --implementation cp "${platforms[@]}" -d "$dir" \
  "ray==2.60.*" jsonschema jsonschema-specifications referencing rpds-py tensorboardX \
  "pydantic>=2.5,<3" annotated-types typing-inspection typing-extensions soundfile cffi pycparser
# pydantic pins its core exactly: fetch the one it names.
core=$(unzip -p "$dir"/pydantic-2*.whl '*/METADATA' | sed -n 's/^Requires-Dist: pydantic-core==//p')
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" \
  --implementation cp "${platforms[@]}" -d "$dir" "pydantic-core==$core"

python3 - "$dir" <<'EOF'
import glob, os, sys, zipfile

drop = ("ray/jars/", "ray/dashboard/client/", "ray/rllib/", "ray/serve/", "ray/llm/")
(wheel,) = glob.glob(os.path.join(sys.argv[1], "ray-*.whl"))
slim = wheel + ".slim"
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as out:
    for item in src.infolist():
        if item.filename.startswith(drop):
            continue
        data = src.read(item.filename)
        if item.filename.endswith(".dist-info/RECORD"):
            keep = [line for line in data.decode().splitlines() if not line.startswith(drop)]
            data = "\n".join(keep).encode()
        out.writestr(item, data)
os.replace(slim, wheel)
EOF
du -ch "$dir"/*.whl | tail -1
