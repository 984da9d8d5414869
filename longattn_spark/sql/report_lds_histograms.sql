-- Report: LDS histogram counts per category (each category over its own LDS range), split
-- into kept and left-out windows.   :selection, :selection_id   :bins
WITH sel AS (
  SELECT category, lds, selected
  FROM IDENTIFIER(:selection)
  WHERE selection_id = :selection_id AND lds IS NOT NULL AND NOT isnan(lds)
),
ranges AS (
  SELECT category, min(lds) AS lo, max(lds) AS hi FROM sel GROUP BY category
)
SELECT /*+ BROADCAST(r) */
  s.category,
  r.lo,
  r.hi,
  CASE WHEN r.hi > r.lo THEN least(width_bucket(s.lds, r.lo, r.hi, :bins), :bins) ELSE 1 END
    AS bucket,
  coalesce(s.selected, false) AS selected,
  count(*) AS n
FROM sel AS s
JOIN ranges AS r ON r.category <=> s.category
GROUP BY s.category, r.lo, r.hi, bucket, coalesce(s.selected, false)
