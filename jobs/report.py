"""spark-submit entry point of the report; takes the flags of ``longattn-spark report``.

    spark-submit jobs/report.py --windows lake.windows --scores lake.scores \
        --selection lake.selection --output report.html
"""

from longattn_spark.cli import job_main

if __name__ == "__main__":
    job_main("report")
