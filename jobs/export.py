"""spark-submit entry point of the export job; takes the flags of ``longattn-spark export``.

    spark-submit jobs/export.py --selection lake.selection --windows lake.windows \
        --format jsonl --tokenizer /Volumes/models/Llama-3.1-8B --output s3://train/longabc
"""

from longattn_spark.cli import job_main

if __name__ == "__main__":
    job_main("export")
