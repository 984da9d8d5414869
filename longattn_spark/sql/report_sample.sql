-- Report: a bounded, deterministic sample of ranked windows: about :points per category,
-- chosen by a seeded hash of window_id; never more than :limit rows.
--   :selection, :selection_id   :seed   :points   :limit
WITH sel AS (
  SELECT window_id, category, ds, variance, selected
  FROM IDENTIFIER(:selection)
  WHERE selection_id = :selection_id AND lds IS NOT NULL
),
counts AS (SELECT category, count(*) AS n FROM sel GROUP BY category)
SELECT /*+ BROADCAST(c) */ s.category, s.ds, s.variance, s.selected
FROM sel AS s
JOIN counts AS c ON c.category <=> s.category
WHERE CAST(xxhash64(s.window_id, :seed) & 9223372036854775807 AS DOUBLE)
      < :points / c.n * 9.223372036854775807E18
LIMIT :limit
