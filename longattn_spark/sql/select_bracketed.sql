-- LongAttn selection, exact cut: the usable windows inside each category's current bracket,
-- the range of the ordering known to hold the cut.
--   :ranked    the ranked rows (longattn_spark/select/ranked.py)
--   :brackets  one row per category being refined (a few rows: broadcast):
--              stage 1 brackets sort_key in [lo, hi];
--              stage 2 brackets tiebreak in [lo, hi] among windows whose sort_key = pinned_key
--              (used when more windows than fit on the driver share one sort_key).
SELECT /*+ BROADCAST(b) */
  r.category,
  r.window_id,
  r.n_tokens,
  r.sort_key,
  r.tiebreak,
  b.lo,
  b.hi,
  CASE b.stage WHEN 1 THEN r.sort_key ELSE r.tiebreak END AS bracket_key
FROM IDENTIFIER(:ranked) AS r
JOIN IDENTIFIER(:brackets) AS b
  ON b.category = r.category
WHERE r.sort_key IS NOT NULL
  AND (b.stage = 1 OR r.sort_key = b.pinned_key)
  AND (CASE b.stage WHEN 1 THEN r.sort_key ELSE r.tiebreak END) BETWEEN b.lo AND b.hi
