-- LongAttn selection, approximate keep-fraction cut: per category the value of sort_key at
-- the given percentage, by percentile_approx (Greenwald-Khanna sketches merged across tasks,
-- rank error at most n / accuracy). Windows with sort_key > threshold are kept.
--   :ranked      output of select_ranked.sql
--   :percentage  1 - keep fraction
--   :accuracy    percentile_approx accuracy
SELECT
  category,
  percentile_approx(sort_key, :percentage, :accuracy) AS threshold
FROM IDENTIFIER(:ranked)
WHERE sort_key IS NOT NULL
GROUP BY category
