-- The method of each of two scorers (NULL on rows written before the column: longattn), for
-- labelling what each value is: LongAttn's LDS within the category, any other method's score.
SELECT scorer_id, min(coalesce(method, 'longattn')) AS method
FROM IDENTIFIER(:scores)
WHERE scorer_id IN (:a, :b)
GROUP BY scorer_id
