"""spark-submit entry point of the select job; takes the flags of ``longattn-spark select``.

    spark-submit jobs/select.py --windows lake.windows --scores lake.scores --alpha 0.5 \
        --keep-fraction 0.5 --table lake.selection
"""

from longattn_spark.cli import job_main

if __name__ == "__main__":
    job_main("select")
