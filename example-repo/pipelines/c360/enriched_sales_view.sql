-- C360 shared view for the stream jobs (listed after sources.sql). Not for batch specs: Flink
-- validates a view when it is created, and in batch mode a view over the unbounded `sales` is refused
-- ("Querying an unbounded table ... in batch mode is not allowed").
--
-- Sales joined with both dimensions as of the sale time (event-time temporal joins). Why not a
-- regular join: it would keep every sale in state forever, waiting for customers that might still
-- come; a temporal join keeps one version per customer and product and buffers a sale only until
-- the watermark passes it (about a second), so the state stays at a few dozen rows.
-- (No /*+ STATE_TTL */ hint: flink-gitops drops comments, hints included, when it splits a file.)
CREATE VIEW enriched_sales AS
SELECT
  s.sale_id,
  CAST(s.sale_time AS TIMESTAMP(3)) AS sale_time,
  s.customer_id,
  c.customer_name,
  c.segment,
  c.country,
  s.product_id,
  p.category,
  s.quantity,
  CAST(s.quantity * p.unit_price AS DECIMAL(12, 2)) AS amount
FROM sales AS s
JOIN customers FOR SYSTEM_TIME AS OF s.sale_time AS c ON s.customer_id = c.customer_id
JOIN products FOR SYSTEM_TIME AS OF s.sale_time AS p ON s.product_id = p.product_id;
