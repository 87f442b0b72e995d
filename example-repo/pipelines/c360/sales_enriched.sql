-- Stream job (sources.sql, enriched_sales_view.sql, this file): every sale with its customer and
-- product attributes, appended to JSON files that the nightly report reads. Append-only (temporal
-- joins of append-only streams), so a file sink can take it.
-- Needs checkpointing (the spec's deployment.checkpoint_interval): files become visible on checkpoints.
SET 'pipeline.name' = 'c360-sales-enriched';

INSERT INTO sales_enriched
SELECT * FROM enriched_sales;
