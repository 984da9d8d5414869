"""spark-submit entry point of the probe job; takes the flags of ``longattn-spark probe``.

    spark-submit jobs/probe.py --windows lake.windows --model /Volumes/models/Llama-3.1-8B \
        --table /Volumes/lake/probe/probe --per-category 200 --json probe.json
"""

import os
import sys

# spark-submit puts this script's folder first on sys.path, where ``select.py`` would shadow
# the standard library's ``select`` module (imported by pyarrow, socket, ...): drop the folder
# before importing anything else, so whatever this folder holds can shadow nothing.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from longattn_spark.cli import job_main  # noqa: E402 - after the sys.path fix above

if __name__ == "__main__":
    job_main("probe")
