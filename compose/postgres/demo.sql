-- The compose stack's demo database, loaded once when the cluster is created (entrypoint.sh).
-- Small, deterministic, and with the things a logical backup must carry: owners and grants, a sequence,
-- foreign keys, a view, a function and trigger, a comment, jsonb, bytea, numeric, time zones, and text
-- with quotes, tabs, newlines, backslashes and non-ASCII characters.
CREATE ROLE demo_owner NOLOGIN;
CREATE ROLE demo_reader NOLOGIN;
-- postgres_exporter's login (service postgres-exporter): pg_monitor only, the stack's throwaway password.
CREATE ROLE postgres_exporter LOGIN PASSWORD 'pgops-compose-demo' IN ROLE pg_monitor;
CREATE DATABASE demo OWNER demo_owner ENCODING 'UTF8' TEMPLATE template0;
\connect demo
SET ROLE demo_owner;

CREATE SCHEMA shop;
COMMENT ON SCHEMA shop IS 'pgops compose demo: a tiny shop';

CREATE TABLE shop.customer (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    email text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL
);

CREATE TABLE shop.product (
    sku text PRIMARY KEY,
    title text NOT NULL,
    price numeric(10, 2) NOT NULL CHECK (price >= 0),
    attributes jsonb NOT NULL DEFAULT '{}',
    thumbnail bytea
);

CREATE TABLE shop.orders (
    id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES shop.customer (id),
    sku text NOT NULL REFERENCES shop.product (sku),
    quantity integer NOT NULL CHECK (quantity > 0),
    note text,
    ordered_at timestamptz NOT NULL,
    updated_at timestamptz
);
CREATE INDEX orders_customer_idx ON shop.orders (customer_id, ordered_at);

CREATE FUNCTION shop.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := NEW.ordered_at;
    RETURN NEW;
END
$$;
CREATE TRIGGER orders_touch BEFORE INSERT OR UPDATE ON shop.orders FOR EACH ROW EXECUTE FUNCTION shop.touch();

INSERT INTO shop.customer (name, email, created_at)
SELECT 'Customer ' || i, 'customer' || i || '@example.org', timestamptz '2024-01-01 00:00:00+00' + i * interval '1 hour'
FROM generate_series(1, 500) AS i;
INSERT INTO shop.customer (name, email, created_at) VALUES
    ('Zoë O''Brien', 'zoe@example.org', '2024-02-29 12:00:00+01'),
    (E'Tab\there, newline\nthere, back\\slash', 'odd@example.org', '2024-03-31 02:30:00+02'),
    ('渡辺 さくら', 'sakura@example.org', '2024-12-31 23:59:59.999999+09');

INSERT INTO shop.product (sku, title, price, attributes, thumbnail)
SELECT 'SKU-' || lpad(i::text, 4, '0'), 'Product ' || i, (i * 1.25)::numeric(10, 2),
       jsonb_build_object('colour', (ARRAY['red', 'green', 'blue'])[1 + i % 3], 'weight_g', i * 10),
       CASE WHEN i % 10 = 0 THEN decode(md5(i::text), 'hex') END
FROM generate_series(1, 200) AS i;

INSERT INTO shop.orders (customer_id, sku, quantity, note, ordered_at)
SELECT 1 + i % 503, 'SKU-' || lpad((1 + i % 200)::text, 4, '0'), 1 + i % 7,
       CASE WHEN i % 100 = 0 THEN 'gift wrap, "please"' END,
       timestamptz '2024-06-01 00:00:00+00' + i * interval '7 minutes'
FROM generate_series(1, 5000) AS i;

CREATE VIEW shop.revenue_by_day AS
SELECT date_trunc('day', o.ordered_at) AS day, sum(o.quantity * p.price) AS revenue
FROM shop.orders AS o JOIN shop.product AS p USING (sku)
GROUP BY 1;

GRANT USAGE ON SCHEMA shop TO demo_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA shop TO demo_reader;
RESET ROLE;
-- In the loading session, as bulk loads often do: PostgreSQL 15 then doubles n_live_tup, which pgops's
-- restore checks must tolerate.
ANALYZE;
