"""What the score job's executor UDFs return, one row per window: written once as Spark
schemas, the Arrow schemas the UDFs build their batches with derived from them.

Every method's row is the window (id, category), a reject reason (null: scored) with its
detail, the method's own columns, then what the executor ran: device type (cpu, cuda),
kernel (torch, triton), compute dtype, and the scorer's note when the Triton kernel fell back
to torch (null otherwise).
"""

from __future__ import annotations

import pyarrow as pa
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from longattn_spark.tables import PROLONG_COMPONENTS, SCORES

RUN_FIELDS = ("device", "kernel", "dtype", "kernel_note")

_WINDOW = [
    T.StructField("window_id", T.StringType(), False),
    T.StructField("category", T.StringType()),
    T.StructField("reason", T.StringType()),     # null: scored (a reject reason otherwise)
    T.StructField("detail", T.StringType()),
]
_RUN = [T.StructField(name, T.StringType()) for name in RUN_FIELDS]

#: ``--method longattn``: DS and variance, overall and per query head (the scores table's).
LONGATTN_OUT = T.StructType([
    *_WINDOW,
    *(T.StructField(name, SCORES.schema[name].dataType)
      for name in ("ds", "variance", "ds_heads", "var_heads")),
    *_RUN,
])

#: ProLong's components of the score, as in the scores table's ``prolong`` struct (whose
#: ``reason``, the released code's early exit, is the UDF's ``prolong_reason``).
COMPONENT_COLUMNS = tuple(f.name for f in PROLONG_COMPONENTS.fields if f.name != "reason")

#: ``--method prolong``: the LDS and its components.
PROLONG_OUT = T.StructType([
    *_WINDOW,
    T.StructField("score", T.DoubleType()),
    *(PROLONG_COMPONENTS[name] for name in COMPONENT_COLUMNS),
    T.StructField("prolong_reason", T.StringType()),
    *_RUN,
])


LONGATTN_ARROW: pa.Schema = to_arrow_schema(LONGATTN_OUT)
PROLONG_ARROW: pa.Schema = to_arrow_schema(PROLONG_OUT)
