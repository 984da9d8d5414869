"""spark-submit entry point of the score job; takes the flags of ``longattn-spark score``.

    spark-submit jobs/score.py --windows lake.windows --model /Volumes/models/Llama-3.1-8B \
        --table lake.scores
"""

from longattn_spark.cli import job_main

if __name__ == "__main__":
    job_main("score")
