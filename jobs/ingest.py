"""spark-submit entry point of the ingest job; takes the flags of ``longattn-spark ingest``.

    spark-submit jobs/ingest.py --input s3://raw/books --category book \
        --tokenizer /Volumes/models/Llama-3.1-8B --window-size 32768 --table lake.windows
"""

from longattn_spark.cli import job_main

if __name__ == "__main__":
    job_main("ingest")
