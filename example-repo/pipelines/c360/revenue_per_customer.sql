-- Stream job (sources.sql, enriched_sales_view.sql, this file): running sale count and revenue per
-- customer, kept in keyed state.
-- The print sink writes every change to the TaskManager's stdout (Flink UI, TaskManager, Stdout):
--   revenue_per_customer> +U[7, customer-7, silver, 12, 435.00]
-- After a savepoint upgrade the counts go on from where they were instead of starting at 1,
-- which shows that the state was restored. (A file sink cannot take an updating result.)
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
SELECT customer_id, customer_name, segment, COUNT(*) AS sales, SUM(amount) AS revenue
FROM enriched_sales
GROUP BY customer_id, customer_name, segment;
