-- BROKEN on purpose, for rollback demos: enriched_sales has no column `discount`, so the planner
-- refuses the INSERT when the job is submitted (no job starts, the running one is untouched apart
-- from the savepoint stop that preceded the submission). Flink answers the run request with:
--   SQL validation failed. From line 2, column 77 to line 2, column 84:
--   Column 'discount' not found in any table
SET 'pipeline.name' = 'c360-revenue-per-customer';

CREATE TABLE revenue_per_customer (
  customer_id BIGINT,
  customer_name STRING,
  segment STRING,
  sales BIGINT,
  revenue DECIMAL(38, 2)
) WITH (
  'connector' = 'print',
  'print-identifier' = 'revenue_per_customer'
);

INSERT INTO revenue_per_customer
SELECT customer_id, customer_name, segment, COUNT(*) AS sales, SUM(amount - discount) AS revenue
FROM enriched_sales
GROUP BY customer_id, customer_name, segment;
