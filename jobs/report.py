"""spark-submit entry point of the report; takes the flags of ``longattn-spark report``.

    spark-submit jobs/report.py --windows lake.windows --scores lake.scores \
        --selection lake.selection --output report.html
"""

import sys

from longattn_spark.cli import run

if __name__ == "__main__":
    sys.exit(run(["report", *sys.argv[1:]]))
