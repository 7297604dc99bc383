-- The demo's first schema change, rolled out to every cloud's copy of "app".
CREATE TABLE public.orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES public.customers (id),
    total numeric(12, 2) NOT NULL CHECK (total >= 0),
    placed_at timestamptz NOT NULL DEFAULT now()
);
