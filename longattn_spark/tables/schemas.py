"""What each table holds: its schema with column comments, key, partitioning and comment
(``TableSpec``), for every table the jobs write; and how two schemas differ."""

from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql import types as T


def _f(name: str, dtype: T.DataType, comment: str, nullable: bool = True) -> T.StructField:
    return T.StructField(name, dtype, nullable, metadata={"comment": comment})


@dataclass(frozen=True)
class TableSpec:
    """Schema, key, partitioning and documentation of one kind of table."""

    kind: str
    schema: T.StructType
    keys: tuple[str, ...]
    partition_by: tuple[str, ...]
    comment: str
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def column_names(self) -> list[str]:
        return [f.name for f in self.schema.fields]


WINDOWS = TableSpec(
    kind="windows",
    schema=T.StructType([
        _f("window_id", T.StringType(), "deterministic id: hash of category, doc_id, "
           "doc_sha256, tokenizer, window size and token_start", nullable=False),
        _f("doc_id", T.StringType(), "id of the source document (unique within its "
           "category)", nullable=False),
        _f("category", T.StringType(), "category (book, arxiv, code, ...)", nullable=False),
        _f("window_index", T.IntegerType(), "position of the window in Algorithm 1's output "
           "order for its document"),
        _f("token_start", T.IntegerType(), "first token of the window in the document's ids"),
        _f("n_tokens", T.IntegerType(), "tokens in the window (= window size)"),
        _f("input_ids", T.ArrayType(T.IntegerType(), False), "token ids of the window, "
           "without BOS"),
        _f("char_start", T.LongType(), "first character of the window in the document text"),
        _f("char_end", T.LongType(), "character after the window's last token"),
        _f("tokenizer", T.StringType(), "tokenizer identity: tok-<sha256 of the settings in "
           "tokenizer.json that change ids>, independent of its path"),
        _f("ingested_at", T.TimestampType(), "when the window was written"),
        _f("doc_sha256", T.StringType(), "SHA-256 of the document's text (UTF-8): the same id "
           "with another text is a changed document"),
    ]),
    keys=("window_id",),
    partition_by=("category",),
    comment="LongAttn windows: documents tokenized and cut by Algorithm 1 (paper, Appendix A)",
)

REJECTS = TableSpec(
    kind="rejects",
    schema=T.StructType([
        _f("reject_id", T.StringType(), "deterministic id of this reject row", nullable=False),
        _f("doc_id", T.StringType(), "id of the document (null when the row had none)"),
        _f("category", T.StringType(), "category, when known"),
        _f("reason", T.StringType(), "why no window came of it: too_short, too_large, "
           "malformed_json, missing_id, missing_text, empty_text, non_string_text, "
           "invalid_utf8, duplicate_id, missing_category, tokenizer_error, changed_text",
           nullable=False),
        _f("detail", T.StringType(), "human-readable detail (file, sizes, first characters)"),
        _f("source", T.StringType(), "input file or table the row came from"),
        _f("tokenizer", T.StringType(), "tokenizer identity of the run"),
        _f("window_size", T.IntegerType(), "window size of the run"),
        _f("ingested_at", T.TimestampType(), "when the row was written"),
        _f("doc_sha256", T.StringType(), "SHA-256 of the document's text, when it had one"),
    ]),
    keys=("reject_id",),
    partition_by=("category",),
    comment="Input documents that produced no window, each with its reason",
)


PROLONG_COMPONENTS = T.StructType([
    T.StructField("mean_strength", T.DoubleType()),
    T.StructField("mean_distance", T.DoubleType()),
    T.StructField("mean_specificity", T.DoubleType()),
    T.StructField("pairs_kept", T.IntegerType()),
    T.StructField("pairs_scored", T.IntegerType()),
    T.StructField("segments", T.IntegerType()),
    T.StructField("reason", T.StringType()),
])

#: ``--method lossgain``: the components of its ``score`` (mean gain), over targets t in [2S, L)
LOSSGAIN_COMPONENTS = T.StructType([
    T.StructField("key_share", T.DoubleType()),
    T.StructField("full_loss", T.DoubleType()),
    T.StructField("short_loss", T.DoubleType()),
    T.StructField("short_context", T.IntegerType()),
])

SCORES = TableSpec(
    kind="scores",
    schema=T.StructType([
        _f("window_id", T.StringType(), "window scored (windows.window_id)", nullable=False),
        _f("scorer_id", T.StringType(), "stable hash of everything that changes a score: model "
           "identity, layer, seq_len, min_distance, dtype, rope overrides, math version; see "
           "the table property longattn.scorer.<scorer_id>", nullable=False),
        _f("category", T.StringType(), "category of the window"),
        _f("ds", T.DoubleType(), "dependency strength: mean over query heads of "
           "sum_{j<=n-k} P[n,j] / L (layer-0 attention mass at distance >= k)"),
        _f("variance", T.DoubleType(), "mean over query heads of the unbiased variance of the "
           "L x L matrix equal to P where j <= n-k and 0 elsewhere; DU = -variance"),
        _f("ds_heads", T.ArrayType(T.DoubleType(), False), "ds of each query head"),
        _f("var_heads", T.ArrayType(T.DoubleType(), False), "variance of each query head"),
        _f("seq_len", T.IntegerType(), "L: tokens scored, BOS included"),
        _f("min_distance", T.IntegerType(), "k: minimum distance counted as long-range"),
        _f("model", T.StringType(), "model the scores came from"),
        _f("scored_at", T.TimestampType(), "when the score was written"),
        _f("method", T.StringType(), "scoring method: longattn (ds, variance) or prolong "
           "(score); null on rows written before the column existed means longattn"),
        _f("score", T.DoubleType(), "the method's own per-window score: ProLong's LDS; null "
           "for longattn, whose LDS is per category (select)"),
        _f("prolong", PROLONG_COMPONENTS, "ProLong's components of the score (null for "
           "longattn)"),
        _f("lossgain", LOSSGAIN_COMPONENTS, "loss gain's components (null for other methods): "
           "key_share = share of targets with gain > 2 and full loss < 2 nats, full_loss and "
           "short_loss = mean losses with the whole window and with a short context of "
           "short_context tokens; score = short_loss - full_loss"),
        _f("device", T.StringType(), "device type the executor scored on (cpu, cuda)"),
        _f("kernel", T.StringType(), "kernel the executor ran (torch, triton)"),
        _f("dtype", T.StringType(), "compute dtype the executor ran"),
        _f("components", T.MapType(T.StringType(), T.DoubleType()), "every number the method "
           "computed for the window, by component name (the method declares them: longattn "
           "ds, variance; lossgain score, copy_share, dependency_gain, ...; repetition "
           "dup_10gram, compression, ...); null on rows written before the column existed, "
           "whose ds, variance, score and struct columns are read as their components"),
    ]),
    keys=("window_id", "scorer_id"),
    partition_by=("scorer_id",),
    comment="Per-window scores of every scoring method (LongAttn, ProLong, loss gain, "
            "repetition, plugins) per window and scorer",
)

SCORE_REJECTS = TableSpec(
    kind="score_rejects",
    schema=T.StructType([
        _f("window_id", T.StringType(), "window that could not be scored", nullable=False),
        _f("scorer_id", T.StringType(), "scorer that rejected it", nullable=False),
        _f("category", T.StringType(), "category of the window"),
        _f("reason", T.StringType(), "wrong_length, ids_out_of_vocab, non_finite_score or "
           "non_finite_loss", nullable=False),
        _f("detail", T.StringType(), "human-readable detail"),
        _f("scored_at", T.TimestampType(), "when the row was written"),
    ]),
    keys=("window_id", "scorer_id"),
    partition_by=("scorer_id",),
    comment="Windows the score job could not score, with the reason",
)

SELECTION = TableSpec(
    kind="selection",
    schema=T.StructType([
        _f("selection_id", T.StringType(), "hash of the parameters and input table versions",
           nullable=False),
        _f("window_id", T.StringType(), "window (windows.window_id)", nullable=False),
        _f("category", T.StringType(), "category of the window"),
        _f("n_tokens", T.IntegerType(), "tokens in the window"),
        _f("ds", T.DoubleType(), "dependency strength (scores.ds), when the recipe records "
           "it (the longattn recipe)"),
        _f("variance", T.DoubleType(), "variance (scores.variance); DU = -variance, when the "
           "recipe records it"),
        _f("z_ds", T.DoubleType(), "normalized DS within the category (z-score or min-max), "
           "when the recipe records it"),
        _f("z_du", T.DoubleType(), "normalized DU within the category (z-score of -variance, "
           "or min-max of variance for --normalize minmax), when the recipe records it"),
        _f("lds", T.DoubleType(), "the value ranked by the cut: the recipe's rank (LongAttn's "
           "LDS for the longattn recipe); null for windows that were not ranked"),
        _f("selected", T.BooleanType(), "whether the window is in the selection"),
        _f("excluded_reason", T.StringType(), "why the window could not be ranked (no_window, "
           "no_n_tokens, missing_score (<scorer>), null_score, nan_score, infinite_score, "
           "null_rank); null for usable windows"),
        _f("scorer_id", T.StringType(), "scorer whose scores were used (the recipe's first)"),
        _f("params", T.StringType(), "JSON of the selection parameters; a recipe's text is "
           "in the table property its recipe.property names (longattn.recipe.<hash>)"),
        _f("windows_version", T.LongType(), "Delta version of the windows table read"),
        _f("scores_version", T.LongType(), "Delta version of the scores table read"),
        _f("selected_at", T.TimestampType(), "when the selection was made"),
        _f("rank", T.DoubleType(), "the recipe's rank expression for the window (null when it "
           "could not be ranked)"),
        _f("passed", T.BooleanType(), "whether the window passed every filter (--where) of the "
           "recipe; the cut keeps windows that passed"),
        _f("dropped_by", T.StringType(), "the first filter the window failed (its text); null "
           "when it passed or was not ranked"),
        _f("recipe", T.StringType(), "name of the recipe that selected (longattn, random, "
                                     "recommended, custom, ...)"),
        _f("recipe_sha256", T.StringType(), "SHA-256 of the recipe's canonical form"),
        _f("scorer_ids", T.MapType(T.StringType(), T.StringType()), "the scorer_id of each of "
           "the recipe's scorers, by the name its components are qualified with"),
    ]),
    keys=("selection_id", "window_id"),
    partition_by=("selection_id",),
    comment="Selections: per-category ranks of a recipe over scorers' components, filters "
            "and the cut",
)

#: Score columns a probe row carries: every column of a scores row but its key, its category
#: and where it ran (so a method that adds columns to SCORES adds them to PROBE too).
PROBE_SCORE_COLUMNS = tuple(
    f.name for f in SCORES.schema.fields
    if f.name not in ("window_id", "scorer_id", "category", "scored_at", "device", "kernel",
                      "dtype", "components"))

PROBE = TableSpec(
    kind="probe",
    schema=T.StructType([
        _f("probe_id", T.StringType(), "hash of the windows table, sample, kinds, seed and "
           "score options of the probe run", nullable=False),
        _f("category", T.StringType(), "category of the natural window A", nullable=False),
        _f("kind", T.StringType(), "natural, or the control kind: splice, shuffle, repeat, "
           "concat", nullable=False),
        _f("window_id", T.StringType(), "the natural window A (windows.window_id) the row "
           "was derived from", nullable=False),
        _f("other_window_ids", T.ArrayType(T.StringType(), False), "windows whose tokens a "
           "splice or concat took (empty otherwise)"),
        _f("param", T.IntegerType(), "splice: s; shuffle: block b; repeat: period p; concat: "
           "number of pieces; null for natural"),
        _f("input_ids", T.ArrayType(T.IntegerType(), False), "the scored window's W tokens, "
           "without BOS (the scorer adds BOS as for windows)"),
        _f("scored_window_id", T.StringType(), "window_id in the probe's staging tables: "
           "<probe_id>/<kind>/<window_id>"),
        _f("scorer_id", T.StringType(), "scorer of every row of the table (scorers joined by "
           "+ when the probe runs a recipe of several)", nullable=False),
        *(SCORES.schema[name] for name in PROBE_SCORE_COLUMNS),
        _f("selection_score", T.DoubleType(), "the probed ranking (a recipe's rank, else the "
           "method's default, e.g. LongAttn's LDS = z(DS) + alpha*z(DU)) with the natural "
           "sample's per-category statistics"),
        _f("probed_at", T.TimestampType(), "when the row was written"),
        _f("components", T.MapType(T.StringType(), T.DoubleType()), "every component of every "
           "scorer of the probe, qualified by the scorer's name (lossgain.dependency_gain, "
           "repetition.compression): what probe --rank/--where ranks by without scoring "
           "again"),
        _f("passed", T.BooleanType(), "whether the row passed the probed recipe's filters "
           "(a row that did not ranks last)"),
    ]),
    keys=("probe_id", "kind", "window_id"),
    partition_by=("probe_id",),
    comment="longattn-spark probe: natural windows and matched controls, scored by one scorer",
)

SPECS = {s.kind: s for s in (WINDOWS, REJECTS, SCORES, SCORE_REJECTS, SELECTION, PROBE)}


def _type_signature(schema: T.StructType) -> dict[str, str]:
    return {f.name.lower(): f.dataType.simpleString() for f in schema.fields}


def schema_differences(expected: T.StructType, actual: T.StructType) -> list[str]:
    """Human-readable differences between two schemas (names case-insensitive, nullability
    ignored); empty when compatible."""
    exp, act = _type_signature(expected), _type_signature(actual)
    diffs = [f"missing column {c} {t}" for c, t in exp.items() if c not in act]
    diffs += [f"unexpected column {c} {t}" for c, t in act.items() if c not in exp]
    diffs += [f"column {c} is {act[c]}, expected {t}" for c, t in exp.items()
              if c in act and act[c] != t]
    return diffs

