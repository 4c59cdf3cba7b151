BEGIN;

CREATE TABLE alembic_version (
    version_num VARCHAR(32) NOT NULL, 
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);

-- Running upgrade  -> 0001

CREATE TABLE couriers (
    courier_id VARCHAR(64) NOT NULL, 
    lat FLOAT NOT NULL, 
    lng FLOAT NOT NULL, 
    available BOOLEAN NOT NULL, 
    current_order_id VARCHAR(64), 
    assignment VARCHAR(16), 
    updated_at VARCHAR(32) NOT NULL, 
    PRIMARY KEY (courier_id)
);

CREATE INDEX ix_couriers_current_order_id ON couriers (current_order_id);

CREATE TABLE locations (
    location_id VARCHAR(64) NOT NULL, 
    name VARCHAR(200) NOT NULL, 
    lat FLOAT NOT NULL, 
    lng FLOAT NOT NULL, 
    PRIMARY KEY (location_id)
);

CREATE TABLE order_timeline (
    order_id VARCHAR(64) NOT NULL, 
    seq INTEGER NOT NULL, 
    status VARCHAR(32) NOT NULL, 
    at VARCHAR(32) NOT NULL, 
    PRIMARY KEY (order_id, seq)
);

CREATE TABLE orders (
    order_id VARCHAR(64) NOT NULL, 
    customer_id VARCHAR(128) NOT NULL, 
    idempotency_key VARCHAR(255) NOT NULL, 
    request_hash VARCHAR(64) NOT NULL, 
    location_id VARCHAR(64) NOT NULL, 
    status VARCHAR(32) NOT NULL, 
    failure_reason VARCHAR(32), 
    currency VARCHAR(3) NOT NULL, 
    total_cents INTEGER NOT NULL, 
    seq INTEGER NOT NULL, 
    view JSON NOT NULL, 
    created_at VARCHAR(32) NOT NULL, 
    updated_at VARCHAR(32) NOT NULL, 
    PRIMARY KEY (order_id), 
    CONSTRAINT uq_orders_customer_key UNIQUE (customer_id, idempotency_key)
);

CREATE INDEX ix_orders_created ON orders (created_at, order_id);

CREATE INDEX ix_orders_customer_created ON orders (customer_id, created_at, order_id);

CREATE INDEX ix_orders_status_created ON orders (status, created_at, order_id);

CREATE TABLE payments (
    order_id VARCHAR(64) NOT NULL, 
    payment_id VARCHAR(64), 
    idempotency_key VARCHAR(255) NOT NULL, 
    status VARCHAR(32) NOT NULL, 
    currency VARCHAR(3) NOT NULL, 
    amount_cents INTEGER NOT NULL, 
    authorized_cents INTEGER NOT NULL, 
    captured_cents INTEGER NOT NULL, 
    refunded_cents INTEGER NOT NULL, 
    updated_at VARCHAR(32) NOT NULL, 
    PRIMARY KEY (order_id)
);

CREATE INDEX ix_payments_payment_id ON payments (payment_id);

CREATE TABLE products (
    sku VARCHAR(64) NOT NULL, 
    name VARCHAR(200) NOT NULL, 
    price_cents INTEGER NOT NULL, 
    currency VARCHAR(3) NOT NULL, 
    hot BOOLEAN NOT NULL, 
    updated_at VARCHAR(32) NOT NULL, 
    PRIMARY KEY (sku)
);

CREATE TABLE reservations (
    order_id VARCHAR(64) NOT NULL, 
    location_id VARCHAR(64) NOT NULL, 
    sku VARCHAR(64) NOT NULL, 
    quantity INTEGER NOT NULL, 
    state VARCHAR(16) NOT NULL, 
    created_at VARCHAR(32) NOT NULL, 
    updated_at VARCHAR(32) NOT NULL, 
    PRIMARY KEY (order_id, location_id, sku)
);

CREATE INDEX ix_reservations_state ON reservations (state);

CREATE TABLE stock (
    location_id VARCHAR(64) NOT NULL, 
    sku VARCHAR(64) NOT NULL, 
    available INTEGER NOT NULL, 
    reserved INTEGER NOT NULL, 
    sold INTEGER NOT NULL, 
    stocked INTEGER NOT NULL, 
    updated_at VARCHAR(32) NOT NULL, 
    PRIMARY KEY (location_id, sku), 
    CONSTRAINT ck_stock_available CHECK (available >= 0), 
    CONSTRAINT ck_stock_reserved CHECK (reserved >= 0), 
    CONSTRAINT ck_stock_sold CHECK (sold >= 0)
);

INSERT INTO locations (location_id, name, lat, lng) VALUES ('main', 'Main store', 31.2304, 121.4737);

INSERT INTO alembic_version (version_num) VALUES ('0001') RETURNING alembic_version.version_num;

-- Running upgrade 0001 -> 0002

CREATE TABLE webhook_events (
    event_id VARCHAR(128) NOT NULL, 
    type VARCHAR(64) NOT NULL, 
    order_id VARCHAR(64) NOT NULL, 
    payment_id VARCHAR(64) NOT NULL, 
    amount_cents INTEGER NOT NULL, 
    outcome VARCHAR(16) NOT NULL, 
    detail VARCHAR(200), 
    received_at VARCHAR(32) NOT NULL, 
    processed_at VARCHAR(32), 
    PRIMARY KEY (event_id)
);

CREATE INDEX ix_webhook_events_order_id ON webhook_events (order_id);

UPDATE alembic_version SET version_num='0002' WHERE alembic_version.version_num = '0001';

-- Running upgrade 0002 -> 0003

CREATE TABLE notifications (
    event_id VARCHAR(128) NOT NULL, 
    order_id VARCHAR(64) NOT NULL, 
    type VARCHAR(32) NOT NULL, 
    status VARCHAR(16) NOT NULL, 
    attempts INTEGER NOT NULL, 
    last_error VARCHAR(500), 
    updated_at VARCHAR(32) NOT NULL, 
    PRIMARY KEY (event_id)
);

CREATE INDEX ix_notifications_order_id ON notifications (order_id);

UPDATE alembic_version SET version_num='0003' WHERE alembic_version.version_num = '0002';

-- Running upgrade 0003 -> 0004

CREATE TABLE refunds (
    refund_id VARCHAR(64) NOT NULL, 
    order_id VARCHAR(64) NOT NULL, 
    idempotency_key VARCHAR(255) NOT NULL, 
    request_hash VARCHAR(64) NOT NULL, 
    amount_cents INTEGER NOT NULL, 
    currency VARCHAR(3) NOT NULL, 
    reason VARCHAR(1000) NOT NULL, 
    restock JSON NOT NULL, 
    status VARCHAR(16) NOT NULL, 
    failure_reason VARCHAR(200), 
    psp_refund_id VARCHAR(64), 
    created_at VARCHAR(32) NOT NULL, 
    updated_at VARCHAR(32) NOT NULL, 
    PRIMARY KEY (refund_id), 
    CONSTRAINT ck_refunds_amount CHECK (amount_cents > 0), 
    CONSTRAINT uq_refunds_order_key UNIQUE (order_id, idempotency_key)
);

CREATE INDEX ix_refunds_order_created ON refunds (order_id, created_at);

ALTER TABLE payments ADD COLUMN refund_committed_cents INTEGER DEFAULT 0 NOT NULL;

UPDATE payments SET refund_committed_cents = refunded_cents;

UPDATE alembic_version SET version_num='0004' WHERE alembic_version.version_num = '0003';

-- Running upgrade 0004 -> 0005

ALTER TABLE orders ADD COLUMN checkout_input JSON;

CREATE TABLE reconciliations (
    subject_id VARCHAR(64) NOT NULL, 
    action VARCHAR(32) NOT NULL, 
    detail VARCHAR(500) NOT NULL, 
    at VARCHAR(32) NOT NULL, 
    PRIMARY KEY (subject_id, action)
);

UPDATE alembic_version SET version_num='0005' WHERE alembic_version.version_num = '0004';

-- Running upgrade 0005 -> 0006

CREATE TABLE fencing_counters (
    name VARCHAR(64) NOT NULL, 
    value INTEGER NOT NULL, 
    PRIMARY KEY (name)
);

CREATE TABLE zone_fences (
    zone VARCHAR(64) NOT NULL, 
    token INTEGER NOT NULL, 
    updated_at VARCHAR(32) NOT NULL, 
    PRIMARY KEY (zone)
);

ALTER TABLE couriers ADD COLUMN fencing_token INTEGER;

UPDATE alembic_version SET version_num='0006' WHERE alembic_version.version_num = '0005';

-- Running upgrade 0006 -> 0007

CREATE TABLE courier_tokens (
    token_hash VARCHAR(64) NOT NULL, 
    courier_id VARCHAR(64) NOT NULL, 
    created_at VARCHAR(32) NOT NULL, 
    revoked_at VARCHAR(32), 
    PRIMARY KEY (token_hash)
);

CREATE INDEX ix_courier_tokens_courier_id ON courier_tokens (courier_id);

UPDATE alembic_version SET version_num='0007' WHERE alembic_version.version_num = '0006';

-- Running upgrade 0007 -> 0008

CREATE TABLE order_events (
    id BIGSERIAL NOT NULL, 
    event_id VARCHAR(100) NOT NULL, 
    order_id VARCHAR(64) NOT NULL, 
    seq INTEGER NOT NULL, 
    status VARCHAR(32) NOT NULL, 
    payload JSON NOT NULL, 
    created_at VARCHAR(32) NOT NULL, 
    published_at VARCHAR(32), 
    PRIMARY KEY (id), 
    UNIQUE (event_id)
);

CREATE INDEX ix_order_events_unpublished ON order_events (id) WHERE published_at IS NULL;

UPDATE alembic_version SET version_num='0008' WHERE alembic_version.version_num = '0007';

-- Running upgrade 0008 -> 0009

CREATE OR REPLACE FUNCTION tradeflow_try_reserve(
    p_order_id text, p_location_id text, p_sku text, p_quantity integer, p_now text
) RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    found_state text;
BEGIN
    INSERT INTO reservations (order_id, location_id, sku, quantity, state, created_at, updated_at)
    VALUES (p_order_id, p_location_id, p_sku, p_quantity, 'TRIED', p_now, p_now)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        -- The branch has a fence row already (a repeat, or a cancel that came first). A racing
        -- repeat waited on the unique index for the first call's commit and lands here too:
        -- it moves no stock.
        SELECT state INTO found_state FROM reservations
         WHERE order_id = p_order_id AND location_id = p_location_id AND sku = p_sku;
        RETURN coalesce(found_state, '');
    END IF;
    UPDATE stock
       SET available = available - p_quantity, reserved = reserved + p_quantity,
           updated_at = p_now
     WHERE location_id = p_location_id AND sku = p_sku AND available >= p_quantity;
    IF NOT FOUND THEN
        RAISE EXCEPTION '%% at %%: fewer than %% available', p_sku, p_location_id, p_quantity
            USING ERRCODE = 'TF001';
    END IF;
    RETURN NULL;
END
$$;

UPDATE alembic_version SET version_num='0009' WHERE alembic_version.version_num = '0008';

COMMIT;

