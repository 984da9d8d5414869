-- Report: histogram counts of DS and log10(variance) per category, counted where the data are.
--   :scored   output of report_scores.sql   :bins  bins per histogram
--   :ds_lo, :ds_hi, :lv_lo, :lv_hi  common bin ranges of DS and log10(variance)
WITH vals AS (
  SELECT category, 'ds' AS measure, ds AS value
  FROM IDENTIFIER(:scored) WHERE excluded_reason IS NULL
  UNION ALL
  SELECT category, 'log10_variance' AS measure, log10(variance) AS value
  FROM IDENTIFIER(:scored) WHERE excluded_reason IS NULL AND variance > 0
)
SELECT
  category,
  measure,
  least(greatest(width_bucket(value,
                              CASE measure WHEN 'ds' THEN :ds_lo ELSE :lv_lo END,
                              CASE measure WHEN 'ds' THEN :ds_hi ELSE :lv_hi END,
                              :bins), 1), :bins) AS bucket,
  count(*) AS n
FROM vals
GROUP BY category, measure, bucket
