"""spark-submit entry point of the select job; takes the flags of ``longattn-spark select``.

    spark-submit jobs/select.py --windows lake.windows --scores lake.scores --alpha 0.5 \
        --keep-fraction 0.5 --table lake.selection
"""

import os
import sys

# This file shares its name with the standard library's ``select`` module, and Python puts a
# script's folder first on sys.path: without this, ``import socket`` (pyspark) would import
# this file instead of the standard module.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from longattn_spark.cli import job_main

if __name__ == "__main__":
    job_main("select")
