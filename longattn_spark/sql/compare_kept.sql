-- The kept sets of two selections, per category: sizes, overlap and Jaccard index.
WITH a AS (SELECT window_id, category FROM IDENTIFIER(:selection)
           WHERE selection_id = :sel_a AND selected),
     b AS (SELECT window_id, category FROM IDENTIFIER(:selection)
           WHERE selection_id = :sel_b AND selected),
     joined AS (SELECT coalesce(a.category, b.category) AS category,
                     a.window_id IS NOT NULL AS in_a, b.window_id IS NOT NULL AS in_b
              FROM a FULL OUTER JOIN b ON a.window_id = b.window_id)
SELECT category, count_if(in_a) AS kept_a, count_if(in_b) AS kept_b,
       count_if(in_a AND in_b) AS kept_both, count(1) AS kept_either,
       count_if(in_a AND in_b) / count(1) AS jaccard
FROM joined
GROUP BY category
ORDER BY category
