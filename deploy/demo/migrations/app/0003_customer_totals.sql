CREATE VIEW reporting.customer_totals AS
SELECT c.id, c.name, coalesce(sum(o.total), 0) AS total
FROM public.customers c
LEFT JOIN public.orders o ON o.customer_id = c.id
GROUP BY c.id, c.name;
