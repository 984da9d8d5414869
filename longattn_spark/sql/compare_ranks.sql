-- Two scorers on the same windows, per category: each scorer's value (any method but
-- LongAttn: its `score`; LongAttn: LDS = z(ds) + :alpha * z(-variance) within the category,
-- as `select` ranks it),
-- and both values' average ranks within the category (ties share the mean of their ranks,
-- as Spearman's rank correlation defines them).
WITH s AS (
  SELECT window_id, category, scorer_id, coalesce(method, 'longattn') AS method,
         ds, variance, score
  FROM IDENTIFIER(:scores)
  WHERE scorer_id IN (:a, :b)
),
stats AS (
  SELECT scorer_id, category, avg(ds) AS m_ds, stddev_samp(ds) AS s_ds,
         avg(variance) AS m_var, stddev_samp(variance) AS s_var
  FROM s
  WHERE ds IS NOT NULL AND variance IS NOT NULL AND NOT isnan(ds) AND NOT isnan(variance)
  GROUP BY scorer_id, category
),
v AS (
  SELECT s.window_id, s.category, s.scorer_id,
         CASE WHEN s.method <> 'longattn' THEN s.score
              -- a category without spread in a score (one window, or all equal) gets z = 0
              -- for it, as in select; a missing score stays missing (the window is left out)
              ELSE CASE WHEN coalesce(st.s_ds, 0D) = 0D THEN 0D * s.ds
                        ELSE (s.ds - st.m_ds) / st.s_ds END
                   + :alpha * CASE WHEN coalesce(st.s_var, 0D) = 0D THEN 0D * s.variance
                                   ELSE (st.m_var - s.variance) / st.s_var END
         END AS value
  FROM s LEFT JOIN stats st ON s.scorer_id = st.scorer_id AND s.category <=> st.category
),
pairs AS (
  SELECT a.window_id, a.category, a.value AS value_a, b.value AS value_b
  FROM v a JOIN v b ON a.window_id = b.window_id
  WHERE a.scorer_id = :a AND b.scorer_id = :b
    AND a.value IS NOT NULL AND b.value IS NOT NULL
    AND NOT isnan(a.value) AND NOT isnan(b.value)
)
SELECT window_id, category, value_a, value_b,
       rank() OVER (PARTITION BY category ORDER BY value_a)
         + (count(1) OVER (PARTITION BY category, value_a) - 1) / 2D AS rank_a,
       rank() OVER (PARTITION BY category ORDER BY value_b)
         + (count(1) OVER (PARTITION BY category, value_b) - 1) / 2D AS rank_b,
       count(1) OVER (PARTITION BY category) AS n
FROM pairs
