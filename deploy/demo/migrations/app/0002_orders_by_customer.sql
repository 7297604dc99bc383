-- pgfleet:no-transaction
-- CONCURRENTLY cannot run in a transaction: pgfleet records it after it succeeds.
CREATE INDEX CONCURRENTLY orders_by_customer ON public.orders (customer_id);
