-- LongAttn selection, approximate keep-fraction cut: per category the value of sort_key at
-- the given percentage, by percentile_approx (Greenwald-Khanna sketches merged across tasks,
-- rank error at most n / accuracy), and how many usable windows rank strictly above that
-- value and exactly at it. The threshold is one of the category's own sort_key values, so the
-- equality is exact. Windows above are kept; of the windows tied at the threshold, as many as
-- the keep count still needs are taken in the exact cut's tie order (tiebreak desc, window_id
-- asc; see selection.approx_cuts), so ties are split as the exact cut splits them.
--   :ranked      the ranked rows (longattn_spark/select/ranked.py)
--   :percentage  1 - keep fraction
--   :accuracy    percentile_approx accuracy
WITH thresholds AS (
  SELECT
    category,
    percentile_approx(sort_key, :percentage, :accuracy) AS threshold
  FROM IDENTIFIER(:ranked)
  WHERE sort_key IS NOT NULL
  GROUP BY category
)
SELECT /*+ BROADCAST(t) */
  t.category,
  t.threshold,
  count_if(r.sort_key > t.threshold) AS above,
  count_if(r.sort_key = t.threshold) AS tied
FROM IDENTIFIER(:ranked) AS r
JOIN thresholds AS t
  ON t.category <=> r.category
WHERE r.sort_key IS NOT NULL
GROUP BY t.category, t.threshold
